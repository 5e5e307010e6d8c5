package analyzers

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"github.com/loupe-dev/loupe/analyzers/kineto"
)

// How a Kineto trace is measured, in bounded memory.
//
// Each trace is read once, streaming (package kineto). Host calls and GPU
// events are paired by correlation id in two maps bounded by PendingLimit
// (matched entries leave at once; the oldest unmatched ones are given up
// when full). Each GPU event then becomes a 48-byte record. Kineto's output
// is sorted per track but not globally (CUPTI buffers are written out in no
// time order), so rather than trusting a reorder window the records are
// sorted: in memory up to SortChunk records, beyond that as sorted runs
// spilled to TempDir and merged. Last, one sweep in start order measures
// everything: the union of each kernel class (a heap of running events'
// ends), per-stream gaps, launch delays and per-name statistics. Memory per
// trace is about SortChunk x 48 bytes (6 MiB by default) plus the two maps,
// whatever the trace's size; traces are read GOMAXPROCS at a time.

// KinetoOptions say how Kineto traces are read and judged. The defaults
// (DefaultKinetoOptions) are HTA's, so that the numbers agree with
// HolisticTraceAnalysis on the same folder.
type KinetoOptions struct {
	// HTARounding rounds every event to whole microseconds the way HTA
	// does, in HTA's arithmetic: ts and dur read as doubles (as Python's
	// json reads them), the start rounded up and ts+dur, added in doubles,
	// rounded down. A nanosecond-resolution ts is about 1.7e15 us, where
	// doubles are 0.25 us apart, so HTA's starts can differ from the exact
	// decimal by a microsecond; these are HTA's. Without it, Kineto's
	// nanoseconds are kept exactly.
	HTARounding bool
	// IncludeLastStep keeps GPU work launched during the last ProfilerStep.
	// HTA drops it when a trace has two or more steps, because the profiler
	// stops mid-step; it also drops GPU work it cannot tie to a host call.
	IncludeLastStep bool
	// ConsecutiveKernelDelay: a gap between two kernels of a stream shorter
	// than this, with the next kernel already launched, is "kernel wait".
	ConsecutiveKernelDelay time.Duration
	// RuntimeCutoff: a launch call longer than this is a runtime outlier; a
	// kernel shorter than its launch call, which is at most this long, is a
	// short kernel.
	RuntimeCutoff time.Duration
	// LaunchDelayCutoff: a kernel starting more than this after its launch
	// call returned is a launch-delay outlier.
	LaunchDelayCutoff time.Duration
	// IncludeMemoryLaunches counts cudaMemcpyAsync and cudaMemsetAsync in
	// the launch statistics, as HTA does by default.
	IncludeMemoryLaunches bool
	// ExtendedLaunchAPIs also counts the launches HTA does not recognise
	// (cuLaunchKernel, cuLaunchKernelEx, and cudaGraphLaunch, one call of
	// which starts many kernels; HTA's #61, #271, #290). By default only
	// HTA's set counts (cudaLaunchKernel, cudaLaunchKernelExC, and the
	// memory calls with IncludeMemoryLaunches), so the numbers are HTA's.
	ExtendedLaunchAPIs bool
	// SortChunk is how many GPU events (48 bytes each) are sorted in memory
	// before a sorted run is spilled to TempDir.
	SortChunk int
	// PendingLimit bounds, per side, the host calls and GPU events waiting
	// for their counterpart's correlation id; the oldest are given up first.
	PendingLimit int
	// TempDir holds spilled runs ("" for the system default).
	TempDir string
	// Limits bound what the parser accepts.
	Limits kineto.Limits
}

// DefaultKinetoOptions returns HTA's defaults: 30 us consecutive-kernel
// delay, 50 us runtime cutoff, 100 us launch-delay cutoff.
func DefaultKinetoOptions() KinetoOptions {
	return KinetoOptions{
		HTARounding:            true,
		ConsecutiveKernelDelay: 30 * time.Microsecond,
		RuntimeCutoff:          50 * time.Microsecond,
		LaunchDelayCutoff:      100 * time.Microsecond,
		IncludeMemoryLaunches:  true,
		SortChunk:              1 << 17,
		PendingLimit:           1 << 18,
	}
}

