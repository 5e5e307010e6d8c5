// Package capture takes a capture: it opens a window over a job's processes
// (a duration, or a range of iterations), raises the GPU sampling rate, runs
// the CPU profiler over the matched processes, and when the window closes
// writes one bundle of GPU samples, the CPU profile, NCCL calls, step
// boundaries, the run's step history and fault events into the spool, commits it and wakes the
// uploader.
//
// The sources are small interfaces so that the daemon can leave out any
// collector that could not start; the manifest then carries a note saying
// what is missing and why.
package capture

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/google/pprof/profile"

	"github.com/loupe-dev/loupe/agent/steps"
	"github.com/loupe-dev/loupe/traces"
)

// GPUSource is the GPU collector as a capture sees it (gpu.Collector).
type GPUSource interface {
	Devices() []traces.GPUInfo
	Simulated() bool
	// Versions are the driver's version and the CUDA version it supports.
	Versions() (driver, cuda string)
	// BeginCapture raises the sampling rate until end is called; notes
	// are what the manifest should say about the window's GPU data.
	BeginCapture() (end func(), notes []string)
	Samples(from, to time.Time) []traces.GPUSample
	Events(from, to time.Time) []traces.Event
}

// CPUSource starts CPU profile windows (cpuprof.Profiler, through a small
// adapter since its window is a concrete type).
type CPUSource interface {
	// StartWindow profiles pids (every process when empty) until Stop.
	StartWindow(pids []int) CPUWindow
}

// CPUWindow is one running CPU profile window.
type CPUWindow interface {
	Stop() (*profile.Profile, error)
}

// NCCLSource is the NCCL tracer as a capture sees it (nccl.Tracer).
type NCCLSource interface {
	Events(from, to time.Time) []traces.NCCLEvent
}

// Spool holds bundles on local disk until they are uploaded (spool.Spool).
type Spool interface {
	// Begin returns a fresh directory to write the bundle of (captureID,
	// host) in; Commit queues it, Abort discards it.
	Begin(captureID, host string) (dir string, err error)
	Commit(dir string) error
	Abort(dir string) error
}

// Notifier is woken when a bundle is committed (upload.Uploader).
type Notifier interface{ Notify() }

// Addon contributes parts that no built-in source provides, such as Kineto
// traces. Open is called when the capture is accepted, before the window
// starts (a Kineto request must reach the processes ahead of the start
// iteration); the returned function runs after the window closes and writes
// the addon's parts, adding notes for whatever it could not collect.
type Addon interface {
	Name() string
	Open(ctx context.Context, w Window) (finish func(ctx context.Context, b *traces.BundleWriter) error, err error)
}

// Window is what an Addon is told about a capture.
type Window struct {
	ID, Job, Run string
	Processes    []traces.Process
	// StartIteration and Iterations bound an iteration window; Duration a
	// timed one.
	StartIteration, Iterations int64
	Duration                   time.Duration
}

// Sources are the collectors a capture reads; nil ones are left out and
// Missing says why, one note per collector ("cpu profile: ...").
type Sources struct {
	GPU    GPUSource
	CPU    CPUSource
	NCCL   NCCLSource
	Steps  *steps.Tracker
	Addons []Addon
	// Events are further sources of events.jsonl records (log tailer,
	// latency series), written with the GPU events.
	Events  []EventSource
	Missing []string
}

// EventSource is a collector of events.jsonl records (logtail.Tailer,
// logtail.Ring).
type EventSource interface {
	Events(from, to time.Time) []traces.Event
}

// Config tunes a Capturer.
type Config struct {
	Cluster      string
	Host         string
	AgentVersion string
	// MaxConcurrent bounds the captures pending or running at once.
	MaxConcurrent int
	// MaxDuration bounds a timed window.
	MaxDuration time.Duration
	// StartTimeout bounds the wait for a start iteration, and for the end
	// iteration after the window opened.
	StartTimeout time.Duration
	// Keep is how many finished captures Status remembers.
	Keep int
}

