// Package nccl watches the NCCL collectives of every process on the host
// through eBPF uprobes on the libnccl each process actually maps, with no
// change to the job, and receives the GPU-side timing of Loupe's NCCL
// profiler plugin when a job loads it.
//
// Finding processes: the Tracer scans /proc/<pid>/maps for libnccl.so
// (system copies, conda, and copies inside Python wheels such as
// site-packages/nvidia/nccl/lib or torch/lib), and it does not wait for the
// next scan when a process loads libraries: an exec hook (raw tracepoint
// sched_process_exec) and a uprobe on each dynamic loader's
// _dl_debug_state (which glibc and musl call at startup once the needed
// libraries are mapped, and around every dlopen) name the process, and its
// maps are read within milliseconds (after 2 ms without further loader
// calls, 20 ms at most). It attaches an entry uprobe and a return uprobe
// to every NCCL host API function of that file, and reads one record per
// call from a ring buffer: time, duration, pid/tid, communicator (id,
// rank, nranks, handle), op, count, datatype, bytes and a per-communicator
// sequence number.
//
// Uprobes belong to the file's inode, so each distinct file (device and
// inode) is attached once, for every process that maps it, and stays
// attached for DetachAfter once the last of them exits: a process that
// loads an attached file, such as a restarted job, is traced from its
// first call. The few calls a process makes between mapping a new file
// and the attach (a few milliseconds) are missed; PyTorch maps libnccl at
// import, long before it creates communicators.
//
// What the times mean: NCCL's host functions enqueue work on a CUDA stream
// and return; the time of a call is when the rank reached the collective on
// the host (enqueue time), not when the GPU ran it. The profiler plugin
// (plugin.go) adds when the kernel ran. Every rank of a communicator issues
// its collectives in the same order, so the calls with the same (CommID,
// Seq) on different ranks are the same collective, and the spread of their
// arrival times (see Skew) shows which rank the others wait for.
//
// Identity: CommID comes from the init call (a hash of the ncclUniqueId),
// from ncclCommSplit of a known parent (parent id, split number, color), or
// from the plugin (NCCL's commHash); traces.NCCLEvent.Matched says which.
// A communicator created before the agent attached has CommID 0 and a Seq
// counted from its first call seen; traces.NCCLMatcher aligns those across
// the ranks of a job when a capture is written. Every row carries the
// process's global rank and the job's world size from its launcher's
// environment (Config.Ranks).
//
// Numbering: Seq counts a communicator's collectives from 0; Send and Recv
// are counted apart from them (ranks of a pipeline issue different numbers
// of them, which must not shift the collectives' numbers); group and init
// calls have Seq -1. Bytes follows nccl-tests: count x datatype size, times
// nranks for AllGather, ReduceScatter and AllToAll (the larger buffer).
// Events reach Subscribe and Events within 50 ms of the call.
//
// Limits: x86-64 only (arguments are read with the System V calling
// convention). ncclCommInitAll's communicators get an id unique to that
// call, as their ranks all live in one process. NCCL linked statically into
// another library is not found.
//
// Privileges: CAP_BPF and CAP_PERFMON to load and attach, CAP_SYS_PTRACE
// and the host's PID namespace to read other processes' maps and reach
// their files through /proc/<pid>/root.
package nccl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	bpfnccl "github.com/loupe-dev/loupe/bpf/nccl"
	"github.com/loupe-dev/loupe/traces"
)