// Bounds on what one trace may hold, so that hostile input cannot grow the
// tables without limit.
const (
	kinetoMaxNames     = 1 << 16  // distinct GPU event names; the rest pool as "(other names)"
	kinetoMaxNameBytes = 32 << 20 // and their total size
	// kinetoMaxShared bounds the GPU events waiting on one correlation id
	// (a CUDA graph launch runs many); beyond it they go unmatched.
	kinetoMaxShared  = 1 << 12
	kinetoMaxStreams = 1 << 12
	kinetoMaxSteps   = 1 << 16
	// kinetoMaxDuration drops events longer than 7 days, as HTA does
	// (CUPTI timestamp overflows).
	kinetoMaxDuration = 7 * 24 * int64(time.Hour)
	otherNames        = "(other names)"
)

// FLOPsPerStep is the operators' FLOPs per profiler step, 0 when the
// trace has no flops arguments or no steps.
func (r *KinetoRank) FLOPsPerStep() float64 {
	if r.Steps == 0 {
		return 0
	}
	return r.FLOPs / float64(r.Steps)
}

// KinetoRank is everything Loupe measures in one rank's Kineto trace.
type KinetoRank struct {
	Host *Host  `json:"-"`
	Part string `json:"part"` // part name, e.g. kineto/rank0-1234.json.gz
	Rank int    `json:"rank"` // -1 when neither the trace nor the part says
	// WorldSize is from the trace's distributedInfo, -1 when absent.
	WorldSize int `json:"world_size"`
	// Events is how many trace events were read; GPUEvents how many of them
	// ran on a GPU stream and were kept for the analyses.
	Events    int64 `json:"events"`
	GPUEvents int64 `json:"gpu_events"`
	// DroppedLastStep counts GPU events left out as HTA does (launched in the
	// last ProfilerStep, or with no host call to tie them to).
	DroppedLastStep int64 `json:"dropped_last_step"`
	// Steps is how many distinct ProfilerStep markers the trace has.
	Steps int `json:"steps"`
	// FLOPs sums the operators' flops arguments (a trace recorded with
	// with_flops=True); 0 without them.
	FLOPs float64 `json:"flops,omitempty"`

	Temporal RankBreakdown `json:"temporal"`
	Streams  []StreamIdle  `json:"streams"`
	Launch   LaunchStats   `json:"launch"`
	Overlap  CommOverlap   `json:"overlap"`
	// Kernels are per-name statistics, longest total first.
	Kernels []KernelStat `json:"kernels"`
	// Warmup counts compile, JIT, CUDA-graph capture and autotune events.
	Warmup WarmupEvents `json:"warmup"`
	// Notes say where the analysis had to approximate.
	Notes []string `json:"notes,omitempty"`
}

// RankBreakdown is HTA's temporal breakdown of one rank: the span from the
// first GPU event's start to the last one's end, split into idle (no event
// running), computation (any computation kernel running) and the rest.
// Non-computation time is further split, each part counted only when no
// higher class runs: communication, then memory, then other.
type RankBreakdown struct {
	Rank          int           `json:"rank"`
	Span          time.Duration `json:"span_ns"`
	Idle          time.Duration `json:"idle_ns"`
	Compute       time.Duration `json:"compute_ns"`
	NonCompute    time.Duration `json:"non_compute_ns"`
	Communication time.Duration `json:"communication_ns"`
	Memory        time.Duration `json:"memory_ns"`
	Other         time.Duration `json:"other_ns"`
}

// Pct is d as a percentage of the span, rounded to 2 decimals as HTA does.
func (b RankBreakdown) Pct(d time.Duration) float64 {
	if b.Span <= 0 {
		return 0
	}
	return math.Round(10000*float64(d)/float64(b.Span)) / 100
}