// Request asks for one capture.
type Request struct {
	// ID names the capture; the same ID on every host groups their shares.
	ID        string
	Job, Run  string
	Processes []traces.Process
	WorldSize int
	// Either Duration, or StartIteration and Iterations.
	Duration                   time.Duration
	StartIteration, Iterations int64
	// Lookback opens a timed window this long before the request: its GPU
	// samples, NCCL calls and events come from the collectors' history (a
	// hang capture looks back at the stall); the CPU profile covers only
	// the Duration after.
	Lookback time.Duration
	Trigger  traces.Trigger
	// Report, when set, adds the requester's own parts once the window
	// closed, given the window's CPU profile (nil without one).
	Report func(bw *traces.BundleWriter, prof *profile.Profile) error
}

// States of a capture.
const (
	StateWaiting   = "waiting"   // for the start iteration
	StateRunning   = "running"   // window open
	StateWriting   = "writing"   // bundle being written
	StateCommitted = "committed" // in the spool, handed to the uploader
	StateFailed    = "failed"
)

// Status describes a capture the Capturer has accepted.
type Status struct {
	ID             string           `json:"id"`
	Job            string           `json:"job"`
	Run            string           `json:"run"`
	State          string           `json:"state"`
	Error          string           `json:"error,omitempty"`
	Trigger        traces.Trigger   `json:"trigger"`
	Processes      []traces.Process `json:"processes"`
	StartIteration int64            `json:"start_iteration,omitempty"`
	Iterations     int64            `json:"iterations,omitempty"`
	Duration       time.Duration    `json:"duration_ns,omitempty"`
	Start          time.Time        `json:"start,omitzero"`
	End            time.Time        `json:"end,omitzero"`
	// Key is the store prefix the bundle will be uploaded to.
	Key   string   `json:"key"`
	Parts []string `json:"parts,omitempty"`
	Notes []string `json:"notes,omitempty"`
}

// shutdownGrace is how long addons may still wait once the agent stops.
const shutdownGrace = 2 * time.Second

// Errors Submit returns.
var (
	ErrBusy      = errors.New("too many captures in progress")
	ErrDuplicate = errors.New("capture id already used")
	ErrInvalid   = errors.New("invalid capture request")
	ErrStopped   = errors.New("capture service is not running")
)

// Capturer runs captures. Submit queues them; Run executes them and owns
// every goroutine a capture uses.
type Capturer struct {
	cfg    Config
	src    Sources
	spool  Spool
	notify Notifier
	log    *slog.Logger
	now    func() time.Time

	queue   chan *job
	started chan struct{} // closed when Run first takes captures
	once    sync.Once

	mu      sync.Mutex
	running bool
	byID    map[string]*job
	order   []string // accepted IDs, oldest first
	active  int
}

// finisher is an opened addon's part writer.
type finisher struct {
	name string
	fn   func(context.Context, *traces.BundleWriter) error
}

type job struct {
	req    Request
	status Status
}

// New returns a Capturer; call Run to start it.
func New(cfg Config, src Sources, sp Spool, n Notifier, logger *slog.Logger) *Capturer {
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 4
	}
	if cfg.MaxDuration <= 0 {
		cfg.MaxDuration = 10 * time.Minute
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 15 * time.Minute
	}
	if cfg.Keep <= 0 {
		cfg.Keep = 64
	}
	return &Capturer{
		cfg: cfg, src: src, spool: sp, notify: n, log: logger, now: time.Now,
		queue: make(chan *job, cfg.MaxConcurrent), started: make(chan struct{}), byID: map[string]*job{},
	}
}

// Started is closed once Run takes captures; Submit fails with ErrStopped
// before that.
func (c *Capturer) Started() <-chan struct{} { return c.started }

// Run executes submitted captures until ctx ends. A window still open at
// that point is closed early and its bundle written, so data already
// gathered is kept; captures still waiting for their start are dropped.
func (c *Capturer) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.running {
		c.mu.Unlock()
		return errors.New("capture: Run called twice")
	}
	c.running = true
	c.mu.Unlock()
	c.once.Do(func() { close(c.started) })
	var wg sync.WaitGroup
	defer func() {
		c.mu.Lock()
		c.running = false
		c.mu.Unlock()
		wg.Wait()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case j := <-c.queue:
			wg.Go(func() { c.execute(ctx, j) })
		}
	}
}

