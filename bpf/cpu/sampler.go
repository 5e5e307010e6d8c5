package cpu

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// MaxStackDepth is the most frames one stack holds (MAX_STACK_DEPTH in C).
const MaxStackDepth = 127

// Lost reasons, indexes of the lost map (enum lost_reason in C).
const (
	LostStackFull  = iota // the stacks map is full
	LostCountsFull        // the counts map is full
	LostStackError        // bpf_get_stack failed
	lostReasons
)

// LostReasonNames are the metric label values for the lost reasons, by index.
var LostReasonNames = [lostReasons]string{"stack_map_full", "counts_map_full", "stack_error"}

// Lost holds cumulative dropped-sample counts since Load, by reason.
type Lost [lostReasons]uint64

// settle is how long Drain waits after switching buffers so that samples
// already running on other CPUs finish writing to the old buffer. A sample
// runs for microseconds in interrupt context.
const settle = 2 * time.Millisecond

// Options sizes the sampler's maps.
type Options struct {
	// StackEntries is the capacity of each of the two stacks maps; 0
	// means 4096. Each entry takes about 1.1 KiB of kernel memory.
	StackEntries uint32
	// CountEntries is the capacity of each of the two counts maps; 0 means 16384.
	CountEntries uint32
	// UnwindRows is the capacity of the unwind rows map, shared by every
	// object's table; 0 means 1<<21 (16 MiB of kernel memory, 8 bytes a row).
	UnwindRows uint32
	// UnwindMappings is the capacity of the process mappings map; 0 means
	// 1<<16 (2 MiB, 32 bytes a mapping).
	UnwindMappings uint32
	// UnwindTables is the most objects with unwind tables; 0 means 4096.
	UnwindTables uint32
	// Processes is the most processes described at once; 0 means 8192.
	Processes uint32
}

func (o *Options) defaults() {
	def := func(v *uint32, d uint32) {
		if *v == 0 {
			*v = d
		}
	}
	def(&o.StackEntries, 4096)
	def(&o.CountEntries, 16384)
	def(&o.UnwindRows, 1<<21)
	def(&o.UnwindMappings, 1<<16)
	def(&o.UnwindTables, 4096)
	def(&o.Processes, 8192)
}

// Sample is one aggregated sample: Count samples of process PID, thread name
// Comm, with these stacks (leaf first; empty when absent).
type Sample struct {
	PID    uint32
	Comm   string
	User   []uint64
	Kernel []uint64
	Count  uint64
}

// Sampler is the loaded eBPF sampler. Its methods are safe for concurrent use.
type Sampler struct {
	mu     sync.Mutex
	objs   SamplerObjects
	unwind *unwindMaps
	hooks  []link.Link // the process exec and exit hooks
	links  []link.Link
	events []int
	buffer uint32
	closed bool
}

// PermissionError says which capabilities the process lacks to load and
// attach the sampler.
type PermissionError struct {
	Missing []string // e.g. CAP_BPF, CAP_PERFMON
	Err     error    // the underlying error, if any
}

// Error names the missing capabilities and how to grant them.
func (e *PermissionError) Error() string {
	msg := fmt.Sprintf("eBPF CPU sampling needs %s (or CAP_SYS_ADMIN); this process lacks them: grant them to the agent (systemd AmbientCapabilities=, Kubernetes securityContext.capabilities.add) or run it as root", strings.Join(e.Missing, " and "))
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns the underlying error.
func (e *PermissionError) Unwrap() error { return e.Err }

// MissingCapabilities lists the capabilities, of CAP_BPF and CAP_PERFMON,
// that the calling process does not have in its effective set. It returns
// nil when the process has CAP_SYS_ADMIN, which implies both.
func MissingCapabilities() ([]string, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil, fmt.Errorf("reading this process's capabilities (capget): %w", err)
	}
	has := func(c int) bool { return data[c/32].Effective&(1<<(uint(c)%32)) != 0 }
	if has(unix.CAP_SYS_ADMIN) {
		return nil, nil
	}
	var missing []string
	if !has(unix.CAP_BPF) {
		missing = append(missing, "CAP_BPF")
	}
	if !has(unix.CAP_PERFMON) {
		missing = append(missing, "CAP_PERFMON")
	}
	return missing, nil
}