// StreamIdle is HTA's idle-time breakdown of one CUDA stream: each gap
// between consecutive kernels (memcpys, memsets) is host wait when the next
// one's launch call started after the previous one ended, else kernel wait
// when shorter than ConsecutiveKernelDelay, else other.
type StreamIdle struct {
	Stream     int64         `json:"stream"`
	Kernels    int64         `json:"kernels"`
	HostWait   time.Duration `json:"host_wait_ns"`
	KernelWait time.Duration `json:"kernel_wait_ns"`
	Other      time.Duration `json:"other_ns"`
	// Gaps counts the gaps of each kind: host wait, kernel wait, other.
	Gaps [3]int64 `json:"gaps"`
}

// Idle is the stream's total idle time between its kernels.
func (s StreamIdle) Idle() time.Duration { return s.HostWait + s.KernelWait + s.Other }

// LaunchStats describe host launch calls matched to their GPU work by
// correlation id.
type LaunchStats struct {
	// Launches is the number of (launch call, GPU event) pairs.
	Launches int64            `json:"launches"`
	ByAPI    map[string]int64 `json:"by_api"`
	// ShortKernels ran for less time than their launch call took (which took
	// at most RuntimeCutoff): launch-bound work.
	ShortKernels int64 `json:"short_kernels"`
	// RuntimeOutliers are launch calls longer than RuntimeCutoff.
	RuntimeOutliers int64 `json:"runtime_outliers"`
	// DelayOutliers started more than LaunchDelayCutoff after their launch
	// call returned.
	DelayOutliers int64         `json:"delay_outliers"`
	CPUTime       time.Duration `json:"cpu_time_ns"`       // summed launch call durations
	ShortCPUTime  time.Duration `json:"short_cpu_time_ns"` // summed launch time of the short kernels
	ShortGPUTime  time.Duration `json:"short_gpu_time_ns"` // summed duration of the short kernels
	TotalDelay    time.Duration `json:"total_delay_ns"`
	MaxDelay      time.Duration `json:"max_delay_ns"`
	OutlierDelay  time.Duration `json:"outlier_delay_ns"` // summed delay of the outliers
	// UnmatchedCalls are launch calls whose GPU work never appeared.
	UnmatchedCalls int64 `json:"unmatched_calls"`
}

// MeanDelay is the mean launch delay.
func (l LaunchStats) MeanDelay() time.Duration {
	if l.Launches == 0 {
		return 0
	}
	return l.TotalDelay / time.Duration(l.Launches)
}

// CommOverlap is HTA's communication/computation overlap of one rank: the
// time computation kernels run while communication kernels run, over the
// time communication kernels run.
type CommOverlap struct {
	Communication time.Duration `json:"communication_ns"`
	Overlapped    time.Duration `json:"overlapped_ns"`
}

// Ratio is Overlapped/Communication, 0 without communication.
func (c CommOverlap) Ratio() float64 {
	if c.Communication <= 0 {
		return 0
	}
	return float64(c.Overlapped) / float64(c.Communication)
}

// KernelStat summarises the GPU events of one name.
type KernelStat struct {
	Name  string        `json:"name"`
	Class KernelClass   `json:"class"`
	Count int64         `json:"count"`
	Total time.Duration `json:"total_ns"`
	Min   time.Duration `json:"min_ns"`
	Max   time.Duration `json:"max_ns"`
	// Std is the sample standard deviation of the durations.
	Std float64 `json:"std_ns"`

	mean, m2 float64 // Welford accumulators
}

// Mean is the mean duration.
func (k KernelStat) Mean() time.Duration {
	if k.Count == 0 {
		return 0
	}
	return k.Total / time.Duration(k.Count)
}

func (k *KernelStat) add(d int64) {
	if k.Count == 0 || time.Duration(d) < k.Min {
		k.Min = time.Duration(d)
	}
	if time.Duration(d) > k.Max {
		k.Max = time.Duration(d)
	}
	k.Count++
	k.Total += time.Duration(d)
	delta := float64(d) - k.mean
	k.mean += delta / float64(k.Count)
	k.m2 += delta * (float64(d) - k.mean)
}

// cpuCall is a host call waiting for its GPU work.
type cpuCall struct {
	start, end int64
	api        LaunchAPI
	matched    bool
}

