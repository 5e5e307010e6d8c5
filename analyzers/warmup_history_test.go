package analyzers

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/agent/steps"
	"github.com/loupe-dev/loupe/traces"
)

// rampThenFlat warms up linearly from 1 s to 300 ms over the first warm
// steps, then holds 300 ms, with 3 % noise.
func rampThenFlat(seed uint64, warm int) func(i int64) float64 {
	rng := rand.New(rand.NewPCG(seed, 2))
	return func(i int64) float64 {
		v := 0.3
		if i < int64(warm) {
			v = 1.0 - 0.7*float64(i)/float64(warm)
		}
		return noisy(rng, v, 0.03)
	}
}

// agentHost feeds the agent's own step tracker the markers of ranks from
// iteration from to to-1, step times from dur (seconds), and returns the
// host's bundle as the agent writes it: the run's step history and the
// window's steps from iteration winFrom to winTo.
func agentHost(t testing.TB, name string, cfg steps.Config, ranks []int, pidOf func(rank int) int, from, to int64, start time.Time, dur func(i int64) float64, winFrom, winTo int64, tr *steps.Tracker) (hostBundle, time.Time) {
	t.Helper()
	if tr == nil {
		tr = steps.New(cfg)
	}
	at := start
	var winStart, winEnd time.Time
	for i := from; i < to; i++ {
		for _, r := range ranks {
			if err := tr.Mark(steps.Marker{Job: "train", Run: "r1", Rank: r, PID: pidOf(r), Iteration: i, Time: at}); err != nil {
				t.Fatal(err)
			}
		}
		if i == winFrom {
			winStart = at
		}
		if i == winTo {
			winEnd = at
		}
		at = at.Add(time.Duration(dur(i) * float64(time.Second)))
	}
	hist, _ := tr.History("train")
	return hostBundle{name: name, ranks: ranks, start: winStart, seconds: winEnd.Sub(winStart).Seconds(), steps: tr.Steps("train", winStart, winEnd), history: hist}, at
}

func stableAt(in *Input, iter int64) {
	for i := range in.Hosts {
		in.Hosts[i].Manifest.Trigger = traces.Trigger{Kind: traces.TriggerStableIteration, StartIteration: iter, Iterations: 20}
	}
}

// A run that warms up over its first 200 steps and is captured at
// iteration 550: the window's steps are all steady, but the step history
// the agent keeps from the first step shows the warm-up.
func TestWarmupFromStepHistory(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  steps.Config
	}{
		{"full resolution", steps.Config{}},
		// Most of the warm-up falls in the merged tail: spans of 4 steps.
		{"merged spans", steps.Config{HistoryHead: 100, HistorySpans: 200}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h0, _ := agentHost(t, "h0", tc.cfg, []int{0, 1}, pid, 0, 571, t0, rampThenFlat(1, 200), 550, 570, nil)
			h1, _ := agentHost(t, "h1", tc.cfg, []int{2, 3}, pid, 0, 571, t0, rampThenFlat(2, 200), 550, 570, nil)
			merged := 0
			for _, sp := range h0.history {
				if sp.Steps > 1 {
					merged++
				}
			}
			if wantMerged := tc.cfg.HistoryHead > 0; (merged > 0) != wantMerged {
				t.Fatalf("%d merged rows in the history, want merged rows: %v", merged, wantMerged)
			}
			in := writeCapture(t, "", h0, h1)
			stableAt(in, 550)
			fs := run(t, Warmup, in)
			if len(fs) != 1 {
				t.Fatalf("findings %+v", fs)
			}
			ev := evidence(fs[0])
			if w := ev["warmup_iterations"]; math.Abs(w-200) > 20 {
				t.Errorf("warm-up length %v iterations, want 200 within 10 %% (%s)", w, fs[0].Title)
			}
			check(t, fs[0], map[string]float64{"from_step_history": 1, "history_first_iteration": 0, "restarts": 0,
				"settled": 1, "capture_after_warmup": 1, "verdict_pass": 1})
			if r := ev["first_minutes_p99_over_steady"]; r < 2.5 {
				t.Errorf("first minutes p99 / steady p99 = %v, want the warm-up's 1 s against 0.3 s", r)
			}
			if fs[0].Severity != traces.SeverityInfo || !strings.Contains(fs[0].Title, "Warm-up verified") {
				t.Errorf("finding %q (%s), want a passed verdict", fs[0].Title, fs[0].Severity)
			}
			// The warm-up cost nothing inside the window; over the run,
			// about 200 steps x 0.35 s average excess on 4 ranks, once.
			p := fs[0].Impact.Projected
			if fs[0].Impact.GPUSeconds != 0 || p == nil || !p.OneOff || p.Occurrences != 1 ||
				p.OneOffGPUSeconds < 4*200*0.3 || p.OneOffGPUSeconds > 4*200*0.4 || math.Abs(p.GPUHoursRun-p.OneOffGPUSeconds/3600) > 1e-9 {
				t.Errorf("impact %+v projected %+v, want none in the window and a one-off of about 280 GPU-s", fs[0].Impact, p)
			}
			if p != nil && (p.RunStartFrom != traces.RunStartStepHistory || !p.RunStart.Equal(t0)) {
				t.Errorf("run start %v from %q, want the first step at %v from the step history", p.RunStart, p.RunStartFrom, t0)
			}
		})
	}
	// The same capture judged from its window alone sees no warm-up at all.
	h0, _ := agentHost(t, "h0", steps.Config{}, []int{0, 1}, pid, 0, 571, t0, rampThenFlat(1, 200), 550, 570, nil)
	h0.history = nil
	in := writeCapture(t, "", h0)
	stableAt(in, 550)
	fs := run(t, Warmup, in)
	if len(fs) != 1 || !strings.Contains(fs[0].Title, "no step history") || strings.Contains(fs[0].Title, "verified") {
		t.Fatalf("window-only capture: findings %+v, want one saying the run's start was not seen", fs)
	}
	check(t, fs[0], map[string]float64{"from_step_history": 0, "history_first_iteration": 549, "warmup_iterations": 0})
}