// Submit validates req and queues it. It returns the capture's status at
// acceptance; Status(id) follows it.
func (c *Capturer) Submit(req Request) (Status, error) {
	if err := c.validate(&req); err != nil {
		return Status{}, err
	}
	key := traces.Key{Cluster: c.cfg.Cluster, Job: req.Job, Run: req.Run, Capture: req.ID, Host: c.cfg.Host}
	j := &job{req: req, status: Status{
		ID: req.ID, Job: req.Job, Run: req.Run, State: StateRunning, Trigger: req.Trigger,
		Processes: req.Processes, StartIteration: req.StartIteration, Iterations: req.Iterations,
		Duration: req.Duration, Key: key.Prefix(),
	}}
	if req.Iterations > 0 {
		j.status.State = StateWaiting
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.running {
		return Status{}, ErrStopped
	}
	if old, ok := c.byID[req.ID]; ok && old.status.Job == req.Job && old.status.Run == req.Run {
		return Status{}, fmt.Errorf("%w: %q was taken for job %q run %q (state %s); choose another id", ErrDuplicate, req.ID, req.Job, req.Run, old.status.State)
	}
	if c.active >= c.cfg.MaxConcurrent {
		return Status{}, fmt.Errorf("%w: %d running, at most %d; retry when one ends", ErrBusy, c.active, c.cfg.MaxConcurrent)
	}
	select {
	case c.queue <- j:
	default:
		return Status{}, fmt.Errorf("%w: queue full; retry shortly", ErrBusy)
	}
	c.active++
	c.byID[req.ID] = j
	c.order = append(c.order, req.ID)
	c.pruneLocked()
	return j.status, nil
}

func (c *Capturer) validate(req *Request) error {
	if req.ID == "" {
		req.ID = NewID(c.now())
	}
	for _, f := range []struct{ name, v string }{{"id", req.ID}, {"job", req.Job}, {"run", req.Run}} {
		if err := traces.ValidateComponent(f.v); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalid, f.name, err)
		}
	}
	if traces.IsContinuous(req.ID) {
		return fmt.Errorf("%w: id %q: ids starting with %q name continuous profiles; choose another", ErrInvalid, req.ID, traces.ContinuousPrefix)
	}
	switch {
	case req.Iterations < 0 || req.Duration < 0 || req.StartIteration < 0:
		return fmt.Errorf("%w: negative duration or iterations", ErrInvalid)
	case req.Iterations > 0 && req.Duration > 0:
		return fmt.Errorf("%w: give a duration or iterations, not both", ErrInvalid)
	case req.Iterations == 0 && req.Duration == 0:
		return fmt.Errorf("%w: give a duration or iterations", ErrInvalid)
	case req.Duration > c.cfg.MaxDuration:
		return fmt.Errorf("%w: duration %v is longer than the %v allowed (capture.max_duration)", ErrInvalid, req.Duration, c.cfg.MaxDuration)
	case req.Lookback < 0 || req.Lookback > 0 && req.Iterations > 0:
		return fmt.Errorf("%w: a lookback must be positive and goes with a duration, not iterations", ErrInvalid)
	case req.Lookback > c.cfg.MaxDuration:
		return fmt.Errorf("%w: lookback %v is longer than the %v of history allowed (capture.max_duration)", ErrInvalid, req.Lookback, c.cfg.MaxDuration)
	case req.Iterations > 0 && c.src.Steps == nil:
		return fmt.Errorf("%w: iteration windows need step tracking", ErrInvalid)
	}
	if req.Trigger.Kind == "" {
		req.Trigger.Kind = traces.TriggerOnDemand
	}
	if req.Iterations > 0 {
		req.Trigger.StartIteration, req.Trigger.Iterations = req.StartIteration, req.Iterations
	}
	return nil
}