// Config configures the NCCL tracer (the nccl: section of the agent's YAML).
type Config struct {
	// Enabled turns NCCL tracing on.
	Enabled bool `yaml:"enabled"`
	// ScanInterval is how often /proc is scanned for processes that map
	// libnccl and for processes that exited.
	ScanInterval time.Duration `yaml:"scan_interval"`
	// BufferEvents is how many recent events are kept in memory for capture
	// windows (80 bytes each); the plugin's records get a quarter of that.
	BufferEvents int `yaml:"buffer_events"`
	// RingBufferBytes is the size of the kernel ring buffer (a power of two).
	RingBufferBytes int `yaml:"ring_buffer_bytes"`
	// DetachAfter is how long a library's probes stay once no process maps
	// it: a job restarted from the same files within it is traced from its
	// first call.
	DetachAfter time.Duration `yaml:"detach_after"`
	// PluginSocket is the unix datagram socket the NCCL profiler plugin
	// (libnccl-profiler-loupe.so) sends to; empty turns the receiver off.
	PluginSocket string `yaml:"plugin_socket"`
	// Libraries limits tracing to the libnccl files whose path, as the
	// process sees it, matches one of these patterns (filepath.Match
	// syntax) or lies under a folder that matches; empty traces every
	// libnccl.so* on the host. It keeps an agent to one installation (a
	// conda environment, a job's image) on a host shared with other users.
	Libraries []string `yaml:"libraries"`
	// ProcRoot is where the host's /proc is mounted (tests, containers).
	ProcRoot string `yaml:"-"`
	// Ranks gives a process's global rank and its job's world size (-1
	// when unknown); the daemon reads them from the launcher's environment.
	Ranks func(pid int) (rank, worldSize int) `yaml:"-"`
}

// DefaultConfig works on a single host with no configuration.
func DefaultConfig() Config {
	return Config{
		Enabled:         true,
		ScanInterval:    2 * time.Second,
		BufferEvents:    1 << 17,
		RingBufferBytes: bpfnccl.DefaultRingBytes,
		DetachAfter:     10 * time.Minute,
		PluginSocket:    "/run/loupe/nccl-plugin.sock",
		ProcRoot:        "/proc",
	}
}

// Comm is one communicator of one process.
type Comm struct {
	PID    int32
	Handle uint64 // the ncclComm_t pointer in that process
	CommID uint64 // equal on every rank; 0 when unknown
	Rank   int32  // -1 when unknown
	NRanks int32  // -1 when unknown
	// Collectives is how many collectives were seen on it (the next Seq).
	Collectives int64
}

// Process is a process that maps a traced libnccl.
type Process struct {
	PID     int
	Library string // the path as the process maps it
	// Version is the library's version, "" when unknown (LibraryVersion).
	Version string
}

// InFlightCall is an NCCL call that has entered and not returned.
type InFlightCall struct {
	PID, TID int32
	Op       string
	Comm     uint64 // ncclComm_t handle; 0 for group calls
	Seq      int64
	Since    time.Time
}

// Tracer attaches the NCCL uprobes and collects their events. Create it
// with New, then Run it; Run releases the kernel objects when it returns
// (call Close instead when Run is never called).
type Tracer struct {
	cfg  Config
	log  *slog.Logger
	objs *bpfnccl.Objects

	wallOffset atomic.Int64 // Unix ns minus CLOCK_MONOTONIC ns

	opEvents   map[bpfnccl.Op]*metrics.Counter
	lostEvents *metrics.Counter
	subDropped *metrics.Counter
	loadEvents *metrics.Counter
	attached   *metrics.Gauge
	// kernelComms is the size of the probes' communicator table.
	kernelComms *metrics.Gauge

	// scanMu guards the attach side and is held for a whole scan; the event
	// path never takes it, so reading /proc never stalls event delivery.
	scanMu  sync.Mutex
	files   map[fileID]*attachment // NCCL libraries
	loaders map[fileID]*attachment // dynamic loaders
	procs   map[int]*procState
	// failed holds files whose attach failed, until when not to retry, so
	// that a bad file costs a log line per failRetry, not per scan.
	failed map[fileID]time.Time

	plugin *pluginReceiver

	// mu guards the event side. Lock order: scanMu, then mu.
	mu        sync.Mutex
	comms     map[commKey]*Comm
	ranks     map[int32]procRank
	recent    *ring[record]
	running   bool
	closed    bool
	subs      map[int]chan traces.NCCLEvent
	nextSubID int
}

type commKey struct {
	pid    int32
	handle uint64
}

// procRank is a process's place in its job, read once per process.
type procRank struct{ rank, world int32 }

