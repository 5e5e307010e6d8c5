package findings

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/traces"
)

// Capture states as the index reports them.
const (
	// StatusWaiting: some ranks have not committed and the partition
	// timeout has not passed yet.
	StatusWaiting = "waiting"
	// StatusPending: ready to analyze (or being analyzed).
	StatusPending = "pending"
	// StatusAnalyzed: findings recorded with every rank present.
	StatusAnalyzed = "analyzed"
	// StatusPartial: findings recorded after the timeout, ranks missing.
	StatusPartial = "partial"
)

// HostSummary is one committed host of a capture.
type HostSummary struct {
	Host      string    `json:"host"`
	Ranks     []int     `json:"ranks"`
	Manifest  string    `json:"manifest"`
	Committed time.Time `json:"committed"`
}

// Entry is what the index knows about one capture.
type Entry struct {
	ID             capture.ID    `json:"id"`
	Status         string        `json:"status"`
	WorldSize      int           `json:"world_size"`
	Complete       bool          `json:"complete"`
	MissingRanks   []int         `json:"missing_ranks,omitempty"`
	FirstCommitted time.Time     `json:"first_committed"`
	Hosts          []HostSummary `json:"hosts"`
	Simulated      bool          `json:"simulated,omitempty"`
	// Analyzed is when findings were last recorded (zero if never).
	Analyzed time.Time `json:"analyzed,omitzero"`
	// Findings counts the recorded findings.
	Findings int `json:"findings"`
	// StaleAnalyzers ran with another version than this build's (backfill
	// re-runs them) or not at all.
	StaleAnalyzers []string `json:"stale_analyzers,omitempty"`
	Errors         []string `json:"errors,omitempty"`
	// InvalidManifests are host manifests that could not be read.
	InvalidManifests []string `json:"invalid_manifests,omitempty"`
}

type entry struct {
	Entry
	manifests  map[string]string // manifest key -> ETag ("" when known only from the record)
	loaded     bool              // manifests were read (not only the record)
	recordETag string
	record     *Record
}

// Index is the in-memory view of the store's captures and findings that
// the API answers from. It is a cache: everything in it can be rebuilt by
// listing the store.
type Index struct {
	versions map[string]string
	mu       sync.RWMutex
	captures map[capture.ID]*entry
	// profiles are the continuous CPU profiles, by job run and host.
	profiles   map[seriesKey]*profileSeries
	profileGen uint32
}

// NewIndex returns an empty index; versions maps each analyzer this build
// runs to its version, to tell stale records.
func NewIndex(versions map[string]string) *Index {
	return &Index{versions: versions, captures: map[capture.ID]*entry{}}
}

func (ix *Index) get(id capture.ID) *entry {
	e := ix.captures[id]
	if e == nil {
		e = &entry{Entry: Entry{ID: id}, manifests: map[string]string{}}
		ix.captures[id] = e
	}
	return e
}

// SetCapture records the committed hosts of a capture; ready says whether
// the partition check lets it be analyzed now.
func (ix *Index) SetCapture(c *capture.Capture, ready bool) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	e := ix.get(c.ID)
	e.loaded = true
	e.manifests = map[string]string{}
	for _, h := range c.Hosts {
		e.manifests[h.Key] = h.ETag
	}
	e.Hosts = Summaries(c)
	e.WorldSize = c.WorldSize()
	e.MissingRanks = c.MissingRanks()
	e.Complete = c.Complete()
	e.FirstCommitted = c.FirstCommitted()
	e.Simulated = c.Simulated()
	e.InvalidManifests = c.Invalid
	e.refresh(ix.versions, ready)
}