// pruneLocked forgets the oldest finished captures beyond Keep.
func (c *Capturer) pruneLocked() {
	for len(c.order) > c.cfg.Keep {
		id := c.order[0]
		if j := c.byID[id]; j != nil && j.status.State != StateCommitted && j.status.State != StateFailed {
			return
		}
		delete(c.byID, id)
		c.order = c.order[1:]
	}
}

// Status returns the status of capture id.
func (c *Capturer) Status(id string) (Status, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	j, ok := c.byID[id]
	if !ok {
		return Status{}, false
	}
	return j.status, true
}

// List returns the status of every capture remembered, newest first.
func (c *Capturer) List() []Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Status, 0, len(c.order))
	for _, id := range slices.Backward(c.order) {
		out = append(out, c.byID[id].status)
	}
	return out
}

func (c *Capturer) update(j *job, fn func(*Status)) {
	c.mu.Lock()
	fn(&j.status)
	c.mu.Unlock()
}

// execute runs one capture from its wait to its commit.
func (c *Capturer) execute(ctx context.Context, j *job) {
	defer func() {
		c.mu.Lock()
		c.active--
		c.pruneLocked()
		c.mu.Unlock()
	}()
	req := j.req
	log := c.log.With("capture", req.ID, "job", req.Job, "run", req.Run)
	notes := slices.Clone(c.src.Missing)
	pids := pidsOf(req.Processes)

	// Addons and the GPU rate go up before the window: Kineto must be asked
	// ahead of the start iteration, and samples must be dense from its first
	// instant.
	var finishers []finisher
	for _, a := range c.src.Addons {
		fn, err := a.Open(ctx, Window{ID: req.ID, Job: req.Job, Run: req.Run, Processes: req.Processes,
			StartIteration: req.StartIteration, Iterations: req.Iterations, Duration: req.Duration})
		if err != nil {
			notes = append(notes, fmt.Sprintf("%s: %v", a.Name(), err))
			continue
		}
		finishers = append(finishers, finisher{a.Name(), fn})
	}
	var endGPU func()
	if c.src.GPU != nil {
		var gpuNotes []string
		endGPU, gpuNotes = c.src.GPU.BeginCapture()
		notes = append(notes, gpuNotes...)
	}
	closeGPU := func() {
		if endGPU != nil {
			endGPU()
			endGPU = nil
		}
	}
	defer closeGPU()

	start := c.now().Add(-req.Lookback)
	if req.Iterations > 0 {
		wctx, cancel := context.WithTimeout(ctx, c.cfg.StartTimeout)
		began, err := c.src.Steps.WaitIteration(wctx, req.Job, req.StartIteration)
		cancel()
		if err != nil {
			c.fail(j, log, fmt.Errorf("window never opened: %w", err))
			return
		}
		// Sources that report iterations late (NCCL periodicity, in
		// batches) put the window's start in the past; the GPU rings and
		// the NCCL buffer still hold it, the CPU profile does not.
		start = c.now()
		if lag := start.Sub(began); lag > time.Second {
			notes = append(notes, fmt.Sprintf("iteration %d was reported %v after it began: the window's GPU samples and NCCL calls come from history at the steady rate, and the CPU profile covers only the time after the report", req.StartIteration, lag.Round(time.Millisecond)))
		}
		start = minTime(start, began)
	}
	c.update(j, func(s *Status) { s.State, s.Start = StateRunning, start })
	log.Info("capture window open", "pids", pids, "start_iteration", req.StartIteration, "iterations", req.Iterations, "duration", req.Duration)
	var cpuw CPUWindow
	if c.src.CPU != nil {
		cpuw = c.src.CPU.StartWindow(pids)
	}

	ended, cut := c.wait(ctx, req)
	if cut != "" {
		notes = append(notes, cut)
		log.Warn("capture window cut short", "reason", cut)
	}
	end := c.now()
	if !ended.IsZero() && ended.After(start) {
		end = minTime(end, ended)
	}
	var prof *profile.Profile
	if cpuw != nil {
		var err error
		if prof, err = cpuw.Stop(); err != nil {
			notes = append(notes, fmt.Sprintf("cpu profile: %v", err))
		}
	}
	closeGPU()
	c.update(j, func(s *Status) { s.State, s.End = StateWriting, end })

	// The window's data is accepted: write it even when the agent is
	// shutting down, within a bounded time. Addons that wait for others
	// (Kineto processes writing traces) get only a short grace on shutdown.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(shutdownGrace, cancel) })
	defer stop()
	m, err := c.write(wctx, req, start, end, prof, notes, finishers)
	if err != nil {
		c.fail(j, log, err)
		return
	}
	if c.notify != nil {
		c.notify.Notify()
	}
	c.update(j, func(s *Status) {
		s.State = StateCommitted
		s.Notes = m.Notes
		for _, p := range m.Parts {
			s.Parts = append(s.Parts, p.Name)
		}
	})
	log.Info("capture committed", "parts", len(m.Parts), "notes", len(m.Notes), "window", end.Sub(start).Round(time.Millisecond))
}