// New loads the eBPF programs. Without the privileges to do so the error
// names the missing capabilities.
func New(cfg Config, logger *slog.Logger, set *metrics.Set) (*Tracer, error) {
	def := DefaultConfig()
	if cfg.ScanInterval <= 0 {
		cfg.ScanInterval = def.ScanInterval
	}
	if cfg.BufferEvents <= 0 {
		cfg.BufferEvents = def.BufferEvents
	}
	if cfg.RingBufferBytes == 0 {
		cfg.RingBufferBytes = def.RingBufferBytes
	}
	if cfg.DetachAfter < 0 {
		return nil, fmt.Errorf("nccl.detach_after is %v: it must not be negative (default %v)", cfg.DetachAfter, def.DetachAfter)
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = def.ProcRoot
	}
	for _, p := range cfg.Libraries {
		if _, err := filepath.Match(p, ""); err != nil {
			return nil, fmt.Errorf("nccl.libraries: pattern %q: %w", p, err)
		}
	}
	if logger == nil {
		logger = slog.Default()
	}
	if set == nil {
		set = metrics.NewSet()
	}
	if n := cfg.RingBufferBytes; n < os.Getpagesize() || n&(n-1) != 0 {
		return nil, fmt.Errorf("nccl.ring_buffer_bytes is %d: it must be a power of two of at least %d (default %d)",
			n, os.Getpagesize(), def.RingBufferBytes)
	}
	objs, err := bpfnccl.Load(cfg.RingBufferBytes)
	if err != nil {
		return nil, fmt.Errorf("nccl tracer: %w", err)
	}
	t := &Tracer{
		cfg:        cfg,
		log:        logger.With("component", "nccl"),
		objs:       objs,
		opEvents:   map[bpfnccl.Op]*metrics.Counter{},
		lostEvents: set.GetOrCreateCounter("loupe_nccl_lost_events_total"),
		subDropped: set.GetOrCreateCounter("loupe_nccl_subscriber_dropped_events_total"),
		loadEvents: set.GetOrCreateCounter("loupe_nccl_load_events_total"),
		files:      map[fileID]*attachment{},
		loaders:    map[fileID]*attachment{},
		procs:      map[int]*procState{},
		comms:      map[commKey]*Comm{},
		ranks:      map[int32]procRank{},
		recent:     newRing[record](cfg.BufferEvents),
		failed:     map[fileID]time.Time{},
		subs:       map[int]chan traces.NCCLEvent{},
	}
	for _, op := range bpfnccl.Ops() {
		t.opEvents[op] = set.GetOrCreateCounter(fmt.Sprintf(`loupe_nccl_events_total{op=%q}`, op))
	}
	t.attached = set.GetOrCreateGauge("loupe_nccl_attached_processes", nil)
	t.kernelComms = set.GetOrCreateGauge("loupe_nccl_tracked_communicators", nil)
	t.plugin = newPluginReceiver(max(cfg.BufferEvents/4, 1024), set)
	t.syncClock()
	return t, nil
}

