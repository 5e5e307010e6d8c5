package watcher_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/aggregator/internal/aggtest"
	"github.com/loupe-dev/loupe/aggregator/lease"
	"github.com/loupe-dev/loupe/aggregator/runner"
	"github.com/loupe-dev/loupe/aggregator/watcher"
	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
	"github.com/loupe-dev/loupe/traces/store/miniotest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// replica is one aggregator replica's watcher, runner and index.
type replica struct {
	w  *watcher.Watcher
	ix *findings.Index
}

func newReplica(st store.Store, owner string, count *aggtest.Counter, sweep time.Duration) *replica {
	return newReplicaTimeout(st, owner, count, sweep, time.Hour)
}

func newReplicaTimeout(st store.Store, owner string, count *aggtest.Counter, sweep, partition time.Duration) *replica {
	list := []*analyzers.Analyzer{count.Analyzer}
	ix := findings.NewIndex(runner.Versions(list))
	r := runner.New(runner.Config{
		Store: st, Analyzers: list, Index: ix, Logger: quiet, PartitionTimeout: partition,
		Leases: &lease.Manager{Store: st, Owner: owner, TTL: 4 * time.Second},
	})
	w := watcher.New(watcher.Config{
		Store: st, Processor: r, Index: ix, Bucket: "loupe", Prefix: "pre",
		SweepInterval: sweep, PageSize: 50, Workers: 4, Logger: quiet,
	})
	return &replica{w: w, ix: ix}
}

