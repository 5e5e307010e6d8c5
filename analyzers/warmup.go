package analyzers

import (
	"bytes"
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/loupe-dev/loupe/analyzers/kineto"
	"github.com/loupe-dev/loupe/traces"
)

// WarmupConfig holds the warm-up analyzer's thresholds.
type WarmupConfig struct {
	// MinPoints is the shortest series judged.
	MinPoints int
	// MinSegment is the fewest points on either side of a change point.
	MinSegment int
	// MinShift: a fall of the mean by at least this factor (0.10: the
	// warm-up's mean is 10 % above the steady state's) is a change point,
	// provided it is also MinT standard errors large.
	MinShift float64
	MinT     float64
	// The steady state (the series after the last change point) must hold
	// at least MinSteadyShare of the points, and vary (robust coefficient of
	// variation) by at most MaxTailCV, and drift (its least-squares trend
	// from first to last point) by at most MaxTailDrift, to count as settled.
	MinSteadyShare float64
	MaxTailCV      float64
	MaxTailDrift   float64
	// FirstMinutes is the start of the series compared with the steady state.
	FirstMinutes time.Duration
	// MaxPoints bounds the latency values read (the first ones are kept).
	MaxPoints int
}

// DefaultWarmupConfig returns the documented defaults.
func DefaultWarmupConfig() WarmupConfig {
	return WarmupConfig{
		MinPoints: 20, MinSegment: 5, MinShift: 0.10, MinT: 5,
		MinSteadyShare: 0.2, MaxTailCV: 0.15, MaxTailDrift: 0.05,
		FirstMinutes: 2 * time.Minute, MaxPoints: 1 << 20,
	}
}

// Warmup is the warm-up analyzer with the default configuration.
var Warmup = NewWarmup(DefaultWarmupConfig())

// NewWarmup returns the warm-up analyzer with cfg.
func NewWarmup(cfg WarmupConfig) *Analyzer {
	return &Analyzer{
		Name:    "warmup",
		Version: "2",
		Doc: `warm-up verification: where step time or request latency settles

Series: training step times (per iteration, the median over ranks) from
the run's step history (step_history.parquet: every step from the first
the agent saw, spans of merged steps past its head, each standing for its
mean), so that a capture taken after warm-up still sees the warm-up; from
the window's steps.parquet when a capture has no history. Of a history,
each rank's last process segment is judged (after its last restart: a new
PID or an iteration that went back), up to the capture's window when at
least MinPoints come before it (profiling slows the window's steps a
little), and the restarts are counted. Inference
request latencies come from the latency events of events.jsonl (POST
/v1/latency on the agent; those naming another job are ignored); each
series is judged on its own.

Change points: the series is taken in logarithms (so a shift is a ratio and
spikes weigh less) and split where one mean-shift fits best by least
squares (the split minimizing the two segments' summed squared deviations,
at least MinSegment points each). The split is a warm-up end when the mean
falls across it by at least MinShift (10 %) and by MinT (5) standard
errors; binary segmentation then searches the part after it again, so the
last such fall is the warm-up end. The rest is the steady state. It is
settled when it holds at least MinSteadyShare (20 %) of the points, its
robust coefficient of variation (1.4826 MAD / median) is at most MaxTailCV
(0.15) and its least-squares trend drifts by at most MaxTailDrift (5 %)
from its first to its last point.

Reported: warm-up length in iterations (requests) and seconds, the p99 of
the first FirstMinutes (2 min) against the steady state's p99 (over single
steps, not merged spans, where there are enough), whether the
stable-iteration capture began after the warm-up (its start iteration, else
its start time), whether traffic did (no warm-up seen in served latencies),
and compile, JIT, CUDA-graph capture and autotune events counted in the
Kineto traces (torch.compile's dynamo_timed regions, Inductor codegen,
cudaStreamBeginCapture / cudaGraphInstantiate, Triton and cuDNN autotuning,
lazy function loading). Verdict: pass (info) when settled, the capture and
traffic came after warm-up and a stable-iteration capture holds no compile
or autotune work; fail (warning) otherwise. Impact: for training, the
warm-up steps' time above the steady median, times the ranks: in the
window, the warm-up steps it holds; over the job's life, a one-off cost
paid at every process start the history shows.`,
		Requires: []string{traces.PartStepHistory, traces.PartSteps, traces.PartEvents, traces.KinetoDir},
		Run:      func(pass *Pass) error { return runWarmup(pass, cfg) },
	}
}

