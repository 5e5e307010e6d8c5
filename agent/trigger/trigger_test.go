package trigger

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/agent/steps"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// stream describes one rank's step times: a linear warm-up from warmFrom to
// base over warmIters iterations, then base with uniform noise of ±noise.
type stream struct {
	first     int64 // first iteration the agent sees (it may start late)
	last      int64
	warmIters int64
	warmFrom  time.Duration
	base      time.Duration
	noise     float64
	seed      uint64
	offset    time.Duration // clock offset of this host
}

func (s stream) durations() map[int64]time.Duration {
	r := rand.New(rand.NewPCG(s.seed, 1))
	out := map[int64]time.Duration{}
	for i := int64(0); i <= s.last; i++ {
		d := s.base
		if i < s.warmIters {
			d = s.warmFrom - time.Duration(float64(s.warmFrom-s.base)*float64(i)/float64(s.warmIters))
		}
		out[i] = time.Duration(float64(d) * (1 + s.noise*(2*r.Float64()-1)))
	}
	return out
}

// fired is what a trigger decided while fed a stream, and the statistics at
// that moment.
type fired struct {
	d     Decision
	stats steps.Stats
}

// feed plays a stream through a real step tracker into trig as markers of
// (job, run, rank), and returns the decisions.
func feed(t *testing.T, trig *Trigger, job, run string, rank int, s stream) []fired {
	t.Helper()
	tr := steps.New(steps.Config{Window: trig.Config().Window})
	var got []fired
	tr.Observe(func(st steps.Stats) {
		if d, ok := trig.Observe(st); ok {
			got = append(got, fired{d, st})
		}
	})
	durs := s.durations()
	at := t0.Add(s.offset)
	for i := int64(0); i <= s.last; i++ {
		if i >= s.first {
			if err := tr.Mark(steps.Marker{Job: job, Run: run, Rank: rank, Iteration: i, Time: at}); err != nil {
				t.Fatal(err)
			}
		}
		at = at.Add(durs[i])
	}
	return got
}

func TestFiresOnlyAfterSettling(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       Config
		s         stream
		wantStart int64 // 0: must not fire
		minFireAt int64
	}{
		{
			name: "settled before N fires at N",
			cfg:  DefaultConfig(),
			s:    stream{last: 1000, warmIters: 200, warmFrom: 3 * time.Second, base: 100 * time.Millisecond, noise: 0.02, seed: 1},
			// Iteration 550 begins: 600 is the next multiple of 100.
			wantStart: 600, minFireAt: 550,
		},
		{
			name: "warm-up longer than N waits for it",
			cfg:  DefaultConfig(),
			s:    stream{last: 1200, warmIters: 800, warmFrom: 2 * time.Second, base: 100 * time.Millisecond, noise: 0.02, seed: 2},
			// Step time keeps falling until 800; only a window of settled
			// steps after it passes the CV test.
			wantStart: 900, minFireAt: 800,
		},
		{
			name: "never settles never fires",
			cfg:  DefaultConfig(),
			s:    stream{last: 2000, base: 100 * time.Millisecond, noise: 0.5, seed: 3},
		},
		{
			name: "job too short never fires",
			cfg:  DefaultConfig(),
			s:    stream{last: 549, base: 100 * time.Millisecond, seed: 4},
		},
		{
			name:      "custom N, window, roundup",
			cfg:       Config{AtIteration: 40, Window: 10, MaxCV: 0.05, Iterations: 5, Roundup: 25},
			s:         stream{last: 200, warmIters: 60, warmFrom: time.Second, base: 50 * time.Millisecond, noise: 0.01, seed: 5},
			wantStart: 75, minFireAt: 60,
		},
		{
			name: "disabled",
			cfg:  Config{Disabled: true},
			s:    stream{last: 1000, base: 100 * time.Millisecond, seed: 6},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trig := New(tc.cfg)
			got := feed(t, trig, "job", "run1", 0, tc.s)
			if tc.wantStart == 0 {
				if len(got) != 0 {
					t.Fatalf("fired %+v, want no capture", got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("fired %d times (%+v), want once", len(got), got)
			}
			f := got[0]
			if f.d.StartIteration != tc.wantStart || f.d.Iterations != trig.Config().Iterations {
				t.Errorf("decision %+v, want start %d", f.d, tc.wantStart)
			}
			if f.stats.Iteration < tc.minFireAt || f.stats.CV >= trig.Config().MaxCV || f.stats.Window < trig.Config().Window {
				t.Errorf("fired on %+v: before iteration %d or unsettled", f.stats, tc.minFireAt)
			}
			// No step time inside the window it judged may still be warm-up.
			if f.stats.Iteration-int64(f.stats.Window) < tc.s.warmIters-int64(trig.Config().Window)/2 {
				t.Errorf("fired at iteration %d with a window reaching back into warm-up (ends %d)", f.stats.Iteration, tc.s.warmIters)
			}
			if f.d.CaptureID != CaptureID(tc.wantStart, f.d.Iterations) || f.d.Job != "job" || f.d.Run != "run1" || f.d.Reason == "" {
				t.Errorf("decision %+v", f.d)
			}
		})
	}
}