// Summaries describes the committed hosts of c, sorted by host name.
func Summaries(c *capture.Capture) []HostSummary {
	hs := make([]HostSummary, 0, len(c.Hosts))
	for _, h := range c.Hosts {
		hs = append(hs, HostSummary{Host: h.Manifest.Host, Ranks: h.Manifest.Ranks, Manifest: h.Key, Committed: h.Committed})
	}
	slices.SortFunc(hs, func(a, b HostSummary) int { return cmp.Compare(a.Host, b.Host) })
	return hs
}

// SetRecord records a capture's findings.json and its ETag. Until the
// capture's manifests are loaded, the hosts come from the record.
func (ix *Index) SetRecord(rec *Record, etag string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	e := ix.get(rec.Capture)
	e.record, e.recordETag = rec, etag
	if !e.loaded {
		e.manifests = map[string]string{}
		for _, k := range rec.Manifests {
			e.manifests[k] = ""
		}
		e.Hosts = rec.Hosts
		e.WorldSize, e.MissingRanks, e.Complete = rec.WorldSize, rec.MissingRanks, !rec.Partial
		e.Simulated = rec.Simulated
		for _, h := range rec.Hosts {
			if e.FirstCommitted.IsZero() || h.Committed.Before(e.FirstCommitted) {
				e.FirstCommitted = h.Committed
			}
		}
	}
	e.refresh(ix.versions, false)
}

// refresh derives the status fields from the hosts and the record.
func (e *entry) refresh(versions map[string]string, ready bool) {
	e.StaleAnalyzers, e.Errors, e.Findings, e.Analyzed = nil, nil, 0, time.Time{}
	switch {
	case e.record != nil && slices.Equal(e.record.Manifests, e.manifestKeys()):
		e.Status = StatusAnalyzed
		if e.record.Partial {
			e.Status = StatusPartial
		}
	case e.Complete || ready:
		e.Status = StatusPending
	default:
		e.Status = StatusWaiting
	}
	if r := e.record; r != nil {
		e.Analyzed, e.Findings, e.Errors = r.Analyzed, len(r.Findings), r.Errors
		e.StaleAnalyzers = r.Stale(versions)
		slices.Sort(e.StaleAnalyzers)
	}
}