// Run scans for NCCL processes every ScanInterval and whenever a process
// loads libraries, attaches and detaches, receives the profiler plugin's
// records, and delivers events until ctx is done. It then detaches
// everything, closes the subscribers' channels and returns nil.
func (t *Tracer) Run(ctx context.Context) error {
	t.mu.Lock()
	if t.running || t.closed {
		t.mu.Unlock()
		return errors.New("nccl tracer: Run called twice, or after Close")
	}
	t.running = true
	t.mu.Unlock()
	defer t.Close()

	rd, err := ringbuf.NewReader(t.objs.Events())
	if err != nil {
		return fmt.Errorf("nccl tracer: opening the ring buffer: %w", err)
	}
	loads, err := ringbuf.NewReader(t.objs.MapEvents())
	if err != nil {
		rd.Close()
		return fmt.Errorf("nccl tracer: opening the load ring buffer: %w", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { t.read(rd) })
	wg.Go(func() { t.watchLoads(loads) })
	if execHook, err := t.objs.AttachExec(); err != nil {
		t.log.Warn("no exec hook: new processes are found by the loader probe and the /proc scan only", "err", err)
	} else {
		defer execHook.Close()
	}
	if t.cfg.PluginSocket != "" {
		conn, err := listenPlugin(t.cfg.PluginSocket)
		if err != nil {
			t.log.Warn("NCCL profiler plugin receiver off: GPU-side times of jobs that load the plugin are lost", "socket", t.cfg.PluginSocket, "err", err)
		} else {
			t.log.Info("receiving the NCCL profiler plugin's records", "socket", t.cfg.PluginSocket)
			wg.Go(func() { t.plugin.serve(conn, t.log) })
		}
	}
	defer func() {
		rd.Close()
		loads.Close()
		t.plugin.stop()
		wg.Wait()
	}()

	tick := time.NewTicker(t.cfg.ScanInterval)
	defer tick.Stop()
	for {
		t.syncClock()
		t.scan(time.Now())
		if n, err := t.objs.Lost(); err == nil {
			t.lostEvents.Set(n)
		}
		if n, err := t.objs.CommCount(); err == nil {
			t.kernelComms.Set(float64(n))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// Close detaches every probe, unloads the programs and closes the
// subscribers' channels. Run calls it on return; it is safe to call again.
func (t *Tracer) Close() error {
	t.scanMu.Lock()
	defer t.scanMu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	for id, a := range t.files {
		t.detachLocked(t.files, id, a)
	}
	for id, a := range t.loaders {
		t.detachLocked(t.loaders, id, a)
	}
	for id, ch := range t.subs {
		close(ch)
		delete(t.subs, id)
	}
	t.attached.Set(0)
	return t.objs.Close()
}

// syncClock measures the offset from CLOCK_MONOTONIC (what the probes
// stamp) to Unix time, again at every scan so NTP steps are followed.
func (t *Tracer) syncClock() {
	var ts unix.Timespec
	before := time.Now().UnixNano()
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return
	}
	after := time.Now().UnixNano()
	t.wallOffset.Store((before+after)/2 - ts.Nano())
}

// pollInterval bounds how long an event waits in the ring buffer: the
// probes wake the reader only when 64 KiB are pending, so that busy jobs
// cost one wakeup per ~750 calls instead of one per call.
const pollInterval = 50 * time.Millisecond

func (t *Tracer) read(rd *ringbuf.Reader) {
	var rec ringbuf.Record
	var ev bpfnccl.Event
	rd.SetDeadline(time.Now().Add(pollInterval))
	for {
		if err := rd.ReadInto(&rec); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				rd.SetDeadline(time.Now().Add(pollInterval))
				continue
			}
			if errors.Is(err, os.ErrClosed) {
				return
			}
			t.log.Warn("reading the NCCL ring buffer", "err", err)
			time.Sleep(pollInterval) // do not spin on a persistent error
			continue
		}
		if err := bpfnccl.ParseEvent(rec.RawSample, &ev); err != nil {
			t.log.Error("dropping NCCL record", "err", err)
			continue
		}
		t.deliver(&ev)
	}
}

// rankOfLocked returns a process's global rank and world size, read once.
func (t *Tracer) rankOfLocked(pid int32) procRank {
	r, ok := t.ranks[pid]
	if !ok {
		r = procRank{-1, -1}
		if t.cfg.Ranks != nil {
			rank, world := t.cfg.Ranks(int(pid))
			r = procRank{int32(rank), int32(world)}
		}
		t.ranks[pid] = r
	}
	return r
}

func (t *Tracer) deliver(ev *bpfnccl.Event) {
	if c := t.opEvents[ev.Op]; c != nil {
		c.Inc()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	rec := newRecord(ev, t.wallOffset.Load(), t.rankOfLocked(int32(ev.PID)))
	t.recent.add(rec)
	if ev.Comm != 0 && (ev.Op.IsInit() || ev.Op.IsCollective() || ev.Op.IsP2P()) {
		k := commKey{rec.pid, ev.Comm}
		c := t.comms[k]
		if c == nil || ev.Op.IsInit() {
			c = &Comm{PID: rec.pid, Handle: ev.Comm}
			t.comms[k] = c
		}
		c.CommID, c.Rank, c.NRanks = ev.CommID, ev.Rank, ev.NRanks
		if ev.Op.IsCollective() && ev.Seq >= c.Collectives {
			c.Collectives = ev.Seq + 1
		}
	}
	t.publishLocked(rec.row())
}

// PluginLatest returns the profiler plugin's latest record of each
// communicator of each process (its collectives, and its point-to-point
// calls apart), as rows of their own (Source plugin): what each GPU last
// ran, or still runs when GPUEndNs is 0.
func (t *Tracer) PluginLatest() []traces.NCCLEvent {
	rows := t.plugin.latestRows()
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range rows {
		r := t.rankOfLocked(rows[i].PID)
		rows[i].GlobalRank, rows[i].WorldSize = r.rank, r.world
	}
	return rows
}

func (t *Tracer) publishLocked(row traces.NCCLEvent) {
	for _, ch := range t.subs {
		select {
		case ch <- row:
		default:
			t.subDropped.Inc()
		}
	}
}

// Subscribe returns the probes' live events (the profiler plugin's are in
// Events and PluginLatest); buf is the channel's capacity. Events that
// find the channel full are dropped (and counted in
// loupe_nccl_subscriber_dropped_events_total) so a slow reader never stalls
// the tracer. Call cancel when done; the channel is closed by cancel or
// when Run returns.
func (t *Tracer) Subscribe(buf int) (<-chan traces.NCCLEvent, func()) {
	ch := make(chan traces.NCCLEvent, max(buf, 0))
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		close(ch)
		return ch, func() {}
	}
	id := t.nextSubID
	t.nextSubID++
	t.subs[id] = ch
	return ch, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if c, ok := t.subs[id]; ok {
			close(c)
			delete(t.subs, id)
		}
	}
}

