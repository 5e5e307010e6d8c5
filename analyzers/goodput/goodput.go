// Package goodput splits a job run's GPU time into productive training
// steps and badput by cause, from the run's step history (step_history.parquet,
// every rank from its first step), the capture windows' findings, the
// manifests and the capture's checkpoint events. Every number can be
// checked by hand from these definitions.
//
// # The run
//
// The run's wall time is [start, end): start is the earliest of the ranks'
// first steps and the start times of the processes that ran them (from the
// manifests), end the end of the last step every rank has recorded (a
// merged row is written when it is full, so ranks' histories end a little
// apart; steps past end are left for the next capture). Its GPU time is
//
//	G = (end - start) x (R + I)
//
// for R ranks (one GPU each) and I idle GPUs. Each rank's time line covers
// [start, end) exactly once and is split as follows; the GPU-seconds of a
// cause are summed over ranks.
//
// A rank's steps fall into segments: a new segment starts where the PID
// changes or the iteration goes back (a restart). In a segment, span j
// (one step, or n_j merged steps) covers c_j seconds, from its start to the
// next span's start (to its end for the last), so that time between steps
// counts with the step before it; its mean step is u_j = c_j / n_j. The
// segment's steady step m is the median of its single steps (the history's
// full-resolution head) when it has at least 20; else the median of the
// rank's single steps (a restarted process whose history is all merged
// rows, whose means hold the checkpoints); else the median of u_j weighted
// by n_j.
//
// # Causes
//
// startup: from start to the rank's first step: process start-up,
// initialization, and waiting for the other ranks' processes.
//
//	startup = first step start - start
//
// warmup: the first steps of a segment, until the step time settles
// (compilation, autotuning, cache warming): warm-up ends at the first span
// j whose u_j, and the median u of spans j..j+8, are at most 1.1 m (at most
// half the segment's spans).
//
//	warmup = sum over warm-up spans of n_j x max(0, u_j - m)
//
// checkpoint: long steps (a step at least 2 m long: u_j >= 2 m, or a merged
// span whose longest step is) that line up with checkpoint activity. The
// signal that covers the whole run is in the step history: the segment's
// long steps recur regularly, as saves every N iterations or minutes do: at
// least three, and at least two thirds of the gaps between consecutive
// ones, in iterations or in seconds, within 10 % (or the spans' own length)
// of the median gap. Periodic evaluation recurs the same way and is counted
// here too. Inside a capture window, a long step that holds a checkpoint
// event of its rank (events.jsonl, kind checkpoint) counts as well, regular
// or not. A long step that fits neither stays in the step time.
//
//	checkpoint = sum over checkpoint steps of c_j - n_j x m
//	             (a merged span holds k = round((c_j - n_j x m) / (L_j - m))
//	             saves, L_j its longest step, and gives at most
//	             k x (L_j - m) plus the gap after it)
//
// restart: between a segment's last step and the next segment's first
// step (or the run's end, when that step comes after it): the failure, the
// new process's start-up and initialization.
//
//	restart = next segment's first step start - last step end
//
// lost_work: work since the last checkpoint, done again after a restart.
// When a later segment starts at iteration L and this segment reached L or
// beyond, the time from the start of iteration L to the segment's end is
// lost (the whole segment when it began at or after L). Inside a merged
// span, iteration L - 1, the checkpoint resumed from, is taken as its long
// step when it has one.
//
//	lost_work = segment end - time of iteration L
//
// idle_gpu: GPUs allocated to the job (the same pod as its processes, in the
// manifests) that run no rank, for the whole wall time; and a rank's time
// after its last step, when it has no later one, until the run's end.
//
//	idle_gpu = I x (end - start) + sum over ranks of (end - last step end)
//
// The steady step time of each span (c_j less its warm-up or checkpoint
// excess) is split further by the in-step causes, measured only inside
// capture windows by the analyzers and applied to every step at the shares
// of the capture window nearest in time (WindowOf):
//
//	data_stall      input-bound's impact share of the window: the GPU idle
//	                while the rank's CPUs load data
//	straggler_wait  nccl-straggler's impact share (the waiting the
//	                straggling ranks cost the others), or step-imbalance's,
//	                whichever is larger
//	comm_exposed    kineto-comm-overlap's exposed communication, averaged
//	                over the capture's Kineto traces
//
//	cause = steady time x window share;   productive = steady time x (1 - sum of shares)
//
// An in-step cause the findings do not flag (below the analyzer's
// threshold, or no finding) counts as zero; one no capture window could
// show (no NCCL events, no CPU profile, no Kineto trace) is marked not
// measured.
//
// # Ratios
//
//	goodput = productive / G
//	ETTR    = 1 - (startup + warmup + checkpoint + restart + lost_work + idle_gpu) / G
//	MFU     = FLOPs per step / (steady step x R x peak FLOPS per GPU)
//
// ETTR, the effective training time ratio, counts the in-step causes as
// training time (the run made progress). The steady step is the median over
// ranks of their latest segment's m. FLOPs per step (all ranks together)
// come from the configuration (Options.FLOPsPerStep) or else from the
// Kineto traces of the windows (kineto-temporal-breakdown's flops_per_step,
// per rank, times R); the peak from Options.PeakFLOPS or the GPU model
// (PeakFLOPS, dense BF16 tensor throughput).
package goodput

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// Version changes whenever results may change, so that stored goodput is
// recomputed.
const Version = "1"