// WarmupEvents counts the warm-up work in one Kineto trace: host-side
// events whose names mark compilation, JIT loading, CUDA graph capture or
// autotuning.
type WarmupEvents struct {
	Compile  int64 `json:"compile"`
	JIT      int64 `json:"jit"`
	Graph    int64 `json:"cuda_graph_capture"`
	Autotune int64 `json:"autotune"`
}

// Total is every counted event.
func (w WarmupEvents) Total() int64 { return w.Compile + w.JIT + w.Graph + w.Autotune }

// warmupMarkers are name fragments of warm-up work, by kind.
var warmupMarkers = []struct {
	counter func(*WarmupEvents) *int64
	markers [][]byte
}{
	{func(w *WarmupEvents) *int64 { return &w.Compile }, [][]byte{[]byte("(dynamo_timed)"), []byte("entire_frame_compile"), []byte("compile_fx"), []byte("GraphLowering.compile"), []byte("Scheduler.codegen")}},
	{func(w *WarmupEvents) *int64 { return &w.JIT }, [][]byte{[]byte("Lazy Function Loading"), []byte("cuModuleLoad"), []byte("nvrtc")}},
	{func(w *WarmupEvents) *int64 { return &w.Graph }, [][]byte{[]byte("cudaStreamBeginCapture"), []byte("cudaGraphInstantiate"), []byte("cuGraphInstantiate")}},
	{func(w *WarmupEvents) *int64 { return &w.Autotune }, [][]byte{[]byte("utotun"), []byte("CachingAutotuner"), []byte("select_algorithm"), []byte("cudnnFind")}},
}

// count looks at one host-side event of a trace (GPU events are kernels
// and copies, never warm-up work).
func (w *WarmupEvents) count(ev *kineto.Event) {
	if ev.Stream >= 0 || len(ev.Name) == 0 {
		return
	}
	for _, k := range warmupMarkers {
		for _, m := range k.markers {
			if bytes.Contains(ev.Name, m) {
				*k.counter(w)++
				return
			}
		}
	}
}

// point is one value of a series.
type point struct {
	t    int64   // Unix ns
	iter int64   // iteration, or request number
	v    float64 // seconds
	// n is how many steps the point stands for: 1, or the steps of a merged
	// span of the step history (v is then their mean).
	n int64
}

// single reports whether the point is one step or request, not a mean.
func (p point) single() bool { return p.n <= 1 }

// warmupResult is what detectWarmup finds in a series.
type warmupResult struct {
	end               int     // index of the first steady point (0: no warm-up)
	shift             float64 // warm-up mean over steady mean (geometric)
	settled           bool
	tailCV, drift     float64
	tooShortSteady    bool
	firstP99, tailP99 float64
}