// Load checks privileges and loads the sampler into the kernel, disabled and
// not attached.
func Load(opts Options) (*Sampler, error) {
	missing, err := MissingCapabilities()
	if err != nil {
		return nil, err
	}
	if len(missing) > 0 {
		return nil, &PermissionError{Missing: missing}
	}
	// On kernels >= 5.11 BPF memory is charged to the memory cgroup and
	// this is a no-op; older kernels need CAP_SYS_RESOURCE for it.
	if err := rlimit.RemoveMemlock(); err != nil && !errors.Is(err, unix.EPERM) {
		return nil, fmt.Errorf("raising RLIMIT_MEMLOCK for eBPF maps: %w", err)
	}
	spec, err := LoadSampler()
	if err != nil {
		return nil, err
	}
	opts.defaults()
	// Rows are written through a memory mapping: a batch update copies
	// each element through the map's update path, about a microsecond a row.
	spec.Maps[SamplerMapRows].Flags |= unix.BPF_F_MMAPABLE
	for name, n := range map[string]uint32{
		SamplerMapStacks0: opts.StackEntries, SamplerMapStacks1: opts.StackEntries,
		SamplerMapCounts0: opts.CountEntries, SamplerMapCounts1: opts.CountEntries,
		SamplerMapRows: opts.UnwindRows, SamplerMapMappings: opts.UnwindMappings,
		SamplerMapTables: opts.UnwindTables, SamplerMapProcs: opts.Processes,
	} {
		spec.Maps[name].MaxEntries = n
	}
	s := &Sampler{}
	if err := spec.LoadAndAssign(&s.objs, nil); err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, &PermissionError{Missing: []string{"CAP_BPF", "CAP_PERFMON"}, Err: err}
		}
		return nil, fmt.Errorf("loading the eBPF CPU sampler: %w", err)
	}
	if s.unwind, err = newUnwindMaps(&s.objs); err != nil {
		s.objs.Close()
		return nil, err
	}
	for _, prog := range []*ebpf.Program{s.objs.ProcessExec, s.objs.ProcessExit} {
		l, err := link.AttachTracing(link.TracingOptions{Program: prog})
		if err != nil {
			for _, h := range s.hooks {
				h.Close()
			}
			s.unwind.events.Close()
			s.objs.Close()
			return nil, fmt.Errorf("attaching the CPU sampler's process exec and exit hooks: %w", err)
		}
		s.hooks = append(s.hooks, l)
	}
	return s, nil
}

// Attach opens a software CPU-clock perf event sampling hz times per
// second of CPU time on each of cpus, and attaches the program to it.
func (s *Sampler) Attach(hz int, cpus []int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cpu := range cpus {
		// A fixed period of CPU-clock nanoseconds rather than frequency
		// mode: each sample then stands for exactly 1/hz s of CPU time.
		attr := unix.PerfEventAttr{
			Type:   unix.PERF_TYPE_SOFTWARE,
			Config: unix.PERF_COUNT_SW_CPU_CLOCK,
			Size:   uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
			Sample: uint64(time.Second) / uint64(hz),
		}
		fd, err := unix.PerfEventOpen(&attr, -1, cpu, -1, unix.PERF_FLAG_FD_CLOEXEC)
		if err != nil {
			if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
				return &PermissionError{Missing: []string{"CAP_PERFMON"}, Err: fmt.Errorf("perf_event_open on CPU %d: %w", cpu, err)}
			}
			return fmt.Errorf("perf_event_open (software CPU clock, %d Hz) on CPU %d: %w", hz, cpu, err)
		}
		s.events = append(s.events, fd)
		l, err := link.AttachRawLink(link.RawLinkOptions{Target: fd, Program: s.objs.Sample, Attach: ebpf.AttachPerfEvent})
		if err != nil {
			return fmt.Errorf("attaching the CPU sampler to the perf event of CPU %d: %w", cpu, err)
		}
		s.links = append(s.links, l)
	}
	return nil
}

// Stats returns the sampling program's run count and cumulative run time;
// both stay zero unless BPF statistics are on (kernel.bpf_stats_enabled,
// or ebpf.EnableStats).
func (s *Sampler) Stats() (*ebpf.ProgramStats, error) {
	st, err := s.objs.Sample.Stats()
	if err != nil {
		return nil, fmt.Errorf("reading the CPU sampler's run time: %w", err)
	}
	return st, nil
}

// SetRate changes the sampling frequency of every attached perf event to
// hz samples per second of CPU time (from the next sample on).
func (s *Sampler) SetRate(hz int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	period := uint64(time.Second) / uint64(hz)
	for _, fd := range s.events {
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.PERF_EVENT_IOC_PERIOD, uintptr(unsafe.Pointer(&period))); errno != 0 {
			return fmt.Errorf("setting the CPU sampling rate to %d Hz: %w", hz, errno)
		}
	}
	return nil
}

// SetEnabled turns sampling on or off; while off the program returns at once.
func (s *Sampler) SetEnabled(on bool) error {
	var v uint32
	if on {
		v = 1
	}
	if err := s.objs.Enabled.Set(v); err != nil {
		return fmt.Errorf("switching the CPU sampler on/off: %w", err)
	}
	return nil
}

// SetFilter restricts sampling to the given process ids; all=true samples
// every process and ignores pids.
func (s *Sampler) SetFilter(all bool, pids []uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.objs.FilterPids.Set(uint32(0)); err != nil {
		return fmt.Errorf("clearing the CPU sampler pid filter: %w", err)
	}
	var keys []uint32
	var k uint32
	var v uint8
	for it := s.objs.Pids.Iterate(); it.Next(&k, &v); {
		keys = append(keys, k)
	}
	for _, k := range keys {
		if err := s.objs.Pids.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("clearing the CPU sampler pid filter: %w", err)
		}
	}
	if all {
		return nil
	}
	for _, pid := range pids {
		if err := s.objs.Pids.Put(pid, uint8(1)); err != nil {
			return fmt.Errorf("adding pid %d to the CPU sampler filter (at most %d pids): %w", pid, s.objs.Pids.MaxEntries(), err)
		}
	}
	if err := s.objs.FilterPids.Set(uint32(1)); err != nil {
		return fmt.Errorf("setting the CPU sampler pid filter: %w", err)
	}
	return nil
}

