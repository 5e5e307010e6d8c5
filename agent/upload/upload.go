// Package upload drains the agent's spool into the object store.
//
// For each queued capture, oldest first, the uploader verifies the bundle,
// uploads every part under traces.KeyOf(manifest), confirms each with a Stat
// of its size and records it in a progress file inside the spool entry
// (fsynced, so a restart after SIGKILL skips confirmed parts), then creates
// manifest.json last with a create-only put (the capture's commit marker is
// written exactly once) and only then removes the entry from the spool.
//
// Store errors are retried with exponential backoff and full jitter for as
// long as the entry stays on disk; a corrupted entry is quarantined, and a
// manifest that conflicts with a different one already stored is too.
package upload

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/agent/spool"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// ProgressFile is the name, inside a spool entry, of the list of parts the
// store has confirmed, one per line. Part names start with a letter or
// digit, so it never collides with one.
const ProgressFile = ".upload-progress"

// Options tune an Uploader. Zero values take the defaults.
type Options struct {
	// BackoffBase is the first retry's maximum delay (default 1s); each
	// further retry doubles it, up to BackoffMax (default 2m). The delay is
	// drawn uniformly below that bound (full jitter), so agents that lost
	// the store together do not return together.
	BackoffBase, BackoffMax time.Duration
	// Interval is how often Run rescans the spool without a Notify
	// (default 30s).
	Interval time.Duration
	// Concurrency is how many parts of a capture are sent at once
	// (default 4).
	Concurrency int
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Metrics is where the uploader's metrics live; nil means the default
	// set that metrics.WritePrometheus serves.
	Metrics *metrics.Set
}

// Uploader moves captures from a spool to a store.
type Uploader struct {
	sp   *spool.Spool
	st   store.Store
	opts Options
	log  *slog.Logger
	wake chan struct{}

	bytes, parts, errs, retries, captures *metrics.Counter
	duration                              *metrics.PrometheusHistogram
}

// durationBuckets are the upper bounds of loupe_upload_duration_seconds.
var durationBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}