// detectWarmup runs the documented change-point method over s, in time order.
func detectWarmup(s []point, cfg WarmupConfig) warmupResult {
	n := len(s)
	x := make([]float64, n)
	s1 := make([]float64, n+1)
	s2 := make([]float64, n+1)
	for i, p := range s {
		x[i] = math.Log(max(p.v, 1e-9))
		s1[i+1] = s1[i] + x[i]
		s2[i+1] = s2[i] + x[i]*x[i]
	}
	mean := func(i, j int) float64 { return (s1[j] - s1[i]) / float64(j-i) }
	sse := func(i, j int) float64 {
		d := s1[j] - s1[i]
		return max(s2[j]-s2[i]-d*d/float64(j-i), 0)
	}
	m := max(cfg.MinSegment, 2)
	var r warmupResult
	for lo := 0; n-lo >= 2*m; {
		best, bestK := math.Inf(1), -1
		for k := lo + m; k <= n-m; k++ {
			if c := sse(lo, k) + sse(k, n); c < best {
				best, bestK = c, k
			}
		}
		fall := mean(lo, bestK) - mean(bestK, n)
		se := math.Sqrt(best/float64(max(n-lo-2, 1))) * math.Sqrt(1/float64(bestK-lo)+1/float64(n-bestK))
		if fall < math.Log1p(cfg.MinShift) || fall < cfg.MinT*se {
			break
		}
		r.end = bestK
		lo = bestK
	}
	if r.end > 0 {
		r.shift = math.Exp(mean(0, r.end) - mean(r.end, n))
	} else {
		r.shift = 1
	}
	tail := s[r.end:]
	vals := make([]float64, len(tail))
	for i, p := range tail {
		vals[i] = p.v
	}
	slices.Sort(vals)
	med := quantile(vals, 0.5)
	// Percentiles need single steps: a merged span's mean hides its tail.
	singles := singleValues(tail)
	if len(singles) < max(cfg.MinSegment, 2) {
		singles = vals
	}
	dev := make([]float64, len(vals))
	for i, v := range vals {
		dev[i] = math.Abs(v - med)
	}
	slices.Sort(dev)
	if med > 0 {
		r.tailCV = 1.4826 * quantile(dev, 0.5) / med
	}
	// Least-squares trend of log values over the tail's index.
	var sx, sy, sxx, sxy float64
	for i := range tail {
		fi, y := float64(i), x[r.end+i]
		sx, sy, sxx, sxy = sx+fi, sy+y, sxx+fi*fi, sxy+fi*y
	}
	if k := float64(len(tail)); k >= 2 {
		slope := (k*sxy - sx*sy) / (k*sxx - sx*sx)
		r.drift = math.Exp(slope*(k-1)) - 1
	}
	r.tooShortSteady = float64(len(tail)) < cfg.MinSteadyShare*float64(n) || len(tail) < m
	r.settled = !r.tooShortSteady && r.tailCV <= cfg.MaxTailCV && math.Abs(r.drift) <= cfg.MaxTailDrift
	r.tailP99 = quantile(singles, 0.99)
	var head []point
	for _, p := range s {
		if p.t-s[0].t < cfg.FirstMinutes.Nanoseconds() {
			head = append(head, p)
		}
	}
	first := singleValues(head)
	if len(first) == 0 {
		for _, p := range head {
			first = append(first, p.v)
		}
		slices.Sort(first)
	}
	r.firstP99 = quantile(first, 0.99)
	return r
}

// singleValues returns the sorted values of the points that are one step each.
func singleValues(s []point) []float64 {
	var out []float64
	for _, p := range s {
		if p.single() {
			out = append(out, p.v)
		}
	}
	slices.Sort(out)
	return out
}

// iterAcc gathers one iteration's (or merged span's) step times over ranks.
type iterAcc struct {
	start int64
	n     int64
	durs  []float64
}

// trainingSeries is the training series and where it came from.
type trainingSeries struct {
	points []point
	hosts  map[*Host]bool
	ranks  int
	// fromHistory is set when the series is the run's step history rather
	// than the capture window's steps; restarts then counts the process
	// restarts before the segment judged (the most they were on any rank).
	fromHistory bool
	restarts    int
}

// medianSeries turns per-iteration accumulators into a series: the median
// over ranks, in iteration order.
func medianSeries(iters map[int64]*iterAcc) []point {
	var s []point
	for _, it := range slices.Sorted(maps.Keys(iters)) {
		a := iters[it]
		slices.Sort(a.durs)
		med := a.durs[len(a.durs)/2]
		if len(a.durs)%2 == 0 {
			med = (a.durs[len(a.durs)/2-1] + med) / 2
		}
		s = append(s, point{t: a.start, iter: it, v: med, n: a.n})
	}
	return s
}