// Drain switches the program to the other map set, then calls visit for
// every sample aggregated in the set it left, and empties that set. It
// returns the cumulative lost counts.
func (s *Sampler) Drain(visit func(Sample)) (Lost, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Lost{}, errors.New("draining the CPU sampler: it is closed")
	}
	old := s.buffer
	s.buffer ^= 1
	if err := s.objs.Buffer.Set(s.buffer); err != nil {
		return Lost{}, fmt.Errorf("switching CPU sampler buffers: %w", err)
	}
	time.Sleep(settle)
	counts, stacks := s.objs.Counts0, s.objs.Stacks0
	if old == 1 {
		counts, stacks = s.objs.Counts1, s.objs.Stacks1
	}

	var (
		key   SamplerSampleKey
		count uint64
		keys  []SamplerSampleKey
		vals  []uint64
	)
	it := counts.Iterate()
	for it.Next(&key, &count) {
		keys = append(keys, key)
		vals = append(vals, count)
	}
	if err := it.Err(); err != nil {
		return Lost{}, fmt.Errorf("reading CPU sample counts: %w", err)
	}
	cache := map[uint64][]uint64{}
	stack := func(hash uint64) []uint64 {
		if hash == 0 {
			return nil
		}
		if st, ok := cache[hash]; ok {
			return st
		}
		var raw [MaxStackDepth]uint64
		var st []uint64
		if err := stacks.Lookup(hash, &raw); err == nil {
			n := 0
			for n < len(raw) && raw[n] != 0 {
				n++
			}
			st = append([]uint64(nil), raw[:n]...)
		}
		cache[hash] = st
		return st
	}
	for i, k := range keys {
		visit(Sample{
			PID:    k.Tgid,
			Comm:   commString(k.Comm),
			User:   stack(k.UserStack),
			Kernel: stack(k.KernelStack),
			Count:  vals[i],
		})
	}
	for _, k := range keys {
		if err := counts.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return Lost{}, fmt.Errorf("clearing CPU sample counts: %w", err)
		}
	}
	// Collect every key first: the kernel restarts a walk whose current
	// key was deleted.
	var hashes []uint64
	var hash uint64
	var discard [MaxStackDepth]uint64
	sit := stacks.Iterate()
	for sit.Next(&hash, &discard) {
		hashes = append(hashes, hash)
	}
	if err := sit.Err(); err != nil {
		return Lost{}, fmt.Errorf("listing CPU sampler stacks: %w", err)
	}
	for _, h := range hashes {
		if err := stacks.Delete(h); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return Lost{}, fmt.Errorf("clearing CPU sampler stacks: %w", err)
		}
	}
	return s.lost()
}

func (s *Sampler) lost() (Lost, error) {
	var out Lost
	for r := range out {
		var perCPU []uint64
		if err := s.objs.Lost.Lookup(uint32(r), &perCPU); err != nil {
			return out, fmt.Errorf("reading CPU sampler lost counts: %w", err)
		}
		for _, n := range perCPU {
			out[r] += n
		}
	}
	return out, nil
}

// Close detaches the program from every perf event and frees the maps.
func (s *Sampler) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	for _, l := range s.links {
		errs = append(errs, l.Close())
	}
	for _, fd := range s.events {
		errs = append(errs, unix.Close(fd))
	}
	for _, h := range s.hooks {
		errs = append(errs, h.Close())
	}
	errs = append(errs, s.unwind.events.Close(), s.objs.Close())
	return errors.Join(errs...)
}

func commString(c [16]int8) string {
	b := make([]byte, 0, len(c))
	for _, ch := range c {
		if ch == 0 {
			break
		}
		b = append(b, byte(ch))
	}
	return string(b)
}

// OnlineCPUs returns the ids of the online CPUs from
// /sys/devices/system/cpu/online.
func OnlineCPUs() ([]int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return nil, fmt.Errorf("listing online CPUs: %w", err)
	}
	return ParseCPUList(string(b))
}

// ParseCPUList parses the kernel's CPU list format, e.g. "0-3,8,10-11".
func ParseCPUList(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("parsing CPU list: empty")
	}
	var cpus []int
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := strconv.Atoi(lo)
		if err != nil || first < 0 {
			return nil, fmt.Errorf("parsing CPU list %q: bad CPU %q", s, lo)
		}
		last := first
		if isRange {
			if last, err = strconv.Atoi(hi); err != nil || last < first {
				return nil, fmt.Errorf("parsing CPU list %q: bad range %q", s, part)
			}
		}
		if last-first > 1<<16 {
			return nil, fmt.Errorf("parsing CPU list %q: range %q too large", s, part)
		}
		for c := first; c <= last; c++ {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}
