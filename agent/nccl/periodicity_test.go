package nccl

import (
	"math/rand/v2"
	"testing"

	"github.com/loupe-dev/loupe/traces"
)

// call is one planned NCCL call of a synthetic training loop.
type call struct {
	op    string
	count int64
	gapNs int64 // quiet time before the call
}

// loop plants a training loop: warm-up calls, then iters iterations of body
// starting at body[cut] (the call after the quietest spell), then the first
// call of one more iteration, which closes the last one. It returns the
// events and the planted iteration start times.
func loop(pid int32, rank int32, warmup []call, body []call, cut, iters int, rng *rand.Rand) ([]traces.NCCLEvent, []int64) {
	var evs []traces.NCCLEvent
	now := int64(1e12)
	seq := int64(0)
	add := func(c call) {
		jitter := int64(0)
		if rng != nil {
			jitter = rng.Int64N(c.gapNs/10 + 1)
		}
		now += c.gapNs + jitter
		evs = append(evs, traces.NCCLEvent{TimeNs: now, DurationNs: 3000, PID: pid, TID: pid, Rank: rank, NRanks: 8,
			CommID: 42, Op: c.op, Seq: seq, Count: c.count, Datatype: "float32", Peer: -1})
		seq++
	}
	for _, c := range warmup {
		add(c)
	}
	var starts []int64
	for _, c := range body[:cut] {
		add(c)
	}
	for i := 0; i <= iters; i++ {
		for j := range body {
			add(body[(cut+j)%len(body)])
			if j == 0 {
				starts = append(starts, now)
			}
			if i == iters {
				break
			}
		}
	}
	return evs, starts
}

func TestDetectIterations(t *testing.T) {
	ms := int64(1e6)
	warmup := []call{{"Broadcast", 1000, ms}, {"Broadcast", 2000, ms}, {"AllReduce", 1, 5 * ms}}
	fsdp := []call{
		{"AllGather", 1 << 20, 40 * ms}, {"AllGather", 1 << 19, ms}, {"AllGather", 1 << 20, ms},
		{"ReduceScatter", 1 << 20, 3 * ms}, {"ReduceScatter", 1 << 19, ms}, {"AllReduce", 1, ms},
	}
	// DDP with equal buckets: only the quiet spell tells iterations apart.
	ddp := []call{{"AllReduce", 1 << 22, 30 * ms}, {"AllReduce", 1 << 22, 2 * ms}, {"AllReduce", 1 << 22, 2 * ms}}
	// A loop whose quietest spell is in the middle of its calls: the cut
	// still comes after the quietest spell, consistently.
	midQuiet := []call{{"AllReduce", 1, 2 * ms}, {"AllGather", 2, 2 * ms}, {"AllReduce", 3, 20 * ms}, {"Reduce", 4, 2 * ms}}

	tests := []struct {
		name   string
		warmup []call
		body   []call
		cut    int
		iters  int
		jitter bool
	}{
		{"fsdp after warm-up", warmup, fsdp, 0, 25, true},
		{"ddp equal buckets", nil, ddp, 0, 12, true},
		{"single call per iteration", warmup, []call{{"AllReduce", 7, 10 * ms}}, 0, 9, false},
		{"quiet spell mid-body", nil, midQuiet, 2, 8, false},
		{"exactly three cycles", nil, fsdp, 0, 3, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rng *rand.Rand
			if tt.jitter {
				rng = rand.New(rand.NewPCG(1, 2))
			}
			evs, starts := loop(7, 3, tt.warmup, tt.body, tt.cut, tt.iters, rng)
			steps := DetectIterations(evs)
			if len(steps) != len(starts)-1 {
				t.Fatalf("%d steps, want %d: %+v", len(steps), len(starts)-1, steps)
			}
			for i, s := range steps {
				if s.StartNs != starts[i] || s.EndNs != starts[i+1] || s.Iteration != int64(i) ||
					s.PID != 7 || s.Rank != 3 || s.Source != traces.StepSourceNCCL {
					t.Fatalf("step %d = %+v, want start %d end %d", i, s, starts[i], starts[i+1])
				}
			}
		})
	}
}

