// Package watcher finds the job captures that need analysis and hands them
// to the runner. It learns of new host manifests (the commit markers) in two
// ways: S3 event notifications posted to the aggregator's webhook endpoint,
// which are fast, and a periodic listing of the store, which catches what
// notifications miss (the aggregator was down, the store has no
// notifications configured). The listing resumes from a cursor kept in the
// store (CursorKey), so replicas and restarts share its progress.
//
// At start a full listing rebuilds the findings index and queues every
// capture not yet analyzed. The watcher itself keeps nothing that matters:
// duplicates in its queue are harmless, because the runner decides from the
// store, under a lease, whether work is left.
package watcher

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/aggregator/runner"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// CursorKey is the store object holding the listing cursor.
const CursorKey = "_aggregator/cursor"

// Defaults of Config.
const (
	DefaultSweepInterval = time.Minute
	DefaultSweepPages    = 10
	DefaultPageSize      = 1000
	DefaultWorkers       = 2
	DefaultIndexRefresh  = time.Hour
)

// Processor analyzes one capture; *runner.Runner is one.
type Processor interface {
	Process(ctx context.Context, id capture.ID) (runner.Outcome, error)
}

// Config configures a Watcher.
type Config struct {
	Store     store.Store
	Processor Processor
	Index     *findings.Index
	// Bucket and Prefix locate the store in S3 event notifications: events
	// for other buckets or outside the prefix are ignored. Empty Bucket
	// accepts any bucket.
	Bucket, Prefix string
	// SweepInterval is the pause between listing steps; SweepPages pages
	// of PageSize keys are listed per step. A negative interval disables
	// the periodic listing (the start-up listing still runs).
	SweepInterval time.Duration
	// IndexRefresh is how often the whole store is listed again to
	// rebuild the index (dropping deleted captures); 0 disables it.
	IndexRefresh time.Duration
	SweepPages   int
	PageSize     int
	// Workers analyze that many captures at once.
	Workers int
	Logger  *slog.Logger
	Metrics *metrics.Set
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Watcher queues captures and runs the processor over them.
type Watcher struct {
	cfg  Config
	log  *slog.Logger
	wake chan struct{}

	mu       sync.Mutex
	pending  map[capture.ID]time.Time // due time
	running  map[capture.ID]bool
	again    map[capture.ID]bool // notified while running
	failures map[capture.ID]int
	ready    bool // the start-up listing finished

	webhookEvents, sweepEvents, sweepObjects, sweepErrors, processErrors *metrics.Counter
}

// New returns a Watcher for cfg.
func New(cfg Config) *Watcher {
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.SweepPages <= 0 {
		cfg.SweepPages = DefaultSweepPages
	}
	if cfg.PageSize <= 0 {
		cfg.PageSize = DefaultPageSize
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Prefix = strings.Trim(cfg.Prefix, "/")
	w := &Watcher{
		cfg: cfg, log: cfg.Logger, wake: make(chan struct{}, 1),
		pending: map[capture.ID]time.Time{}, running: map[capture.ID]bool{},
		again: map[capture.ID]bool{}, failures: map[capture.ID]int{},
	}
	m := cfg.Metrics
	w.webhookEvents = m.GetOrCreateCounter(`loupe_aggregator_notifications_total{source="webhook"}`)
	w.sweepEvents = m.GetOrCreateCounter(`loupe_aggregator_notifications_total{source="listing"}`)
	w.sweepObjects = m.GetOrCreateCounter(`loupe_aggregator_listed_objects_total`)
	w.sweepErrors = m.GetOrCreateCounter(`loupe_aggregator_listing_errors_total`)
	w.processErrors = m.GetOrCreateCounter(`loupe_aggregator_process_errors_total`)
	m.GetOrCreateGauge(`loupe_aggregator_queued_captures`, func() float64 {
		w.mu.Lock()
		defer w.mu.Unlock()
		return float64(len(w.pending) + len(w.running))
	})
	return w
}

// Ready reports whether the start-up listing has finished, so the index
// the API serves is complete.
func (w *Watcher) Ready() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ready
}

// Queued returns how many captures wait or are being analyzed.
func (w *Watcher) Queued() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending) + len(w.running)
}

// Accept takes the events of one webhook notification and queues the
// captures whose manifests they announce. It returns how many events
// were relevant.
func (w *Watcher) Accept(evs []Event) int {
	n := 0
	for _, ev := range evs {
		if !ev.Created() || (w.cfg.Bucket != "" && ev.Bucket != w.cfg.Bucket) {
			continue
		}
		key := ev.Key
		if w.cfg.Prefix != "" {
			var ok bool
			if key, ok = strings.CutPrefix(key, w.cfg.Prefix+"/"); !ok {
				continue
			}
		}
		if w.notify(key, "") {
			n++
			w.webhookEvents.Inc()
		}
	}
	return n
}