func TestRanksAgreeOnStart(t *testing.T) {
	// Four hosts, one rank each: different noise, clock offsets, and agents
	// that started watching at different iterations. Warm-up ends at 610.
	base := stream{last: 900, warmIters: 610, warmFrom: 1500 * time.Millisecond, base: 120 * time.Millisecond, noise: 0.03}
	var starts []int64
	var firedAt []int64
	for rank, mod := range []func(*stream){
		func(s *stream) { s.seed = 11 },
		func(s *stream) { s.seed = 12; s.first = 300; s.offset = 40 * time.Millisecond },
		func(s *stream) { s.seed = 13; s.noise = 0.05; s.offset = -3 * time.Second },
		func(s *stream) { s.seed = 14; s.first = 580; s.base = 121 * time.Millisecond },
	} {
		s := base
		mod(&s)
		got := feed(t, New(DefaultConfig()), "job", "r", rank, s)
		if len(got) != 1 {
			t.Fatalf("rank %d fired %d times", rank, len(got))
		}
		starts = append(starts, got[0].d.StartIteration)
		firedAt = append(firedAt, got[0].stats.Iteration)
	}
	for i, s := range starts {
		if s != starts[0] || s%100 != 0 {
			t.Fatalf("ranks disagree: start iterations %v (decided at %v)", starts, firedAt)
		}
		if firedAt[i] >= s {
			t.Fatalf("rank %d decided at %d, not before its start %d", i, firedAt[i], s)
		}
	}
	if starts[0] != 700 {
		t.Errorf("start %d, want 700", starts[0])
	}
}

func TestOncePerRunAndCooldown(t *testing.T) {
	settled := steps.Stats{Job: "j", Run: "a", Window: 50, CV: 0.01, Iteration: 600}
	now := t0
	for _, tc := range []struct {
		name  string
		cfg   Config
		steps []struct {
			run     string
			iter    int64
			advance time.Duration
			want    bool
		}
	}{
		{"once per run", DefaultConfig(), []struct {
			run     string
			iter    int64
			advance time.Duration
			want    bool
		}{
			{"a", 600, 0, true}, {"a", 601, 0, false}, {"a", 5000, time.Hour, false},
			{"b", 700, 0, true}, // a new run of the same job
		}},
		{"cooldown when unlimited", Config{MaxPerRun: -1, Cooldown: time.Minute}, []struct {
			run     string
			iter    int64
			advance time.Duration
			want    bool
		}{
			{"a", 600, 0, true},
			{"a", 650, 2 * time.Minute, false}, // still inside the decided window [700,720)
			{"a", 730, 0, true},
			{"a", 900, 30 * time.Second, false}, // cooldown
			{"a", 1000, time.Minute, true},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trig := New(tc.cfg)
			trig.now = func() time.Time { return now }
			for i, s := range tc.steps {
				now = now.Add(s.advance)
				st := settled
				st.Run, st.Iteration = s.run, s.iter
				if _, ok := trig.Observe(st); ok != s.want {
					t.Fatalf("step %d (%+v): fired %v, want %v", i, s, ok, s.want)
				}
			}
		})
	}
}

func TestStartIteration(t *testing.T) {
	for _, tc := range []struct{ it, r, want int64 }{
		{550, 100, 600}, {599, 100, 600}, {600, 100, 700}, {0, 100, 100}, {7, 0, 8}, {7, 1, 8},
	} {
		if got := StartIteration(tc.it, tc.r); got != tc.want {
			t.Errorf("StartIteration(%d, %d) = %d, want %d", tc.it, tc.r, got, tc.want)
		}
	}
}

func BenchmarkObserve(b *testing.B) {
	trig := New(Config{MaxPerRun: -1})
	st := steps.Stats{Job: "j", Window: 50, CV: 0.5, Iteration: 600}
	b.ReportAllocs()
	for i := range b.N {
		st.Rank = i % 8
		trig.Observe(st)
	}
}
