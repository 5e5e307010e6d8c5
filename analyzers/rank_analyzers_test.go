package analyzers

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"github.com/loupe-dev/loupe/traces"
)

// collectives makes n AllReduces on one communicator of ranks, arriving at
// 10 ms intervals plus late(rank, seq) milliseconds.
func collectives(ranks []int, n, nranks int, late func(rank, seq int) float64) []traces.NCCLEvent {
	var out []traces.NCCLEvent
	for seq := range n {
		for _, r := range ranks {
			at := t0.Add(time.Duration(seq)*10*time.Millisecond + time.Duration(late(r, seq)*float64(time.Millisecond)))
			out = append(out, traces.NCCLEvent{
				TimeNs: at.UnixNano(), DurationNs: 50_000, PID: int32(pid(r)), TID: int32(pid(r)), Rank: int32(r), NRanks: int32(nranks),
				CommID: 0xc0ffee, Op: "AllReduce", Seq: int64(seq), Count: 1 << 20, Datatype: "bfloat16", Bytes: 2 << 20, Peer: -1,
			})
		}
	}
	return out
}

func TestNCCLStraggler(t *testing.T) {
	capture := func(late func(rank, seq int) float64) *Input {
		h1 := collectives([]int{0, 1}, 20, 4, late)
		h2 := collectives([]int{2, 3}, 20, 4, late)
		// Seq 20 was cut off by the window: rank 3 never called it.
		h2 = append(h2, collectives([]int{2}, 21, 4, late)[20])
		h1 = append(h1, collectives([]int{0, 1}, 21, 4, late)[40:]...)
		// Point-to-point calls are not matched across ranks.
		h1 = append(h1, traces.NCCLEvent{TimeNs: t0.UnixNano(), Rank: 0, NRanks: 4, CommID: 0xc0ffee, Op: "Send", Seq: 0, Peer: 1})
		return writeCapture(t, "",
			hostBundle{name: "h1", ranks: []int{0, 1}, nccl: h1},
			hostBundle{name: "h2", ranks: []int{2, 3}, nccl: h2})
	}
	t.Run("rank 3 arrives 50 ms late", func(t *testing.T) {
		fs := run(t, NCCLStraggler, capture(func(r, seq int) float64 {
			if r == 3 {
				return 50
			}
			return float64(r) // ranks 0, 1, 2 at +0, +1, +2 ms
		}))
		if len(fs) != 1 {
			t.Fatalf("want 1 finding, got %+v", fs)
		}
		f := fs[0]
		// Each collective: the others wait 50 + 49 + 48 ms = 147 ms; 20 of them.
		wait := 20 * 0.147
		check(t, f, map[string]float64{
			"collectives_complete": 20, "arrival_skew_p50": 50, "arrival_skew_p99": 50,
			"arrived_last": 20, "arrived_last_share": 1, "others_waiting": wait,
		})
		if f.Scope.Host != "h2" || f.Scope.Rank != 3 || f.Scope.GPU != 1 {
			t.Errorf("scope %+v, want h2 rank 3 GPU 1", f.Scope)
		}
		// The window holds 2 hosts x 2 GPUs x 10 s: 40 GPU-s; 2.94/40 > 2%.
		if f.Severity != traces.SeverityWarning || !near(f.Impact.GPUSeconds, wait) || !near(f.Impact.WindowShare, wait/40) {
			t.Errorf("severity %s impact %+v, want warning, %v GPU-s", f.Severity, f.Impact, wait)
		}
	})
	t.Run("partial capture without rank 3", func(t *testing.T) {
		late := func(r, seq int) float64 {
			if r == 2 {
				return 20
			}
			return 0
		}
		in := writeCapture(t, "",
			hostBundle{name: "h1", ranks: []int{0, 1}, nccl: collectives([]int{0, 1}, 20, 4, late)},
			hostBundle{name: "h2", ranks: []int{2}, nccl: collectives([]int{2}, 20, 4, late)})
		if fs := run(t, NCCLStraggler, in); len(fs) != 0 {
			t.Fatalf("a complete capture's collectives are never complete without rank 3, got %+v", fs)
		}
		in.Partial, in.MissingRanks = true, []int{3}
		fs := run(t, NCCLStraggler, in)
		if len(fs) != 1 || !fs[0].Partial || fs[0].Scope.Rank != 2 {
			t.Fatalf("want a partial finding on rank 2, got %+v", fs)
		}
		check(t, fs[0], map[string]float64{"collectives_complete": 20, "arrived_last": 20, "others_waiting": 20 * 0.040})
	})
	t.Run("lateness rotates", func(t *testing.T) {
		fs := run(t, NCCLStraggler, capture(func(r, seq int) float64 {
			if seq%4 == r {
				return 50
			}
			return 0
		}))
		if len(fs) != 0 {
			t.Fatalf("want no finding, got %+v", fs)
		}
	})
}