// notify queues the capture of a manifest key the index does not know yet;
// a continuous profile's manifest goes into the index's profile catalog.
func (w *Watcher) notify(key, etag string) bool {
	if w.cfg.Index != nil && w.cfg.Index.AddProfile(key) {
		return true
	}
	if !capture.IsManifestKey(key) {
		return false
	}
	if w.cfg.Index != nil && etag != "" && w.cfg.Index.KnowsManifest(key, etag) {
		return false
	}
	id, _, err := capture.OfKey(key)
	if err != nil {
		return false
	}
	w.Enqueue(id, time.Time{})
	return true
}

// Enqueue asks for the capture to be processed at due (now when zero, or
// when an earlier time is already queued).
func (w *Watcher) Enqueue(id capture.ID, due time.Time) {
	if due.IsZero() {
		due = w.cfg.Now()
	}
	w.mu.Lock()
	if w.running[id] {
		w.again[id] = true
	} else if cur, ok := w.pending[id]; !ok || due.Before(cur) {
		w.pending[id] = due
	}
	w.mu.Unlock()
	w.signal()
}

// signal wakes one waiting worker, if none is about to wake already.
func (w *Watcher) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Run lists the store once from the start (rebuilding the index), then
// runs the workers and the periodic listing until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for range w.cfg.Workers {
		wg.Go(func() { w.work(ctx) })
	}
	for {
		err := w.Rebuild(ctx)
		if err == nil {
			break
		}
		w.log.Error("start-up listing failed; retrying in 10s", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(10 * time.Second):
		}
	}
	w.mu.Lock()
	w.ready = true
	w.mu.Unlock()
	// A nil channel never fires: that timer is off.
	var sweep, refresh <-chan time.Time
	if w.cfg.SweepInterval > 0 {
		t := time.NewTicker(w.cfg.SweepInterval)
		defer t.Stop()
		sweep = t.C
	}
	if w.cfg.IndexRefresh > 0 {
		t := time.NewTicker(w.cfg.IndexRefresh)
		defer t.Stop()
		refresh = t.C
	}
	for {
		var err error
		select {
		case <-ctx.Done():
			return nil
		case <-sweep:
			err = w.Sweep(ctx)
		case <-refresh:
			err = w.Rebuild(ctx)
		}
		if err != nil && ctx.Err() == nil {
			w.sweepErrors.Inc()
			w.log.Warn("store listing failed; the next step retries", "err", err)
		}
	}
}

// Rebuild lists the whole store: findings records go into the index,
// captures whose manifests the index does not know are queued, and
// captures no longer in the store (retention deleted them) leave the index.
func (w *Watcher) Rebuild(ctx context.Context) error {
	start := time.Now()
	seen := map[capture.ID]bool{}
	if w.cfg.Index != nil {
		w.cfg.Index.BeginProfileListing()
	}
	cursor := ""
	for {
		next, err := w.page(ctx, cursor, seen)
		if err != nil {
			return err
		}
		if next == "" {
			break
		}
		cursor = next
	}
	dropped := 0
	if w.cfg.Index != nil {
		dropped = w.cfg.Index.Retain(func(id capture.ID) bool { return seen[id] })
		dropped += w.cfg.Index.EndProfileListing()
	}
	w.log.Info("store listed", "captures", len(seen), "queued", w.Queued(), "dropped", dropped, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// cursorRecord is the stored listing position.
type cursorRecord struct {
	// After is the last key listed; empty to start from the beginning.
	After   string    `json:"after"`
	Updated time.Time `json:"updated"`
}

// Sweep lists up to SweepPages pages from the stored cursor and advances
// it, wrapping around at the end. When another replica advanced the cursor
// meanwhile, its position is kept: both listed what they listed.
func (w *Watcher) Sweep(ctx context.Context) error {
	for range w.cfg.SweepPages {
		cur, etag, err := w.readCursor(ctx)
		if err != nil {
			return err
		}
		next, err := w.page(ctx, cur.After, nil)
		if err != nil {
			return err
		}
		if err := w.writeCursor(ctx, cursorRecord{After: next, Updated: w.cfg.Now().UTC()}, etag); err != nil {
			return err
		}
		if next == "" {
			return nil // a full round: wait for the next interval
		}
	}
	return nil
}

// page lists one page of v1/ after cursor and acts on what it finds; the
// captures it holds go into seen, when not nil.
func (w *Watcher) page(ctx context.Context, cursor string, seen map[capture.ID]bool) (string, error) {
	objs, next, err := w.cfg.Store.List(ctx, traces.KeyVersion+"/", cursor, w.cfg.PageSize)
	if err != nil {
		return "", fmt.Errorf("list %s/ after %q: %w", traces.KeyVersion, cursor, err)
	}
	w.sweepObjects.Add(len(objs))
	if seen != nil {
		for _, o := range objs {
			if id, _, err := capture.OfKey(o.Key); err == nil {
				seen[id] = true
			}
		}
	}
	// Records first: a record read here can make its manifests known.
	if err := w.readRecords(ctx, objs); err != nil {
		return "", err
	}
	for _, o := range objs {
		if w.notify(o.Key, o.ETag) {
			w.sweepEvents.Inc()
		}
	}
	return next, nil
}

// recordReaders bounds the findings records read at once while listing.
const recordReaders = 8

// readRecords loads into the index the findings records among objs that
// it does not hold in that version.
func (w *Watcher) readRecords(ctx context.Context, objs []store.ObjectInfo) error {
	if w.cfg.Index == nil {
		return nil
	}
	var (
		wg    sync.WaitGroup
		sem   = make(chan struct{}, recordReaders)
		errMu sync.Mutex
		first error
	)
	for _, o := range objs {
		id, rest, err := capture.OfKey(o.Key)
		if err != nil || rest != findings.RecordName || w.cfg.Index.RecordETag(id) == o.ETag {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			rec, etag, err := findings.Read(ctx, w.cfg.Store, id)
			switch {
			case err == nil:
				w.cfg.Index.SetRecord(rec, etag)
			case errors.Is(err, findings.ErrRecord):
				w.Enqueue(id, time.Time{}) // the runner replaces it
			case !errors.Is(err, store.ErrNotFound):
				errMu.Lock()
				first = cmp.Or(first, err)
				errMu.Unlock()
			}
		})
	}
	wg.Wait()
	return first
}

func (w *Watcher) readCursor(ctx context.Context) (cursorRecord, string, error) {
	rc, info, err := w.cfg.Store.Get(ctx, CursorKey)
	if errors.Is(err, store.ErrNotFound) {
		return cursorRecord{}, "", nil
	}
	if err != nil {
		return cursorRecord{}, "", fmt.Errorf("read listing cursor %s: %w", CursorKey, err)
	}
	defer rc.Close()
	var cur cursorRecord
	data, err := io.ReadAll(io.LimitReader(rc, 64<<10))
	if err == nil {
		err = json.Unmarshal(data, &cur)
	}
	if err != nil {
		// A damaged cursor only costs a listing from the start.
		w.log.Warn("listing cursor unreadable; starting from the beginning", "key", CursorKey, "err", err)
		return cursorRecord{}, info.ETag, nil
	}
	return cur, info.ETag, nil
}

func (w *Watcher) writeCursor(ctx context.Context, cur cursorRecord, etag string) error {
	data, err := json.Marshal(cur)
	if err != nil {
		return err
	}
	opts := store.PutOptions{ContentType: traces.MediaJSON, IfMatch: etag, IfNoneMatch: etag == ""}
	_, err = w.cfg.Store.Put(ctx, CursorKey, bytes.NewReader(data), int64(len(data)), opts)
	if errors.Is(err, store.ErrPrecondition) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("write listing cursor %s: %w", CursorKey, err)
	}
	return nil
}

