package goodput

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

var t0 = time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)

// process is one process of a rank in a synthetic history: its first step
// starts at start, its iterations from first, one duration (s) each.
type process struct {
	pid   int32
	first int64
	start time.Time
	steps []float64
}

// spans writes a process's steps as the agent keeps them: the first head
// steps one row each, then rows of merge steps (never across processes).
func (p process) spans(rank int32, head, merge int) []traces.StepSpan {
	var out []traces.StepSpan
	at := p.start.UnixNano()
	for i := 0; i < len(p.steps); {
		n := 1
		if i >= head {
			n = min(merge, len(p.steps)-i)
		}
		s := traces.StepSpan{Rank: rank, PID: p.pid, FirstIteration: p.first + int64(i), Steps: int32(n), StartNs: at,
			MinNs: math.MaxInt64, Source: traces.StepSourceMarker}
		for _, d := range p.steps[i : i+n] {
			ns := int64(d * 1e9)
			at += ns
			s.MinNs, s.MaxNs = min(s.MinNs, ns), max(s.MaxNs, ns)
		}
		s.EndNs = at
		out = append(out, s)
		i += n
	}
	return out
}

func (p process) end() time.Time {
	d := 0.0
	for _, s := range p.steps {
		d += s
	}
	return p.start.Add(time.Duration(d * 1e9))
}

// planted is the job history of the test: 8 ranks start at t0,
// take their first step 5 minutes later, warm up for 10 minutes of excess
// step time, checkpoint every 2000 iterations (110 s over a 1 s step, about
// 5 % of the run), crash 1200 iterations (20 minutes) after the checkpoint
// at 18000, restart 3 minutes later from iteration 18001 and run to 40000;
// the capture windows measure 3 % straggler wait.
type planted struct {
	ranks                                                   int
	startup, warmup, checkpoint, restart, lostWork, inSteps float64 // seconds per rank
	wall                                                    float64
	crash                                                   time.Time
	procs                                                   [][]process
	windows                                                 []Window
	straggler                                               float64
}

func stepTime(it int64) float64 {
	d := 1 + 0.04*math.Sin(float64(it)) // jitter around the 1 s step
	switch {
	case it == 0:
		return 481 // compilation
	case it <= 40:
		return 4
	case it%2000 == 0:
		return d + 110 // the checkpoint save
	}
	return d
}

func plant() *planted {
	p := &planted{ranks: 8, startup: 300, restart: 180, straggler: 0.03}
	steps := func(from, to int64) []float64 {
		var out []float64
		for it := from; it <= to; it++ {
			out = append(out, stepTime(it))
		}
		return out
	}
	for r := range p.ranks {
		first := process{pid: int32(100 + r), first: 0, start: t0.Add(300 * time.Second), steps: steps(0, 19200)}
		second := process{pid: int32(200 + r), first: 18001, start: first.end().Add(180 * time.Second), steps: steps(18001, 40000)}
		p.procs = append(p.procs, []process{first, second})
		p.crash = first.end()
		p.wall = second.end().Sub(t0).Seconds()
	}
	for it := int64(0); it <= 40; it++ {
		p.warmup += stepTime(it) - 1
	}
	for it := int64(18001); it <= 19200; it++ {
		p.lostWork += stepTime(it)
	}
	p.checkpoint = 20 * 110 // 2000, ..., 18000 before the crash; 20000, ..., 40000 after
	p.inSteps = p.wall - p.startup - p.warmup - p.checkpoint - p.restart - p.lostWork
	for _, at := range []time.Duration{3 * time.Hour, 10 * time.Hour} {
		p.windows = append(p.windows, Window{Start: t0.Add(at), End: t0.Add(at + time.Minute),
			Shares:   map[string]float64{traces.CauseStraggler: p.straggler, traces.CauseDataStall: 0},
			Measured: map[string]bool{traces.CauseStraggler: true, traces.CauseDataStall: true}})
	}
	return p
}

// run builds the Run of p: every rank's processes, head and merge rows as
// given (the head only for the first process when headOnce, as the agent
// keeps one head per run), and a manifest naming the first processes' start.
func (p *planted) run(head, merge int, headOnce bool) *Run {
	r := &Run{Cluster: "c1", Job: "llm", Run: "r1", Capture: "cap-9", Windows: p.windows}
	m := &traces.Manifest{Cluster: "c1", Job: "llm", Run: "r1", Host: "node-1", DriverVersion: "550.54.15"}
	for rank, procs := range p.procs {
		for i, pr := range procs {
			h := head
			if i > 0 && headOnce {
				h = 0
			}
			for _, s := range pr.spans(int32(rank), h, merge) {
				r.Add(&s)
			}
		}
		m.Processes = append(m.Processes, traces.Process{PID: int(procs[0].pid), Rank: rank, Started: t0})
		m.GPUs = append(m.GPUs, traces.GPUInfo{Index: rank, Name: "NVIDIA H100 80GB HBM3", Ranks: []int{rank}})
	}
	r.Manifests = []*traces.Manifest{m}
	return r
}

