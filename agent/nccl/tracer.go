// Package nccl watches the NCCL collectives of every process on the host
// through eBPF uprobes on the libnccl each process actually maps, with no
// change to the job.
//
// The Tracer scans /proc/<pid>/maps for libnccl.so (system copies, conda, and
// copies inside Python wheels such as site-packages/nvidia/nccl/lib or
// torch/lib), attaches an entry uprobe and a return uprobe to every NCCL
// host API function of that file, and reads one record per call from a ring
// buffer: time, duration, pid/tid, communicator (hash of its ncclUniqueId,
// rank, nranks), op, count, datatype, bytes and a per-communicator sequence
// number.
//
// Uprobes belong to the file's inode, so each distinct file (device and
// inode) is attached once, for every process that maps it, and is detached
// when the last of them exits. A process that loads an already attached file
// is traced from its first call, before the next scan notices it.
//
// What the times mean: NCCL's host functions enqueue work on a CUDA stream
// and return; the time of a call is when the rank reached the collective on
// the host (enqueue time), not when the GPU ran or finished it. Every rank of
// a communicator issues its collectives in the same order, so the calls with
// the same (CommID, Seq) on different ranks are the same collective, and the
// spread of their arrival times (see Skew) shows which rank the others wait
// for: a straggler arrives last, consistently.
//
// Numbering: Seq counts a communicator's collectives from 0; Send and Recv
// are counted apart from them (ranks of a pipeline issue different numbers
// of them, which must not shift the collectives' numbers); group and init
// calls have Seq -1. Bytes follows nccl-tests: count x datatype size, times
// nranks for AllGather, ReduceScatter and AllToAll (the larger buffer).
// Events reach Subscribe and Events within 50 ms of the call.
//
// Limits: x86-64 only (arguments are read with the System V calling
// convention). A communicator created before the agent attached, or by
// ncclCommSplit (not probed), has Rank -1, CommID 0, and sequence numbers
// counted from its first call seen, which do not line up across ranks.
// ncclCommInitAll's communicators get an id unique to that call, as their
// ranks all live in one process. NCCL linked statically into another
// library is not found.
//
// Privileges: CAP_BPF and CAP_PERFMON to load and attach, CAP_SYS_PTRACE
// and the host's PID namespace to read other processes' maps and reach
// their files through /proc/<pid>/root.
package nccl

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/cilium/ebpf/link"
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
	// windows (64 bytes each).
	BufferEvents int `yaml:"buffer_events"`
	// RingBufferBytes is the size of the kernel ring buffer (a power of two).
	RingBufferBytes int `yaml:"ring_buffer_bytes"`
	// ProcRoot is where the host's /proc is mounted (tests, containers).
	ProcRoot string `yaml:"-"`
}

// DefaultConfig works on a single host with no configuration.
func DefaultConfig() Config {
	return Config{
		Enabled:         true,
		ScanInterval:    2 * time.Second,
		BufferEvents:    1 << 17,
		RingBufferBytes: bpfnccl.DefaultRingBytes,
		ProcRoot:        "/proc",
	}
}

// Comm is one communicator of one process.
type Comm struct {
	PID    int32
	Handle uint64 // the ncclComm_t pointer in that process
	CommID uint64 // hash of the ncclUniqueId: equal on every rank; 0 when unknown
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
	attached   *metrics.Gauge
	// kernelComms is the size of the probes' communicator table.
	kernelComms *metrics.Gauge

	// scanMu guards the attach side and is held for a whole scan; the event
	// path never takes it, so reading /proc never stalls event delivery.
	scanMu sync.Mutex
	files  map[fileID]*attachment
	procs  map[int]*procState
	// failed holds files whose attach failed, until when not to retry, so
	// that a bad file costs a log line per failRetry, not per scan.
	failed map[fileID]time.Time

	// mu guards the event side. Lock order: scanMu, then mu.
	mu        sync.Mutex
	comms     map[commKey]*Comm
	recent    *ring
	running   bool
	closed    bool
	subs      map[int]chan traces.NCCLEvent
	nextSubID int
}

// attachment is one attached library file.
type attachment struct {
	path  string // as opened, through /proc/<pid>/root
	links []link.Link
	pids  map[int]bool
}

// procState is what a scan knows of one process.
type procState struct {
	files    []fileID // NCCL libraries it maps
	library  string
	version  string
	nextScan time.Time     // when to read its maps again (only while it maps none)
	backoff  time.Duration // grows while it maps none, up to maxBackoff
}