// rankBuilder turns one trace's event stream into a KinetoRank.
type rankBuilder struct {
	opts     KinetoOptions
	out      *KinetoRank
	names    map[string]uint32
	nameSize int // bytes held by names
	stats    []KernelStat
	cpu      fifoMap[cpuCall]
	pending  fifoMap[[]kOp]
	sorter   opSorter
	err      error
	steps    map[int64]struct{} // distinct ProfilerStep numbers, at most kinetoMaxSteps
	lastStep int64              // start of the latest ProfilerStep, rounded as the events are
}

// analyzeKineto reads one trace and measures it.
func analyzeKineto(ctx context.Context, r io.Reader, opts KinetoOptions) (*KinetoRank, error) {
	rd, err := kineto.NewReader(r, opts.Limits)
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	b := &rankBuilder{
		opts:   opts,
		out:    &KinetoRank{Rank: -1, WorldSize: -1},
		names:  make(map[string]uint32),
		steps:  make(map[int64]struct{}),
		sorter: opSorter{chunk: max(opts.SortChunk, 1024), tempDir: opts.TempDir},
	}
	defer b.sorter.close()
	b.cpu = newFIFOMap(max(opts.PendingLimit, 16), func(c cpuCall) {
		if !c.matched && b.launchCounted(c.api) {
			b.out.Launch.UnmatchedCalls++
		}
	})
	b.pending = newFIFOMap(max(opts.PendingLimit, 16), func(ops []kOp) {
		for _, o := range ops {
			b.emit(o)
		}
	})
	for n := 0; ; n++ {
		if n&0xffff == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		ev, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		b.event(ev)
		if b.err != nil {
			return nil, b.err
		}
	}
	meta := rd.Meta()
	b.out.Rank, b.out.WorldSize = clampInt(meta.Rank), clampInt(meta.WorldSize)
	if err := b.finish(); err != nil {
		return nil, err
	}
	return b.out, nil
}

func clampInt(v int64) int {
	if v < -1 || v > math.MaxInt32 {
		return -1
	}
	return int(v)
}

func (b *rankBuilder) launchCounted(a LaunchAPI) bool {
	if !b.opts.ExtendedLaunchAPIs && a.kernelLaunch() {
		return a == APICudaLaunchKernel || a == APICudaLaunchKernelExC
	}
	return a.kernelLaunch() || b.opts.IncludeMemoryLaunches && (a == APICudaMemcpyAsync || a == APICudaMemsetAsync)
}

// span converts an event's ts and dur to [start, end] in nanoseconds,
// rounded as configured.
func (b *rankBuilder) span(ev *kineto.Event) (int64, int64) {
	if b.opts.HTARounding {
		ts := int64(math.Ceil(ev.TsMicros)) * 1000
		end := int64(math.Floor(ev.TsMicros+max(ev.DurMicros, 0))) * 1000
		return ts, max(end, ts)
	}
	return ev.Ts, ev.Ts + max(ev.Dur, 0)
}

func (b *rankBuilder) event(ev *kineto.Event) {
	b.out.Events++
	b.out.Warmup.count(ev)
	// HTA keeps only events with a category and a duration.
	if !ev.HasCat || !ev.HasDur || !ev.HasTs || string(ev.Cat) == "Trace" ||
		ev.Dur > kinetoMaxDuration || ev.Ts > math.MaxInt64-kinetoMaxDuration || ev.Ts < -math.MaxInt64/2 {
		return
	}
	if ev.Stream >= 0 {
		b.gpuEvent(ev)
		return
	}
	if ev.Flops > 0 && string(ev.Cat) == "cpu_op" {
		b.out.FLOPs += float64(ev.Flops)
	}
	if n, ok := profilerStep(ev.Name); ok && (string(ev.Cat) == "user_annotation" || string(ev.Cat) == "cpu_op") {
		if start, _ := b.span(ev); len(b.steps) == 0 || start > b.lastStep {
			b.lastStep = start
		}
		if len(b.steps) < kinetoMaxSteps {
			b.steps[n] = struct{}{}
		}
	}
	if !ev.HasCorrelation {
		return
	}
	start, end := b.span(ev)
	call := cpuCall{start: start, end: end, api: launchAPI(ev.Name)}
	if ops, ok := b.pending.take(ev.Correlation); ok {
		for _, o := range ops {
			b.emit(b.attach(o, &call))
		}
		if call.api != APICudaGraphLaunch {
			return
		}
	}
	b.cpu.put(ev.Correlation, call)
}