func within(t *testing.T, what string, got, want, rel float64) {
	t.Helper()
	if math.Abs(got-want) > rel*math.Abs(want) {
		t.Errorf("%s = %.5f, want %.5f within %.0f%%", what, got, want, 100*rel)
	}
}

func TestPlantedCauses(t *testing.T) {
	p := plant()
	gpu := p.wall * float64(p.ranks)
	want := map[string]float64{
		traces.CauseStartup: p.startup / p.wall, traces.CauseWarmup: p.warmup / p.wall,
		traces.CauseCheckpoint: p.checkpoint / p.wall, traces.CauseRestart: p.restart / p.wall,
		traces.CauseLostWork: p.lostWork / p.wall, traces.CauseStraggler: p.straggler * p.inSteps / p.wall,
	}
	ettr := 1 - (p.startup+p.warmup+p.checkpoint+p.restart+p.lostWork)/p.wall
	// The orders of magnitude: 5 % checkpointing, 3 % straggler
	// wait, 20 minutes lost, 10 minutes of warm-up.
	if math.Abs(want[traces.CauseCheckpoint]-0.05) > 0.005 || math.Abs(p.lostWork-1200) > 10 || math.Abs(p.warmup-600) > 1 {
		t.Fatalf("the plant is off: %v, lost %v s, warm-up %v s", want, p.lostWork, p.warmup)
	}
	for _, tc := range []struct {
		name        string
		head, merge int
		headOnce    bool
	}{
		{"2000 steps at full resolution, then rows of 100", 2000, 100, false},
		// The agent's bound: a 2000-step head per run, at most 1000 tail
		// rows merged pairwise: rows of 64 here, the restarted process all
		// in the tail.
		{"the agent's head and tail", 2000, 64, true},
		{"rows of 4096, each holding two saves", 2000, 4096, true},
		{"all at full resolution", math.MaxInt, 1, false},
		{"rows of 500 from the first step", 0, 500, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := Compute(p.run(tc.head, tc.merge, tc.headOnce), Options{FLOPsPerStep: 0.4 * 989e12 * 8, Now: t0})
			if g == nil {
				t.Fatal("no goodput")
			}
			if g.Ranks != p.ranks || g.Restarts != 1 || g.Steps != 40001 || !g.Start.Equal(t0) || math.Abs(g.GPUSeconds-gpu) > 1 {
				t.Errorf("ranks %d restarts %d steps %d start %v GPU-s %.0f; want %d, 1, 40001, %v, %.0f",
					g.Ranks, g.Restarts, g.Steps, g.Start, g.GPUSeconds, p.ranks, t0, gpu)
			}
			for cause, share := range want {
				within(t, cause+" share", g.Cause(cause).Share, share, 0.10)
			}
			for _, cause := range []string{traces.CauseDataStall, traces.CauseComm, traces.CauseIdle} {
				if sh := g.Cause(cause).Share; sh > 0.001 {
					t.Errorf("%s share %.4f, nothing was planted", cause, sh)
				}
			}
			if math.Abs(g.ETTR-ettr) > 0.01 {
				t.Errorf("ETTR %.4f, want %.4f within 1 point", g.ETTR, ettr)
			}
			within(t, "goodput", g.Goodput, ettr-want[traces.CauseStraggler], 0.02)
			// The parts add up to the whole, per bucket too.
			sum := g.ProductiveGPUSeconds
			for _, b := range g.Badput {
				sum += b.GPUSeconds
			}
			within(t, "productive + badput", sum, g.GPUSeconds, 1e-6)
			bucketSum := 0.0
			for _, v := range g.Timeline.Productive {
				bucketSum += v
			}
			for _, bs := range g.Timeline.Badput {
				for _, v := range bs {
					bucketSum += v
				}
			}
			within(t, "timeline total", bucketSum, g.GPUSeconds, 1e-6)
			if n := len(g.Timeline.Productive); n > DefaultBuckets || n < DefaultBuckets/4 || g.Timeline.BucketSeconds != 900 {
				t.Errorf("%d buckets of %v s over %.0f s", n, g.Timeline.BucketSeconds, p.wall)
			}
			// The lost work and the restart sit where the crash was.
			crash := int(p.crash.Sub(t0).Seconds() / g.Timeline.BucketSeconds)
			for _, cause := range []string{traces.CauseLostWork, traces.CauseRestart} {
				bs := g.Timeline.Badput[cause]
				peak := slices.Index(bs, slices.Max(bs))
				if peak < crash-2 || peak > crash+1 {
					t.Errorf("%s peaks in bucket %d, the crash is in %d", cause, peak, crash)
				}
			}
			within(t, "MFU", g.MFU, 0.4, 0.05)
			if g.Cause(traces.CauseComm).Measured || !g.Cause(traces.CauseStraggler).Measured ||
				!slices.ContainsFunc(g.Notes, func(n string) bool { return strings.Contains(n, "comm_exposed not measured") }) {
				t.Errorf("measured flags %+v, notes %q: exposed communication has no window that could show it", g.Badput, g.Notes)
			}
			within(t, "steady step", g.StepSeconds, 1, 0.05)
		})
	}
}