// Tuning of the definitions above.
const (
	warmupWindow   = 9   // spans whose median ends the warm-up
	warmupSettled  = 1.1 // that median over the steady step
	longStep       = 2.0 // a step this many steady steps long is long
	regularTol     = 0.1 // relative tolerance of a regular gap
	regularMin     = 3   // long steps needed to call them regular
	DefaultBuckets = 60  // timeline buckets at most
)

// Options tune Compute.
type Options struct {
	// FLOPsPerStep is the job's model FLOPs per iteration, all ranks
	// together; 0: from the windows' Kineto traces when they have them.
	FLOPsPerStep float64
	// PeakFLOPS is one GPU's peak; 0: from the GPU model (PeakFLOPS).
	PeakFLOPS float64
	// Buckets bounds the timeline (DefaultBuckets when 0).
	Buckets int
	// Now stamps the result; time.Now when zero.
	Now time.Time
}

// Checkpoint is a checkpoint save the job reported: when, and by which rank
// (-1: any rank).
type Checkpoint struct {
	TimeNs int64
	Rank   int
}

// span is one step history row, compact.
type span struct {
	pid          int32
	steps        int32
	first        int64 // first iteration
	start, end   int64
	longestStep  int64
	cover        float64 // seconds to the next span's start (set per segment)
	pre          bool    // cut before a lost-work point; longestStep is then inside it only if keepsLong
	keepsLong    bool
	nominalSteps float64
}

func (s *span) last() int64 { return s.first + int64(s.steps) - 1 }

// Run is what one run's goodput is computed from; add the step history
// with Add.
type Run struct {
	Cluster, Job, Run, Capture string
	// Manifests are the capture's (and, for process start times, earlier
	// captures') host manifests.
	Manifests   []*traces.Manifest
	Checkpoints []Checkpoint
	Windows     []Window

	ranks    map[int32][]span
	open     []span // rows of openRank not filed in ranks yet
	openRank int32
}

// Add takes one step history row.
func (r *Run) Add(s *traces.StepSpan) {
	if s.Steps <= 0 || s.EndNs < s.StartNs {
		return
	}
	// Rows come rank by rank: the map is touched when the rank changes.
	if r.open == nil || r.openRank != s.Rank {
		r.flush()
		if r.ranks == nil {
			r.ranks = map[int32][]span{}
		}
		r.open, r.openRank = r.ranks[s.Rank], s.Rank
		if r.open == nil {
			// The agent keeps about 3000 rows per rank.
			r.open = make([]span, 0, 4096)
		}
	}
	r.open = append(r.open, span{pid: s.PID, steps: s.Steps, first: s.FirstIteration,
		start: s.StartNs, end: s.EndNs, longestStep: s.MaxNs})
}