// windowSeries is the training series of the capture window's steps.parquet.
func windowSeries(pass *Pass) (trainingSeries, error) {
	iters := map[int64]*iterAcc{}
	ts := trainingSeries{hosts: map[*Host]bool{}}
	ranks := map[int32]bool{}
	err := EachStep(pass, func(h *Host, s *traces.Step) error {
		if s.EndNs <= s.StartNs {
			return nil
		}
		a := iters[s.Iteration]
		if a == nil {
			a = &iterAcc{start: s.StartNs, n: 1}
			iters[s.Iteration] = a
		}
		a.start = min(a.start, s.StartNs)
		a.durs = append(a.durs, float64(s.EndNs-s.StartNs)/1e9)
		ts.hosts[h] = true
		ranks[s.Rank] = true
		return nil
	})
	ts.points, ts.ranks = medianSeries(iters), len(ranks)
	return ts, err
}

// historySeries is the training series of the run's step history: for each
// rank its last process segment (rows after the last PID change or
// iteration that went back: the process the capture saw, with its own
// warm-up), then per span start the median over ranks. Two scans keep
// memory to one accumulator per span start, not every rank's rows.
func historySeries(pass *Pass) (trainingSeries, error) {
	type segment struct {
		pid      int32
		next     int64 // iteration after the last row
		startNs  int64 // first row of the current segment
		restarts int
	}
	segs := map[int32]*segment{}
	err := EachStepSpan(pass, func(_ *Host, sp *traces.StepSpan) error {
		if sp.Steps <= 0 || sp.EndNs <= sp.StartNs {
			return nil
		}
		g := segs[sp.Rank]
		switch {
		case g == nil:
			segs[sp.Rank] = &segment{pid: sp.PID, next: sp.FirstIteration + int64(sp.Steps), startNs: sp.StartNs}
			return nil
		case sp.PID != g.pid || sp.FirstIteration < g.next:
			g.pid, g.startNs = sp.PID, sp.StartNs
			g.restarts++
		}
		g.next = sp.FirstIteration + int64(sp.Steps)
		return nil
	})
	ts := trainingSeries{hosts: map[*Host]bool{}, ranks: len(segs), fromHistory: true}
	if err != nil || len(segs) == 0 {
		return ts, err
	}
	for _, g := range segs {
		ts.restarts = max(ts.restarts, g.restarts)
	}
	iters := map[int64]*iterAcc{}
	err = EachStepSpan(pass, func(h *Host, sp *traces.StepSpan) error {
		g := segs[sp.Rank]
		if g == nil || sp.Steps <= 0 || sp.EndNs <= sp.StartNs || sp.PID != g.pid || sp.StartNs < g.startNs {
			return nil
		}
		a := iters[sp.FirstIteration]
		if a == nil {
			a = &iterAcc{start: sp.StartNs, n: int64(sp.Steps)}
			iters[sp.FirstIteration] = a
		}
		a.start = min(a.start, sp.StartNs)
		a.n = min(a.n, int64(sp.Steps))
		a.durs = append(a.durs, float64(sp.MeanNs())/1e9)
		ts.hosts[h] = true
		return nil
	})
	ts.points = medianSeries(iters)
	return ts, err
}

func runWarmup(pass *Pass, cfg WarmupConfig) error {
	in := pass.Input
	// Training: per iteration, the median step time over ranks, from the
	// run's step history when the capture carries one (the window alone
	// cannot show a warm-up that ended before it), else from the window.
	train, err := historySeries(pass)
	if err != nil {
		return err
	}
	if len(train.points) < cfg.MinPoints {
		if train, err = windowSeries(pass); err != nil {
			return err
		}
	}
	// Inference: latency values in time order.
	var lat []point
	latHosts := map[*Host]bool{}
	err = EachEvent(pass, func(h *Host, e *traces.Event) error {
		if e.Kind != traces.EventLatency || len(lat) >= cfg.MaxPoints || e.Attrs["job"] != "" && e.Attrs["job"] != h.Manifest.Job {
			return nil
		}
		v, err := strconv.ParseFloat(e.Attrs["value_seconds"], 64)
		if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
			return nil
		}
		lat = append(lat, point{t: e.TimeNs, v: v})
		latHosts[h] = true
		return nil
	})
	if err != nil {
		return err
	}
	var compile WarmupEvents
	hasKineto := false
	for i := range in.Hosts {
		hasKineto = hasKineto || in.Hosts[i].Has(traces.KinetoDir)
	}
	if hasKineto {
		kr, _, err := kinetoRanks(pass)
		if err != nil {
			return err
		}
		for _, r := range kr {
			compile.Compile += r.Warmup.Compile
			compile.JIT += r.Warmup.JIT
			compile.Graph += r.Warmup.Graph
			compile.Autotune += r.Warmup.Autotune
		}
	}

	if len(train.points) >= cfg.MinPoints {
		reportWarmup(pass, cfg, "step time", train, compile, hasKineto)
	}
	if len(lat) >= cfg.MinPoints {
		slices.SortStableFunc(lat, func(a, b point) int { return cmp.Compare(a.t, b.t) })
		for i := range lat {
			lat[i].iter = int64(i)
		}
		reportWarmup(pass, cfg, "request latency", trainingSeries{points: lat, hosts: latHosts}, compile, hasKineto)
	}
	return nil
}