func (e *entry) manifestKeys() []string {
	keys := make([]string, 0, len(e.manifests))
	for k := range e.manifests {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// KnowsManifest reports whether the index holds the manifest at key with
// that ETag, so a listing or an event about it needs no work.
func (ix *Index) KnowsManifest(key, etag string) bool {
	id, _, err := capture.OfKey(key)
	if err != nil {
		return false
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	e := ix.captures[id]
	if e == nil {
		return false
	}
	got, ok := e.manifests[key]
	return ok && (etag == "" || got == "" || got == etag)
}

// RecordETag is the ETag of the capture's findings.json the index holds.
func (ix *Index) RecordETag(id capture.ID) string {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	if e := ix.captures[id]; e != nil {
		return e.recordETag
	}
	return ""
}

// Done reports whether the capture's findings cover its current hosts.
func (ix *Index) Done(id capture.ID) bool {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	e := ix.captures[id]
	return e != nil && (e.Status == StatusAnalyzed || e.Status == StatusPartial)
}

// CaptureQuery filters Captures. Empty fields match everything.
type CaptureQuery struct {
	Cluster, Job, Run, Status string
	Limit                     int
}

// Captures lists captures, newest first.
func (ix *Index) Captures(q CaptureQuery) (list []Entry, total int) {
	ix.mu.RLock()
	for _, e := range ix.captures {
		if match(q.Cluster, e.ID.Cluster) && match(q.Job, e.ID.Job) && match(q.Run, e.ID.Run) && match(q.Status, e.Status) {
			list = append(list, e.Entry)
		}
	}
	ix.mu.RUnlock()
	slices.SortFunc(list, func(a, b Entry) int {
		if c := b.FirstCommitted.Compare(a.FirstCommitted); c != 0 {
			return c
		}
		return cmp.Compare(a.ID.String(), b.ID.String())
	})
	total = len(list)
	if q.Limit > 0 && len(list) > q.Limit {
		list = list[:q.Limit]
	}
	return list, total
}

// Records returns the findings records of the captures that match q,
// newest first (at most q.Limit). The records are shared: do not modify
// them.
func (ix *Index) Records(q CaptureQuery) []*Record {
	ix.mu.RLock()
	var es []*entry
	for _, e := range ix.captures {
		if e.record != nil && match(q.Cluster, e.ID.Cluster) && match(q.Job, e.ID.Job) && match(q.Run, e.ID.Run) && match(q.Status, e.Status) {
			es = append(es, e)
		}
	}
	ix.mu.RUnlock()
	slices.SortFunc(es, func(a, b *entry) int {
		return cmp.Or(b.FirstCommitted.Compare(a.FirstCommitted), cmp.Compare(a.ID.String(), b.ID.String()))
	})
	if q.Limit > 0 && len(es) > q.Limit {
		es = es[:q.Limit]
	}
	out := make([]*Record, len(es))
	for i, e := range es {
		out[i] = e.record
	}
	return out
}

// Capture returns what the index knows about one capture.
func (ix *Index) Capture(id capture.ID) (Entry, bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	e := ix.captures[id]
	if e == nil {
		return Entry{}, false
	}
	return e.Entry, true
}

// Query filters Findings. Empty fields match everything; Severities matches
// any of the listed severities.
type Query struct {
	Cluster, Job, Run, Capture, Host, Analyzer string
	Severities                                 []string
	Limit                                      int
}

// severityRank orders severities from most to least urgent, unknown last.
func severityRank(s string) int {
	switch s {
	case traces.SeverityCritical:
		return 0
	case traces.SeverityWarning:
		return 1
	case traces.SeverityInfo:
		return 2
	}
	return 3
}

// Findings returns matching findings, the most costly first (projected
// GPU-hours per day over the job's life, then GPU-seconds lost in the
// window, then severity), and how many matched before the limit.
func (ix *Index) Findings(q Query) (list []traces.Finding, total int) {
	ix.mu.RLock()
	for _, e := range ix.captures {
		if e.record == nil || !match(q.Cluster, e.ID.Cluster) || !match(q.Job, e.ID.Job) ||
			!match(q.Run, e.ID.Run) || !match(q.Capture, e.ID.Capture) {
			continue
		}
		for _, f := range e.record.Findings {
			if match(q.Host, f.Scope.Host) && match(q.Analyzer, f.Analyzer) &&
				(len(q.Severities) == 0 || slices.Contains(q.Severities, f.Severity)) {
				list = append(list, f)
			}
		}
	}
	ix.mu.RUnlock()
	slices.SortFunc(list, func(a, b traces.Finding) int {
		if c := cmp.Compare(b.Impact.RankValue(), a.Impact.RankValue()); c != 0 {
			return c
		}
		if c := cmp.Compare(b.Impact.GPUSeconds, a.Impact.GPUSeconds); c != 0 {
			return c
		}
		if c := cmp.Compare(severityRank(a.Severity), severityRank(b.Severity)); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	total = len(list)
	if q.Limit > 0 && len(list) > q.Limit {
		list = list[:q.Limit]
	}
	return list, total
}

// Retain drops the captures for which keep is false (deleted from the
// store) and returns how many it dropped.
func (ix *Index) Retain(keep func(capture.ID) bool) int {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	n := 0
	for id := range ix.captures {
		if !keep(id) {
			delete(ix.captures, id)
			n++
		}
	}
	return n
}

// Finding returns the finding with that ID.
func (ix *Index) Finding(id string) (traces.Finding, bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	for _, e := range ix.captures {
		if e.record == nil {
			continue
		}
		for _, f := range e.record.Findings {
			if f.ID == id {
				return f, true
			}
		}
	}
	return traces.Finding{}, false
}

func match(want, got string) bool { return want == "" || want == got }