// flush files the rows of the rank being added.
func (r *Run) flush() {
	if r.open != nil {
		r.ranks[r.openRank] = r.open
		r.open = nil
	}
}

// Spans is how many step history rows were added.
func (r *Run) Spans() int {
	r.flush()
	n := 0
	for _, ss := range r.ranks {
		n += len(ss)
	}
	return n
}

// computer holds one computation's state.
type computer struct {
	r        *Run
	opt      Options
	start    int64
	end      int64
	windows  []Window
	measured map[string]bool
	shares   [][len(inStepCauses)]float64 // per window, in inStepCauses order
	// per cause index (productive first): GPU-seconds, and by bucket.
	total   [nCauses]float64
	buckets [nCauses][]float64
	bucketS float64
	ckpts   map[int][]int64 // rank (-1: any) -> sorted times
	notes   []string
}

// Cause indexes of computer's tables: the productive time, then
// traces.Causes in order.
const (
	productive = iota
	startup
	warmup
	checkpoint
	dataStall
	straggler
	comm
	restart
	lostWork
	idle
	nCauses
)

// Compute computes the run's goodput. It returns nil when the step history
// holds no step.
func Compute(r *Run, opt Options) *traces.Goodput {
	r.flush()
	if len(r.ranks) == 0 {
		return nil
	}
	if opt.Buckets <= 0 {
		opt.Buckets = DefaultBuckets
	}
	if opt.Now.IsZero() {
		opt.Now = time.Now()
	}
	c := &computer{r: r, opt: opt, ckpts: map[int][]int64{}}
	ranks := make([]int32, 0, len(r.ranks))
	for rank, ss := range r.ranks {
		ranks = append(ranks, rank)
		r.ranks[rank] = clean(ss)
	}
	slices.Sort(ranks)
	c.bounds(ranks)
	c.windows = slices.Clone(r.Windows)
	slices.SortFunc(c.windows, func(a, b Window) int { return a.Start.Compare(b.Start) })
	c.measured = map[string]bool{}
	c.shares = make([][len(inStepCauses)]float64, len(c.windows))
	for i, w := range c.windows {
		for k, v := range w.Measured {
			c.measured[k] = c.measured[k] || v
		}
		for j, cause := range inStepCauses {
			c.shares[i][j] = max(0, w.Shares[cause])
		}
	}
	for _, cp := range r.Checkpoints {
		c.ckpts[cp.Rank] = append(c.ckpts[cp.Rank], cp.TimeNs)
	}
	for k := range c.ckpts {
		slices.Sort(c.ckpts[k])
	}
	g := &traces.Goodput{
		Version: Version, Cluster: r.Cluster, Job: r.Job, Run: r.Run, Capture: r.Capture, Computed: opt.Now.UTC(),
		Start: time.Unix(0, c.start).UTC(), End: time.Unix(0, c.end).UTC(), Ranks: len(ranks),
		Windows: len(r.Windows), Software: traces.SoftwareOf(r.Manifests...),
	}
	for _, m := range r.Manifests {
		g.Simulated = g.Simulated || m.Simulated
	}
	g.IdleGPUs = idleGPUs(r.Manifests)
	wall := float64(c.end-c.start) / 1e9
	c.timeline(wall)
	g.Timeline = traces.GoodputTimeline{Start: g.Start, BucketSeconds: c.bucketS, Badput: map[string][]float64{}}
	var steady []float64
	var firstIter, lastIter int64 = math.MaxInt64, math.MinInt64
	for _, rank := range ranks {
		st := c.rank(rank, r.ranks[rank])
		if st.m > 0 {
			steady = append(steady, st.m)
		}
		g.Restarts = max(g.Restarts, st.restarts)
		firstIter, lastIter = min(firstIter, st.firstIter), max(lastIter, st.lastIter)
	}
	if g.IdleGPUs > 0 {
		c.add(idle, c.start, c.end, wall*float64(g.IdleGPUs))
	}
	if len(steady) > 0 {
		slices.Sort(steady)
		g.StepSeconds = steady[len(steady)/2]
	}
	g.Steps = lastIter - firstIter + 1
	g.GPUSeconds = wall * float64(len(ranks)+g.IdleGPUs)
	g.ProductiveGPUSeconds = c.total[productive]
	g.Timeline.Productive = c.buckets[productive]
	runtime := 0.0
	for i, cause := range traces.Causes {
		b := traces.Badput{Cause: cause, GPUSeconds: c.total[i+1], Share: share(c.total[i+1], g.GPUSeconds), Measured: true}
		if inStep[cause] {
			b.Measured = c.measured[cause]
			if !b.Measured {
				c.notes = append(c.notes, fmt.Sprintf("%s not measured: no capture window of the run could show it (%s)", cause, needs[cause]))
			}
		} else {
			runtime += b.GPUSeconds
		}
		g.Badput = append(g.Badput, b)
		if bs := c.buckets[i+1]; bs != nil {
			g.Timeline.Badput[cause] = bs
		}
	}
	g.Goodput = share(g.ProductiveGPUSeconds, g.GPUSeconds)
	g.ETTR = 1 - share(runtime, g.GPUSeconds)
	c.mfu(g)
	g.Notes = c.notes
	return g
}