// wait holds the window open. For an iteration window it returns when the
// last iteration ended according to the step data; it says why it closed
// early, if it did.
func (c *Capturer) wait(ctx context.Context, req Request) (ended time.Time, cut string) {
	if req.Iterations == 0 {
		t := time.NewTimer(req.Duration)
		defer t.Stop()
		select {
		case <-t.C:
			return time.Time{}, ""
		case <-ctx.Done():
			return time.Time{}, fmt.Sprintf("window cut short by agent shutdown before its %v elapsed", req.Duration)
		}
	}
	last := req.StartIteration + req.Iterations
	wctx, cancel := context.WithTimeout(ctx, c.cfg.StartTimeout)
	defer cancel()
	ended, err := c.src.Steps.WaitIteration(wctx, req.Job, last)
	if err != nil {
		it, _ := c.src.Steps.Iteration(req.Job)
		return time.Time{}, fmt.Sprintf("window closed at iteration %d before iteration %d: %v", it, last, err)
	}
	return ended, ""
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func (c *Capturer) fail(j *job, log *slog.Logger, err error) {
	log.Error("capture failed", "err", err)
	c.update(j, func(s *Status) { s.State, s.Error = StateFailed, err.Error() })
}

// write puts the window's data into a bundle in the spool and commits it.
func (c *Capturer) write(ctx context.Context, req Request, start, end time.Time, prof *profile.Profile, notes []string,
	finishers []finisher) (*traces.Manifest, error) {
	m := c.manifest(req, start, end)
	dir, err := c.spool.Begin(req.ID, c.cfg.Host)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			if err := c.spool.Abort(dir); err != nil {
				c.log.Warn("spool abort", "capture", req.ID, "err", err)
			}
		}
	}()
	bw, err := traces.NewBundleWriter(dir, m)
	if err != nil {
		return nil, err
	}
	for _, n := range notes {
		bw.Note("%s", n)
	}
	if m.WorldSize == 0 && len(m.Ranks) > 0 && req.Report == nil {
		bw.Note("world size unknown: no process of the job said WORLD_SIZE; the aggregator cannot tell when every rank has reported")
	}
	var events []traces.Event
	if c.src.GPU != nil {
		// A job owns the GPUs its processes use, and only those: on a shared
		// host another job's GPUs are not its problem.
		gpus := jobGPUs(req.Processes)
		if gpus != nil && len(gpus) == 0 {
			bw.Note("no process of job %s uses a GPU on this host: its bundle carries no GPU samples", req.Job)
		} else if err := traces.WriteTable(bw, traces.PartGPUSamples, onGPUs(c.src.GPU.Samples(start, end), gpus)); err != nil {
			return nil, err
		}
		events = slices.DeleteFunc(c.src.GPU.Events(start, end), func(e traces.Event) bool {
			return gpus != nil && e.GPU >= 0 && !gpus[e.GPU]
		})
	}
	for _, s := range c.src.Events {
		events = append(events, attributeEvents(s.Events(start, end), req.Job, req.Processes)...)
	}
	if c.src.GPU != nil || len(events) > 0 {
		slices.SortStableFunc(events, func(a, b traces.Event) int { return cmp.Compare(a.TimeNs, b.TimeNs) })
		if err := bw.WriteEvents(events); err != nil {
			return nil, err
		}
	}
	if c.src.NCCL != nil {
		rows := filterNCCL(c.src.NCCL.Events(start, end), pidsOf(req.Processes))
		for _, n := range matchNCCL(rows) {
			bw.Note("%s", n)
		}
		if err := traces.WriteTable(bw, traces.PartNCCLEvents, rows); err != nil {
			return nil, err
		}
	}
	if c.src.Steps != nil {
		if err := traces.WriteTable(bw, traces.PartSteps, c.src.Steps.Steps(req.Job, start, end)); err != nil {
			return nil, err
		}
		if err := writeHistory(bw, c.src.Steps, req.Job); err != nil {
			return nil, err
		}
	}
	if prof != nil {
		if err := bw.WriteProfile(prof); err != nil {
			return nil, err
		}
	}
	for _, f := range finishers {
		if err := f.fn(ctx, bw); err != nil {
			bw.Note("%s: %v", f.name, err)
		}
	}
	if req.Report != nil {
		if err := req.Report(bw, prof); err != nil {
			return nil, fmt.Errorf("%s report: %w", req.Trigger.Kind, err)
		}
	}
	out, err := bw.Commit()
	if err != nil {
		return nil, err
	}
	if err := c.spool.Commit(dir); err != nil {
		return nil, fmt.Errorf("spool commit: %w", err)
	}
	committed = true
	return out, nil
}

