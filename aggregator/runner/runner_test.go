package runner_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/aggregator/internal/aggtest"
	"github.com/loupe-dev/loupe/aggregator/lease"
	"github.com/loupe-dev/loupe/aggregator/runner"
	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces/store"
)

type env struct {
	st    store.Store
	clock *aggtest.Clock
	count *aggtest.Counter
}

func newEnv(t *testing.T) *env {
	st, err := store.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &env{st: st, clock: aggtest.NewClock(time.Now()), count: aggtest.NewCounter("count", "1")}
}

func (e *env) runner(owner string, list ...*analyzers.Analyzer) *runner.Runner {
	if list == nil {
		list = []*analyzers.Analyzer{e.count.Analyzer}
	}
	return runner.New(runner.Config{
		Store: e.st, Analyzers: list, Now: e.clock.Now, PartitionTimeout: 10 * time.Minute,
		Leases: &lease.Manager{Store: e.st, Owner: owner, TTL: time.Minute, Now: e.clock.Now},
	})
}

func (e *env) host(t *testing.T, capID, host string, world int, ranks ...int) {
	aggtest.Put(t, e.st, aggtest.Manifest("job1", capID, host, world, ranks...), map[string][]byte{aggtest.PartName: []byte("rows of " + host)})
}

var cap1 = capture.ID{Cluster: "c1", Job: "job1", Run: "r1", Capture: "cap1"}

