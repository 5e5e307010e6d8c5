package steps

import (
	"bytes"
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/loupe-dev/loupe/traces"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// clock is a settable time source for the tracker.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

func newTracker(cfg Config) (*Tracker, *clock) {
	c := &clock{now: t0}
	tr := New(cfg)
	tr.now = c.Now
	return tr, c
}

// markAll posts markers for iterations 0..len(durs) with the given step times.
func markAll(t *testing.T, tr *Tracker, job string, rank int, start time.Time, durs []time.Duration) time.Time {
	t.Helper()
	at := start
	for i := 0; i <= len(durs); i++ {
		if err := tr.Mark(Marker{Job: job, Rank: rank, PID: 100 + rank, Iteration: int64(i), Time: at}); err != nil {
			t.Fatal(err)
		}
		if i < len(durs) {
			at = at.Add(durs[i])
		}
	}
	return at
}

func ms(v ...int) []time.Duration {
	out := make([]time.Duration, len(v))
	for i, x := range v {
		out[i] = time.Duration(x) * time.Millisecond
	}
	return out
}

func TestStatsFromMarkers(t *testing.T) {
	for _, tc := range []struct {
		name           string
		window         int
		durs           []time.Duration
		steps          int64
		n              int
		mean, p50, p99 time.Duration
		cv, trend      float64
	}{
		{"constant", 50, ms(100, 100, 100, 100), 4, 4, 100 * time.Millisecond, 100 * time.Millisecond, 100 * time.Millisecond, 0, 0},
		{"two values", 50, ms(100, 300), 2, 2, 200 * time.Millisecond, 200 * time.Millisecond, 298 * time.Millisecond, math.Sqrt(2) / 2, 1},
		{"falling", 50, ms(300, 200, 100), 3, 3, 200 * time.Millisecond, 200 * time.Millisecond, 298 * time.Millisecond, 0.5, -1},
		// The window keeps only the last three: 200, 200, 200.
		{"window drops warm-up", 3, ms(900, 500, 200, 200, 200), 5, 3, 200 * time.Millisecond, 200 * time.Millisecond, 200 * time.Millisecond, 0, 0},
		{"single step", 50, ms(120), 1, 1, 120 * time.Millisecond, 120 * time.Millisecond, 120 * time.Millisecond, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, _ := newTracker(Config{Window: tc.window})
			markAll(t, tr, "j", 3, t0, tc.durs)
			st := tr.Stats("j")
			if len(st) != 1 {
				t.Fatalf("got %d ranks, want 1", len(st))
			}
			s := st[0]
			if s.Steps != tc.steps || s.Window != tc.n || s.Rank != 3 || s.PID != 103 || s.Source != traces.StepSourceMarker {
				t.Errorf("stats %+v: want steps %d window %d rank 3 pid 103 source marker", s, tc.steps, tc.n)
			}
			if s.Iteration != int64(len(tc.durs)) {
				t.Errorf("iteration %d, want %d", s.Iteration, len(tc.durs))
			}
			if s.Mean != tc.mean || s.P50 != tc.p50 || s.P99 != tc.p99 {
				t.Errorf("mean/p50/p99 = %v/%v/%v, want %v/%v/%v", s.Mean, s.P50, s.P99, tc.mean, tc.p50, tc.p99)
			}
			if math.Abs(s.CV-tc.cv) > 1e-9 || math.Abs(s.Trend-tc.trend) > 1e-9 {
				t.Errorf("cv %v trend %v, want %v %v", s.CV, s.Trend, tc.cv, tc.trend)
			}
		})
	}
}