// agentRows makes the rows an agent writes for ranks of one communicator:
// global ranks, a comm handle per process, and, for a communicator whose
// creation was missed (id 0), no id, no communicator rank and Seq counted
// from the first call seen (the rank's from). Calls repeat a data-parallel
// pattern, three per iteration of 30 ms; rank r arrives late(r, k) ms late
// on the host at call k, and its kernel starts gpuLate(r, k) ms after its
// call (nil: no GPU times).
func agentRows(ranks []int, id uint64, matched string, handle uint64, from func(r int) int, n int,
	late, gpuLate func(r, k int) float64) []traces.NCCLEvent {
	pattern := []struct {
		op, dtype string
		count     int64
	}{{"AllReduce", "float32", 1 << 20}, {"AllReduce", "bfloat16", 1 << 18}, {"AllGather", "float16", 4096}}
	var out []traces.NCCLEvent
	for k := range n {
		c := pattern[k%len(pattern)]
		for _, r := range ranks {
			if k < from(r) {
				continue
			}
			at := t0.Add(time.Duration(k/3)*30*time.Millisecond + time.Duration(k%3)*time.Millisecond +
				time.Duration(late(r, k)*float64(time.Millisecond)))
			e := traces.NCCLEvent{
				TimeNs: at.UnixNano(), PID: int32(pid(r)), TID: int32(pid(r)), Rank: -1, NRanks: -1, Op: c.op,
				Seq: int64(k - from(r)), Count: c.count, Datatype: c.dtype, Peer: -1, GlobalRank: int32(r), WorldSize: 4,
				CommHandle: handle, Source: traces.SourceUprobe,
			}
			if id != 0 {
				e.CommID, e.Seq, e.Matched = id, int64(k), matched
			}
			if gpuLate != nil {
				e.GPUStartNs = at.Add(time.Duration(gpuLate(r, k) * float64(time.Millisecond))).UnixNano()
				e.GPUEndNs = e.GPUStartNs + int64(time.Millisecond)
				e.Source = traces.SourceBoth
			}
			out = append(out, e)
		}
	}
	return out
}

func noLate(int, int) float64 { return 0 }

// The agents attached after the communicator was created, at different
// calls on each rank, on two hosts: the calls are matched across hosts by
// pattern and the straggler is named by global rank.
func TestNCCLStragglerLateAttach(t *testing.T) {
	from := func(r int) int { return []int{6, 11, 3, 20}[r] }
	late := func(r, k int) float64 {
		if r == 3 {
			return 8
		}
		return 0
	}
	in := writeCapture(t, "",
		hostBundle{name: "h1", ranks: []int{0, 1}, nccl: agentRows([]int{0, 1}, 0, "", 0xa0, from, 90, late, nil)},
		hostBundle{name: "h2", ranks: []int{2, 3}, nccl: agentRows([]int{2, 3}, 0, "", 0xa0, from, 90, late, nil)})
	fs := run(t, NCCLStraggler, in)
	if len(fs) != 1 || fs[0].Scope.Rank != 3 || fs[0].Scope.Host != "h2" {
		t.Fatalf("want one finding on rank 3 of h2, got %+v", fs)
	}
	// Calls 20 to 89 are seen by every rank.
	check(t, fs[0], map[string]float64{"collectives_complete": 70, "matched_by_pattern": 1, "timed_on_gpu": 0, "arrived_last": 70})
	if !strings.Contains(fs[0].Title, "ranks 0-3 (host enqueue times)") {
		t.Errorf("title %q", fs[0].Title)
	}
}