// attach ties a GPU event to its host call.
func (b *rankBuilder) attach(o kOp, c *cpuCall) kOp {
	o.cpuStart, o.cpuEnd, o.api = c.start, c.end, c.api
	o.flags |= opHasCPU
	c.matched = true
	return o
}

func (b *rankBuilder) gpuEvent(ev *kineto.Event) {
	id, ok := b.names[string(ev.Name)]
	if !ok {
		name := otherNames
		if len(b.stats) < kinetoMaxNames && b.nameSize+len(ev.Name) <= kinetoMaxNameBytes {
			name = string(ev.Name)
		} else {
			id, ok = b.names[name]
		}
		if !ok {
			id = uint32(len(b.stats))
			b.names[name] = id
			b.nameSize += len(name)
			b.stats = append(b.stats, KernelStat{Name: name, Class: ClassifyKernel(name)})
		}
	}
	start, end := b.span(ev)
	o := kOp{start: start, end: end, stream: ev.Stream, name: id}
	// The class travels with the event: pooled names have none of their own.
	class := b.stats[id].Class
	if b.stats[id].Name == otherNames {
		class = ClassifyKernel(string(ev.Name))
	}
	o.flags = uint8(class) << 2
	if isGPUCategory(ev.Cat) {
		o.flags |= opStreamOp
	}
	if !ev.HasCorrelation {
		b.emit(o)
		return
	}
	if c, ok := b.cpu.get(ev.Correlation); ok {
		o = b.attach(o, &c)
		if c.api == APICudaGraphLaunch {
			b.cpu.update(ev.Correlation, c) // a graph launch runs many kernels
		} else {
			b.cpu.delete(ev.Correlation)
		}
		b.emit(o)
		return
	}
	ops, _ := b.pending.take(ev.Correlation)
	if len(ops) < kinetoMaxShared {
		ops = append(ops, o)
	} else {
		b.emit(o)
	}
	b.pending.put(ev.Correlation, ops)
}

func (b *rankBuilder) emit(o kOp) {
	if b.err == nil {
		b.err = b.sorter.add(o)
	}
}

func opClass(o *kOp) KernelClass { return KernelClass(o.flags>>2) & 3 }