func (r *replica) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { r.w.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// waitFor polls cond until it holds or 30 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func dirStore(t *testing.T) store.Store {
	st, err := store.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// deletePrefix deletes every object under prefix, as retention would.
func deletePrefix(t *testing.T, st store.Store, prefix string) {
	t.Helper()
	ctx := context.Background()
	objs, _, err := st.List(ctx, prefix, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		st.Delete(ctx, o.Key)
	}
}

func id(n int) capture.ID {
	return capture.ID{Cluster: "c1", Job: "job1", Run: "r1", Capture: fmt.Sprintf("cap%03d", n)}
}

func putCapture(t *testing.T, st store.Store, n, hosts int) {
	for h := range hosts {
		aggtest.Put(t, st, aggtest.Manifest("job1", id(n).Capture, fmt.Sprintf("node-%d", h), hosts, h),
			map[string][]byte{aggtest.PartName: []byte(fmt.Sprintf("capture %d host %d", n, h))})
	}
}

func TestAcceptFilters(t *testing.T) {
	st := dirStore(t)
	count := aggtest.NewCounter("count", "1")
	r := newReplica(st, "a", count, -1)
	evs := []watcher.Event{
		{Name: "s3:ObjectCreated:Put", Bucket: "loupe", Key: "pre/v1/c1/job1/r1/cap001/node-0/manifest.json"},
		{Name: "s3:ObjectCreated:Put", Bucket: "other", Key: "pre/v1/c1/job1/r1/cap002/node-0/manifest.json"},
		{Name: "s3:ObjectCreated:Put", Bucket: "loupe", Key: "v1/c1/job1/r1/cap003/node-0/manifest.json"},
		{Name: "s3:ObjectRemoved:Delete", Bucket: "loupe", Key: "pre/v1/c1/job1/r1/cap004/node-0/manifest.json"},
		{Name: "s3:ObjectCreated:Put", Bucket: "loupe", Key: "pre/v1/c1/job1/r1/cap005/node-0/steps.parquet"},
		{Name: "s3:ObjectCreated:Put", Bucket: "loupe", Key: "pre/v1/c1/job1/r1/cap006/_findings/findings.json"},
		{Name: "s3:ObjectCreated:Put", Bucket: "loupe", Key: "pre/v1/c1/job1/r1/cap 7/node-0/manifest.json"},
	}
	if n := r.w.Accept(evs); n != 1 || r.w.Queued() != 1 {
		t.Fatalf("accepted %d, queued %d; want only the manifest in bucket loupe under pre/", n, r.w.Queued())
	}
}

// TestNotificationAndTimeout runs a replica without periodic listing: a
// capture is found at start, another through a notification, and a
// capture with a rank missing is analyzed once the timeout passes.
func TestStartupListingAndNotification(t *testing.T) {
	st := dirStore(t)
	count := aggtest.NewCounter("count", "1")
	putCapture(t, st, 1, 2)
	r := newReplica(st, "a", count, -1)
	r.run(t)
	waitFor(t, "the capture present at start", func() bool { return r.ix.Done(id(1)) })
	waitFor(t, "the index to be ready", r.w.Ready)

	putCapture(t, st, 2, 2)
	if r.ix.Done(id(2)) {
		t.Fatal("capture 2 analyzed before any notification")
	}
	r.w.Accept([]watcher.Event{{Name: "s3:ObjectCreated:Put", Bucket: "loupe", Key: "pre/" + id(2).Prefix() + "node-1/manifest.json"}})
	waitFor(t, "the notified capture", func() bool { return r.ix.Done(id(2)) })
	if got := count.All(); got[id(1).String()] != 1 || got[id(2).String()] != 1 || len(got) != 2 {
		t.Fatalf("runs %v, want one per capture", got)
	}
}

// TestSweepCursor: the periodic listing finds captures nobody announced,
// and keeps its position in the store.
func TestSweepCursor(t *testing.T) {
	st := dirStore(t)
	count := aggtest.NewCounter("count", "1")
	r := newReplica(st, "a", count, 30*time.Millisecond)
	r.run(t)
	waitFor(t, "the index to be ready", r.w.Ready)
	for n := range 20 {
		putCapture(t, st, n, 1)
	}
	waitFor(t, "every capture to be swept up", func() bool {
		for n := range 20 {
			if !r.ix.Done(id(n)) {
				return false
			}
		}
		return true
	})
	rc, _, err := st.Get(context.Background(), watcher.CursorKey)
	if err != nil {
		t.Fatalf("the listing cursor is not in the store: %v", err)
	}
	rc.Close()
	for n, runs := range count.All() {
		if runs != 1 {
			t.Errorf("capture %s analyzed %d times", n, runs)
		}
	}
}

// TestReplicasOnMinIO: two replicas on one real MinIO analyze 100 job
// captures of 2 hosts each; every capture is analyzed exactly once.
func TestReplicasOnMinIO(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping 100 captures on MinIO")
	}
	st := miniotest.Start(t).Store(t)
	const captures = 100
	count := aggtest.NewCounter("count", "1")
	a := newReplica(st, "replica-a", count, time.Second)
	b := newReplica(st, "replica-b", count, time.Second)
	a.run(t)
	b.run(t)
	var wg sync.WaitGroup
	for n := range captures {
		wg.Go(func() {
			putCapture(t, st, n, 2)
			// Both replicas hear of every capture, as if the store's
			// notifications were fanned out to both: maximum contention.
			ev := []watcher.Event{{Name: "s3:ObjectCreated:Put", Bucket: "loupe", Key: "pre/" + id(n).Prefix() + "node-1/manifest.json"}}
			a.w.Accept(ev)
			b.w.Accept(ev)
		})
	}
	wg.Wait()
	waitFor(t, "all captures to be analyzed", func() bool {
		for n := range captures {
			if !a.ix.Done(id(n)) && !b.ix.Done(id(n)) {
				return false
			}
		}
		return true
	})
	// Let any duplicate work that is still in flight show itself.
	waitFor(t, "both queues to drain", func() bool { return a.w.Queued() == 0 && b.w.Queued() == 0 })
	runs := count.All()
	if len(runs) != captures {
		t.Fatalf("%d captures analyzed, want %d", len(runs), captures)
	}
	analysts := map[string]int{}
	for n := range captures {
		if got := runs[id(n).String()]; got != 1 {
			t.Errorf("capture %s analyzed %d times, want exactly once", id(n), got)
		}
		rec, _, err := findings.Read(context.Background(), st, id(n))
		if err != nil {
			t.Fatal(err)
		}
		if len(rec.Findings) != 2 {
			t.Errorf("capture %s: %d findings, want 2", id(n), len(rec.Findings))
		}
		analysts[rec.Analyst]++
	}
	t.Logf("captures analyzed per replica: %v", analysts)
	// Each replica's index learns, through its listing, of the findings
	// the other replica committed.
	waitFor(t, "both indexes to hold every capture", func() bool {
		for n := range captures {
			if !a.ix.Done(id(n)) || !b.ix.Done(id(n)) {
				return false
			}
		}
		return true
	})
}