// writeHistory adds the run's step history from its first step seen, so
// that the capture can be judged against the start of the run.
func writeHistory(bw *traces.BundleWriter, tr *steps.Tracker, job string) error {
	spans, dropped := tr.History(job)
	if len(spans) == 0 {
		return nil
	}
	if dropped > 0 {
		bw.Note("step history: %d steps after its full-resolution head were dropped because restarts left too little to merge within steps.history_spans", dropped)
	}
	return traces.WriteTable(bw, traces.PartStepHistory, spans)
}

func (c *Capturer) manifest(req Request, start, end time.Time) traces.Manifest {
	m := traces.Manifest{
		CaptureID: req.ID, Cluster: c.cfg.Cluster, Job: req.Job, Run: req.Run, Host: c.cfg.Host,
		WorldSize: req.WorldSize, Start: start.UTC(), End: end.UTC(), Trigger: req.Trigger,
		AgentVersion: c.cfg.AgentVersion, Processes: req.Processes,
	}
	ranks := map[int]bool{}
	for _, p := range req.Processes {
		if p.Rank >= 0 {
			ranks[p.Rank] = true
		}
	}
	if c.src.Steps != nil {
		known, _ := c.src.Steps.Ranks(req.Job)
		for r := range known {
			ranks[r] = true
		}
	}
	for r := range ranks {
		m.Ranks = append(m.Ranks, r)
		if r >= m.WorldSize && m.WorldSize > 0 {
			m.WorldSize = 0 // contradicted: better unknown than wrong
		}
	}
	slices.Sort(m.Ranks)
	if c.src.GPU != nil {
		m.Simulated = c.src.GPU.Simulated()
		gpus := jobGPUs(req.Processes)
		m.DriverVersion, m.CUDAVersion = c.src.GPU.Versions()
		for _, g := range c.src.GPU.Devices() {
			if gpus != nil && !gpus[g.Index] {
				continue
			}
			for _, p := range req.Processes {
				if p.Uses(g.Index) && p.Rank >= 0 && !slices.Contains(g.Ranks, p.Rank) {
					g.Ranks = append(g.Ranks, p.Rank)
				}
			}
			m.GPUs = append(m.GPUs, g)
		}
	}
	return m
}