// finish sweeps the sorted GPU events and fills in every measure.
func (b *rankBuilder) finish() error {
	b.pending.drain()
	b.cpu.drain()
	if b.err != nil {
		return b.err
	}
	out := b.out
	out.Steps = len(b.steps)
	filter := !b.opts.IncludeLastStep && out.Steps >= 2
	lastStep := b.lastStep
	switch {
	case out.Steps == 0:
		out.Notes = append(out.Notes, "no ProfilerStep markers: all GPU events kept (as HTA does)")
	case out.Steps == 1:
		out.Notes = append(out.Notes, "a single ProfilerStep: all GPU events kept (as HTA does)")
	}

	var (
		sw      sweep
		streams = map[int64]*StreamIdle{}
		prevEnd = map[int64]int64{}
		delay   = int64(b.opts.ConsecutiveKernelDelay)
		rtCut   = int64(b.opts.RuntimeCutoff)
		ldCut   = int64(b.opts.LaunchDelayCutoff)
		l       = &out.Launch
		tooMany bool
	)
	l.ByAPI = map[string]int64{}
	err := b.sorter.each(func(o *kOp) {
		if filter && (o.flags&opHasCPU == 0 || o.cpuStart >= lastStep) {
			out.DroppedLastStep++
			return
		}
		out.GPUEvents++
		sw.add(o.start, o.end, opClass(o))
		b.stats[o.name].add(o.end - o.start)
		if o.flags&opStreamOp != 0 {
			st := streams[o.stream]
			if st == nil {
				if len(streams) >= kinetoMaxStreams {
					tooMany = true
					return
				}
				st = &StreamIdle{Stream: o.stream}
				streams[o.stream] = st
			} else {
				prev := prevEnd[o.stream]
				gap := o.start - prev
				kind := 2
				switch {
				case o.flags&opHasCPU != 0 && o.cpuStart > prev:
					kind = 0
				case gap < delay:
					kind = 1
				}
				st.Gaps[kind]++
				switch kind {
				case 0:
					st.HostWait += time.Duration(gap)
				case 1:
					st.KernelWait += time.Duration(gap)
				default:
					st.Other += time.Duration(gap)
				}
			}
			st.Kernels++
			prevEnd[o.stream] = o.end
		}
		if o.flags&opHasCPU != 0 && b.launchCounted(o.api) {
			cpuDur, gpuDur := o.cpuEnd-o.cpuStart, o.end-o.start
			d := max(o.start-o.cpuEnd, 0)
			l.Launches++
			l.ByAPI[o.api.String()]++
			l.CPUTime += time.Duration(cpuDur)
			l.TotalDelay += time.Duration(d)
			l.MaxDelay = max(l.MaxDelay, time.Duration(d))
			if cpuDur <= rtCut && gpuDur < cpuDur {
				l.ShortKernels++
				l.ShortCPUTime += time.Duration(cpuDur)
				l.ShortGPUTime += time.Duration(gpuDur)
			}
			if cpuDur > rtCut {
				l.RuntimeOutliers++
			}
			if d > ldCut {
				l.DelayOutliers++
				l.OutlierDelay += time.Duration(d)
			}
		}
	})
	if err != nil {
		return err
	}
	if tooMany {
		return fmt.Errorf("more than %d CUDA streams in one trace; this is not a trace Kineto writes", kinetoMaxStreams)
	}
	sw.finish()
	out.Temporal = sw.breakdown(out.Rank)
	out.Overlap = CommOverlap{
		Communication: time.Duration(sw.with(1 << ClassCommunication)),
		Overlapped:    time.Duration(sw.with(1<<ClassCommunication | 1<<ClassComputation)),
	}
	for _, st := range streams {
		out.Streams = append(out.Streams, *st)
	}
	slices.SortFunc(out.Streams, func(a, b StreamIdle) int { return cmp.Compare(a.Stream, b.Stream) })
	for i := range b.stats {
		k := &b.stats[i]
		if k.Count == 0 {
			continue
		}
		if k.Count > 1 {
			k.Std = math.Sqrt(k.m2 / float64(k.Count-1))
		}
		out.Kernels = append(out.Kernels, *k)
	}
	slices.SortFunc(out.Kernels, func(a, b KernelStat) int {
		return cmp.Or(cmp.Compare(b.Total, a.Total), cmp.Compare(a.Name, b.Name))
	})
	return nil
}

// sweep measures, in one pass over events in start order, how long each
// combination of classes ran at once (16 combinations of 4 classes), using
// a heap of the running events' ends.
type sweep struct {
	started    bool
	first, now int64
	active     [numClasses]int32
	busy       [1 << numClasses]int64
	ends       endHeap
}

func (s *sweep) mask() int {
	m := 0
	for c, n := range s.active {
		if n > 0 {
			m |= 1 << c
		}
	}
	return m
}

// advance accounts the time up to t.
func (s *sweep) advance(t int64) {
	for len(s.ends) > 0 && s.ends[0].end <= t {
		e := s.ends.pop()
		if e.end > s.now {
			s.busy[s.mask()] += e.end - s.now
			s.now = e.end
		}
		s.active[e.class]--
	}
	if t > s.now {
		s.busy[s.mask()] += t - s.now
		s.now = t
	}
}

func (s *sweep) add(start, end int64, c KernelClass) {
	if !s.started {
		s.started, s.first, s.now = true, start, start
	}
	s.advance(start)
	s.active[c]++
	s.ends.push(endItem{end, c})
}

func (s *sweep) finish() {
	for len(s.ends) > 0 {
		s.advance(s.ends[0].end)
	}
}

// with is the time during which every class in m ran (others may have too).
func (s *sweep) with(m int) int64 {
	var t int64
	for k, d := range s.busy {
		if k&m == m {
			t += d
		}
	}
	return t
}

