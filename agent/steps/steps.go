// Package steps turns iteration boundaries into per-rank step times.
//
// Boundaries come from three sources, in order of preference: explicit
// markers posted to the agent's local API, Kineto's iteration events, and the
// periodicity of NCCL collectives. Each (job, rank) keeps one lane per source;
// the statistics, the trigger and the capture use the most preferred lane that
// has spoken recently, so a job that posts markers is never second-guessed by
// NCCL timing, and a job that posts nothing still gets step times.
package steps

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// Config tunes a Tracker.
type Config struct {
	// Window is how many recent step times the statistics cover. The
	// daemon sets it to the trigger's window, so the figures on /metrics
	// are the ones the trigger judges.
	Window int `yaml:"-"`
	// History is how many steps each lane keeps for capture bundles.
	History int `yaml:"history"`
	// HistoryHead is how many steps of a run the step history keeps at
	// full resolution from the first one seen; HistorySpans bounds the rows
	// that summarize the rest.
	HistoryHead  int `yaml:"history_head"`
	HistorySpans int `yaml:"history_spans"`
	// Stale is how long a source may stay silent before a less preferred
	// source of the same rank takes over.
	Stale time.Duration `yaml:"stale"`
	// Forget drops a (job, rank) that has been silent this long.
	Forget time.Duration `yaml:"forget"`
	// MaxRanks bounds how many (job, rank) pairs are tracked at once.
	MaxRanks int `yaml:"max_ranks"`
}

// DefaultConfig returns the defaults: statistics over 50 steps.
func DefaultConfig() Config {
	return Config{Window: 50, History: 2048, HistoryHead: 2000, HistorySpans: 1000, Stale: time.Minute, Forget: 30 * time.Minute, MaxRanks: 4096}
}

// Marker is an explicit iteration boundary: iteration Iteration of (Job,
// Rank) began at Time. Posting one marker at the top of every training loop
// iteration is enough; step i's duration is the time between markers i and i+1.
type Marker struct {
	Job       string
	Run       string
	Rank      int
	PID       int
	Iteration int64
	Time      time.Time
}

// Stats summarizes the recent step times of one rank.
type Stats struct {
	Job  string `json:"job"`
	Run  string `json:"run,omitempty"`
	Rank int    `json:"rank"`
	PID  int    `json:"pid,omitempty"`
	// Source is the lane the numbers come from (marker, kineto or nccl).
	Source string `json:"source"`
	// Iteration is the last iteration seen to begin.
	Iteration int64 `json:"iteration"`
	// Steps counts every step the lane has measured.
	Steps int64 `json:"steps"`
	// Window is how many step times the figures below cover.
	Window int           `json:"window"`
	Mean   time.Duration `json:"mean_ns"`
	P50    time.Duration `json:"p50_ns"`
	P99    time.Duration `json:"p99_ns"`
	// CV is the coefficient of variation (standard deviation over mean) of
	// the window's step times; 0 when fewer than two steps are known.
	CV float64 `json:"cv"`
	// Trend is the least-squares change of step time across the window,
	// relative to the mean: -0.2 means step time fell by a fifth from the
	// window's first step to its last. A warm-up that falls slowly has a low
	// CV but a clear trend.
	Trend float64 `json:"trend"`
}

// Observer is told about every new step, after the tracker's lock is released.
type Observer func(Stats)

// Tracker keeps the step lanes of every (job, rank) on the host. It is safe
// for concurrent use.
type Tracker struct {
	cfg Config
	now func() time.Time

	mu      sync.Mutex
	ranks   map[rankKey]*rankState
	changed chan struct{} // closed and replaced on every new boundary
	obs     []Observer
}

type rankKey struct {
	job  string
	rank int
}

type rankState struct {
	run      string
	pid      int
	lastSeen time.Time
	lanes    [3]lane // indexed by preference: marker, kineto, nccl
}

var sources = [3]string{traces.StepSourceMarker, traces.StepSourceKineto, traces.StepSourceNCCL}

func sourceIndex(s string) (int, error) {
	for i, v := range sources {
		if v == s {
			return i, nil
		}
	}
	return 0, fmt.Errorf("unknown step source %q (want %s, %s or %s)", s, sources[0], sources[1], sources[2])
}

// lane holds one source's view of a rank: the last boundary, a ring of
// completed steps and the run's step history.
type lane struct {
	seen     time.Time // last time this source spoke
	run      string    // the run the history belongs to
	hist     history
	lastIter int64
	lastAt   time.Time
	lastPID  int // the process that began lastIter
	hasLast  bool
	steps    int64
	ring     []traces.Step
	next     int // write position once ring is full
}