// A data-parallel communicator of four ranks split into pairs: rank 1 is
// slow in its pair, rank 2 in the other; each pair names its own
// straggler, and neither finding mixes the pairs.
func TestNCCLStragglerSubCommunicators(t *testing.T) {
	all := func(int) int { return 0 }
	pairLate := func(slow int) func(r, k int) float64 {
		return func(r, k int) float64 {
			if r == slow {
				return 5
			}
			return 0
		}
	}
	h1 := agentRows([]int{0, 1}, 0x1111, traces.MatchInit, 0xb0, all, 60, noLate, nil)
	h1 = append(h1, agentRows([]int{0, 1}, 0x2222, traces.MatchSplit, 0xc0, all, 60, pairLate(1), nil)...)
	h2 := agentRows([]int{2, 3}, 0x1111, traces.MatchInit, 0xb0, all, 60, noLate, nil)
	h2 = append(h2, agentRows([]int{2, 3}, 0x3333, traces.MatchSplit, 0xc0, all, 60, pairLate(2), nil)...)
	in := writeCapture(t, "", hostBundle{name: "h1", ranks: []int{0, 1}, nccl: h1}, hostBundle{name: "h2", ranks: []int{2, 3}, nccl: h2})
	fs := run(t, NCCLStraggler, in)
	byRank := map[int]traces.Finding{}
	for _, f := range fs {
		byRank[f.Scope.Rank] = f
	}
	if len(fs) != 2 || !strings.Contains(byRank[1].Title, "ranks 0-1 ") || !strings.Contains(byRank[2].Title, "ranks 2-3 ") {
		t.Fatalf("want a finding per pair, on ranks 1 and 2; got %+v", fs)
	}
	check(t, byRank[1], map[string]float64{"collectives_complete": 60, "communicator_ranks": 2, "arrived_last": 60})
}

// With the profiler plugin's kernel start times, the straggler is the rank
// whose GPU starts last (rank 2), not the one whose host enqueues last
// (rank 1), and the finding says it used GPU times.
func TestNCCLStragglerGPUTimes(t *testing.T) {
	all := func(int) int { return 0 }
	host := func(r, k int) float64 {
		if r == 1 {
			return 3
		}
		return 0
	}
	gpu := func(r, k int) float64 {
		if r == 2 {
			return 9 // its GPU is busy 9 ms after the call
		}
		return 4 - host(r, k) // the others' kernels wait on their streams until +4 ms
	}
	in := writeCapture(t, "",
		hostBundle{name: "h1", ranks: []int{0, 1}, nccl: agentRows([]int{0, 1}, 0x77, traces.MatchPlugin, 0xd0, all, 45, host, gpu)},
		hostBundle{name: "h2", ranks: []int{2, 3}, nccl: agentRows([]int{2, 3}, 0x77, traces.MatchPlugin, 0xd0, all, 45, host, gpu)})
	fs := run(t, NCCLStraggler, in)
	if len(fs) != 1 || fs[0].Scope.Rank != 2 || !strings.HasSuffix(fs[0].Title, "(GPU kernel start times)") {
		t.Fatalf("want rank 2 by GPU times, got %+v", fs)
	}
	check(t, fs[0], map[string]float64{"timed_on_gpu": 1, "arrival_skew_p50": 5})
	in = writeCapture(t, "",
		hostBundle{name: "h1", ranks: []int{0, 1}, nccl: agentRows([]int{0, 1}, 0x77, traces.MatchInit, 0xd0, all, 45, host, nil)},
		hostBundle{name: "h2", ranks: []int{2, 3}, nccl: agentRows([]int{2, 3}, 0x77, traces.MatchInit, 0xd0, all, 45, host, nil)})
	if fs := run(t, NCCLStraggler, in); len(fs) != 1 || fs[0].Scope.Rank != 1 || !strings.HasSuffix(fs[0].Title, "(host enqueue times)") {
		t.Fatalf("without GPU times want rank 1 by host times, got %+v", fs)
	}
}