// New returns an Uploader from sp to st.
func New(sp *spool.Spool, st store.Store, opts Options) *Uploader {
	if opts.BackoffBase <= 0 {
		opts.BackoffBase = time.Second
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = 2 * time.Minute
	}
	opts.BackoffMax = max(opts.BackoffMax, opts.BackoffBase)
	if opts.Interval <= 0 {
		opts.Interval = 30 * time.Second
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	set := opts.Metrics
	if set == nil {
		set = metrics.GetDefaultSet()
	}
	u := &Uploader{
		sp: sp, st: st, opts: opts, log: opts.Logger,
		wake:     make(chan struct{}, 1),
		bytes:    set.GetOrCreateCounter("loupe_upload_bytes_total"),
		parts:    set.GetOrCreateCounter("loupe_upload_parts_total"),
		errs:     set.GetOrCreateCounter("loupe_upload_errors_total"),
		retries:  set.GetOrCreateCounter("loupe_upload_retries_total"),
		captures: set.GetOrCreateCounter("loupe_upload_captures_total"),
		duration: set.GetOrCreatePrometheusHistogramExt("loupe_upload_duration_seconds", durationBuckets),
	}
	if u.log == nil {
		u.log = slog.Default()
	}
	return u
}

// Notify wakes Run to look at the spool now; call it after spool.Commit.
// It never blocks.
func (u *Uploader) Notify() {
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

// Run uploads queued captures until ctx is done, waking on Notify and every
// Options.Interval. It returns nil when ctx is done; an upload in flight
// then stays queued and resumes on the next start. Other errors are logged
// and tried again on the next wake, never fatal to the daemon.
func (u *Uploader) Run(ctx context.Context) error {
	t := time.NewTicker(u.opts.Interval)
	defer t.Stop()
	for {
		if err := u.Drain(ctx); err != nil && ctx.Err() == nil {
			u.log.Error("upload: pass over the spool failed; trying again later", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-u.wake:
		case <-t.C:
		}
	}
}

// Drain uploads every capture queued when it starts, oldest first, retrying
// store errors until they succeed or ctx is done (then it returns ctx's
// error). Corrupted captures are quarantined, not returned as errors; an
// entry the spool could not quarantine is skipped and its error returned
// after the pass.
func (u *Uploader) Drain(ctx context.Context) error {
	ready, err := u.sp.Ready()
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ready {
		if !u.sp.Acquire(e) {
			continue // evicted, or another Drain has it
		}
		err := u.upload(ctx, e)
		u.sp.Release(e) // a no-op once the entry is removed or quarantined
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			// The spool could not quarantine the entry: go on with the
			// others and look at it again on the next pass.
			u.log.Error("upload: spool entry left in place", "capture", e.CaptureID, "host", e.Host, "err", err)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// permanent marks an error retrying cannot fix; the entry is quarantined.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// upload stores one entry and removes it from the spool, or quarantines it.
// It returns an error when ctx is done or the quarantine failed.
func (u *Uploader) upload(ctx context.Context, e spool.Entry) error {
	start := time.Now()
	var (
		m   *traces.Manifest
		raw []byte
	)
	err := u.retry(ctx, e, "verify", func() error {
		var err error
		m, raw, err = u.sp.Load(e)
		if errors.Is(err, spool.ErrCorrupt) {
			return permanent{err}
		}
		return err
	})
	// A manifest already in the store means an earlier run committed this
	// capture (same bytes) or another capture owns the key (different
	// bytes); either way no part may be written.
	stored := false
	if err == nil {
		err = u.retry(ctx, e, traces.ManifestName, func() error {
			var err error
			stored, err = u.manifestStored(ctx, traces.KeyOf(m), raw)
			return err
		})
	}
	if err == nil && !stored {
		err = u.uploadParts(ctx, e, m)
		if err == nil {
			err = u.retry(ctx, e, traces.ManifestName, func() error { return u.putManifest(ctx, traces.KeyOf(m), raw) })
		}
	}
	var perm permanent
	switch {
	case errors.As(err, &perm):
		return u.sp.Quarantine(e, perm.err)
	case err != nil:
		return err
	}
	if err := u.sp.Remove(e); err != nil {
		// Stored and committed: a leftover entry is uploaded again, which
		// the create-only manifest put makes harmless.
		u.log.Error("upload: capture stored but its spool entry could not be removed", "capture", e.CaptureID, "host", e.Host, "err", err)
	}
	var total int64
	for _, p := range m.Parts {
		total += p.Size
	}
	u.captures.Inc()
	u.duration.UpdateDuration(start)
	u.log.Info("upload: capture stored", "capture", e.CaptureID, "host", e.Host, "key", traces.KeyOf(m).Prefix(),
		"parts", len(m.Parts), "bytes", total, "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// uploadParts uploads the parts not yet confirmed, Concurrency at a time,
// recording each one as the store confirms it. It returns an error only
// when ctx is done.
func (u *Uploader) uploadParts(ctx context.Context, e spool.Entry, m *traces.Manifest) error {
	done := readProgress(e.Dir)
	key := traces.KeyOf(m)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex // serialises progress records
		firstErr error
		slots    = make(chan struct{}, u.opts.Concurrency)
	)
	for _, p := range m.Parts {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-slots }()
			err := u.uploadPart(ctx, e, key.Object(p.Name), p, done[p.Name])
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				firstErr = cmp.Or(firstErr, err)
				return
			}
			if err := recordProgress(e.Dir, p.Name); err != nil {
				// Only costs a resend of this part after a crash.
				u.log.Warn("upload: could not record progress", "capture", e.CaptureID, "part", p.Name, "err", err)
			}
		})
	}
	wg.Wait()
	return cmp.Or(firstErr, ctx.Err())
}

// uploadPart sends one part unless an earlier run confirmed it and the store
// still has it.
func (u *Uploader) uploadPart(ctx context.Context, e spool.Entry, obj string, p traces.Part, confirmed bool) error {
	if confirmed {
		// A Stat is cheaper than a resend.
		resend := false
		err := u.retry(ctx, e, p.Name, func() error {
			err := confirm(ctx, u.st, obj, p.Size)
			if errors.Is(err, store.ErrNotFound) || errors.Is(err, errSizeMismatch) {
				resend = true
				return nil
			}
			return err
		})
		if err != nil || !resend {
			return err
		}
		u.log.Warn("upload: a part confirmed earlier is gone from the store; sending it again", "capture", e.CaptureID, "part", p.Name)
	}
	if err := u.retry(ctx, e, p.Name, func() error { return u.putPart(ctx, e.Dir, obj, p) }); err != nil {
		return err
	}
	u.parts.Inc()
	u.bytes.Add(int(p.Size))
	return nil
}

var errSizeMismatch = errors.New("stored object has the wrong size")

// putPart uploads one part file and confirms it.
func (u *Uploader) putPart(ctx context.Context, dir, obj string, p traces.Part) error {
	f, err := os.Open(filepath.Join(dir, filepath.FromSlash(p.Name)))
	if err != nil {
		return err
	}
	defer f.Close()
	// *os.File is an io.ReaderAt, so minio-go sends big parts in parallel.
	if _, err := u.st.Put(ctx, obj, f, p.Size, store.PutOptions{ContentType: p.MediaType}); err != nil {
		return err
	}
	return confirm(ctx, u.st, obj, p.Size)
}

// confirm checks that the store holds obj with the expected size.
func confirm(ctx context.Context, st store.Store, obj string, size int64) error {
	info, err := st.Stat(ctx, obj)
	if err != nil {
		return err
	}
	if info.Size != size {
		return fmt.Errorf("%w: %s is %d bytes, want %d", errSizeMismatch, obj, info.Size, size)
	}
	return nil
}

// putManifest creates the manifest if it does not exist yet. If a create
// fails because it exists, an earlier attempt whose reply was lost may have
// stored it: the same bytes mean done.
func (u *Uploader) putManifest(ctx context.Context, key traces.Key, raw []byte) error {
	obj := key.Object(traces.ManifestName)
	_, err := u.st.Put(ctx, obj, bytes.NewReader(raw), int64(len(raw)), store.PutOptions{ContentType: traces.MediaJSON, IfNoneMatch: true})
	if !errors.Is(err, store.ErrPrecondition) {
		return err
	}
	ok, err := u.manifestStored(ctx, key, raw)
	if err == nil && !ok {
		err = fmt.Errorf("create of %s failed because it exists, yet it is gone now", obj)
	}
	return err
}

// manifestStored reports whether the store holds exactly raw as the
// capture's manifest. A different manifest there is a permanent error: two
// captures claim one key, and the spool entry goes to quarantine.
func (u *Uploader) manifestStored(ctx context.Context, key traces.Key, raw []byte) (bool, error) {
	obj := key.Object(traces.ManifestName)
	rc, _, err := u.st.Get(ctx, obj)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer rc.Close()
	have, err := io.ReadAll(io.LimitReader(rc, traces.MaxManifestSize+1))
	if err != nil {
		return false, err
	}
	if !bytes.Equal(have, raw) {
		return false, permanent{fmt.Errorf("the store already holds a different %s at %s: two captures share capture id %s on host %s; "+
			"nothing was uploaded and the spool entry is kept in quarantine", traces.ManifestName, obj, key.Capture, key.Host)}
	}
	return true, nil
}

// retry runs f until it succeeds, fails permanently or ctx is done, sleeping
// between attempts with exponential backoff and full jitter.
func (u *Uploader) retry(ctx context.Context, e spool.Entry, step string, f func() error) error {
	for attempt := 0; ; attempt++ {
		err := f()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		u.errs.Inc()
		var perm permanent
		if errors.As(err, &perm) {
			return err
		}
		d := u.backoff(attempt)
		u.log.Warn("upload: attempt failed; retrying", "capture", e.CaptureID, "host", e.Host, "step", step,
			"attempt", attempt+1, "retry_in", d.Round(time.Millisecond), "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
		u.retries.Inc()
	}
}

// backoff is the delay before retry attempt+1: uniform in [0, min(max,
// base*2^attempt)).
func (u *Uploader) backoff(attempt int) time.Duration {
	ceil := u.opts.BackoffMax
	if attempt < 30 {
		ceil = min(ceil, u.opts.BackoffBase<<attempt)
	}
	return rand.N(ceil) + 1
}

// readProgress returns the parts an earlier run confirmed. A torn last line
// (a crash mid-write) is ignored.
func readProgress(dir string) map[string]bool {
	done := map[string]bool{}
	b, err := os.ReadFile(filepath.Join(dir, ProgressFile))
	if err != nil {
		return done
	}
	lines := strings.Split(string(b), "\n")
	for _, l := range lines[:len(lines)-1] { // the last is "" or torn
		done[l] = true
	}
	return done
}

// recordProgress appends a confirmed part and fsyncs the progress file.
func recordProgress(dir, name string) error {
	path := filepath.Join(dir, ProgressFile)
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	line := name + "\n"
	// After a torn write (power loss), start a fresh line so the torn
	// text cannot join this name.
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, st.Size()-1); err == nil && last[0] != '\n' {
			line = "\n" + line
		}
	}
	_, err = f.WriteString(line)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && statErr != nil {
		err = traces.SyncDir(dir) // the file is new: make its name durable
	}
	return err
}