// inStepCauses are the causes measured in capture windows; needs says
// what shows them.
var (
	inStepCauses = [...]string{traces.CauseDataStall, traces.CauseStraggler, traces.CauseComm}
	inStepIndex  = [...]int{dataStall, straggler, comm}
	inStep       = map[string]bool{traces.CauseDataStall: true, traces.CauseStraggler: true, traces.CauseComm: true}
	needs        = map[string]string{
		traces.CauseDataStall: "a CPU profile and GPU samples",
		traces.CauseStraggler: "NCCL events or steps",
		traces.CauseComm:      "a Kineto trace",
	}
)

// clean sorts a rank's spans by start, drops duplicates (the same rows
// from two hosts) and clips overlaps, so that its time is counted once.
func clean(ss []span) []span {
	slices.SortFunc(ss, func(a, b span) int { return cmp.Or(cmp.Compare(a.start, b.start), cmp.Compare(a.first, b.first)) })
	out := ss[:0]
	for _, s := range ss {
		if len(out) > 0 {
			p := &out[len(out)-1]
			if s.pid == p.pid && s.first == p.first {
				continue
			}
			if s.end <= p.end && s.start < p.end {
				continue // inside the previous span
			}
			s.start = max(s.start, p.end)
		}
		out = append(out, s)
	}
	return out
}

// bounds sets the run's wall time: the earliest first step or start of a
// process that ran a rank's first steps, to the end of the last step every
// rank has recorded.
func (c *computer) bounds(ranks []int32) {
	started := map[int32]int64{} // pid -> start
	for _, m := range c.r.Manifests {
		for _, p := range m.Processes {
			if !p.Started.IsZero() {
				started[int32(p.PID)] = p.Started.UnixNano()
			}
		}
	}
	c.start, c.end = math.MaxInt64, math.MaxInt64
	var unknown []int32
	for _, rank := range ranks {
		ss := c.r.ranks[rank]
		first := ss[0]
		c.start = min(c.start, first.start)
		if t, ok := started[first.pid]; ok && t < first.start {
			c.start = min(c.start, t)
		} else if !ok {
			unknown = append(unknown, rank)
		}
		rankEnd := int64(math.MinInt64)
		for _, s := range ss {
			rankEnd = max(rankEnd, s.end)
		}
		c.end = min(c.end, rankEnd)
	}
	if len(unknown) > 0 {
		c.notes = append(c.notes, fmt.Sprintf("the start of the process that ran the first steps is not known for %d of %d ranks "+
			"(it left before any capture): their start-up before the first step is not counted", len(unknown), len(ranks)))
	}
}

// timeline picks a round bucket width that gives at most opt.Buckets
// buckets over the wall time.
func (c *computer) timeline(wall float64) {
	widths := []float64{1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400}
	c.bucketS = widths[len(widths)-1]
	for _, w := range widths {
		if wall/w <= float64(c.opt.Buckets) {
			c.bucketS = w
			break
		}
	}
	for wall/c.bucketS > float64(c.opt.Buckets) {
		c.bucketS *= 2
	}
}