// work processes due captures until ctx ends.
func (w *Watcher) work(ctx context.Context) {
	for {
		id, ok := w.next(ctx)
		if !ok {
			return
		}
		out, err := w.cfg.Processor.Process(ctx, id)
		w.done(ctx, id, out, err)
	}
}

// next waits for the earliest due capture not being processed.
func (w *Watcher) next(ctx context.Context) (capture.ID, bool) {
	for {
		w.mu.Lock()
		var (
			best  capture.ID
			due   time.Time
			found bool
			ready int
		)
		now := w.cfg.Now()
		for id, d := range w.pending {
			if w.running[id] {
				continue
			}
			if !d.After(now) {
				ready++
			}
			if !found || d.Before(due) {
				best, due, found = id, d, true
			}
		}
		if found && !due.After(now) {
			delete(w.pending, best)
			w.running[best] = true
			w.mu.Unlock()
			if ready > 1 {
				// More is due: pass the wake-up on to another worker.
				w.signal()
			}
			return best, true
		}
		wait := time.Hour
		if found {
			wait = due.Sub(now)
		}
		w.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return capture.ID{}, false
		case <-w.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// done schedules what follows an outcome.
func (w *Watcher) done(ctx context.Context, id capture.ID, out runner.Outcome, err error) {
	retry := time.Time{}
	switch {
	case err != nil && ctx.Err() != nil:
		// Shutting down: the next start lists the store again.
	case err != nil:
		w.processErrors.Inc()
		w.mu.Lock()
		w.failures[id]++
		n := w.failures[id]
		w.mu.Unlock()
		backoff := min(5*time.Second<<min(n-1, 6), 5*time.Minute)
		retry = w.cfg.Now().Add(backoff)
		w.log.Error("capture processing failed; will retry", "capture", id.String(), "attempt", n, "retry_in", backoff, "err", err)
	case out.Action == runner.ActionWaiting:
		retry = out.RetryAt
	case out.Action == runner.ActionBusy:
		// The other replica will usually have committed by then. Jitter
		// spreads replicas out.
		retry = out.RetryAt.Add(time.Duration(rand.Int64N(int64(time.Second))))
	}
	w.mu.Lock()
	delete(w.running, id)
	if err == nil {
		delete(w.failures, id)
	}
	again := w.again[id]
	delete(w.again, id)
	w.mu.Unlock()
	switch {
	case again:
		w.Enqueue(id, time.Time{})
	case !retry.IsZero():
		w.Enqueue(id, retry)
	}
}