type commKey struct {
	pid    int32
	handle uint64
}

// A process that maps no NCCL is re-read with a growing interval: libraries
// are loaded early (import torch), and a file already attached is traced in
// new processes anyway, so late discovery only delays Processes().
const maxBackoffScans = 30

// failRetry is how long a library whose attach failed is left alone.
const failRetry = 10 * time.Minute

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
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = def.ProcRoot
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
		files:      map[fileID]*attachment{},
		procs:      map[int]*procState{},
		comms:      map[commKey]*Comm{},
		recent:     newRing(cfg.BufferEvents),
		failed:     map[fileID]time.Time{},
		subs:       map[int]chan traces.NCCLEvent{},
	}
	for _, op := range bpfnccl.Ops() {
		t.opEvents[op] = set.GetOrCreateCounter(fmt.Sprintf(`loupe_nccl_events_total{op=%q}`, op))
	}
	t.attached = set.GetOrCreateGauge("loupe_nccl_attached_processes", nil)
	t.kernelComms = set.GetOrCreateGauge("loupe_nccl_tracked_communicators", nil)
	t.syncClock()
	return t, nil
}

// Run scans for NCCL processes every ScanInterval, attaches and detaches,
// and delivers events until ctx is done. It then detaches everything,
// closes the subscribers' channels and returns nil.
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
	var wg sync.WaitGroup
	wg.Go(func() { t.read(rd) })
	defer func() {
		rd.Close()
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
		t.detachLocked(id, a)
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

func (t *Tracer) deliver(ev *bpfnccl.Event) {
	rec := newRecord(ev, t.wallOffset.Load())
	if c := t.opEvents[ev.Op]; c != nil {
		c.Inc()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
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
	if len(t.subs) == 0 {
		return
	}
	row := rec.row()
	for _, ch := range t.subs {
		select {
		case ch <- row:
		default:
			t.subDropped.Inc()
		}
	}
}

// Subscribe returns live events; buf is the channel's capacity. Events that
// find the channel full are dropped (and counted in
// loupe_nccl_subscriber_dropped_events_total) so a slow reader never stalls
// the tracer. Call cancel when done; the channel is closed by cancel or when
// Run returns.
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

// Events returns the buffered events with from <= time < to, oldest first.
// The buffer holds the last BufferEvents events. An event reaches the buffer
// within pollInterval (50 ms) of its call, so ask for a window that ended at
// least that long ago.
func (t *Tracer) Events(from, to time.Time) []traces.NCCLEvent {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.recent.between(from.UnixNano(), to.UnixNano())
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

// scan reads /proc: new processes' maps, exits, attaches and detaches.
func (t *Tracer) scan(now time.Time) {
	entries, err := os.ReadDir(t.cfg.ProcRoot)
	if err != nil {
		t.log.Error("listing processes; is the host's /proc mounted?", "dir", t.cfg.ProcRoot, "err", err)
		return
	}
	live := make(map[int]bool, len(entries))
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		live[pid] = true
	}

	t.scanMu.Lock()
	defer t.scanMu.Unlock()
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return
	}
	gone := map[uint32]bool{}
	for pid, p := range t.procs {
		if !live[pid] {
			gone[uint32(pid)] = true
			t.dropProcLocked(pid, p)
		}
	}
	if len(gone) > 0 {
		if err := t.objs.ForgetPIDs(gone); err != nil {
			t.log.Warn("forgetting communicators of exited processes", "err", err)
		}
		t.mu.Lock()
		for k := range t.comms {
			if gone[uint32(k.pid)] {
				delete(t.comms, k)
			}
		}
		t.mu.Unlock()
	}
	for pid := range live {
		p := t.procs[pid]
		if p == nil {
			p = &procState{}
			t.procs[pid] = p
		}
		if len(p.files) > 0 || now.Before(p.nextScan) {
			continue
		}
		t.scanProcLocked(pid, p, now)
	}
	var n int64
	for _, p := range t.procs {
		if len(p.files) > 0 {
			n++
		}
	}
	t.attached.Set(float64(n))
}

func (t *Tracer) scanProcLocked(pid int, p *procState, now time.Time) {
	p.backoff = min(max(2*p.backoff, t.cfg.ScanInterval), maxBackoffScans*t.cfg.ScanInterval)
	p.nextScan = now.Add(p.backoff)
	f, err := os.Open(filepath.Join(t.cfg.ProcRoot, strconv.Itoa(pid), "maps"))
	if err != nil {
		// Exited meanwhile, or not readable (no CAP_SYS_PTRACE): both are
		// normal for some processes on a host; do not flood the log.
		t.log.Debug("reading maps", "pid", pid, "err", err)
		return
	}
	ms, err := ncclMappings(f)
	f.Close()
	if errors.Is(err, unix.ESRCH) {
		return // exited while being read
	}
	if err != nil {
		t.log.Warn("parsing maps", "pid", pid, "err", err)
		return
	}
	for _, m := range ms {
		if m.Deleted {
			t.log.Info("process maps a libnccl that was deleted or replaced on disk; not tracing it", "pid", pid, "library", m.Path)
			continue
		}
		if now.Before(t.failed[m.ID]) {
			continue
		}
		a := t.files[m.ID]
		if a == nil {
			var err error
			a, err = t.attachLocked(pid, m)
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
				// The process exited before the file could be opened
				// through it; the next process that maps it will do.
				t.log.Debug("process gone before attach", "pid", pid, "library", m.Path, "err", err)
				continue
			}
			if err != nil {
				t.failed[m.ID] = now.Add(failRetry)
				t.log.Warn("cannot trace this libnccl; will retry", "pid", pid, "library", m.Path, "in", failRetry, "err", err)
				continue
			}
			delete(t.failed, m.ID)
			t.files[m.ID] = a
		}
		a.pids[pid] = true
		p.files = append(p.files, m.ID)
		if p.library == "" {
			p.library = m.Path
			p.version = LibraryVersion(filepath.Join(t.cfg.ProcRoot, strconv.Itoa(pid), "root"), m.Path)
		}
	}
	if len(p.files) > 0 {
		t.log.Info("tracing NCCL", "pid", pid, "library", p.library, "version", p.version)
	}
}