// add charges amount GPU-seconds to cause, spread over the wall time
// [a, b) (Unix ns) for the timeline.
func (c *computer) add(cause int, a, b int64, amount float64) {
	if amount <= 0 {
		return
	}
	c.total[cause] += amount
	bs := c.buckets[cause]
	if bs == nil {
		bs = make([]float64, max(1, int(math.Ceil(float64(c.end-c.start)/1e9/c.bucketS))))
		c.buckets[cause] = bs
	}
	width := c.bucketS * 1e9
	pos := func(t int64) float64 { return float64(t-c.start) / width }
	lo, hi := pos(a), pos(b)
	if hi <= lo {
		bs[min(len(bs)-1, max(0, int(lo)))] += amount
		return
	}
	for i := max(0, int(lo)); i < len(bs) && float64(i) < hi; i++ {
		overlap := min(hi, float64(i+1)) - max(lo, float64(i))
		bs[i] += amount * overlap / (hi - lo)
	}
}

// addTime charges the wall time [a, b) of one rank to cause.
func (c *computer) addTime(cause int, a, b int64) {
	c.add(cause, a, b, float64(b-a)/1e9)
}

// rankStats is what a rank contributes beyond its time.
type rankStats struct {
	m                   float64 // steady step of its latest segment
	restarts            int
	firstIter, lastIter int64
}

// rank splits one rank's time line.
func (c *computer) rank(rank int32, ss []span) rankStats {
	segs := segments(ss, c.end)
	if len(segs) == 0 {
		// Its first step came after the run's end: all start-up so far.
		c.addTime(startup, c.start, c.end)
		return rankStats{firstIter: ss[0].first, lastIter: ss[0].first}
	}
	st := rankStats{restarts: len(segs) - 1, firstIter: segs[0][0].first, lastIter: segs[0][0].first}
	headStep := 0.0
	if len(segs) > 1 {
		headStep = singleStepMedian(ss, 1) // else the segment's own is the rank's
	}
	c.addTime(startup, c.start, segs[0][0].start)
	// lowest[k] is the lowest iteration any later segment starts at.
	lowest := make([]int64, len(segs))
	next := int64(math.MaxInt64)
	for k := len(segs) - 1; k >= 0; k-- {
		lowest[k] = next
		next = min(next, segs[k][0].first)
	}
	for k, seg := range segs {
		if k > 0 {
			prev := segs[k-1]
			c.addTime(restart, prev[len(prev)-1].end, seg[0].start)
		}
		st.m = c.segment(rank, seg, lowest[k], headStep)
		st.lastIter = max(st.lastIter, seg[len(seg)-1].last())
	}
	// A rank whose steps stop before the run's end: restarting when its
	// next process's steps come later, idle otherwise.
	last := segs[len(segs)-1]
	tail := idle
	end := &last[len(last)-1]
	if i := slices.IndexFunc(ss, func(s span) bool { return s.start >= c.end }); i >= 0 && (ss[i].pid != end.pid || ss[i].first <= end.last()) {
		tail = restart
	}
	c.addTime(tail, last[len(last)-1].end, c.end)
	return st
}

// segments splits a rank's spans where the PID changes or the iteration
// goes back, and sets each span's cover; spans are cut at the run's end.
func segments(ss []span, runEnd int64) [][]span {
	if i := slices.IndexFunc(ss, func(s span) bool { return s.start >= runEnd }); i >= 0 {
		ss = ss[:i]
	}
	var segs [][]span
	begin := 0
	for i := 1; i <= len(ss); i++ {
		if i < len(ss) && ss[i].pid == ss[i-1].pid && ss[i].first > ss[i-1].last() {
			continue
		}
		seg := ss[begin:i]
		for j := range seg {
			end := seg[j].end
			if j+1 < len(seg) {
				end = seg[j+1].start
			}
			full := float64(max(0, end-seg[j].start)) / 1e9
			seg[j].cover = full
			seg[j].nominalSteps = float64(seg[j].steps)
		}
		// The span that crosses the run's end keeps the steps before it.
		if s := &seg[len(seg)-1]; s.end > runEnd && s.cover > 0 {
			kept := float64(runEnd-s.start) / 1e9
			s.nominalSteps *= kept / s.cover
			s.cover, s.end = kept, runEnd
		}
		segs = append(segs, seg)
		begin = i
	}
	return segs
}

