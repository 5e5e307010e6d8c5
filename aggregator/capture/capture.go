// Package capture loads one job capture (every host bundle committed under
// v1/<cluster>/<job>/<run>/<capture>/) from a store and decides whether it is
// complete: the partition check. A capture is complete when the ranks its
// manifests announce cover [0, world_size); until then the aggregator waits,
// and after a timeout it analyzes what arrived and names the missing ranks.
package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/pprof/profile"

	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// ID names one job capture.
type ID struct {
	Cluster string `json:"cluster"`
	Job     string `json:"job"`
	Run     string `json:"run"`
	Capture string `json:"capture"`
}

// Prefix is the store prefix of every object of the capture:
// v1/<cluster>/<job>/<run>/<capture>/.
func (id ID) Prefix() string {
	return traces.Key{Cluster: id.Cluster, Job: id.Job, Run: id.Run, Capture: id.Capture}.CapturePrefix()
}

// String is cluster/job/run/capture, the form the HTTP API uses in paths.
func (id ID) String() string {
	return id.Cluster + "/" + id.Job + "/" + id.Run + "/" + id.Capture
}

// Validate checks every component of id.
func (id ID) Validate() error {
	return traces.Key{Cluster: id.Cluster, Job: id.Job, Run: id.Run, Capture: id.Capture, Host: "h"}.Validate()
}

// OfKey returns the capture an object key belongs to, and the rest of the
// key below the capture folder (for example "node-1/manifest.json" or
// "_findings/findings.json"). It fails for keys outside the v1 layout.
func OfKey(key string) (ID, string, error) {
	parts := strings.SplitN(key, "/", 6)
	if len(parts) < 6 || parts[0] != traces.KeyVersion {
		return ID{}, "", fmt.Errorf("%w: %q is not under %s/<cluster>/<job>/<run>/<capture>/", traces.ErrBadKey, key, traces.KeyVersion)
	}
	id := ID{Cluster: parts[1], Job: parts[2], Run: parts[3], Capture: parts[4]}
	if err := id.Validate(); err != nil {
		return ID{}, "", fmt.Errorf("%w: %q: %v", traces.ErrBadKey, key, err)
	}
	return id, parts[5], nil
}

// IsManifestKey reports whether key is a host manifest (the commit marker of
// one host's bundle) of a capture in the v1 layout. Continuous profile
// bundles are not captures: they are never analyzed on their own.
func IsManifestKey(key string) bool {
	k, name, err := traces.ParseKey(key)
	return err == nil && name == traces.ManifestName && !traces.IsContinuous(k.Capture)
}

// Host is one committed host bundle.
type Host struct {
	// Key is the object key of the manifest.
	Key string
	// ETag of the manifest object, so that a rewritten manifest is noticed.
	ETag      string
	Committed time.Time
	Manifest  *traces.Manifest
}

// Capture is the committed part of one job capture.
type Capture struct {
	ID    ID
	Hosts []Host
	// Invalid lists manifests that could not be read, with the reason; their
	// hosts are left out (and their ranks count as missing).
	Invalid []string
}

// maxManifests bounds how many host manifests one capture may have; a
// larger capture is an error rather than a memory hazard.
const maxManifests = 16384

