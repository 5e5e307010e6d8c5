// Package cpuprof is the agent's CPU profiler: it drives the eBPF stack
// sampler of bpf/cpu (a software CPU-clock perf event on every online CPU,
// counts aggregated in the kernel), describes each sampled process to its
// unwinder (the .eh_frame of every mapped object compiled into compact
// rows, and the CPython 3.9-3.13 interpreter's frame layout, so stacks of
// code built without frame pointers and of unmodified Python processes come
// out whole), symbolizes the stacks (ELF symbol tables, Go pclntab even in
// stripped binaries, perf map files of JITs and Python 3.12+, Python code
// objects with file and line, /proc/kallsyms for the kernel, C++ and Rust
// demangling) and turns capture windows into pprof profiles.
//
// A Profiler samples every process all the time at a low rate (19 Hz by
// default) and hands a continuous profile to a sink once per interval (60 s
// by default); while a Window is open it samples at the capture rate and
// the window keeps the samples of its processes. With continuous profiling
// off, it samples only while a window is open, and only the processes the
// open windows ask for.
package cpuprof

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/google/pprof/profile"

	"github.com/loupe-dev/loupe/bpf/cpu"
)

// Config configures the CPU profiler. The zero value of a field means its default.
type Config struct {
	// Hz is the sampling frequency per CPU: default 19 (prime, so sampling
	// does not run in lock-step with periodic work), at most 999.
	Hz int `yaml:"hz"`
	// DrainInterval is how often the in-kernel counts are read and
	// symbolized: default 1s. Shorter catches more short-lived processes.
	DrainInterval time.Duration `yaml:"drain_interval"`
	// FramePointersOnly turns off unwinding by the objects' unwind tables
	// (.eh_frame) and CPython frame walking in the kernel: user stacks then
	// follow frame pointers only, as perf does by default.
	FramePointersOnly bool `yaml:"frame_pointers_only"`
	// UnwindRows is the room for unwind table rows in the kernel (8 bytes
	// each, shared by every mapped object): default 2097152 (16 MiB).
	// Objects that do not fit are unwound by frame pointers, counted in
	// loupe_cpuprof_unwind_tables_full_total.
	UnwindRows uint32 `yaml:"unwind_rows"`
	// UnwindMappings is the room for the executable mappings of the
	// processes described to the unwinder (32 bytes each): default 65536
	// (a PyTorch process maps a few hundred). A process that does not fit
	// is unwound by frame pointers, counted in
	// loupe_cpuprof_unwind_processes_full_total.
	UnwindMappings uint32 `yaml:"unwind_mappings"`
	// Continuous is always-on profiling between (and during) windows.
	Continuous ContinuousConfig `yaml:"continuous"`
	// Labeler, when set, adds labels such as container, pod, job and rank
	// to the samples of a process. It is called once per process per
	// window, and per continuous interval.
	Labeler func(pid int) map[string]string `yaml:"-"`
}

// ContinuousConfig configures always-on profiling.
type ContinuousConfig struct {
	// Enabled samples every process all the time; default true.
	Enabled bool `yaml:"enabled"`
	// Hz is the sampling rate outside windows: default 19.
	Hz int `yaml:"hz"`
	// Interval is how much time one continuous profile covers: default
	// 1m, from 1s to 1h.
	Interval time.Duration `yaml:"interval"`
	// Sink receives each interval's profile of every process (labels pid,
	// comm and the Labeler's), from Run's goroutine. Without a sink the
	// profiles are dropped.
	Sink func(*profile.Profile) `yaml:"-"`
}

// DefaultConfig returns the defaults: windows and continuous profiling at
// 19 Hz, one continuous profile a minute, drained every second.
func DefaultConfig() Config {
	return Config{Hz: 19, DrainInterval: time.Second, UnwindRows: 1 << 21, UnwindMappings: 1 << 16,
		Continuous: ContinuousConfig{Enabled: true, Hz: 19, Interval: time.Minute}}
}

// MaxHz is the highest sampling frequency Config.Hz accepts.
const MaxHz = 999