// TestPartialAfterTimeout: a capture with a rank missing waits, then is
// analyzed as partial, naming the rank, once the partition timeout passes;
// the rank arriving late brings a complete analysis.
func TestPartialAfterTimeout(t *testing.T) {
	st := dirStore(t)
	count := aggtest.NewCounter("count", "1")
	r := newReplicaTimeout(st, "a", count, -1, 3*time.Second)
	r.run(t)
	waitFor(t, "the index to be ready", r.w.Ready)
	aggtest.Put(t, st, aggtest.Manifest("job1", id(1).Capture, "node-0", 2, 0), map[string][]byte{aggtest.PartName: []byte("rank 0")})
	notify := func(host string) {
		r.w.Accept([]watcher.Event{{Name: "s3:ObjectCreated:Put", Bucket: "loupe", Key: "pre/" + id(1).Prefix() + host + "/manifest.json"}})
	}
	notify("node-0")
	waitFor(t, "the capture to be seen waiting", func() bool {
		e, ok := r.ix.Capture(id(1))
		return ok && e.Status == findings.StatusWaiting
	})
	if count.Runs(id(1).String()) != 0 {
		t.Fatal("analyzed before the timeout")
	}
	waitFor(t, "the partial analysis", func() bool { return r.ix.Done(id(1)) })
	e, _ := r.ix.Capture(id(1))
	rec, _, err := findings.Read(context.Background(), st, id(1))
	if err != nil || e.Status != findings.StatusPartial || !rec.Partial || len(rec.MissingRanks) != 1 || rec.MissingRanks[0] != 1 {
		t.Fatalf("after the timeout: status %s, record %+v, %v; want partial, rank 1 missing", e.Status, rec, err)
	}
	aggtest.Put(t, st, aggtest.Manifest("job1", id(1).Capture, "node-1", 2, 1), map[string][]byte{aggtest.PartName: []byte("rank 1")})
	notify("node-1")
	waitFor(t, "the complete analysis", func() bool {
		e, _ := r.ix.Capture(id(1))
		return e.Status == findings.StatusAnalyzed
	})
	if got := count.Runs(id(1).String()); got != 2 {
		t.Fatalf("%d runs, want 2 (partial, then complete)", got)
	}
}