func TestPartitionCheck(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		hosts   [][]int // ranks per host; world size 4
		advance time.Duration
		want    string
		partial bool
		missing []int
	}{
		{name: "complete", hosts: [][]int{{0, 1}, {2, 3}}, want: runner.ActionAnalyzed},
		{name: "rank missing before timeout", hosts: [][]int{{0, 1}, {2}}, advance: 9 * time.Minute, want: runner.ActionWaiting, missing: []int{3}},
		{name: "rank missing after timeout", hosts: [][]int{{0, 1}, {2}}, advance: 11 * time.Minute, want: runner.ActionAnalyzed, partial: true, missing: []int{3}},
		{name: "host missing after timeout", hosts: [][]int{{2, 3}}, advance: 11 * time.Minute, want: runner.ActionAnalyzed, partial: true, missing: []int{0, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			for i, ranks := range tt.hosts {
				e.host(t, "cap1", string(rune('a'+i))+"-node", 4, ranks...)
			}
			e.clock.Advance(tt.advance)
			out, err := e.runner("r1").Process(ctx, cap1)
			if err != nil {
				t.Fatal(err)
			}
			if out.Action != tt.want || out.Partial != tt.partial || !slices.Equal(out.MissingRanks, tt.missing) {
				t.Fatalf("outcome %+v, want action %s partial %v missing %v", out, tt.want, tt.partial, tt.missing)
			}
			rec, _, err := findings.Read(ctx, e.st, cap1)
			if tt.want == runner.ActionWaiting {
				if !errors.Is(err, store.ErrNotFound) || e.count.Runs(cap1.String()) != 0 {
					t.Fatalf("waiting capture was analyzed: record err %v, runs %d", err, e.count.Runs(cap1.String()))
				}
				if d := out.RetryAt.Sub(e.clock.Now()); d <= 0 || d > time.Minute+time.Second {
					t.Fatalf("retry in %v, want about 1m (at the timeout)", d)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rec.Partial != tt.partial || !slices.Equal(rec.MissingRanks, tt.missing) || len(rec.Findings) != len(tt.hosts) {
				t.Fatalf("record partial %v missing %v with %d findings, want %v %v %d", rec.Partial, rec.MissingRanks, len(rec.Findings), tt.partial, tt.missing, len(tt.hosts))
			}
			for _, f := range rec.Findings {
				if f.Partial != tt.partial || !slices.Equal(f.MissingRanks, tt.missing) || len(f.Lineage.Inputs) != len(tt.hosts) || f.Lineage.AnalyzerVersions["count"] != "1" {
					t.Fatalf("finding %+v lacks partial flag, missing ranks or lineage", f)
				}
			}
		})
	}
}

func TestOncePerVersion(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.host(t, "cap1", "node-a", 2, 0, 1)
	r := e.runner("r1")
	var committed []*findings.Record
	r.OnCommit(func(_ context.Context, rec *findings.Record) { committed = append(committed, rec) })
	for i, want := range []string{runner.ActionAnalyzed, runner.ActionCurrent, runner.ActionCurrent} {
		out, err := r.Process(ctx, cap1)
		if err != nil || out.Action != want {
			t.Fatalf("round %d: %+v, %v; want %s", i, out, err, want)
		}
	}
	if len(committed) != 1 || len(committed[0].Findings) != 1 {
		t.Fatalf("commit hook saw %d commits, want 1", len(committed))
	}
	// A new version is not re-run by Process, only by Backfill, which keeps
	// the other analyzers' findings.
	other := aggtest.NewCounter("other", "1")
	count2 := aggtest.NewCounter("count", "2")
	r2 := e.runner("r2", count2.Analyzer, other.Analyzer)
	if out, err := r2.Process(ctx, cap1); err != nil || out.Action != runner.ActionCurrent {
		t.Fatalf("process after version change: %+v, %v; want current", out, err)
	}
	out, err := r2.Backfill(ctx, cap1)
	if err != nil || out.Action != runner.ActionAnalyzed || !slices.Equal(out.Ran, []string{"count", "other", analyzers.RootCause.Name}) {
		t.Fatalf("backfill: %+v, %v", out, err)
	}
	rec, _, err := findings.Read(ctx, e.st, cap1)
	if err != nil {
		t.Fatal(err)
	}
	if rec.AnalyzerVersions["count"] != "2" || rec.AnalyzerVersions["other"] != "1" || len(rec.Findings) != 2 {
		t.Fatalf("after backfill: versions %v, %d findings", rec.AnalyzerVersions, len(rec.Findings))
	}
	if out, err := r2.Backfill(ctx, cap1); err != nil || out.Action != runner.ActionCurrent {
		t.Fatalf("second backfill: %+v, %v; want current", out, err)
	}
	if e.count.Runs(cap1.String()) != 1 || count2.Runs(cap1.String()) != 1 || other.Runs(cap1.String()) != 1 {
		t.Fatalf("runs: v1 %d, v2 %d, other %d; want 1 each", e.count.Runs(cap1.String()), count2.Runs(cap1.String()), other.Runs(cap1.String()))
	}
}

func TestLateRankReanalyzes(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.host(t, "cap1", "node-a", 2, 0)
	e.clock.Advance(11 * time.Minute)
	r := e.runner("r1")
	if out, err := r.Process(ctx, cap1); err != nil || !out.Partial {
		t.Fatalf("first: %+v, %v; want partial", out, err)
	}
	e.host(t, "cap1", "node-b", 2, 1)
	out, err := r.Process(ctx, cap1)
	if err != nil || out.Action != runner.ActionAnalyzed || out.Partial || len(out.MissingRanks) != 0 {
		t.Fatalf("after the late rank: %+v, %v; want a complete analysis", out, err)
	}
	rec, _, err := findings.Read(ctx, e.st, cap1)
	if err != nil || rec.Partial || len(rec.Findings) != 2 || len(rec.Manifests) != 2 {
		t.Fatalf("record %+v, %v", rec, err)
	}
}

// TestRestartMidRun stops an analysis in flight (the aggregator dies) and
// has a new runner pick the capture up: nothing is committed twice, and
// the findings are not duplicated.
func TestRestartMidRun(t *testing.T) {
	e := newEnv(t)
	e.host(t, "cap1", "node-a", 2, 0, 1)
	e.count.Block = make(chan struct{})
	e.count.Started = make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := e.runner("first").Process(ctx, cap1)
		errc <- err
	}()
	<-e.count.Started
	cancel() // the process dies mid-run
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted run: %v, want context.Canceled", err)
	}
	if _, _, err := findings.Read(context.Background(), e.st, cap1); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("interrupted run committed a record: %v", err)
	}
	e.count.Block, e.count.Started = nil, nil
	// The lease was released on the way out; a restarted replica takes over
	// without waiting for its expiry.
	r := e.runner("second")
	for range 2 {
		if _, err := r.Process(context.Background(), cap1); err != nil {
			t.Fatal(err)
		}
	}
	rec, _, err := findings.Read(context.Background(), e.st, cap1)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	for _, f := range rec.Findings {
		ids[f.ID]++
	}
	if len(rec.Findings) != 1 || len(ids) != 1 {
		t.Fatalf("findings after restart: %d (%v), want 1 unique", len(rec.Findings), ids)
	}
	if rec.Analyst != "second" {
		t.Fatalf("record written by %q, want second", rec.Analyst)
	}
}