func (c *Config) validate() error {
	d := DefaultConfig()
	if c.Hz == 0 {
		c.Hz = d.Hz
	}
	if c.DrainInterval == 0 {
		c.DrainInterval = d.DrainInterval
	}
	if c.Hz < 1 || c.Hz > MaxHz {
		return fmt.Errorf("cpuprof: hz %d out of range: use 1 to %d (19 is the default)", c.Hz, MaxHz)
	}
	if c.DrainInterval < 10*time.Millisecond || c.DrainInterval > time.Minute {
		return fmt.Errorf("cpuprof: drain_interval %s out of range: use 10ms to 1m (1s is the default)", c.DrainInterval)
	}
	if c.UnwindRows == 0 {
		c.UnwindRows = d.UnwindRows
	}
	if c.UnwindMappings == 0 {
		c.UnwindMappings = d.UnwindMappings
	}
	if c.Continuous.Hz == 0 {
		c.Continuous.Hz = d.Continuous.Hz
	}
	if c.Continuous.Interval == 0 {
		c.Continuous.Interval = d.Continuous.Interval
	}
	if c.Continuous.Hz < 1 || c.Continuous.Hz > MaxHz {
		return fmt.Errorf("cpuprof: continuous.hz %d out of range: use 1 to %d (19 is the default)", c.Continuous.Hz, MaxHz)
	}
	if c.Continuous.Interval < time.Second || c.Continuous.Interval > time.Hour {
		return fmt.Errorf("cpuprof: continuous.interval %s out of range: use 1s to 1h (1m is the default)", c.Continuous.Interval)
	}
	if c.UnwindRows < 1<<12 || c.UnwindRows > 1<<26 {
		return fmt.Errorf("cpuprof: unwind_rows %d out of range: use 4096 to 67108864 (2097152 is the default)", c.UnwindRows)
	}
	if c.UnwindMappings < 8 || c.UnwindMappings > 1<<22 {
		return fmt.Errorf("cpuprof: unwind_mappings %d out of range: use 8 to 4194304 (65536 is the default)", c.UnwindMappings)
	}
	return nil
}

// stackEntries sizes each stacks map to twice the stacks (user and kernel)
// that one drain interval can bring if every sample is distinct, within
// 1024 and 16384 entries (about 1.1 to 18 MiB per map).
func stackEntries(hz, cpus int, drain time.Duration) uint32 {
	perDrain := float64(hz*cpus) * drain.Seconds() * 2
	n := uint64(perDrain*2) | 1
	n = 1 << bits.Len64(n-1)
	return uint32(min(max(n, 1024), 16384))
}

// Profiler samples CPU stacks with eBPF. Create it with New, run it with Run.
type Profiler struct {
	cfg     Config
	logger  *slog.Logger
	sampler *cpu.Sampler
	tracker *tracker
	// attached is closed once Run has attached the sampler to the CPUs.
	attached chan struct{}
	samples  *metrics.Counter
	lost     [len(cpu.LostReasonNames)]*metrics.Counter

	mu       sync.Mutex // guards everything below, and serializes drains
	sym      *symbolizer
	windows  map[*Window]struct{}
	cont     *Window // the continuous profile being collected; nil when off
	rate     int     // the sampling rate now, Hz
	lastLost cpu.Lost
	started  bool
	closed   bool
}

// New loads the eBPF sampler. Without the privileges for eBPF it returns an
// error (wrapping a *cpu.PermissionError) naming the missing capabilities,
// CAP_BPF and CAP_PERFMON; the caller should log it and carry on without
// CPU profiles. Metrics are registered in set:
// loupe_cpuprof_samples_total and loupe_cpuprof_lost_samples_total{reason}.
func New(cfg Config, logger *slog.Logger, set *metrics.Set) (*Profiler, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	if set == nil {
		set = metrics.NewSet()
	}
	p := &Profiler{
		cfg:      cfg,
		logger:   logger,
		samples:  set.GetOrCreateCounter("loupe_cpuprof_samples_total"),
		sym:      newSymbolizer("/proc", logger),
		windows:  map[*Window]struct{}{},
		attached: make(chan struct{}),
	}
	for i, reason := range cpu.LostReasonNames {
		p.lost[i] = set.GetOrCreateCounter(fmt.Sprintf("loupe_cpuprof_lost_samples_total{reason=%q}", reason))
	}
	cpus, err := cpu.OnlineCPUs()
	if err != nil {
		return nil, fmt.Errorf("cpuprof: %w", err)
	}
	p.rate = cfg.Hz
	if cfg.Continuous.Enabled {
		p.rate = cfg.Continuous.Hz
		p.cont = newWindow(p, nil)
		p.cont.quiet = true
	}
	hz := max(cfg.Hz, p.rate)
	p.sampler, err = cpu.Load(cpu.Options{StackEntries: stackEntries(hz, len(cpus), cfg.DrainInterval), UnwindRows: cfg.UnwindRows,
		UnwindMappings: cfg.UnwindMappings})
	if err != nil {
		return nil, fmt.Errorf("cpuprof: CPU profiles are off: %w", err)
	}
	if !cfg.FramePointersOnly {
		p.tracker = newTracker(p.sampler, "/proc", logger, set, p.prepare)
		if err := p.sampler.SetUnwind(true); err != nil {
			p.sampler.Close()
			return nil, fmt.Errorf("cpuprof: %w", err)
		}
	}
	return p, nil
}