// reportWarmup judges one series (training when it has ranks, else request
// latency) and reports the verdict.
func reportWarmup(pass *Pass, cfg WarmupConfig, what string, ser trainingSeries, compile WarmupEvents, hasKineto bool) {
	s, hosts, nranks := ser.points, ser.hosts, ser.ranks
	var hostList []*Host
	for i := range pass.Input.Hosts {
		if h := &pass.Input.Hosts[i]; hosts[h] {
			hostList = append(hostList, h)
		}
	}
	m := hostList[0].Manifest
	// A history reaches into the capture's own window, whose profiling
	// slows steps a little: the run is judged up to the window when there
	// is enough of it, so the measurement does not fail its own check.
	if ser.fromHistory {
		cut := slices.IndexFunc(s, func(p point) bool {
			if m.Trigger.StartIteration > 0 {
				return p.iter >= m.Trigger.StartIteration
			}
			return !time.Unix(0, p.t).Before(m.Start)
		})
		if cut >= cfg.MinPoints {
			s = s[:cut]
		}
	}
	r := detectWarmup(s, cfg)
	training := nranks > 0
	endT, endIter := s[r.end].t, s[r.end].iter
	var failures []string
	if !r.settled {
		why := fmt.Sprintf("its steady part varies %.0f %% and drifts %+.0f %%", 100*r.tailCV, 100*r.drift)
		if r.tooShortSteady {
			why = "it is still changing at the end of the window"
			if ser.fromHistory {
				why = "it is still changing at the end of the run so far"
			}
		}
		failures = append(failures, fmt.Sprintf("%s never settles: %s", what, why))
	}
	captureAfter := true
	if training && r.end > 0 {
		if m.Trigger.StartIteration > 0 {
			captureAfter = m.Trigger.StartIteration >= endIter
		} else {
			captureAfter = !m.Start.Before(time.Unix(0, endT))
		}
	}
	stable := m.Trigger.Kind == traces.TriggerStableIteration
	if training && !captureAfter {
		failures = append(failures, fmt.Sprintf("the capture began before warm-up ended (iteration %d)", endIter))
	}
	if training && stable && compile.Compile+compile.Graph+compile.Autotune > 0 {
		failures = append(failures, fmt.Sprintf("the stable-iteration capture holds %d compile, CUDA-graph capture or autotune events (recompilation, or captured too early)",
			compile.Compile+compile.Graph+compile.Autotune))
	}
	trafficAfter := r.end == 0
	if !training && !trafficAfter {
		failures = append(failures, fmt.Sprintf("traffic was served during warm-up: the first %d requests ran %.1fx slower than steady state", r.end, r.shift))
	}

	unit := "iterations"
	if !training {
		unit = "requests"
	}
	ev := []traces.Metric{
		metric("points", float64(len(s)), unitCount),
		metric("warmup_"+unit, float64(endIter-s[0].iter), unitCount),
		metric("warmup_seconds", float64(endT-s[0].t)/1e9, unitSeconds),
		metric("warmup_over_steady", r.shift, unitRatio),
		metric("first_minutes_p99", r.firstP99, unitSeconds),
		metric("steady_p99", r.tailP99, unitSeconds),
		metric("first_minutes_p99_over_steady", r.firstP99/max(r.tailP99, 1e-12), unitRatio),
		metric("steady_cv", r.tailCV, unitRatio),
		metric("steady_drift", r.drift, unitRatio),
		metric("settled", b2f(r.settled), "bool"),
	}
	if training {
		ev = append(ev, metric("capture_after_warmup", b2f(captureAfter), "bool"),
			metric("from_step_history", b2f(ser.fromHistory), "bool"),
			metric("history_first_iteration", float64(s[0].iter), unitCount))
		if ser.fromHistory {
			ev = append(ev, metric("restarts", float64(ser.restarts), unitCount))
		}
	} else {
		ev = append(ev, metric("traffic_after_warmup", b2f(trafficAfter), "bool"))
	}
	if hasKineto {
		ev = append(ev, metric("compile_events", float64(compile.Compile), unitCount),
			metric("jit_events", float64(compile.JIT), unitCount),
			metric("cuda_graph_captures", float64(compile.Graph), unitCount),
			metric("autotune_events", float64(compile.Autotune), unitCount))
	}
	ev = append(ev, metric("verdict_pass", b2f(len(failures) == 0), "bool"))

	f := finding{Evidence: ev}
	sev := traces.SeverityInfo
	switch {
	case len(failures) == 0 && training && !ser.fromHistory && r.end == 0 && s[0].iter > 0:
		// The window began mid-run: a warm-up before it cannot be seen.
		f.Title = fmt.Sprintf("No warm-up within the window (from iteration %d); the capture has no step history, so the start of the run was not judged", s[0].iter)
		f.Recommendation = "Run an agent that writes step_history.parquet (every capture carries the run's steps from its first), so that the warm-up is judged from the start of the run."
	case len(failures) == 0:
		f.Title = fmt.Sprintf("Warm-up verified: %s settles after %d %s (%.0f s)", what, endIter-s[0].iter, unit, float64(endT-s[0].t)/1e9)
		f.Recommendation = "Nothing to do: the series settles and measurements came after warm-up."
	default:
		sev = traces.SeverityWarning
		f.Title = "Warm-up check failed: " + failures[0]
		f.Recommendation = warmupAdvice(training, failures)
	}
	// Training warm-up costs every rank the time its steps spent above the
	// steady median: once per process start, and inside the window only
	// for the steps the window holds.
	var excess, inWindow float64
	if training && r.end > 0 {
		steady := make([]float64, 0, len(s)-r.end)
		for _, p := range s[r.end:] {
			steady = append(steady, p.v)
		}
		slices.Sort(steady)
		med := quantile(steady, 0.5)
		for _, p := range s[:r.end] {
			e := max(p.v-med, 0) * float64(max(p.n, 1)) * float64(nranks)
			excess += e
			if !time.Unix(0, p.t).Before(m.Start) {
				inWindow += e
			}
		}
		f.OneOff, f.Occurrences = excess, ser.restarts+1
	}
	for _, h := range hostList {
		f.Targets = append(f.Targets, target{Host: h, GPU: -1, Rank: -1, Severity: sev, Lost: inWindow / float64(len(hostList))})
	}
	f.report(pass)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func warmupAdvice(training bool, failures []string) string {
	var b strings.Builder
	b.WriteString(strings.Join(failures, "; ") + ". ")
	if training {
		b.WriteString("Start stable-iteration captures later (trigger.at_iteration past the warm-up, or a larger trigger.window), " +
			"warm torch.compile up before timing (mark dynamic dimensions with torch._dynamo.mark_dynamic to avoid recompiles; set TORCH_LOGS=recompiles to see them), " +
			"and keep cudnn.benchmark autotuning to the first iterations by fixing input shapes.")
	} else {
		b.WriteString("Warm the server up before it takes traffic: send synthetic requests of every shape (batch sizes, sequence lengths) " +
			"until latency settles, and gate the readiness probe on it, so that CUDA graphs, compilation and autotuning happen before users arrive.")
	}
	return b.String()
}