// mean is a span's mean step, in seconds.
func (s *span) mean() float64 { return s.cover / s.nominalSteps }

// longest is a span's longest step, in seconds.
func (s *span) longest() float64 {
	if s.steps == 1 && !s.pre {
		return s.cover
	}
	if s.pre && !s.keepsLong {
		return s.mean()
	}
	// A longest step beyond the span's own length is bad input.
	return min(max(float64(s.longestStep)/1e9, s.mean()), s.cover)
}

// segment splits one segment's time; a later segment starting at
// iteration lowest makes the work from there on lost. It returns the
// segment's steady step.
func (c *computer) segment(rank int32, seg []span, lowest int64, headStep float64) float64 {
	m := singleStepMedian(seg, minSingleSteps)
	if m == 0 {
		m = headStep
	}
	if m == 0 {
		m = singleStepMedian(seg, 1)
	}
	if m == 0 {
		m = steadyStep(seg)
	}
	end := seg[len(seg)-1].end
	kept := seg
	if lowest <= seg[len(seg)-1].last() {
		var cut int64
		kept, cut = cutAt(seg, lowest, m)
		c.addTime(lostWork, cut, end)
	}
	if len(kept) == 0 {
		return m
	}
	warm := warmupEnd(kept, m)
	ckpt := c.checkpoints(rank, kept, warm, m)
	w := 0 // the window nearest the span, moving forward with time
	for j := range kept {
		s := &kept[j]
		a := s.start
		b := a + int64(s.cover*1e9)
		excess, cause := 0.0, productive
		switch {
		case j < warm:
			excess, cause = s.nominalSteps*max(0, s.mean()-m), warmup
		case ckpt[j] > 0:
			excess, cause = min(s.cover-s.nominalSteps*m, ckpt[j]*(s.longest()-m)+max(0, s.cover-float64(s.end-s.start)/1e9)), checkpoint
		}
		excess = min(max(0, excess), s.cover)
		c.add(cause, a, b, excess)
		steady := s.cover - excess
		w = c.nearest(w, (a+b)/2)
		left := steady
		if w >= 0 {
			for k, sh := range c.shares[w] {
				// Shares above 1 together are cut, in this order.
				amount := min(left, steady*sh)
				c.add(inStepIndex[k], a, b, amount)
				left -= amount
			}
		}
		c.add(productive, a, b, left)
	}
	return m
}

// minSingleSteps is how many single steps a segment needs for its own
// steady step.
const minSingleSteps = 20

// singleStepMedian is the median of the single steps (one-step rows) of
// ss, 0 when it has fewer than least.
func singleStepMedian(ss []span, least int) float64 {
	var ds []float64
	for i := range ss {
		if ss[i].steps == 1 && ss[i].cover > 0 {
			ds = append(ds, ss[i].cover)
		}
	}
	if len(ds) < least || len(ds) == 0 {
		return 0
	}
	return nth(ds, len(ds)/2)
}

// nth returns the k-th smallest of ds (reordering it) in linear time:
// quickselect, the pivot the median of three.
func nth(ds []float64, k int) float64 {
	lo, hi := 0, len(ds)-1
	for lo < hi {
		mid := lo + (hi-lo)/2
		if ds[mid] < ds[lo] {
			ds[mid], ds[lo] = ds[lo], ds[mid]
		}
		if ds[hi] < ds[lo] {
			ds[hi], ds[lo] = ds[lo], ds[hi]
		}
		if ds[hi] < ds[mid] {
			ds[hi], ds[mid] = ds[mid], ds[hi]
		}
		pivot := ds[mid]
		i, j := lo, hi
		for i <= j {
			for ds[i] < pivot {
				i++
			}
			for ds[j] > pivot {
				j--
			}
			if i <= j {
				ds[i], ds[j] = ds[j], ds[i]
				i++
				j--
			}
		}
		switch {
		case k <= j:
			hi = j
		case k >= i:
			lo = i
		default:
			return ds[k]
		}
	}
	return ds[k]
}