// New returns a Tracker with cfg's zero fields set to their defaults.
func New(cfg Config) *Tracker {
	d := DefaultConfig()
	if cfg.Window <= 1 {
		cfg.Window = d.Window
	}
	if cfg.History < cfg.Window {
		cfg.History = max(d.History, cfg.Window)
	}
	if cfg.Stale <= 0 {
		cfg.Stale = d.Stale
	}
	if cfg.Forget <= 0 {
		cfg.Forget = d.Forget
	}
	if cfg.MaxRanks <= 0 {
		cfg.MaxRanks = d.MaxRanks
	}
	if cfg.HistoryHead <= 0 {
		cfg.HistoryHead = d.HistoryHead
	}
	if cfg.HistorySpans < 2 {
		cfg.HistorySpans = d.HistorySpans
	}
	return &Tracker{cfg: cfg, now: time.Now, ranks: map[rankKey]*rankState{}, changed: make(chan struct{})}
}

// Observe registers fn to be called with the statistics of a rank after each
// step it completes.
func (t *Tracker) Observe(fn Observer) {
	t.mu.Lock()
	t.obs = append(t.obs, fn)
	t.mu.Unlock()
}

// ErrTooManyRanks is returned when the tracker is full of live ranks.
var ErrTooManyRanks = errors.New("too many (job, rank) pairs tracked")

// Mark records an explicit marker. A zero Time means now.
func (t *Tracker) Mark(m Marker) error {
	if m.Job == "" {
		return errors.New("step marker: job is empty")
	}
	if m.Rank < 0 || m.Iteration < 0 {
		return fmt.Errorf("step marker: rank %d and iteration %d must not be negative", m.Rank, m.Iteration)
	}
	if m.Time.IsZero() {
		m.Time = t.now()
	}
	return t.boundary(0, m.Job, m.Run, m.Rank, m.PID, m.Iteration, m.Time)
}

// AddSteps records completed steps of job from a non-marker source (Kineto's
// iteration events or nccl.DetectIterations). Steps at or before the lane's
// last boundary are ignored, so callers may pass overlapping batches.
// Iteration numbers that do not advance the lane are renumbered from it,
// since periodicity detection cannot know the job's real iteration count.
func (t *Tracker) AddSteps(job, run string, steps []traces.Step) error {
	if job == "" {
		return errors.New("steps: job is empty")
	}
	slices.SortFunc(steps, func(a, b traces.Step) int { return cmp.Compare(a.StartNs, b.StartNs) })
	for _, s := range steps {
		src, err := sourceIndex(s.Source)
		if err != nil {
			return err
		}
		if src == 0 {
			return errors.New("steps: markers go through Mark, not AddSteps")
		}
		if s.EndNs <= s.StartNs || s.Rank < 0 {
			continue
		}
		if err := t.addStep(src, job, run, s); err != nil {
			return err
		}
	}
	return nil
}

// AddKinetoSteps is the hook for Kineto's iteration events (ProfilerStep#N
// spans of a trace): it files them as the kineto source, which ranks below
// markers and above NCCL periodicity.
func (t *Tracker) AddKinetoSteps(job, run string, steps []traces.Step) error {
	for i := range steps {
		steps[i].Source = traces.StepSourceKineto
	}
	return t.AddSteps(job, run, steps)
}

func (t *Tracker) addStep(src int, job, run string, s traces.Step) error {
	t.mu.Lock()
	st, err := t.stateLocked(job, int(s.Rank), run, int(s.PID))
	if err != nil {
		t.mu.Unlock()
		return err
	}
	l := &st.lanes[src]
	l.setRun(run)
	iter := s.Iteration
	if l.hasLast {
		last := l.lastAt.UnixNano()
		if s.StartNs < last {
			t.mu.Unlock()
			return nil // already seen in an earlier, overlapping batch
		}
		// lastIter began at lastAt and has not ended; a step starting later
		// is at least the one after it.
		want := l.lastIter
		if s.StartNs > last {
			want++
		}
		iter = max(iter, want)
	}
	l.lastIter, l.lastAt, l.lastPID, l.hasLast = iter, time.Unix(0, s.StartNs), st.pid, true
	return t.boundaryLocked(src, rankKey{job, int(s.Rank)}, st, iter+1, time.Unix(0, s.EndNs))
}

// boundary records that iteration iter of (job, rank) began at at.
func (t *Tracker) boundary(src int, job, run string, rank, pid int, iter int64, at time.Time) error {
	t.mu.Lock()
	st, err := t.stateLocked(job, rank, run, pid)
	if err != nil {
		t.mu.Unlock()
		return err
	}
	st.lanes[src].setRun(run)
	return t.boundaryLocked(src, rankKey{job, rank}, st, iter, at)
}