// attachLocked puts the entry and return probes on every NCCL function the
// file exports. The file is opened through the process's root, so a library
// inside a container is found from the host.
func (t *Tracer) attachLocked(pid int, m mapping) (*attachment, error) {
	path := filepath.Join(t.cfg.ProcRoot, strconv.Itoa(pid), "root", m.Path)
	ex, err := link.OpenExecutable(path)
	if err != nil {
		return nil, fmt.Errorf("opening %s (the agent needs CAP_SYS_PTRACE to reach other processes' files): %w", path, err)
	}
	a := &attachment{path: path, pids: map[int]bool{}}
	var missing []string
	reporting := 0 // functions that send records
	for _, pr := range t.objs.Probes {
		l, err := ex.Uprobe(pr.Symbol, pr.Program, nil)
		if errors.Is(err, link.ErrNoSymbol) {
			// Older NCCL versions lack some functions (ncclAlltoAll,
			// ncclCommInitRankConfig).
			missing = append(missing, pr.Symbol)
			continue
		}
		if err != nil {
			closeLinks(a.links)
			return nil, fmt.Errorf("uprobe %s in %s: %w", pr.Symbol, path, err)
		}
		a.links = append(a.links, l)
		if pr.Return == nil {
			continue
		}
		r, err := ex.Uretprobe(pr.Symbol, pr.Return, nil)
		if err != nil {
			closeLinks(a.links)
			return nil, fmt.Errorf("uretprobe %s in %s: %w", pr.Symbol, path, err)
		}
		a.links = append(a.links, r)
		reporting++
	}
	if reporting == 0 {
		closeLinks(a.links)
		return nil, fmt.Errorf("%s exports none of the NCCL functions: not NCCL, or stripped", path)
	}
	t.log.Info("attached NCCL uprobes", "library", path, "functions", reporting, "missing", missing)
	return a, nil
}

func (t *Tracer) dropProcLocked(pid int, p *procState) {
	delete(t.procs, pid)
	for _, id := range p.files {
		a := t.files[id]
		if a == nil {
			continue
		}
		delete(a.pids, pid)
		if len(a.pids) == 0 {
			t.detachLocked(id, a)
		}
	}
}

func (t *Tracer) detachLocked(id fileID, a *attachment) {
	closeLinks(a.links)
	delete(t.files, id)
	t.log.Info("detached NCCL uprobes: no process maps the library any more", "library", a.path)
}

func closeLinks(ls []link.Link) {
	for _, l := range ls {
		l.Close()
	}
}