// steadyStep is the median mean step of a segment's spans, weighted by
// their steps.
func steadyStep(seg []span) float64 {
	type wv struct{ v, w float64 }
	vs := make([]wv, len(seg))
	total := 0.0
	for j := range seg {
		vs[j] = wv{seg[j].mean(), seg[j].nominalSteps}
		total += vs[j].w
	}
	slices.SortFunc(vs, func(a, b wv) int { return cmp.Compare(a.v, b.v) })
	acc := 0.0
	for _, x := range vs {
		if acc += x.w; acc >= total/2 {
			return x.v
		}
	}
	return vs[len(vs)-1].v
}

// cutAt returns the spans of seg before iteration it begins, the one that
// holds it shortened to its steps before it, and when it begins.
func cutAt(seg []span, it int64, m float64) ([]span, int64) {
	if it <= seg[0].first {
		return nil, seg[0].start
	}
	j := sort.Search(len(seg), func(j int) bool { return seg[j].last() >= it })
	s := seg[j]
	before := float64(it - s.first) // steps of the span before the cut
	if before <= 0 {
		return seg[:j], s.start // it falls between spans
	}
	pre := s
	pre.pre, pre.nominalSteps = true, before
	long := s.longest()
	if s.steps > 1 && long >= longStep*m {
		// Iteration it-1, the checkpoint resumed from, is taken as the
		// span's long step; the others share the rest.
		short := (s.cover - long) / float64(s.steps-1)
		pre.cover, pre.keepsLong = (before-1)*short+long, true
	} else {
		pre.cover = before * s.mean()
	}
	cut := s.start + int64(pre.cover*1e9)
	return append(seg[:j:j], pre), cut
}

// warmupEnd is the index of the first span after the warm-up: the first
// whose mean step, and the median mean step of warmupWindow spans from it,
// are at most warmupSettled x m; at most half the spans.
func warmupEnd(seg []span, m float64) int {
	buf := make([]float64, 0, warmupWindow)
	for j := 0; j < len(seg)/2; j++ {
		if seg[j].mean() > warmupSettled*m {
			continue
		}
		buf = buf[:0]
		for k := j; k < min(len(seg), j+warmupWindow); k++ {
			buf = append(buf, seg[k].mean())
		}
		slices.Sort(buf)
		if buf[len(buf)/2] <= warmupSettled*m {
			return j
		}
	}
	return len(seg) / 2
}

// checkpoints returns, per span, how many checkpoint saves it holds (0 for
// none): long spans after the warm-up that hold a reported save, or whose
// long steps recur regularly.
func (c *computer) checkpoints(rank int32, seg []span, warm int, m float64) []float64 {
	out := make([]float64, len(seg))
	var longs []int
	for j := warm; j < len(seg); j++ {
		if seg[j].longest() >= longStep*m {
			longs = append(longs, j)
		}
	}
	if len(longs) == 0 {
		return out
	}
	for _, j := range longs {
		a := seg[j].start
		if c.reported(int(rank), a, a+int64(seg[j].cover*1e9)) {
			out[j] = 1
		}
	}
	if len(longs) < regularMin {
		return out
	}
	type pos struct{ iter, t, n, cover float64 }
	ps := make([]pos, len(longs))
	for i, j := range longs {
		s := &seg[j]
		ps[i] = pos{float64(s.first) + s.nominalSteps/2, float64(s.start)/1e9 + s.cover/2, s.nominalSteps, s.cover}
	}
	for _, measure := range []func(p pos) (at, width float64){
		func(p pos) (float64, float64) { return p.iter, p.n },
		func(p pos) (float64, float64) { return p.t, p.cover },
	} {
		gaps := make([]float64, len(ps)-1)
		tol := make([]float64, len(ps)-1)
		for i := range gaps {
			a, wa := measure(ps[i])
			b, wb := measure(ps[i+1])
			gaps[i], tol[i] = b-a, wa+wb
		}
		med := slices.Clone(gaps)
		slices.Sort(med)
		g := med[len(med)/2]
		fits := func(i int) bool {
			for k := 1.0; k <= 3; k++ {
				if math.Abs(gaps[i]-k*g) <= max(regularTol*g, tol[i]) {
					return true
				}
			}
			return false
		}
		regular := 0
		for i := range gaps {
			if math.Abs(gaps[i]-g) <= max(regularTol*g, tol[i]) {
				regular++
			}
		}
		if g <= 0 || 3*regular < 2*len(gaps) {
			continue
		}
		for i, j := range longs {
			if i > 0 && fits(i-1) || i < len(gaps) && fits(i) {
				out[j] = 1
			}
		}
		break
	}
	// A merged row may hold several saves: as many of its longest step's
	// excess as its excess holds.
	for j := range out {
		if s := &seg[j]; out[j] > 0 && s.nominalSteps > 1 {
			out[j] = max(1, math.Round((s.cover-s.nominalSteps*m)/(s.longest()-m)))
		}
	}
	return out
}