// boundaryLocked records the boundary, releases the lock and tells the
// observers when it completed a step of the rank's preferred lane.
func (t *Tracker) boundaryLocked(src int, k rankKey, st *rankState, iter int64, at time.Time) error {
	l := &st.lanes[src]
	l.seen = t.now()
	completed := false
	switch {
	case !l.hasLast:
	case iter == l.lastIter+1 && at.After(l.lastAt) && (l.lastPID == 0 || st.pid == l.lastPID):
		s := traces.Step{
			Rank: int32(k.rank), PID: int32(st.pid), Iteration: l.lastIter,
			StartNs: l.lastAt.UnixNano(), EndNs: at.UnixNano(), Source: sources[src],
		}
		l.push(s, t.cfg.History)
		l.hist.add(s, t.cfg.HistoryHead, t.cfg.HistorySpans)
		completed = true
	case iter == l.lastIter:
		t.mu.Unlock() // a retried marker keeps its first time
		return nil
	case iter < l.lastIter:
		// The iteration went backwards: the job restarted. Old step times
		// say nothing about the new run; the history keeps them, and shows
		// the restart.
		l.ring, l.next, l.steps = l.ring[:0], 0, 0
	}
	// A boundary from another process (a restart that resumed at the next
	// iteration) ends no step: the old one's time ran into the restart.
	l.lastIter, l.lastAt, l.lastPID, l.hasLast = iter, at, st.pid, true
	var stats Stats
	var obs []Observer
	if completed && len(t.obs) > 0 && t.bestLocked(st) == src {
		stats = t.statsLocked(k, st)
		obs = t.obs
	}
	close(t.changed)
	t.changed = make(chan struct{})
	t.mu.Unlock()
	for _, fn := range obs {
		fn(stats)
	}
	return nil
}

// setRun starts a fresh history when the source names a new run.
func (l *lane) setRun(run string) {
	if run == "" || run == l.run {
		return
	}
	if l.run != "" {
		l.hist = history{}
	}
	l.run = run
}

func (l *lane) push(s traces.Step, capacity int) {
	l.steps++
	if len(l.ring) < capacity {
		l.ring = append(l.ring, s)
		return
	}
	l.ring[l.next] = s
	l.next = (l.next + 1) % capacity
}

// ordered returns the lane's steps oldest first.
func (l *lane) ordered() []traces.Step {
	out := make([]traces.Step, 0, len(l.ring))
	out = append(out, l.ring[l.next:]...)
	return append(out, l.ring[:l.next]...)
}

// last returns up to n most recent steps, oldest first.
func (l *lane) last(n int) []traces.Step {
	all := l.ordered()
	if len(all) > n {
		all = all[len(all)-n:]
	}
	return all
}

func (t *Tracker) stateLocked(job string, rank int, run string, pid int) (*rankState, error) {
	k := rankKey{job, rank}
	st := t.ranks[k]
	if st == nil {
		if len(t.ranks) >= t.cfg.MaxRanks {
			t.forgetLocked()
		}
		if len(t.ranks) >= t.cfg.MaxRanks {
			return nil, fmt.Errorf("%w: %d live ranks; raise steps.max_ranks", ErrTooManyRanks, len(t.ranks))
		}
		st = &rankState{}
		t.ranks[k] = st
	}
	st.lastSeen = t.now()
	if run != "" {
		st.run = run
	}
	if pid > 0 {
		st.pid = pid
	}
	return st, nil
}

func (t *Tracker) forgetLocked() {
	cut := t.now().Add(-t.cfg.Forget)
	for k, st := range t.ranks {
		if st.lastSeen.Before(cut) {
			delete(t.ranks, k)
		}
	}
}

// bestLocked picks the most preferred lane that has spoken within Stale, or
// failing that the most preferred lane with any steps.
func (t *Tracker) bestLocked(st *rankState) int {
	cut := t.now().Add(-t.cfg.Stale)
	for i := range st.lanes {
		if st.lanes[i].hasLast && st.lanes[i].seen.After(cut) {
			return i
		}
	}
	for i := range st.lanes {
		if st.lanes[i].hasLast {
			return i
		}
	}
	return 0
}

func (t *Tracker) statsLocked(k rankKey, st *rankState) Stats {
	src := t.bestLocked(st)
	l := &st.lanes[src]
	s := Stats{Job: k.job, Run: st.run, Rank: k.rank, PID: st.pid, Source: sources[src], Iteration: l.lastIter, Steps: l.steps}
	recent := l.last(t.cfg.Window)
	s.Window = len(recent)
	if len(recent) == 0 {
		return s
	}
	d := make([]float64, len(recent))
	var sum float64
	for i, r := range recent {
		d[i] = float64(r.EndNs - r.StartNs)
		sum += d[i]
	}
	mean := sum / float64(len(d))
	var ss float64
	for _, v := range d {
		ss += (v - mean) * (v - mean)
	}
	if len(d) > 1 && mean > 0 {
		s.CV = math.Sqrt(ss/float64(len(d)-1)) / mean
		s.Trend = slope(d) * float64(len(d)-1) / mean
	}
	sort.Float64s(d)
	s.Mean = time.Duration(mean)
	s.P50 = time.Duration(quantile(d, 0.5))
	s.P99 = time.Duration(quantile(d, 0.99))
	return s
}

