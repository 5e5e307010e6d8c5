package analyzers

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// noisy returns v with a deterministic relative noise of at most amp.
func noisy(rng *rand.Rand, v, amp float64) float64 { return v * (1 + amp*(2*rng.Float64()-1)) }

// stepSeries turns per-iteration step times into steps.parquet rows for
// ranks, back to back from t0.
func stepSeries(times []float64, ranks ...int) []traces.Step {
	var out []traces.Step
	at := t0
	for i, d := range times {
		end := at.Add(time.Duration(d * float64(time.Second)))
		for _, r := range ranks {
			out = append(out, traces.Step{Rank: int32(r), PID: int32(pid(r)), Iteration: int64(i), StartNs: at.UnixNano(), EndNs: end.UnixNano(), Source: traces.StepSourceMarker})
		}
		at = end
	}
	return out
}

// levels builds a series of n[i] points around level v[i] each.
func levels(seed uint64, amp float64, parts ...[2]float64) []float64 {
	rng := rand.New(rand.NewPCG(seed, 1))
	var out []float64
	for _, p := range parts {
		for range int(p[0]) {
			out = append(out, noisy(rng, p[1], amp))
		}
	}
	return out
}

func TestDetectWarmup(t *testing.T) {
	cfg := DefaultWarmupConfig()
	decline := make([]float64, 120)
	for i := range decline {
		decline[i] = 2.0 - 0.01*float64(i) // 2.0 down to 0.81, still falling
	}
	tests := []struct {
		name    string
		series  []float64
		end     int
		settled bool
	}{
		{"one change point", levels(1, 0.02, [2]float64{10, 2.0}, [2]float64{90, 0.5}), 10, true},
		{"two-stage warm-up", levels(2, 0.02, [2]float64{5, 5.0}, [2]float64{10, 1.5}, [2]float64{85, 0.5}), 15, true},
		{"no warm-up", levels(3, 0.05, [2]float64{100, 0.5}), 0, true},
		{"small dip is not warm-up", levels(4, 0.01, [2]float64{30, 0.52}, [2]float64{70, 0.5}), 0, true},
		{"never settles", decline, -1, false},
		{"settles then slows down", levels(5, 0.02, [2]float64{10, 2}, [2]float64{45, 0.5}, [2]float64{45, 0.8}), -1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := make([]point, len(tt.series))
			for i, v := range tt.series {
				s[i] = point{t: int64(i) * 1e9, iter: int64(i), v: v}
			}
			r := detectWarmup(s, cfg)
			if tt.end >= 0 && r.end != tt.end || r.settled != tt.settled {
				t.Errorf("end %d settled %v (cv %.3f drift %.3f short %v), want end %d settled %v", r.end, r.settled, r.tailCV, r.drift, r.tooShortSteady, tt.end, tt.settled)
			}
		})
	}
}

func TestWarmupTraining(t *testing.T) {
	series := levels(7, 0.02, [2]float64{10, 2.0}, [2]float64{90, 0.5})
	tests := []struct {
		name      string
		startIter int64
		pass      bool
	}{
		{"capture after warm-up", 50, true},
		{"capture during warm-up", 5, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := writeCapture(t, "", hostBundle{name: "h0", ranks: []int{0, 1}, seconds: 70, steps: stepSeries(series, 0, 1)})
			in.Hosts[0].Manifest.Trigger = traces.Trigger{Kind: traces.TriggerStableIteration, StartIteration: tt.startIter, Iterations: 10}
			fs := run(t, Warmup, in)
			if len(fs) != 1 {
				t.Fatalf("findings %+v", fs)
			}
			f := fs[0]
			var warm float64
			for _, v := range series[:10] {
				warm += v
			}
			check(t, f, map[string]float64{"warmup_iterations": 10, "warmup_seconds": warm, "settled": 1, "capture_after_warmup": b2f(tt.pass), "verdict_pass": b2f(tt.pass)})
			ev := evidence(f)
			if r := ev["first_minutes_p99_over_steady"]; r < 3.5 || r > 4.5 {
				t.Errorf("first minutes p99 / steady p99 = %v, want about 2.0/0.5", r)
			}
			if want := map[bool]string{true: traces.SeverityInfo, false: traces.SeverityWarning}[tt.pass]; f.Severity != want {
				t.Errorf("severity %s, want %s (%s)", f.Severity, want, f.Title)
			}
			// Ten warm-up steps about 1.5 s over the steady median, on 2 ranks.
			if f.Impact.GPUSeconds < 2*10*1.4 || f.Impact.GPUSeconds > 2*10*1.6 {
				t.Errorf("impact %v GPU-s, want about 30", f.Impact.GPUSeconds)
			}
		})
	}
}

func TestWarmupNeverSettles(t *testing.T) {
	series := make([]float64, 120)
	for i := range series {
		series[i] = 2.0 - 0.01*float64(i)
	}
	in := writeCapture(t, "", hostBundle{name: "h0", ranks: []int{0}, seconds: 200, steps: stepSeries(series, 0)})
	fs := run(t, Warmup, in)
	if len(fs) != 1 || fs[0].Severity != traces.SeverityWarning || !strings.Contains(fs[0].Title, "never settles") {
		t.Fatalf("findings %+v", fs)
	}
	check(t, fs[0], map[string]float64{"settled": 0, "verdict_pass": 0})
}