func TestDetectIterationsTolerates(t *testing.T) {
	ms := int64(1e6)
	body := []call{{"AllGather", 100, 20 * ms}, {"ReduceScatter", 100, ms}, {"AllReduce", 5, ms}}

	t.Run("an extra call inside one iteration", func(t *testing.T) {
		evs, starts := loop(1, 0, nil, body, 0, 20, nil)
		extra := evs[31] // inside iteration 10
		extra.Op, extra.Count, extra.TimeNs = "AllReduce", 1, extra.TimeNs+ms/2
		evs = append(evs, extra)
		steps := DetectIterations(evs)
		if len(steps) != 20 {
			t.Fatalf("%d steps, want 20", len(steps))
		}
		for i, s := range steps {
			if s.StartNs != starts[i] {
				t.Fatalf("step %d starts at %d, want %d", i, s.StartNs, starts[i])
			}
		}
	})
	t.Run("stray pauses", func(t *testing.T) {
		// Evenly paced calls (a slow rank sleeping before each), hit by two
		// long preemptions: one before an iteration's first call, one inside.
		even := []call{{"AllGather", 100, 7 * ms}, {"ReduceScatter", 100, 4 * ms}, {"AllReduce", 5, 4 * ms}}
		evs, starts := loop(1, 0, nil, even, 0, 20, nil)
		for _, i := range []int{15, 25} {
			for j := i; j < len(evs); j++ {
				evs[j].TimeNs += 100 * ms
			}
		}
		starts = nil
		for i := 0; i < len(evs); i += 3 {
			starts = append(starts, evs[i].TimeNs)
		}
		steps := DetectIterations(evs)
		if len(steps) != 20 {
			t.Fatalf("%d steps, want 20", len(steps))
		}
		for i, s := range steps {
			if s.StartNs != starts[i] {
				t.Fatalf("step %d starts at %d, want %d", i, s.StartNs, starts[i])
			}
		}
	})
	t.Run("communicators interleaving differently", func(t *testing.T) {
		// Per iteration, three calls on comm 1 and two on comm 2 in an
		// order that changes: only comm 1's own calls repeat.
		rng := rand.New(rand.NewPCG(7, 8))
		var evs []traces.NCCLEvent
		var starts []int64
		now := int64(1e12)
		a := []traces.NCCLEvent{{Op: "AllGather", CommID: 1, Count: 10}, {Op: "AllGather", CommID: 1, Count: 20},
			{Op: "ReduceScatter", CommID: 1, Count: 10}}
		b := []traces.NCCLEvent{{Op: "AllReduce", CommID: 2, Count: 5}, {Op: "AllReduce", CommID: 2, Count: 6}}
		orders := [][]traces.NCCLEvent{
			{b[0], a[0], a[1], b[1], a[2]},
			{a[0], b[0], a[1], a[2], b[1]},
			{a[0], a[1], b[0], b[1], a[2]},
			{b[0], b[1], a[0], a[1], a[2]},
		}
		for i := range 16 {
			calls := orders[(i*i+i/3)%len(orders)]
			now += 40 * ms
			starts = append(starts, now)
			for j, c := range calls {
				if j > 0 {
					now += ms + rng.Int64N(ms/4)
				}
				c.TimeNs, c.PID, c.Rank, c.NRanks = now, 9, int32(c.CommID)-1, 4
				evs = append(evs, c)
			}
		}
		steps := DetectIterations(evs)
		if len(steps) != 15 {
			t.Fatalf("%d steps, want 15", len(steps))
		}
		for i, s := range steps {
			// Each step starts at comm 1's first call of iteration i.
			if s.StartNs < starts[i] || s.StartNs >= starts[i+1] || s.Rank != 0 {
				t.Fatalf("step %d = %+v, want rank 0 starting in [%d, %d)", i, s, starts[i], starts[i+1])
			}
		}
	})
	t.Run("window cut mid-iteration", func(t *testing.T) {
		evs, starts := loop(1, 0, nil, body, 0, 10, nil)
		steps := DetectIterations(evs[2:]) // starts inside iteration 0
		if len(steps) != 9 || steps[0].StartNs != starts[1] {
			t.Fatalf("steps %+v, want 9 from %d", steps, starts[1])
		}
	})
	t.Run("two processes", func(t *testing.T) {
		a, _ := loop(1, 0, nil, body, 0, 6, nil)
		b, _ := loop(2, 1, nil, body[:2], 0, 9, nil)
		steps := DetectIterations(append(b, a...))
		n := map[int32]int{}
		for _, s := range steps {
			n[s.PID]++
			if s.Rank != s.PID-1 {
				t.Fatalf("pid %d has rank %d", s.PID, s.Rank)
			}
		}
		if n[1] != 6 || n[2] != 9 {
			t.Fatalf("steps per pid %v, want 1:6 2:9", n)
		}
	})
	t.Run("no repetition", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(3, 4))
		var evs []traces.NCCLEvent
		for i := range 200 {
			evs = append(evs, traces.NCCLEvent{TimeNs: int64(i) * ms, PID: 1, Op: "AllReduce", Count: rng.Int64N(1 << 40)})
		}
		if steps := DetectIterations(evs); len(steps) != 0 {
			t.Fatalf("%d steps from random calls", len(steps))
		}
	})
	t.Run("too few cycles", func(t *testing.T) {
		evs, _ := loop(1, 0, nil, body, 0, 1, nil)
		if steps := DetectIterations(evs); len(steps) != 0 {
			t.Fatalf("%d steps from fewer than three cycles", len(steps))
		}
	})
}