func TestStepImbalance(t *testing.T) {
	steps := func(rank int, ms float64, n int) []traces.Step {
		var out []traces.Step
		start := t0
		for i := range n {
			end := start.Add(time.Duration(ms * float64(time.Millisecond)))
			out = append(out, traces.Step{Rank: int32(rank), PID: int32(pid(rank)), Iteration: int64(100 + i), StartNs: start.UnixNano(), EndNs: end.UnixNano(), Source: traces.StepSourceMarker})
			start = end
		}
		return out
	}
	capture := func(slow float64) *Input {
		return writeCapture(t, "",
			hostBundle{name: "h1", ranks: []int{0, 1}, steps: append(steps(0, 100, 10), steps(1, 100, 10)...)},
			hostBundle{name: "h2", ranks: []int{2, 3}, steps: append(append(steps(2, slow, 10), steps(3, 101, 10)...),
				traces.Step{Rank: 3, Iteration: 99, StartNs: 5, EndNs: 5})}) // zero-length steps are ignored
	}
	fs := run(t, StepImbalance, capture(130))
	if len(fs) != 1 {
		t.Fatalf("want 1 finding, got %+v", fs)
	}
	f := fs[0]
	// Median of {100, 100, 101, 130} is 100.5; the others wait 30+30+29 ms a step.
	wait := (0.030 + 0.030 + 0.029) * 10
	check(t, f, map[string]float64{"ranks": 4, "median_rank_step": 100.5, "slowest_rank_step": 130, "slowest_over_median": 130 / 100.5,
		"rank_wait_total": wait, "mean_step": 130, "steps": 10})
	if f.Severity != traces.SeverityCritical || f.Scope.Rank != 2 || f.Scope.Host != "h2" || !near(f.Impact.GPUSeconds, wait) {
		t.Errorf("got %s %+v %+v, want critical rank 2 on h2, %v GPU-s", f.Severity, f.Scope, f.Impact, wait)
	}
	if fs := run(t, StepImbalance, capture(104)); len(fs) != 0 {
		t.Errorf("4%% slower is within tolerance, got %+v", fs)
	}
}