// jobGPUs are the indices of the GPUs the processes use; nil when the
// capture names no process, whose bundle then carries the host's GPUs,
// owned by no job (see traces.Manifest.OwnsGPU).
func jobGPUs(ps []traces.Process) map[int]bool {
	if len(ps) == 0 {
		return nil
	}
	out := map[int]bool{}
	for _, p := range ps {
		if p.GPU >= 0 {
			out[p.GPU] = true
		}
		for _, g := range p.GPUs {
			out[g] = true
		}
	}
	return out
}

// onGPUs keeps the samples of the given GPUs (all when gpus is nil).
func onGPUs(samples []traces.GPUSample, gpus map[int]bool) []traces.GPUSample {
	if gpus == nil {
		return samples
	}
	return slices.DeleteFunc(samples, func(s traces.GPUSample) bool { return !gpus[int(s.GPU)] })
}

func pidsOf(ps []traces.Process) []int {
	var out []int
	for _, p := range ps {
		out = append(out, p.PID)
	}
	return out
}

// matchNCCL gives the job's collectives on communicators created before
// the agent attached the identity the other ranks' calls carry (see
// traces.NCCLMatcher), and says in notes how the calls were matched and
// timed. The aggregator matches again across hosts.
func matchNCCL(rows []traces.NCCLEvent) []string {
	var m traces.NCCLMatcher
	var colls, plugin int
	for i := range rows {
		m.Add("", &rows[i])
		if rows[i].IsCollective() {
			colls++
			if rows[i].GPUStartNs > 0 {
				plugin++
			}
		}
	}
	sum := m.Match()
	for i := range rows {
		m.Apply("", &rows[i])
	}
	var notes []string
	if n := sum.Note(); n != "" {
		notes = append(notes, n)
	}
	if plugin > 0 {
		notes = append(notes, fmt.Sprintf("NCCL: %d of %d collectives carry GPU-side kernel times from Loupe's NCCL profiler plugin, "+
			"merged with the uprobes' host times (source %q)", plugin, colls, traces.SourceBoth))
	}
	return notes
}

// filterNCCL keeps the calls of the captured processes (all when none named).
func filterNCCL(evs []traces.NCCLEvent, pids []int) []traces.NCCLEvent {
	if len(pids) == 0 {
		return evs
	}
	return slices.DeleteFunc(evs, func(e traces.NCCLEvent) bool { return !slices.Contains(pids, int(e.PID)) })
}

// NewID returns a capture ID for an on-demand capture: its UTC start time to
// the millisecond, unique enough on one host and readable in a listing.
func NewID(t time.Time) string {
	return "od-" + t.UTC().Format("20060102T150405.000Z")
}

// attributeEvents keeps the events that concern the capture: an event
// naming another job (Attrs job, as latency series do) is left out; events
// from container logs (Attrs pod, namespace) are tied to the capture's
// processes: when those run in pods, events of other pods are left out,
// and an event of a pod whose processes share one rank gets that rank (and
// the pid, when the pod has one process). Events of plain log files are
// kept as they are.
func attributeEvents(evs []traces.Event, job string, procs []traces.Process) []traces.Event {
	type place struct{ rank, pid, n int }
	pods := map[string]*place{}
	for _, p := range procs {
		if p.Pod == "" {
			continue
		}
		k := p.Namespace + "/" + p.Pod
		pl := pods[k]
		if pl == nil {
			pl = &place{rank: p.Rank, pid: p.PID}
			pods[k] = pl
		} else if pl.rank != p.Rank {
			pl.rank = -1
		}
		pl.n++
	}
	out := evs[:0]
	for _, e := range evs {
		if j := e.Attrs["job"]; j != "" && j != job {
			continue
		}
		pod := e.Attrs["pod"]
		if pod == "" || len(pods) == 0 {
			out = append(out, e)
			continue
		}
		pl := pods[e.Attrs["namespace"]+"/"+pod]
		if pl == nil {
			continue
		}
		if e.Rank < 0 {
			e.Rank = pl.rank
		}
		if e.PID == 0 && pl.n == 1 {
			e.PID = pl.pid
		}
		out = append(out, e)
	}
	return out
}