// latencyEvents makes latency events one every 100 ms from t0.
func latencyEvents(vals []float64) []traces.Event {
	out := make([]traces.Event, len(vals))
	for i, v := range vals {
		out[i] = traces.Event{TimeNs: t0.Add(time.Duration(i) * 100 * time.Millisecond).UnixNano(), Kind: traces.EventLatency, GPU: -1, Rank: -1,
			Attrs: map[string]string{"job": "train", "value_seconds": strconv.FormatFloat(v, 'g', -1, 64)}}
	}
	return out
}

func TestWarmupInference(t *testing.T) {
	tests := []struct {
		name   string
		series []float64
		pass   bool
		warm   float64
	}{
		{"traffic during warm-up", levels(8, 0.05, [2]float64{30, 0.8}, [2]float64{170, 0.1}), false, 30},
		{"warmed up before traffic", levels(9, 0.05, [2]float64{200, 0.1}), true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evs := latencyEvents(tt.series)
			for _, e := range latencyEvents(levels(12, 0, [2]float64{50, 9})) {
				e.Attrs["job"] = "other-job" // another server's warm-up, same host
				evs = append(evs, e)
			}
			in := writeCapture(t, "", hostBundle{name: "h0", ranks: []int{0}, seconds: 30, events: evs})
			fs := run(t, Warmup, in)
			if len(fs) != 1 {
				t.Fatalf("findings %+v", fs)
			}
			check(t, fs[0], map[string]float64{"warmup_requests": tt.warm, "warmup_seconds": tt.warm / 10,
				"traffic_after_warmup": b2f(tt.pass), "verdict_pass": b2f(tt.pass), "points": 200})
			if !tt.pass && !strings.Contains(fs[0].Recommendation, "readiness") {
				t.Errorf("recommendation %q", fs[0].Recommendation)
			}
		})
	}
}

// Compile and autotune work in the Kineto trace of a stable-iteration
// capture fails the check even when the step times look settled.
func TestWarmupCountsCompileEvents(t *testing.T) {
	series := levels(10, 0.02, [2]float64{100, 0.5})
	in := writeCapture(t, "", hostBundle{name: "h0", ranks: []int{0}, seconds: 60, steps: stepSeries(series, 0)})
	trace := filepath.Join(t.TempDir(), "rank0.json")
	cpu := func(name string, ts float64) kev {
		return kev{Ph: "X", Cat: "cpu_op", Name: name, Pid: 100, Tid: 100, Ts: ts, Dur: dur(10)}
	}
	writeKineto(t, trace, 0, []kev{
		cpu("compile_inner (dynamo_timed)", 1000), cpu("compile_fx_inner (dynamo_timed)", 1100),
		cpu("CachingAutotuner.benchmark_all_configs", 1200), launch("cudaStreamBeginCapture", 1300, 5, 1),
		launch("cudaGraphInstantiate", 1400, 5, 2), cpu("Lazy Function Loading", 1500), cpu("aten::mm", 1600),
		gpu("kernel", "void gemm()", 7, 1700, 10, 3),
	})
	st, err := os.Stat(trace)
	if err != nil {
		t.Fatal(err)
	}
	h := &in.Hosts[0]
	h.Manifest.Trigger = traces.Trigger{Kind: traces.TriggerStableIteration, StartIteration: 50, Iterations: 10}
	h.Manifest.Parts = append(h.Manifest.Parts, traces.Part{Name: "kineto/rank0.json", MediaType: traces.MediaKineto, Size: st.Size()})
	open := h.Open
	h.Open = func(ctx context.Context, name string) (io.ReadCloser, error) {
		if name == "kineto/rank0.json" {
			return os.Open(trace)
		}
		return open(ctx, name)
	}
	fs := run(t, Warmup, in)
	if len(fs) != 1 {
		t.Fatalf("findings %+v", fs)
	}
	check(t, fs[0], map[string]float64{"compile_events": 2, "autotune_events": 1, "cuda_graph_captures": 2, "jit_events": 1, "settled": 1, "verdict_pass": 0})
	if !strings.Contains(fs[0].Title, "5 compile, CUDA-graph capture or autotune events") {
		t.Errorf("title %q", fs[0].Title)
	}
}

func BenchmarkDetectWarmup(b *testing.B) {
	vals := levels(11, 0.05, [2]float64{5000, 0.8}, [2]float64{95000, 0.1})
	s := make([]point, len(vals))
	for i, v := range vals {
		s[i] = point{t: int64(i) * 1e7, iter: int64(i), v: v}
	}
	cfg := DefaultWarmupConfig()
	for b.Loop() {
		if r := detectWarmup(s, cfg); r.end != 5000 {
			b.Fatal(fmt.Sprint("end ", r.end))
		}
	}
	b.ReportMetric(float64(len(s))*float64(b.N)/b.Elapsed().Seconds(), "points/s")
}