func TestMarkerEdgeCases(t *testing.T) {
	tr, _ := newTracker(Config{})
	at := markAll(t, tr, "j", 0, t0, ms(100, 100))
	// A retried marker for the current iteration changes nothing.
	if err := tr.Mark(Marker{Job: "j", Iteration: 2, Time: at.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	// A gap (iteration 5 after 2) records no step but moves on.
	if err := tr.Mark(Marker{Job: "j", Iteration: 5, Time: at.Add(2 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Mark(Marker{Job: "j", Iteration: 6, Time: at.Add(2*time.Second + 100*time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	s := tr.Stats("j")[0]
	if s.Steps != 3 || s.Mean != 100*time.Millisecond || s.Iteration != 6 {
		t.Fatalf("after retry and gap: %+v, want 3 steps of 100ms at iteration 6", s)
	}
	// A restart (iteration 0 again) forgets the old run's step times.
	markAll(t, tr, "j", 0, at.Add(time.Minute), ms(400))
	s = tr.Stats("j")[0]
	if s.Steps != 1 || s.Mean != 400*time.Millisecond || s.Iteration != 1 {
		t.Fatalf("after restart: %+v, want 1 step of 400ms", s)
	}

	for _, bad := range []Marker{{Job: "", Iteration: 1}, {Job: "j", Rank: -1}, {Job: "j", Iteration: -4}} {
		if err := tr.Mark(bad); err == nil {
			t.Errorf("Mark(%+v) accepted", bad)
		}
	}
}

func nsteps(src string, rank int32, start time.Time, iter0 int64, durs []time.Duration) []traces.Step {
	var out []traces.Step
	at := start
	for i, d := range durs {
		out = append(out, traces.Step{Rank: rank, PID: 7, Iteration: iter0 + int64(i), StartNs: at.UnixNano(), EndNs: at.Add(d).UnixNano(), Source: src})
		at = at.Add(d)
	}
	return out
}

func TestSourcePreference(t *testing.T) {
	tr, clk := newTracker(Config{Stale: time.Minute})
	// NCCL periodicity alone: it is used.
	if err := tr.AddSteps("j", "", nsteps(traces.StepSourceNCCL, 0, t0, 0, ms(50, 50, 50))); err != nil {
		t.Fatal(err)
	}
	if s := tr.Stats("j")[0]; s.Source != traces.StepSourceNCCL || s.Mean != 50*time.Millisecond {
		t.Fatalf("nccl only: %+v", s)
	}
	// Kineto beats NCCL.
	if err := tr.AddSteps("j", "", nsteps(traces.StepSourceKineto, 0, t0, 10, ms(70, 70))); err != nil {
		t.Fatal(err)
	}
	if s := tr.Stats("j")[0]; s.Source != traces.StepSourceKineto || s.Mean != 70*time.Millisecond || s.Iteration != 12 {
		t.Fatalf("kineto over nccl: %+v", s)
	}
	// Markers beat both.
	markAll(t, tr, "j", 0, t0, ms(90, 90))
	if s := tr.Stats("j")[0]; s.Source != traces.StepSourceMarker || s.Mean != 90*time.Millisecond {
		t.Fatalf("marker over kineto: %+v", s)
	}
	// More NCCL steps do not displace the markers, and are not reported to observers.
	var seen []Stats
	tr.Observe(func(s Stats) { seen = append(seen, s) })
	if err := tr.AddSteps("j", "", nsteps(traces.StepSourceNCCL, 0, t0.Add(time.Second), 0, ms(50))); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 0 {
		t.Fatalf("observer told about a non-preferred lane: %+v", seen)
	}
	// Once markers and Kineto go quiet for longer than Stale, NCCL takes over.
	clk.now = clk.now.Add(2 * time.Minute)
	if err := tr.AddSteps("j", "", nsteps(traces.StepSourceNCCL, 0, t0.Add(2*time.Second), 0, ms(50))); err != nil {
		t.Fatal(err)
	}
	if s := tr.Stats("j")[0]; s.Source != traces.StepSourceNCCL || len(seen) != 1 {
		t.Fatalf("after markers went stale: %+v (observed %d)", s, len(seen))
	}
	if err := tr.AddSteps("j", "", []traces.Step{{Source: "guess", EndNs: 1}}); err == nil {
		t.Error("unknown source accepted")
	}
	if err := tr.AddSteps("j", "", []traces.Step{{Source: traces.StepSourceMarker, EndNs: 1}}); err == nil {
		t.Error("marker source accepted by AddSteps")
	}
}

func TestAddStepsOverlapAndRenumber(t *testing.T) {
	tr, _ := newTracker(Config{})
	// Periodicity detection numbers every batch from 0; batches overlap.
	first := nsteps(traces.StepSourceNCCL, 1, t0, 0, ms(10, 10, 10))
	second := nsteps(traces.StepSourceNCCL, 1, t0.Add(10*time.Millisecond), 0, ms(10, 10, 10, 10))
	for _, b := range [][]traces.Step{first, second, second} {
		if err := tr.AddSteps("j", "r1", b); err != nil {
			t.Fatal(err)
		}
	}
	got := tr.Steps("j", t0, t0.Add(time.Hour))
	if len(got) != 5 {
		t.Fatalf("got %d steps, want 5 distinct: %+v", len(got), got)
	}
	for i, s := range got {
		if s.Iteration != int64(i) || s.StartNs != t0.Add(time.Duration(i)*10*time.Millisecond).UnixNano() {
			t.Errorf("step %d = %+v", i, s)
		}
	}
	if _, run := tr.Ranks("j"); run != "r1" {
		t.Errorf("run %q, want r1", run)
	}
}

func TestStepsWindowAndRanks(t *testing.T) {
	tr, _ := newTracker(Config{})
	markAll(t, tr, "j", 0, t0, ms(100, 100, 100, 100))
	markAll(t, tr, "j", 1, t0, ms(100, 100, 100, 100))
	markAll(t, tr, "other", 0, t0, ms(100))
	got := tr.Steps("j", t0.Add(150*time.Millisecond), t0.Add(250*time.Millisecond))
	// Iterations 1 (100-200ms) and 2 (200-300ms) of both ranks overlap.
	if len(got) != 4 || got[0].Rank != 0 || got[0].Iteration != 1 || got[3].Rank != 1 || got[3].Iteration != 2 {
		t.Fatalf("window steps: %+v", got)
	}
	ranks, _ := tr.Ranks("j")
	if len(ranks) != 2 || ranks[0] != 100 || ranks[1] != 101 {
		t.Fatalf("ranks %v", ranks)
	}
	if it, ok := tr.Iteration("j"); !ok || it != 4 {
		t.Fatalf("iteration %d %v", it, ok)
	}
	if _, ok := tr.Iteration("nope"); ok {
		t.Fatal("unknown job reported")
	}
}

func TestWaitIteration(t *testing.T) {
	tr, _ := newTracker(Config{})
	done := make(chan error, 1)
	go func() {
		_, err := tr.WaitIteration(context.Background(), "j", 3)
		done <- err
	}()
	markAll(t, tr, "j", 0, t0, ms(10, 10, 10))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := tr.WaitIteration(ctx, "j", 99); !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "iteration 99") {
		t.Fatalf("cancelled wait: %v", err)
	}
}

func TestMaxRanks(t *testing.T) {
	tr, clk := newTracker(Config{MaxRanks: 2, Forget: time.Minute})
	for r := range 2 {
		if err := tr.Mark(Marker{Job: "j", Rank: r}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tr.Mark(Marker{Job: "j", Rank: 2}); !errors.Is(err, ErrTooManyRanks) {
		t.Fatalf("third rank: %v", err)
	}
	clk.now = clk.now.Add(2 * time.Minute) // the first two are forgotten
	if err := tr.Mark(Marker{Job: "j", Rank: 2}); err != nil {
		t.Fatalf("after forget: %v", err)
	}
}

func TestMetrics(t *testing.T) {
	tr, _ := newTracker(Config{})
	markAll(t, tr, `we"ird\job`, 2, t0, ms(100, 300))
	set := metrics.NewSet()
	tr.Register(set)
	var b bytes.Buffer
	set.WritePrometheus(&b)
	out := b.String()
	for _, want := range []string{
		`loupe_step_time_seconds{job="we\"ird\\job",rank="2",quantile="0.5"} 0.2` + "\n",
		`loupe_step_time_seconds{job="we\"ird\\job",rank="2",quantile="0.99"} 0.298` + "\n",
		`loupe_step_time_seconds_sum{job="we\"ird\\job",rank="2"} 0.4` + "\n",
		`loupe_step_time_seconds_count{job="we\"ird\\job",rank="2"} 2` + "\n",
		`loupe_step_iteration{job="we\"ird\\job",rank="2"} 2` + "\n",
		`loupe_steps_total{job="we\"ird\\job",rank="2",source="marker"} 2` + "\n",
		`loupe_step_time_cv{job="we\"ird\\job",rank="2"} 0.7071`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %q:\n%s", want, out)
		}
	}
}

func BenchmarkMark(b *testing.B) {
	tr := New(Config{})
	at := t0
	b.ReportAllocs()
	for i := range b.N {
		at = at.Add(100 * time.Millisecond)
		if err := tr.Mark(Marker{Job: "j", Rank: i % 8, Iteration: int64(i / 8), Time: at}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestWaitIterationReturnsWhenItBegan(t *testing.T) {
	tr, _ := newTracker(Config{})
	past := t0.Add(-time.Hour)
	if err := tr.AddSteps("j", "", nsteps(traces.StepSourceNCCL, 0, past, 0, ms(10, 10, 10, 10))); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		iter int64
		want time.Time
	}{{1, past.Add(10 * time.Millisecond)}, {4, past.Add(40 * time.Millisecond)}} {
		got, err := tr.WaitIteration(context.Background(), "j", tc.iter)
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("WaitIteration(%d) = %v, %v; want %v", tc.iter, got, err, tc.want)
		}
	}
}