// A long step with a logged checkpoint save inside counts as checkpointing
// even when alone; one without stays in the step time.
func TestLoggedCheckpoint(t *testing.T) {
	steps := make([]float64, 3000)
	for i := range steps {
		steps[i] = 1
	}
	steps[1000], steps[2500] = 61, 31 // a save at 1000; something else at 2500
	pr := process{pid: 7, start: t0, steps: steps}
	r := &Run{}
	for _, s := range pr.spans(0, math.MaxInt, 1) {
		r.Add(&s)
	}
	base := Compute(r, Options{Now: t0})
	if got := base.Cause(traces.CauseCheckpoint).GPUSeconds; got != 0 {
		t.Errorf("two irregular long steps and no log: %v s of checkpointing, want none", got)
	}
	r.Checkpoints = []Checkpoint{{TimeNs: t0.Add(1020 * time.Second).UnixNano(), Rank: -1}}
	g := Compute(r, Options{Now: t0})
	within(t, "checkpoint seconds", g.Cause(traces.CauseCheckpoint).GPUSeconds, 60, 0.001)
	within(t, "productive", g.ProductiveGPUSeconds, base.ProductiveGPUSeconds-60, 0.001)
	if !strings.Contains(strings.Join(g.Notes, " "), "start of the process") {
		t.Errorf("notes %q: the process start was unknown", g.Notes)
	}
}

// A restart from scratch (no checkpoint) loses the whole first process's
// work; a GPU of the job's pod without a rank idles the whole run.
func TestRestartFromScratchAndIdleGPU(t *testing.T) {
	ones := func(n int) []float64 {
		out := make([]float64, n)
		for i := range out {
			out[i] = 1
		}
		return out
	}
	a := process{pid: 1, start: t0, steps: ones(600)}
	b := process{pid: 2, start: a.end().Add(60 * time.Second), steps: ones(1200)}
	r := &Run{Manifests: []*traces.Manifest{{Host: "n1",
		Processes: []traces.Process{{PID: 2, Rank: 0, Pod: "train-0", Namespace: "ml"}},
		GPUs: []traces.GPUInfo{{Index: 0, UUID: "GPU-0", Ranks: []int{0}, Pod: "train-0", Namespace: "ml"},
			{Index: 1, UUID: "GPU-1", Pod: "train-0", Namespace: "ml"}, {Index: 2, UUID: "GPU-2", Pod: "other", Namespace: "ml"}}}}}
	for _, pr := range []process{a, b} {
		for _, s := range pr.spans(0, math.MaxInt, 1) {
			r.Add(&s)
		}
	}
	g := Compute(r, Options{Now: t0})
	wall := 600 + 60 + 1200.0
	if g.IdleGPUs != 1 || math.Abs(g.GPUSeconds-2*wall) > 1e-6 {
		t.Fatalf("idle GPUs %d, GPU-s %v; want 1 (GPU-1 of the job's pod) and %v", g.IdleGPUs, g.GPUSeconds, 2*wall)
	}
	within(t, "lost work", g.Cause(traces.CauseLostWork).GPUSeconds, 600, 1e-9)
	within(t, "restart", g.Cause(traces.CauseRestart).GPUSeconds, 60, 1e-9)
	within(t, "idle", g.Cause(traces.CauseIdle).GPUSeconds, wall, 1e-9)
	within(t, "ETTR", g.ETTR, 1200/(2*wall), 1e-9)
	if g.Steps != 1200 || g.Restarts != 1 || g.MFU != 0 {
		t.Errorf("steps %d restarts %d MFU %v", g.Steps, g.Restarts, g.MFU)
	}
	if Compute(&Run{}, Options{}) != nil {
		t.Error("an empty history has a goodput")
	}
}

func TestNth(t *testing.T) {
	for n := 1; n < 60; n++ {
		for seed := range 5 {
			ds := make([]float64, n)
			for i := range ds {
				ds[i] = float64((i*7919 + seed*104729) % 37) // duplicates on purpose
			}
			sorted := slices.Clone(ds)
			slices.Sort(sorted)
			for k := range n {
				if got := nth(slices.Clone(ds), k); got != sorted[k] {
					t.Fatalf("n %d seed %d: nth %d = %v, want %v", n, seed, k, got, sorted[k])
				}
			}
		}
	}
}

// The cause indexes follow traces.Causes.
func TestCauseIndexes(t *testing.T) {
	want := map[int]string{startup: traces.CauseStartup, warmup: traces.CauseWarmup, checkpoint: traces.CauseCheckpoint,
		dataStall: traces.CauseDataStall, straggler: traces.CauseStraggler, comm: traces.CauseComm,
		restart: traces.CauseRestart, lostWork: traces.CauseLostWork, idle: traces.CauseIdle}
	if len(traces.Causes) != nCauses-1 {
		t.Fatalf("%d causes, %d indexes", len(traces.Causes), nCauses-1)
	}
	for i, name := range traces.Causes {
		if want[i+1] != name {
			t.Errorf("index %d is %q, traces.Causes has %q", i+1, want[i+1], name)
		}
	}
}