// Events returns the buffered events with from <= time < to, oldest first,
// the probes' and the profiler plugin's merged (see mergePlugin). The
// buffer holds the last BufferEvents events. An event reaches the buffer
// within pollInterval (50 ms) of its call, and the plugin reports a
// collective once its kernel ended, so ask for a window that ended at least
// that long ago.
func (t *Tracer) Events(from, to time.Time) []traces.NCCLEvent {
	t.mu.Lock()
	rows := t.recent.between(from.UnixNano(), to.UnixNano(), (*record).row, func(r *record) int64 { return r.timeNs })
	t.mu.Unlock()
	plugin := t.plugin.between(from.UnixNano()-pluginSlack, to.UnixNano()+pluginLag)
	if len(plugin) == 0 {
		return rows
	}
	rows = mergePlugin(rows, plugin, from.UnixNano(), to.UnixNano())
	t.mu.Lock()
	for i := range rows {
		if rows[i].Source == traces.SourcePlugin {
			r := t.rankOfLocked(rows[i].PID)
			rows[i].GlobalRank, rows[i].WorldSize = r.rank, r.world
		}
	}
	t.mu.Unlock()
	return rows
}

// InFlight returns the NCCL calls that have entered and not returned, of
// processes the tracer knows to be alive.
func (t *Tracer) InFlight() ([]InFlightCall, error) {
	evs, err := t.objs.InFlight()
	if err != nil {
		return nil, err
	}
	t.scanMu.Lock()
	live := make(map[int]bool, len(t.procs))
	for pid := range t.procs {
		live[pid] = true
	}
	t.scanMu.Unlock()
	off := t.wallOffset.Load()
	var out []InFlightCall
	for _, e := range evs {
		if !live[int(e.PID)] {
			continue
		}
		out = append(out, InFlightCall{PID: int32(e.PID), TID: int32(e.TID), Op: e.Op.String(), Comm: e.Comm, Seq: e.Seq,
			Since: time.Unix(0, int64(e.TimeNs)+off)})
	}
	return out, nil
}

// Comms returns the communicators of live processes, by pid then rank.
func (t *Tracer) Comms() []Comm {
	t.mu.Lock()
	out := make([]Comm, 0, len(t.comms))
	for _, c := range t.comms {
		out = append(out, *c)
	}
	t.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].PID != out[j].PID {
			return out[i].PID < out[j].PID
		}
		if out[i].Rank != out[j].Rank {
			return out[i].Rank < out[j].Rank
		}
		return out[i].Handle < out[j].Handle
	})
	return out
}

// Processes returns the live processes that map a traced libnccl, by pid.
func (t *Tracer) Processes() []Process {
	t.scanMu.Lock()
	var out []Process
	for pid, p := range t.procs {
		if len(p.files) > 0 {
			out = append(out, Process{PID: pid, Library: p.library, Version: p.version})
		}
	}
	t.scanMu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out
}