// reported reports whether the job reported a checkpoint save on rank (or on
// any rank) inside [a, b).
func (c *computer) reported(rank int, a, b int64) bool {
	for _, r := range []int{rank, -1} {
		ts := c.ckpts[r]
		i, _ := slices.BinarySearch(ts, a)
		if i < len(ts) && ts[i] < b {
			return true
		}
	}
	return false
}

// nearest moves w to the window nearest time t (windows are sorted and t
// only grows within a segment); -1 when there is none.
func (c *computer) nearest(w int, t int64) int {
	if len(c.windows) == 0 {
		return -1
	}
	w = max(0, min(w, len(c.windows)-1))
	dist := func(i int) int64 {
		ws := &c.windows[i]
		a, b := ws.Start.UnixNano(), ws.End.UnixNano()
		switch {
		case t < a:
			return a - t
		case t > b:
			return t - b
		}
		return 0
	}
	for w > 0 && dist(w-1) <= dist(w) {
		w--
	}
	for w+1 < len(c.windows) && dist(w+1) < dist(w) {
		w++
	}
	return w
}

// idleGPUs counts the devices of the manifests that run no rank but belong
// to a pod of the job's processes on that host.
func idleGPUs(ms []*traces.Manifest) int {
	seen := map[string]bool{}
	n := 0
	for _, m := range ms {
		pods := map[string]bool{}
		for _, p := range m.Processes {
			if p.Pod != "" {
				pods[p.Namespace+"/"+p.Pod] = true
			}
		}
		for _, g := range m.GPUs {
			key := m.Host + "/" + g.UUID
			if len(g.Ranks) == 0 && g.Pod != "" && pods[g.Namespace+"/"+g.Pod] && !seen[key] {
				seen[key] = true
				n++
			}
		}
	}
	return n
}

// mfu sets the model FLOPs utilization when the FLOPs per step are known.
func (c *computer) mfu(g *traces.Goodput) {
	flops, source := c.opt.FLOPsPerStep, "configuration (flops_per_step)"
	if flops <= 0 {
		var sum float64
		var n int
		for _, w := range c.windows {
			if w.RankFLOPsPerStep > 0 {
				sum += w.RankFLOPsPerStep
				n++
			}
		}
		if n > 0 {
			flops, source = sum/float64(n)*float64(g.Ranks), "Kineto traces (flops of the operators)"
		}
	}
	if flops <= 0 || g.StepSeconds <= 0 {
		return
	}
	peak := c.opt.PeakFLOPS
	if peak <= 0 {
		peak = modelPeak(c.r.Manifests)
	}
	if peak <= 0 {
		c.notes = append(c.notes, "MFU unknown: the GPU model has no peak FLOPS in Loupe's table; set peak_flops")
		return
	}
	g.FLOPsPerStep, g.PeakFLOPS, g.MFUSource = flops, peak, source
	g.MFU = flops / (g.StepSeconds * float64(g.Ranks) * peak)
}

func share(part, whole float64) float64 {
	if whole <= 0 {
		return 0
	}
	return min(max(part/whole, 0), 1)
}