func TestHWFaults(t *testing.T) {
	at := func(s float64) int64 { return t0.Add(time.Duration(s * float64(time.Second))).UnixNano() }
	samples := series(2, 100, func(i int, s *traces.GPUSample) {
		s.ECCSingleBit, s.RemappedRows = 7, 1 // old errors: not new in the window
		if s.GPU == 0 && i >= 50 {
			s.ECCDoubleBit, s.RemappedRows = 2, 3
		}
	})
	in := writeCapture(t, "", hostBundle{name: "h1", ranks: []int{0, 1}, samples: samples, events: []traces.Event{
		{TimeNs: at(4), Kind: traces.EventXID, GPU: 1, Rank: -1, Code: 79, Message: "GPU has fallen off the bus"},
		{TimeNs: at(1), Kind: traces.EventXID, GPU: 0, Rank: 0, Code: 13},
		{TimeNs: at(2), Kind: traces.EventXID, GPU: 0, Rank: 0, Code: 13},
		{TimeNs: at(3), Kind: traces.EventXID, GPU: 0, Rank: 0, Code: 9999},
		{TimeNs: at(3), Kind: traces.EventNote, GPU: -1, Rank: -1, Message: "not a fault"},
	}})
	fs := run(t, HWFaults, in)
	byTitle := map[string]traces.Finding{}
	for _, f := range fs {
		byTitle[f.Title] = f
	}
	want := []struct {
		title, sev string
		gpu        int
		evidence   map[string]float64
		lost       float64
	}{
		{"XID 79: GPU has fallen off the bus", traces.SeverityCritical, 1, map[string]float64{"events": 1, "first_seen_offset": 4}, 6},
		{"XID 13: graphics engine exception", traces.SeverityWarning, 0, map[string]float64{"events": 2, "first_seen_offset": 1}, 0},
		{"XID 9999: not in Loupe's table", traces.SeverityWarning, 0, map[string]float64{"events": 1}, 0},
		{"Double-bit (uncorrectable) ECC errors", traces.SeverityCritical, 0, map[string]float64{"new_ecc_dbe": 2, "first_seen_offset": 5, "counter_end": 2}, 5},
		{"Memory rows remapped", traces.SeverityWarning, 0, map[string]float64{"new_remapped_rows": 2, "counter_start": 1, "counter_end": 3}, 0},
	}
	if len(fs) != len(want) {
		t.Errorf("got %d findings, want %d: %v", len(fs), len(want), byTitle)
	}
	for _, w := range want {
		f, ok := byTitle[w.title]
		if !ok {
			t.Errorf("no finding %q", w.title)
			continue
		}
		if f.Severity != w.sev || f.Scope.GPU != w.gpu || f.Scope.Rank != w.gpu || !near(f.Impact.GPUSeconds, w.lost) {
			t.Errorf("%s: %s %+v %+v, want %s on GPU %d, %v GPU-s lost", w.title, f.Severity, f.Scope, f.Impact, w.sev, w.gpu, w.lost)
		}
		check(t, f, w.evidence)
	}
	if fs[0].Title != "XID 79: GPU has fallen off the bus" {
		t.Errorf("the costliest critical finding should come first, got %q", fs[0].Title)
	}

	quiet := writeCapture(t, "", hostBundle{name: "h1", ranks: []int{0, 1}, samples: series(2, 100, func(i int, s *traces.GPUSample) { s.ECCSingleBit = 3 }),
		events: []traces.Event{{TimeNs: at(1), Kind: traces.EventNote, GPU: -1, Rank: -1}}})
	if fs := run(t, HWFaults, quiet); len(fs) != 0 {
		t.Errorf("healthy host: got %+v", fs)
	}
}

// cpuProfile builds a pprof CPU profile: for each rank, loading samples with
// a DataLoader stack and the rest with a training stack, labelled by pid; a
// negative rank's samples carry no label.
func cpuProfile(samples map[int][2]int) *profile.Profile {
	fn := func(id uint64, name, file string) *profile.Function {
		return &profile.Function{ID: id, Name: name, SystemName: name, Filename: file}
	}
	libjpeg := &profile.Mapping{ID: 1, Start: 0x1000, Limit: 0x9000, File: "/usr/lib/x86_64-linux-gnu/libjpeg.so.62"}
	fns := []*profile.Function{
		fn(1, "decode_mcu", "jdhuff.c"),
		fn(2, "_MultiProcessingDataLoaderIter._next_data", "torch/utils/data/dataloader.py"),
		fn(3, "at::native::addmm_out_cuda", "Blas.cpp"),
		fn(4, "cudaLaunchKernel", "libcudart.so"),
	}
	loadLoc := &profile.Location{ID: 1, Mapping: libjpeg, Address: 0x1100, Line: []profile.Line{{Function: fns[0]}}}
	iterLoc := &profile.Location{ID: 2, Line: []profile.Line{{Function: fns[1]}}}
	gemmLoc := &profile.Location{ID: 3, Line: []profile.Line{{Function: fns[2]}}}
	launchLoc := &profile.Location{ID: 4, Line: []profile.Line{{Function: fns[3]}}}
	p := &profile.Profile{
		SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		PeriodType: &profile.ValueType{Type: "cpu", Unit: "nanoseconds"}, Period: 52631578,
		Mapping: []*profile.Mapping{libjpeg}, Function: fns, Location: []*profile.Location{loadLoc, iterLoc, gemmLoc, launchLoc},
	}
	for rank, n := range samples {
		var lbl map[string][]int64
		if rank >= 0 {
			lbl = map[string][]int64{"pid": {int64(pid(rank))}}
		}
		p.Sample = append(p.Sample,
			&profile.Sample{Location: []*profile.Location{loadLoc, iterLoc}, Value: []int64{int64(n[0]), int64(n[0]) * 52631578}, NumLabel: lbl},
			&profile.Sample{Location: []*profile.Location{launchLoc, gemmLoc}, Value: []int64{int64(n[1]), int64(n[1]) * 52631578}, NumLabel: lbl})
	}
	return p
}