func (s *sweep) breakdown(rank int) RankBreakdown {
	b := RankBreakdown{Rank: rank}
	if !s.started {
		return b
	}
	const comp, comm, mem = 1 << ClassComputation, 1 << ClassCommunication, 1 << ClassMemory
	b.Span = time.Duration(s.now - s.first)
	for m, d := range s.busy {
		dd := time.Duration(d)
		switch {
		case m == 0:
			b.Idle += dd
		case m&comp != 0:
			b.Compute += dd
		case m&comm != 0:
			b.Communication += dd
		case m&mem != 0:
			b.Memory += dd
		default:
			b.Other += dd
		}
	}
	b.NonCompute = b.Span - b.Idle - b.Compute
	return b
}

type endItem struct {
	end   int64
	class KernelClass
}

// endHeap is a min-heap of event ends.
type endHeap []endItem

func (h *endHeap) push(e endItem) {
	*h = append(*h, e)
	a := *h
	for i := len(a) - 1; i > 0; {
		p := (i - 1) / 2
		if a[p].end <= a[i].end {
			break
		}
		a[p], a[i] = a[i], a[p]
		i = p
	}
}

func (h *endHeap) pop() endItem {
	a := *h
	top := a[0]
	n := len(a) - 1
	a[0] = a[n]
	a = a[:n]
	for i := 0; ; {
		l, m := 2*i+1, i
		if l < n && a[l].end < a[m].end {
			m = l
		}
		if l+1 < n && a[l+1].end < a[m].end {
			m = l + 1
		}
		if m == i {
			break
		}
		a[i], a[m] = a[m], a[i]
		i = m
	}
	*h = a
	return top
}

// fifoMap is a map from correlation id with a bound on its size: when full,
// the oldest entry is given to evict and removed.
type fifoMap[V any] struct {
	m     map[int64]fifoEntry[V]
	order []fifoKey
	head  int
	seq   uint64
	limit int
	evict func(V)
}

type fifoEntry[V any] struct {
	v   V
	seq uint64
}

type fifoKey struct {
	k   int64
	seq uint64
}

func newFIFOMap[V any](limit int, evict func(V)) fifoMap[V] {
	return fifoMap[V]{m: make(map[int64]fifoEntry[V]), limit: limit, evict: evict}
}

func (f *fifoMap[V]) put(k int64, v V) {
	if old, ok := f.m[k]; ok {
		// A reused correlation id: the older entry is given up.
		delete(f.m, k)
		f.evict(old.v)
	}
	for len(f.m) >= f.limit {
		f.evictOldest()
	}
	f.seq++
	f.m[k] = fifoEntry[V]{v, f.seq}
	f.order = append(f.order, fifoKey{k, f.seq})
	// Matched entries leave stale slots behind; drop them once they
	// outnumber the live ones, so the queue stays within twice the map.
	if len(f.order)-f.head > 2*len(f.m)+1024 {
		f.compact()
	}
}

func (f *fifoMap[V]) get(k int64) (V, bool) {
	e, ok := f.m[k]
	return e.v, ok
}

// update replaces the value of a present entry, keeping its age.
func (f *fifoMap[V]) update(k int64, v V) {
	if e, ok := f.m[k]; ok {
		e.v = v
		f.m[k] = e
	}
}

func (f *fifoMap[V]) delete(k int64) { delete(f.m, k) }

func (f *fifoMap[V]) take(k int64) (V, bool) {
	e, ok := f.m[k]
	if ok {
		delete(f.m, k)
	}
	return e.v, ok
}

func (f *fifoMap[V]) evictOldest() {
	for f.head < len(f.order) {
		o := f.order[f.head]
		f.head++
		if e, ok := f.m[o.k]; ok && e.seq == o.seq {
			delete(f.m, o.k)
			f.evict(e.v)
			return
		}
	}
}

// compact drops queue slots whose entries are gone.
func (f *fifoMap[V]) compact() {
	live := f.order[:0]
	for _, o := range f.order[f.head:] {
		if e, ok := f.m[o.k]; ok && e.seq == o.seq {
			live = append(live, o)
		}
	}
	f.order, f.head = live, 0
}

// drain evicts every entry, oldest first.
func (f *fifoMap[V]) drain() {
	for len(f.m) > 0 {
		f.evictOldest()
	}
	f.order, f.head = nil, 0
}