// BenchmarkRebuild measures the start-up listing that rebuilds the index
// of a directory store holding 200 analyzed captures.
func BenchmarkRebuild(b *testing.B) {
	st, err := store.NewDir(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	const captures = 200
	for n := range captures {
		m := aggtest.Put(b, st, aggtest.Manifest("job1", id(n).Capture, "node-0", 1, 0), nil)
		key := traces.KeyOf(m).Object(traces.ManifestName)
		rec := &findings.Record{Capture: id(n), Manifests: []string{key}, AnalyzerVersions: map[string]string{"count": "1"},
			Findings: []traces.Finding{{ID: "f", Analyzer: "count", Severity: traces.SeverityInfo}}}
		if _, err := findings.Write(context.Background(), st, rec, ""); err != nil {
			b.Fatal(err)
		}
	}
	count := aggtest.NewCounter("count", "1")
	for b.Loop() {
		r := newReplica(st, "bench", count, -1)
		if err := r.w.Rebuild(context.Background()); err != nil {
			b.Fatal(err)
		}
		if r.w.Queued() != 0 || !r.ix.Done(id(captures-1)) {
			b.Fatalf("rebuild queued %d captures", r.w.Queued())
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/captures, "µs/capture")
}

// TestRebuildDropsDeleted: a capture that retention deleted from the store
// leaves the index at the next full listing.
func TestRebuildDropsDeleted(t *testing.T) {
	ctx := context.Background()
	st := dirStore(t)
	count := aggtest.NewCounter("count", "1")
	putCapture(t, st, 1, 1)
	putCapture(t, st, 2, 1)
	r := newReplica(st, "a", count, -1)
	r.run(t)
	waitFor(t, "both captures", func() bool { return r.ix.Done(id(1)) && r.ix.Done(id(2)) })
	deletePrefix(t, st, id(1).Prefix())
	if err := r.w.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.ix.Capture(id(1)); ok {
		t.Fatal("deleted capture still in the index")
	}
	if !r.ix.Done(id(2)) {
		t.Fatal("the other capture left the index")
	}
}

// TestWorkersRunInParallel: captures queued together are analyzed at the
// same time, one per worker.
func TestWorkersRunInParallel(t *testing.T) {
	st := dirStore(t)
	count := aggtest.NewCounter("count", "1")
	count.Block = make(chan struct{})
	count.Started = make(chan string, 3)
	r := newReplica(st, "a", count, -1) // 4 workers
	r.run(t)
	waitFor(t, "the index to be ready", r.w.Ready)
	time.Sleep(50 * time.Millisecond) // the workers are idle
	var evs []watcher.Event
	for n := range 3 {
		putCapture(t, st, n, 1)
		evs = append(evs, watcher.Event{Name: "s3:ObjectCreated:Put", Bucket: "loupe", Key: "pre/" + id(n).Prefix() + "node-0/manifest.json"})
	}
	r.w.Accept(evs) // all at once
	defer close(count.Block)
	for range 3 {
		select {
		case <-count.Started:
		case <-time.After(10 * time.Second):
			t.Fatal("captures were not analyzed in parallel: a blocked analysis held up the others")
		}
	}
}

// TestContinuousProfilesCatalogued: a continuous profile bundle is never
// analyzed; the listing and notifications put it into the index's profile
// catalog, and a listing after it was deleted takes it out.
func TestContinuousProfilesCatalogued(t *testing.T) {
	ctx := context.Background()
	st := dirStore(t)
	count := aggtest.NewCounter("count", "1")
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	cont := func(min int) string {
		return traces.ContinuousCaptureID(t0.Add(time.Duration(min)*time.Minute), time.Minute)
	}
	aggtest.Put(t, st, aggtest.Manifest("job1", cont(0), "node-0", 1, 0), map[string][]byte{aggtest.PartName: []byte("p")})
	putCapture(t, st, 1, 1)
	r := newReplica(st, "a", count, -1)
	r.run(t)
	waitFor(t, "the capture", func() bool { return r.ix.Done(id(1)) })
	waitFor(t, "the index to be ready", r.w.Ready)
	q := findings.ProfileQuery{Job: "job1", From: t0, To: t0.Add(time.Hour)}
	if got := r.ix.Profiles(q); len(got) != 1 || got[0].Host != "node-0" || !got[0].Start.Equal(t0) || got[0].End != t0.Add(time.Minute) {
		t.Fatalf("profiles after the listing: %+v", got)
	}
	aggtest.Put(t, st, aggtest.Manifest("job1", cont(1), "node-0", 1, 0), map[string][]byte{aggtest.PartName: []byte("p")})
	key := "pre/" + traces.Key{Cluster: "c1", Job: "job1", Run: "r1", Capture: cont(1), Host: "node-0"}.Object(traces.ManifestName)
	if n := r.w.Accept([]watcher.Event{{Name: "s3:ObjectCreated:Put", Bucket: "loupe", Key: key}}); n != 1 {
		t.Errorf("notification of a continuous profile: %d relevant", n)
	}
	if got := r.ix.Profiles(q); len(got) != 2 {
		t.Errorf("profiles after the notification: %+v", got)
	}
	if got := count.All(); len(got) != 1 {
		t.Errorf("analyzer runs %v: a continuous profile was analyzed", got)
	}
	deletePrefix(t, st, traces.Key{Cluster: "c1", Job: "job1", Run: "r1", Capture: cont(0)}.CapturePrefix())
	if err := r.w.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	if got := r.ix.Profiles(q); len(got) != 1 || !got[0].Start.Equal(t0.Add(time.Minute)) {
		t.Errorf("profiles after deleting the first: %+v", got)
	}
}