// slope is the least-squares slope of ys against their index.
func slope(ys []float64) float64 {
	n := float64(len(ys))
	xm := (n - 1) / 2
	var ym float64
	for _, y := range ys {
		ym += y
	}
	ym /= n
	var num, den float64
	for i, y := range ys {
		dx := float64(i) - xm
		num += dx * (y - ym)
		den += dx * dx
	}
	return num / den
}

// quantile of sorted values by linear interpolation between closest ranks.
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 1 {
		return sorted[0]
	}
	pos := q * float64(len(sorted)-1)
	lo := int(pos)
	if lo >= len(sorted)-1 {
		return sorted[len(sorted)-1]
	}
	frac := pos - float64(lo)
	return sorted[lo] + frac*(sorted[lo+1]-sorted[lo])
}

// Stats returns the statistics of every rank of job, or of every job when
// job is empty, sorted by job and rank.
func (t *Tracker) Stats(job string) []Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Stats
	for k, st := range t.ranks {
		if job == "" || k.job == job {
			out = append(out, t.statsLocked(k, st))
		}
	}
	slices.SortFunc(out, func(a, b Stats) int {
		if a.Job != b.Job {
			return cmp.Compare(a.Job, b.Job)
		}
		return cmp.Compare(a.Rank, b.Rank)
	})
	return out
}

// Iteration returns the highest iteration any rank of job has begun, and
// whether the job is known at all.
func (t *Tracker) Iteration(job string) (int64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.iterationLocked(job)
}

func (t *Tracker) iterationLocked(job string) (int64, bool) {
	var it int64 = -1
	found := false
	for k, st := range t.ranks {
		if k.job != job {
			continue
		}
		l := &st.lanes[t.bestLocked(st)]
		if l.hasLast {
			found = true
			it = max(it, l.lastIter)
		}
	}
	return it, found
}

// WaitIteration blocks until some rank of job has begun iteration iter or
// later, and returns when iter began according to the step data: about now
// for live markers, in the past for sources that report in batches (NCCL
// periodicity). It fails when ctx ends first.
func (t *Tracker) WaitIteration(ctx context.Context, job string, iter int64) (time.Time, error) {
	for {
		t.mu.Lock()
		it, _ := t.iterationLocked(job)
		ch := t.changed
		var began time.Time
		if it >= iter {
			began = t.beganLocked(job, iter)
		}
		t.mu.Unlock()
		if it >= iter {
			return began, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("waiting for job %q to reach iteration %d (last seen %d): %w", job, iter, it, context.Cause(ctx))
		}
	}
}

// beganLocked is the earliest time any rank of job began iteration iter,
// or now when no rank still holds it.
func (t *Tracker) beganLocked(job string, iter int64) time.Time {
	var at time.Time
	earliest := func(ns int64) {
		if v := time.Unix(0, ns); at.IsZero() || v.Before(at) {
			at = v
		}
	}
	for k, st := range t.ranks {
		if k.job != job {
			continue
		}
		l := &st.lanes[t.bestLocked(st)]
		if l.hasLast && l.lastIter == iter {
			earliest(l.lastAt.UnixNano())
			continue
		}
		for _, s := range l.ring {
			if s.Iteration == iter {
				earliest(s.StartNs)
				break
			}
		}
	}
	if at.IsZero() {
		return t.now()
	}
	return at
}

// Steps returns the steps of job's ranks that overlap [from, to], from the
// lane each rank currently prefers, ordered by rank and iteration.
func (t *Tracker) Steps(job string, from, to time.Time) []traces.Step {
	t.mu.Lock()
	defer t.mu.Unlock()
	f, e := from.UnixNano(), to.UnixNano()
	var out []traces.Step
	for k, st := range t.ranks {
		if k.job != job {
			continue
		}
		for _, s := range st.lanes[t.bestLocked(st)].ordered() {
			if s.EndNs >= f && s.StartNs <= e {
				out = append(out, s)
			}
		}
	}
	slices.SortFunc(out, func(a, b traces.Step) int {
		if a.Rank != b.Rank {
			return cmp.Compare(a.Rank, b.Rank)
		}
		return cmp.Compare(a.Iteration, b.Iteration)
	})
	return out
}

// Ranks describes the processes the tracker has seen for job: rank to pid
// (0 when the source did not say) and the job's run.
func (t *Tracker) Ranks(job string) (ranks map[int]int, run string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ranks = map[int]int{}
	for k, st := range t.ranks {
		if k.job == job {
			ranks[k.rank] = st.pid
			if st.run != "" {
				run = st.run
			}
		}
	}
	return ranks, run
}