// The capture's own window, slowed by profiling, does not fail the check
// of a run that settled before it.
func TestWarmupHistoryLeavesTheWindowOut(t *testing.T) {
	warm := rampThenFlat(6, 100)
	profiled := func(i int64) float64 {
		if i >= 150 {
			return warm(i) * 1.15
		}
		return warm(i)
	}
	h0, _ := agentHost(t, "h0", steps.Config{}, []int{0, 1}, pid, 0, 181, t0, profiled, 150, 180, nil)
	in := writeCapture(t, "", h0)
	stableAt(in, 150)
	fs := run(t, Warmup, in)
	if len(fs) != 1 {
		t.Fatalf("findings %+v", fs)
	}
	check(t, fs[0], map[string]float64{"settled": 1, "verdict_pass": 1, "points": 150})
}

// A run whose step time keeps growing (a leak) never settles, and the
// verdict fails even though the capture came late in the run.
func TestWarmupHistoryNeverSettles(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	leak := func(i int64) float64 { return noisy(rng, 0.3*math.Exp(float64(i)/400), 0.02) }
	h0, _ := agentHost(t, "h0", steps.Config{}, []int{0, 1}, pid, 0, 571, t0, leak, 550, 570, nil)
	in := writeCapture(t, "", h0)
	stableAt(in, 550)
	fs := run(t, Warmup, in)
	if len(fs) != 1 || fs[0].Severity != traces.SeverityWarning || !strings.Contains(fs[0].Title, "never settles") {
		t.Fatalf("findings %+v, want a failed verdict that says the run never settles", fs)
	}
	check(t, fs[0], map[string]float64{"settled": 0, "verdict_pass": 0, "from_step_history": 1})
}

// A process that crashed and restarted warms up again: the segment after
// the restart is the one judged, and the restart is counted.
func TestWarmupHistoryAfterRestart(t *testing.T) {
	tr := steps.New(steps.Config{})
	_, at := agentHost(t, "h0", steps.Config{}, []int{0}, pid, 0, 400, t0, rampThenFlat(4, 100), 0, 0, tr)
	restarted := func(int) int { return 5000 }
	h0, _ := agentHost(t, "h0", steps.Config{}, []int{0}, restarted, 0, 571, at.Add(time.Minute), rampThenFlat(5, 200), 550, 570, tr)
	in := writeCapture(t, "", h0)
	stableAt(in, 550)
	fs := run(t, Warmup, in)
	if len(fs) != 1 {
		t.Fatalf("findings %+v", fs)
	}
	if w := evidence(fs[0])["warmup_iterations"]; math.Abs(w-200) > 20 {
		t.Errorf("warm-up length %v, want the restarted process's 200", w)
	}
	check(t, fs[0], map[string]float64{"restarts": 1, "capture_after_warmup": 1, "verdict_pass": 1})
	if p := fs[0].Impact.Projected; p == nil || p.Occurrences != 2 || p.GPUHoursRun < 2*p.OneOffGPUSeconds/3600-1e-9 {
		t.Errorf("projection %+v, want the warm-up paid at both process starts", p)
	}
}

// BenchmarkWarmupHistory judges a run's step history the agent keeps at its
// bounds (2000 steps, then 1000 merged spans) on every rank of 128 hosts of
// 8 ranks: 3 million rows.
func BenchmarkWarmupHistory(b *testing.B) {
	const hosts, perHost = 128, 8
	cfg := steps.Config{}
	dur := rampThenFlat(9, 200)
	var hbs []hostBundle
	for h := range hosts {
		tr := steps.New(cfg)
		var ranks []int
		for r := range perHost {
			ranks = append(ranks, h*perHost+r)
		}
		hb, _ := agentHost(b, fmt.Sprintf("h%03d", h), cfg, ranks, pid, 0, 20001, t0, dur, 19000, 19020, tr)
		hb.steps = nil
		hbs = append(hbs, hb)
	}
	in := writeCapture(b, "", hbs...)
	hbs = nil // the fixture's rows are on disk now
	stableAt(in, 19000)
	b.ReportAllocs()
	for b.Loop() {
		fs, err := Run(b.Context(), in, []*Analyzer{Warmup})
		if err != nil || len(fs) != 1 {
			b.Fatalf("findings %v, %v", fs, err)
		}
	}
	b.ReportMetric(float64(hosts*perHost), "ranks")
}