// Run attaches the sampler to every online CPU and drains it every
// DrainInterval (and hands out a continuous profile every interval) until
// ctx is done; then it detaches and frees everything. Windows still open
// keep what was sampled up to then.
func (p *Profiler) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.started || p.closed {
		p.mu.Unlock()
		return errors.New("cpuprof: Run called twice, or after Close")
	}
	p.started = true
	p.mu.Unlock()
	defer p.Close()

	cpus, err := cpu.OnlineCPUs()
	if err != nil {
		return fmt.Errorf("cpuprof: %w", err)
	}
	p.mu.Lock()
	rate := p.rate
	p.mu.Unlock()
	if err := p.sampler.Attach(rate, cpus); err != nil {
		return fmt.Errorf("cpuprof: %w", err)
	}
	p.mu.Lock()
	p.applyFilterLocked()
	p.mu.Unlock()
	close(p.attached)
	p.logger.Info("cpuprof: CPU sampler attached", "cpus", len(cpus), "hz", rate, "continuous", p.cont != nil, "unwind_tables", p.tracker != nil)
	if p.tracker != nil {
		// Ends when Close closes the sampler's event ring.
		tracked := make(chan struct{})
		go func() {
			defer close(tracked)
			p.tracker.run()
		}()
		defer func() {
			p.Close()
			<-tracked
		}()
	}
	t := time.NewTicker(p.cfg.DrainInterval)
	defer t.Stop()
	// A nil channel never fires: no continuous profile.
	var interval <-chan time.Time
	if p.cont != nil {
		it := time.NewTicker(p.cfg.Continuous.Interval)
		defer it.Stop()
		interval = it.C
	}
	for {
		select {
		case <-ctx.Done():
			p.rotate()
			return nil
		case <-t.C:
			p.mu.Lock()
			if len(p.windows) > 0 || p.cont != nil {
				p.drainLocked()
			}
			p.mu.Unlock()
		case <-interval:
			p.rotate()
		}
	}
}

// rotate ends the continuous profile being collected, hands it to the
// sink and starts the next one.
func (p *Profiler) rotate() {
	p.mu.Lock()
	if p.cont == nil || p.closed {
		p.mu.Unlock()
		return
	}
	p.drainLocked()
	now := time.Now()
	prof := p.cont.profile(now)
	p.cont = newWindow(p, nil)
	p.cont.quiet = true
	p.cont.start = now
	p.mu.Unlock()
	if sink := p.cfg.Continuous.Sink; sink != nil && len(prof.Sample) > 0 {
		sink(prof)
	}
}

// Close detaches the sampler and frees its maps; Run does it on return.
// Windows still open keep what they have.
func (p *Profiler) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	if len(p.windows) > 0 || p.cont != nil {
		p.drainLocked()
	}
	p.closed = true
	err := p.sampler.Close()
	p.sym.close()
	if err != nil {
		return fmt.Errorf("cpuprof: detaching the CPU sampler: %w", err)
	}
	return nil
}

// drainLocked reads the kernel's counts, symbolizes them once and hands each
// sample to the windows that want its process.
func (p *Profiler) drainLocked() {
	if p.closed {
		return
	}
	p.sym.beginDrain()
	var total uint64
	// Every sample of one drain was taken at the current rate: rates
	// change only right after a drain.
	period := uint64(time.Second) / uint64(p.rate)
	drained := time.Now().UnixNano()
	lost, err := p.sampler.Drain(func(s cpu.Sample) {
		total += s.Count
		var ws []*Window
		if p.cont != nil {
			ws = append(ws, p.cont)
		}
		for w := range p.windows {
			if w.wants(s.PID) {
				ws = append(ws, w)
			}
		}
		if len(ws) == 0 {
			return // sampled while the filter was changing
		}
		// Source lines of native code for windows only: the always-on
		// profile keeps to function names, which cost far less.
		windowed := len(ws) > 1 || p.cont == nil
		st := p.symbolize(s, windowed)
		for _, w := range ws {
			at := drained
			if w == p.cont {
				at = 0 // the continuous profile keeps one sample per stack
			}
			w.add(s.PID, s.Comm, st, s.Count, s.Count*period, at, p.cfg.Labeler)
		}
	})
	p.samples.Add(int(total))
	if err != nil {
		p.logger.Warn("cpuprof: draining the CPU sampler failed", "err", err)
		return
	}
	for i, n := range lost {
		if d := n - p.lastLost[i]; d > 0 {
			p.lost[i].Add(int(d))
		}
	}
	p.lastLost = lost
}