// Load lists the capture's host folders and decodes every committed
// manifest, fetching up to 8 at a time. Host folders without a manifest are
// not committed and are ignored. Other objects under the capture (the
// aggregator's _findings folder) are returned to the caller through extra,
// when it is not nil.
func Load(ctx context.Context, st store.Store, id ID, extra func(store.ObjectInfo)) (*Capture, error) {
	var keys []store.ObjectInfo
	cursor := ""
	for {
		objs, next, err := st.List(ctx, id.Prefix(), cursor, 1000)
		if err != nil {
			return nil, fmt.Errorf("list capture %s: %w", id, err)
		}
		for _, o := range objs {
			if IsManifestKey(o.Key) {
				keys = append(keys, o)
				if len(keys) > maxManifests {
					return nil, fmt.Errorf("capture %s has more than %d host manifests", id, maxManifests)
				}
			} else if extra != nil {
				extra(o)
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	c := &Capture{ID: id, Hosts: make([]Host, len(keys))}
	errs := make([]error, len(keys))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, o := range keys {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c.Hosts[i], errs[i] = loadHost(ctx, st, id, o)
		}()
	}
	wg.Wait()
	hosts := c.Hosts[:0]
	for i, h := range c.Hosts {
		switch {
		case errs[i] == nil:
			hosts = append(hosts, h)
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case errors.Is(errs[i], store.ErrNotFound):
			// Deleted between list and get: not committed any more.
		case isTransient(errs[i]):
			return nil, errs[i]
		default:
			c.Invalid = append(c.Invalid, errs[i].Error())
		}
	}
	c.Hosts = hosts
	return c, nil
}

// isTransient tells store failures (worth retrying) from bad manifests
// (worth reporting once).
func isTransient(err error) bool {
	return !errors.Is(err, traces.ErrInvalid) && !errors.Is(err, traces.ErrSchemaVersion) &&
		!errors.Is(err, traces.ErrBadKey) && !errors.Is(err, traces.ErrUnsafeName) && !errors.Is(err, errMismatch)
}

var errMismatch = errors.New("manifest does not match its key")

func loadHost(ctx context.Context, st store.Store, id ID, o store.ObjectInfo) (Host, error) {
	rc, info, err := st.Get(ctx, o.Key)
	if err != nil {
		return Host{}, fmt.Errorf("read manifest %s: %w", o.Key, err)
	}
	defer rc.Close()
	m, err := traces.DecodeManifest(rc)
	if err != nil {
		return Host{}, fmt.Errorf("manifest %s: %w", o.Key, err)
	}
	if want := traces.KeyOf(m).Object(traces.ManifestName); want != o.Key {
		return Host{}, fmt.Errorf("manifest %s: %w: it describes %s", o.Key, errMismatch, want)
	}
	return Host{Key: o.Key, ETag: info.ETag, Committed: info.LastModified, Manifest: m}, nil
}

// WorldSize is the largest world size the manifests announce (0 when none
// does, for a job that is not distributed or did not say).
func (c *Capture) WorldSize() int {
	n := 0
	for _, h := range c.Hosts {
		n = max(n, h.Manifest.WorldSize)
	}
	return n
}

// MissingRanks lists the ranks in [0, WorldSize) that no committed manifest
// covers, in increasing order.
func (c *Capture) MissingRanks() []int {
	ws := c.WorldSize()
	seen := make([]bool, ws)
	for _, h := range c.Hosts {
		for _, r := range h.Manifest.Ranks {
			if r >= 0 && r < ws {
				seen[r] = true
			}
		}
	}
	var missing []int
	for r, ok := range seen {
		if !ok {
			missing = append(missing, r)
		}
	}
	return missing
}

// Complete reports whether at least one host committed and every rank of
// the world is covered. A capture whose manifests announce no world size is
// complete as soon as one host commits.
func (c *Capture) Complete() bool {
	return len(c.Hosts) > 0 && len(c.MissingRanks()) == 0
}

// FirstCommitted is when the earliest manifest was written (as the store
// saw it), the start of the partition timeout. Zero without hosts.
func (c *Capture) FirstCommitted() time.Time {
	var t time.Time
	for _, h := range c.Hosts {
		if t.IsZero() || h.Committed.Before(t) {
			t = h.Committed
		}
	}
	return t
}

// ManifestKeys returns the sorted manifest keys: the host set a result was
// computed from.
func (c *Capture) ManifestKeys() []string {
	keys := make([]string, len(c.Hosts))
	for i, h := range c.Hosts {
		keys[i] = h.Key
	}
	sort.Strings(keys)
	return keys
}

// Simulated reports whether any host's data comes from simulated GPUs.
func (c *Capture) Simulated() bool {
	for _, h := range c.Hosts {
		if h.Manifest.Simulated {
			return true
		}
	}
	return false
}

// Window is the capture window: the earliest host's start to the latest
// host's end.
func (c *Capture) Window() (start, end time.Time) {
	for _, h := range c.Hosts {
		if start.IsZero() || h.Manifest.Start.Before(start) {
			start = h.Manifest.Start
		}
		if h.Manifest.End.After(end) {
			end = h.Manifest.End
		}
	}
	return start.UTC(), end.UTC()
}

// Parts counts, per part name, the hosts whose bundle holds it; under
// traces.KinetoDir it counts the Kineto traces.
func (c *Capture) Parts() map[string]int {
	out := map[string]int{}
	for _, h := range c.Hosts {
		for _, p := range h.Manifest.Parts {
			if strings.HasPrefix(p.Name, traces.KinetoDir) {
				out[traces.KinetoDir]++
			} else {
				out[p.Name]++
			}
		}
	}
	return out
}

// Input builds the analyzers' view of the capture, reading parts from st
// as the analyzers ask for them. Every read is checked against the size and
// SHA-256 the manifest lists; maxPartSize bounds a part (0: the traces
// default). When the capture is not complete the input is marked partial
// with the missing ranks.
func (c *Capture) Input(st store.Store, maxPartSize int64) *analyzers.Input {
	in := &analyzers.Input{MissingRanks: c.MissingRanks()}
	in.Partial = len(in.MissingRanks) > 0
	for _, h := range c.Hosts {
		key := traces.KeyOf(h.Manifest)
		m := h.Manifest
		in.Hosts = append(in.Hosts, analyzers.Host{
			Manifest: m,
			Key:      key.Object,
			Open: func(ctx context.Context, name string) (io.ReadCloser, error) {
				p, ok := m.Part(name)
				if !ok {
					return nil, fmt.Errorf("%w: %q is not listed in %s", traces.ErrMissingPart, name, key.Object(traces.ManifestName))
				}
				rc, _, err := st.Get(ctx, key.Object(name))
				if errors.Is(err, store.ErrNotFound) {
					return nil, fmt.Errorf("%w: %s: %v", traces.ErrMissingPart, key.Object(name), err)
				}
				if err != nil {
					return nil, err
				}
				return verified{traces.VerifyReader(p, rc, maxPartSize), rc}, nil
			},
			Baseline: func(ctx context.Context) (*profile.Profile, []string, error) {
				return Baseline(ctx, st, key, m.Start, maxPartSize)
			},
		})
	}
	return in
}

// BaselineLookback is how long before a capture window the continuous
// profiles of a host count as its normal profile.
const BaselineLookback = 30 * time.Minute

// maxBaselineProfiles bounds the continuous profiles one baseline merges.
const maxBaselineProfiles = 256

// Baseline merges the continuous CPU profiles of host key's job run whose
// intervals ended at most BaselineLookback before start, and returns them
// with the object keys read; nil when there are none. The listing is of
// the job run's continuous bundles only, from the lookback on. A profile
// that cannot be read is left out: the baseline is context, not evidence.
func Baseline(ctx context.Context, st store.Store, key traces.Key, start time.Time, maxPartSize int64) (*profile.Profile, []string, error) {
	var profs []*profile.Profile
	var keys []string
	cursor := key.ContinuousSeek(start.Add(-BaselineLookback))
	for len(profs) < maxBaselineProfiles {
		objs, next, err := st.List(ctx, key.JobPrefix(), cursor, 1000)
		if err != nil {
			return nil, nil, fmt.Errorf("list continuous profiles of %s: %w", key.JobPrefix(), err)
		}
		for _, o := range objs {
			k, name, err := traces.ParseKey(o.Key)
			if err != nil || !traces.IsContinuous(k.Capture) {
				next = "" // past the run's continuous bundles
				break
			}
			from, d, err := traces.ParseContinuousCaptureID(k.Capture)
			if err != nil || !from.Before(start) {
				next = ""
				break
			}
			if k.Host != key.Host || name != traces.ManifestName || from.Add(d).After(start) {
				continue
			}
			if p, err := readContinuous(ctx, st, o.Key, maxPartSize); err == nil {
				profs = append(profs, p)
				keys = append(keys, o.Key, k.Object(traces.PartContinuousProfile))
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if len(profs) == 0 {
		return nil, nil, nil
	}
	merged, err := profile.Merge(profs)
	if err != nil {
		return nil, nil, fmt.Errorf("merge continuous profiles of %s: %w", key.Prefix(), err)
	}
	return merged, keys, nil
}

// readContinuous reads the continuous profile of a manifest, verified.
func readContinuous(ctx context.Context, st store.Store, manifestKey string, maxPartSize int64) (*profile.Profile, error) {
	rc, _, err := st.Get(ctx, manifestKey)
	if err != nil {
		return nil, err
	}
	m, err := traces.DecodeManifest(rc)
	rc.Close()
	if err != nil {
		return nil, err
	}
	p, ok := m.Part(traces.PartContinuousProfile)
	if !ok {
		return nil, fmt.Errorf("%s lists no %s", manifestKey, traces.PartContinuousProfile)
	}
	prc, _, err := st.Get(ctx, traces.KeyOf(m).Object(p.Name))
	if err != nil {
		return nil, err
	}
	defer prc.Close()
	return traces.ReadProfile(traces.VerifyReader(p, prc, maxPartSize))
}

// verified reads through a checksum verifier and closes the object.
type verified struct {
	io.Reader
	io.Closer
}

// Listed is one capture found by List.
type Listed struct {
	ID ID
	// FirstCommitted is the earliest manifest's time in the store.
	FirstCommitted time.Time
	// Hosts counts the committed manifests.
	Hosts int
}

// List walks every capture in the store with at least one committed
// manifest, in key order, calling fn for each. Keys of one capture are
// contiguous in a listing, so memory does not grow with the store.
func List(ctx context.Context, st store.Store, fn func(Listed) error) error {
	var cur Listed
	flush := func() error {
		if cur.Hosts == 0 {
			return nil
		}
		err := fn(cur)
		cur = Listed{}
		return err
	}
	cursor := ""
	for {
		objs, next, err := st.List(ctx, traces.KeyVersion+"/", cursor, 1000)
		if err != nil {
			return fmt.Errorf("list captures: %w", err)
		}
		for _, o := range objs {
			if !IsManifestKey(o.Key) {
				continue
			}
			id, _, _ := OfKey(o.Key)
			if id != cur.ID {
				if err := flush(); err != nil {
					return err
				}
				cur.ID = id
			}
			cur.Hosts++
			if cur.FirstCommitted.IsZero() || o.LastModified.Before(cur.FirstCommitted) {
				cur.FirstCommitted = o.LastModified
			}
		}
		if next == "" {
			return flush()
		}
		cursor = next
	}
}