func TestLongestPeriodicPrefix(t *testing.T) {
	tests := []struct {
		s        []int
		len, per int
	}{
		{[]int{1, 2, 3, 1, 2, 3, 1, 2, 3, 1}, 10, 3},
		{[]int{1, 2, 1, 2, 1, 2, 9, 1, 2}, 6, 2},
		{[]int{5, 5, 5}, 3, 1},
		{[]int{1, 2, 3, 4}, 0, 0},
		{nil, 0, 0},
	}
	for _, tt := range tests {
		l, p := longestPeriodicPrefix(tt.s)
		if l != tt.len || p != tt.per {
			t.Errorf("%v: (%d, %d), want (%d, %d)", tt.s, l, p, tt.len, tt.per)
		}
	}
}

// FuzzDetectIterations: events may come from any process or bundle; the
// detector must not panic, and what it returns must be well formed.
func FuzzDetectIterations(f *testing.F) {
	f.Add([]byte{0, 1, 9, 1, 2, 1, 1, 2, 1, 0, 1, 9, 1, 2, 1, 1, 2, 1, 0, 1, 9, 1, 2, 1, 1, 2, 1, 0, 1, 9})
	f.Add([]byte{})
	f.Add([]byte{3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3})
	ops := []string{"AllReduce", "AllGather", "ReduceScatter", "Send", "GroupStart", "CommInitRank"}
	f.Fuzz(func(t *testing.T, b []byte) {
		var evs []traces.NCCLEvent
		now := int64(0)
		for i := 0; i+2 < len(b); i += 3 {
			now += int64(b[i+2]) * 1000
			evs = append(evs, traces.NCCLEvent{TimeNs: now, PID: int32(b[i] >> 7), Op: ops[int(b[i]&0x7f)%len(ops)],
				Count: int64(b[i+1]), CommID: uint64(b[i] & 1), Rank: int32(b[i]&3) - 1})
		}
		steps := DetectIterations(evs)
		for i, s := range steps {
			if s.StartNs > s.EndNs || s.Source != traces.StepSourceNCCL {
				t.Fatalf("bad step %+v", s)
			}
			if i > 0 && steps[i-1].PID == s.PID && (s.Iteration != steps[i-1].Iteration+1 || s.StartNs != steps[i-1].EndNs) {
				t.Fatalf("steps %+v and %+v do not follow each other", steps[i-1], s)
			}
		}
		_ = Skew(evs)
	})
}

// BenchmarkDetectIterations: 500 iterations of a 200-call FSDP-like step
// (100k events), the size of a long capture window of one rank.
func BenchmarkDetectIterations(b *testing.B) {
	ms := int64(1e6)
	body := []call{{"AllReduce", 1, 50 * ms}}
	for i := range 199 {
		op := "AllGather"
		if i >= 100 {
			op = "ReduceScatter"
		}
		body = append(body, call{op, int64(1 << (10 + i%8)), ms / 4})
	}
	evs, starts := loop(1, 0, nil, body, 0, 500, rand.New(rand.NewPCG(5, 6)))
	b.ReportAllocs()
	for b.Loop() {
		if n := len(DetectIterations(evs)); n != len(starts)-1 {
			b.Fatalf("%d steps, want %d", n, len(starts)-1)
		}
	}
	b.ReportMetric(float64(len(evs)), "events")
}