// stack is a symbolized sample: frames leaf first, kernel frames before
// user frames, and what the user part says about frame pointers.
type stack struct {
	frames    []frame
	user      int  // number of user frames (the tail of frames)
	judged    bool // some user frame is in a known object, so truncation can be told
	truncated bool // the user stack does not reach a thread entry point
}

// prepare hands a process the unwinder just described to the symbolizer.
func (p *Profiler) prepare(pid uint32, maps []mapping, py *pyProcess) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.sym.prepare(pid, maps, py)
	}
}

func (p *Profiler) symbolize(s cpu.Sample, lines bool) stack {
	st := stack{frames: make([]frame, 0, len(s.Kernel)+len(s.User)), user: len(s.User)}
	for i, pc := range s.Kernel {
		st.frames = append(st.frames, p.sym.kernelFrame(callSite(pc, i)))
	}
	for i, pc := range s.User {
		if code, lasti, ok := cpu.PythonFrame(pc); ok {
			st.frames = append(st.frames, p.sym.python(s.PID, code, lasti))
			continue
		}
		st.frames = append(st.frames, p.sym.user(s.PID, callSite(pc, i), lines))
	}
	// A process that exited before the drain has no readable memory map,
	// hence only unknown frames: that says nothing about frame pointers.
	user := st.frames[len(st.frames)-st.user:]
	for _, f := range user {
		if f.Object != unknownObject {
			st.judged = true
			break
		}
	}
	st.truncated = st.judged && !reachesRoot(user)
	return st
}

// callSite turns the return address of a caller frame into an address
// inside its call instruction, so the frame is named after the caller even
// when the call is the function's last instruction.
func callSite(pc uint64, depth int) uint64 {
	if depth > 0 && pc > 0 {
		return pc - 1
	}
	return pc
}

// StartWindow starts collecting the samples of the given processes (all
// processes when pids is empty) until the window's Stop. Sampling switches
// to the capture rate while a window is open.
func (p *Profiler) StartWindow(pids []int) *Window {
	w := newWindow(p, pids)
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.windows) == 0 && !p.closed {
		// What the kernel holds was sampled before this window: it goes
		// to the continuous profile, or nowhere.
		if p.cont != nil {
			p.drainLocked()
		} else if _, err := p.sampler.Drain(func(cpu.Sample) {}); err != nil {
			p.logger.Warn("cpuprof: clearing the CPU sampler failed", "err", err)
		}
	}
	p.windows[w] = struct{}{}
	p.setRateLocked(p.cfg.Hz)
	p.applyFilterLocked()
	if p.tracker != nil {
		p.tracker.request(pids)
	}
	return w
}

// setRateLocked switches the sampling rate; samples taken at the old rate
// are drained first, so that each is weighed by its own period.
func (p *Profiler) setRateLocked(hz int) {
	if hz == p.rate || p.closed {
		return
	}
	p.drainLocked()
	if err := p.sampler.SetRate(hz); err != nil {
		p.logger.Warn("cpuprof: changing the sampling rate failed", "err", err)
		return
	}
	p.rate = hz
}

// applyFilterLocked makes the kernel sample every process when continuous
// profiling is on; else the union of the open windows' processes, and
// nothing when no window is open.
func (p *Profiler) applyFilterLocked() {
	if p.closed {
		return
	}
	if p.cont != nil {
		if err := p.sampler.SetFilter(true, nil); err != nil {
			p.logger.Warn("cpuprof: setting the process filter failed", "err", err)
		}
		if err := p.sampler.SetEnabled(true); err != nil {
			p.logger.Warn("cpuprof: switching sampling failed", "err", err)
		}
		return
	}
	all := false
	var pids []uint32
	for w := range p.windows {
		if w.all {
			all = true
		}
		for pid := range w.pids {
			pids = append(pids, pid)
		}
	}
	if err := p.sampler.SetFilter(all, pids); err != nil {
		p.logger.Warn("cpuprof: setting the process filter failed", "err", err)
	}
	if err := p.sampler.SetEnabled(len(p.windows) > 0); err != nil {
		p.logger.Warn("cpuprof: switching sampling failed", "err", err)
	}
}