// TestLeaseExcludes: while one replica holds the lease, another backs off
// until the lease would expire, and takes over an expired one.
func TestLeaseExcludes(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.host(t, "cap1", "node-a", 1, 0)
	m := &lease.Manager{Store: e.st, Owner: "crashed", TTL: time.Minute, Now: e.clock.Now}
	if _, err := m.Acquire(ctx, findings.LeaseKey(cap1)); err != nil {
		t.Fatal(err)
	}
	r := e.runner("live")
	out, err := r.Process(ctx, cap1)
	if err != nil || out.Action != runner.ActionBusy || !out.RetryAt.Equal(e.clock.Now().Add(15*time.Second)) {
		t.Fatalf("under a foreign lease: %+v, %v; want busy, retry in a quarter TTL", out, err)
	}
	e.clock.Advance(50 * time.Second)
	if out, err := r.Process(ctx, cap1); err != nil || out.Action != runner.ActionBusy || !out.RetryAt.Equal(e.clock.Now().Add(10*time.Second).UTC()) {
		t.Fatalf("near expiry: %+v, %v; want busy, retry at expiry", out, err)
	}
	e.clock.Advance(11 * time.Second)
	if out, err := r.Process(ctx, cap1); err != nil || out.Action != runner.ActionAnalyzed {
		t.Fatalf("after expiry: %+v, %v; want analyzed", out, err)
	}
}

func TestAnalyzerFailureRecorded(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.host(t, "cap1", "node-a", 1, 0)
	bad := &analyzers.Analyzer{Name: "bad", Version: "1", Doc: "fails", Run: func(*analyzers.Pass) error { return errors.New("boom") }}
	out, err := e.runner("r", e.count.Analyzer, bad).Process(ctx, cap1)
	if err != nil || out.Action != runner.ActionAnalyzed {
		t.Fatalf("%+v, %v", out, err)
	}
	rec, _, err := findings.Read(ctx, e.st, cap1)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := rec.AnalyzerVersions["bad"]; ok || len(rec.Errors) != 1 || len(rec.Findings) != 1 {
		t.Fatalf("record versions %v errors %v findings %d: the failed analyzer must be left for backfill", rec.AnalyzerVersions, rec.Errors, len(rec.Findings))
	}
}

// BenchmarkProcess measures the runner's own cost per capture on a
// directory store (load 8 host manifests, lease, record, commit) around a
// trivial analyzer.
func BenchmarkProcess(b *testing.B) {
	st, err := store.NewDir(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	count := aggtest.NewCounter("count", "1")
	r := runner.New(runner.Config{Store: st, Analyzers: []*analyzers.Analyzer{count.Analyzer}, Logger: quiet,
		Leases: &lease.Manager{Store: st, Owner: "bench", TTL: time.Minute}})
	n := 0
	for b.Loop() {
		b.StopTimer()
		id := capture.ID{Cluster: "c1", Job: "job1", Run: "r1", Capture: "cap" + strconv.Itoa(n)}
		n++
		for h := range 8 {
			aggtest.Put(b, st, aggtest.Manifest("job1", id.Capture, "node-"+strconv.Itoa(h), 8, h), map[string][]byte{aggtest.PartName: []byte("x")})
		}
		b.StartTimer()
		if out, err := r.Process(context.Background(), id); err != nil || out.Action != runner.ActionAnalyzed {
			b.Fatalf("%+v %v", out, err)
		}
	}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// A record from before the correlation step (or from an older version of
// it) is re-correlated by Backfill without running the analyzers again.
func TestBackfillRecorrelates(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.host(t, "cap1", "node-a", 1, 0)
	r := e.runner("r1")
	if out, err := r.Process(ctx, cap1); err != nil || out.Action != runner.ActionAnalyzed {
		t.Fatalf("process: %+v, %v", out, err)
	}
	rec, etag, err := findings.Read(ctx, e.st, cap1)
	if err != nil || rec.AnalyzerVersions[analyzers.RootCause.Name] != analyzers.RootCause.Version {
		t.Fatalf("record %+v, %v: want the correlation step's version in it", rec, err)
	}
	delete(rec.AnalyzerVersions, analyzers.RootCause.Name)
	if _, err := findings.Write(ctx, e.st, rec, etag); err != nil {
		t.Fatal(err)
	}
	out, err := r.Backfill(ctx, cap1)
	if err != nil || out.Action != runner.ActionAnalyzed || !slices.Equal(out.Ran, []string{analyzers.RootCause.Name}) || out.Findings != 1 {
		t.Fatalf("backfill: %+v, %v; want only the correlation re-run, the finding kept", out, err)
	}
	if n := e.count.Runs(cap1.String()); n != 1 {
		t.Errorf("the analyzer ran %d times, want once", n)
	}
	if out, err := r.Backfill(ctx, cap1); err != nil || out.Action != runner.ActionCurrent {
		t.Errorf("second backfill: %+v, %v; want current", out, err)
	}
}