func TestInputBound(t *testing.T) {
	idle := func(i int, s *traces.GPUSample) {
		if s.GPU == 0 && i%5 < 3 { // GPU 0 idle 60% of the time
			s.GPUUtil, s.SMActive = 0, 0
		}
	}
	cases := []struct {
		name    string
		edit    func(i int, s *traces.GPUSample)
		samples map[int][2]int // rank -> {loading, training} CPU samples
		normal  map[int][2]int // the continuous profiles before the window, if any
		want    string         // severity, "" for no finding
		share   float64        // the window's data-loading share
	}{
		{"GPU idle, CPU loading data", idle, map[int][2]int{0: {60, 40}, 1: {5, 95}}, nil, traces.SeverityCritical, 0.6},
		{"GPU idle, CPU not loading data", idle, map[int][2]int{0: {10, 90}, 1: {5, 95}}, nil, "", 0},
		{"CPU loading data, GPU busy", nil, map[int][2]int{0: {60, 40}, 1: {60, 40}}, nil, "", 0},
		{"too few CPU samples", idle, map[int][2]int{0: {6, 4}, 1: {6, 4}}, nil, "", 0},
		// Without labels the host is judged as a whole, for each of its ranks.
		{"unlabelled samples", idle, map[int][2]int{-1: {60, 40}}, nil, traces.SeverityCritical, 0.6},
		// Against the rank's normal profile: a share below 30% that rose
		// from 5% is a stall of the input pipeline...
		{"loading rose against normal", idle, map[int][2]int{0: {25, 75}, 1: {5, 95}}, map[int][2]int{0: {5, 95}, 1: {5, 95}}, traces.SeverityWarning, 0.25},
		// ... one the rank always has is not news.
		{"loading as usual", idle, map[int][2]int{0: {25, 75}, 1: {5, 95}}, map[int][2]int{0: {20, 80}, 1: {5, 95}}, "", 0},
		{"critical with a normal profile", idle, map[int][2]int{0: {60, 40}, 1: {5, 95}}, map[int][2]int{0: {10, 90}, 1: {5, 95}}, traces.SeverityCritical, 0.6},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := writeCapture(t, "", hostBundle{name: "h1", ranks: []int{0, 1}, samples: series(2, 100, c.edit), profile: cpuProfile(c.samples)})
			if c.normal != nil {
				in.Hosts[0].Baseline = func(context.Context) (*profile.Profile, []string, error) {
					return cpuProfile(c.normal), []string{"v1/c/j/r/continuous-20260301T115900Z-60s/h1/manifest.json"}, nil
				}
			}
			fs := run(t, InputBound, in)
			if c.want == "" {
				if len(fs) != 0 {
					t.Fatalf("want no finding, got %+v", fs)
				}
				return
			}
			if len(fs) != 1 {
				t.Fatalf("want 1 finding, got %+v", fs)
			}
			f := fs[0]
			want := map[string]float64{"gpu_idle_share": 0.6, "gpu_idle_seconds": 6, "cpu_data_loading_share": c.share, "cpu_samples": 100}
			if c.normal != nil {
				n := c.normal[0]
				want["cpu_data_loading_share_normal"] = float64(n[0]) / float64(n[0]+n[1])
				want["cpu_samples_normal"] = float64(n[0] + n[1])
				if !slices.Contains(f.Lineage.Inputs, "v1/c/j/r/continuous-20260301T115900Z-60s/h1/manifest.json") {
					t.Errorf("lineage %v lacks the continuous profile read", f.Lineage.Inputs)
				}
			}
			check(t, f, want)
			if f.Severity != c.want || f.Scope.Rank != 0 || f.Scope.GPU != 0 || !near(f.Impact.GPUSeconds, 6*c.share) {
				t.Errorf("got %s %+v %+v, want %s on rank 0, %.1f GPU-s", f.Severity, f.Scope, f.Impact, c.want, 6*c.share)
			}
		})
	}
}
