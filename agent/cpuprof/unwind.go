package cpuprof

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/loupe-dev/loupe/bpf/cpu"
)

// tracker describes processes to the BPF unwinder as it reports them:
// their executable mappings, the unwind table of each mapped object
// (compiled once per object and shared by every process mapping it), and
// where their CPython interpreter is. It also hands each process's memory
// map to the symbolizer at once, so that a process that exits before the
// next drain is still named.
type tracker struct {
	s        *cpu.Sampler
	procRoot string
	log      *slog.Logger
	// prepared is called with a process's maps and interpreter when it is
	// described.
	prepared func(pid uint32, maps []mapping, py *pyProcess)

	// requests are processes to describe before they are sampled.
	requests chan uint32

	mu      sync.Mutex
	objects map[fileKey]*unwindObject
	byBuild map[string]*unwindObject
	procs   map[uint32]*trackedProc
	vdso    *unwindObject
	gen     uint64 // describe count, for least-recently-used tables

	described, tableFull, procsFull, pyUnsupported *metrics.Counter
	warnedFull                                     bool // under mu: a full mappings map was logged at warning level once
}

// unwindObject is one mapped file as the unwinder knows it.
type unwindObject struct {
	key     fileKey
	buildID string
	table   cpu.Table
	loaded  bool // table holds rows in the kernel
	hasRows bool
	// rows are the compiled rows until they are loaded (they live in
	// the kernel then, not here).
	rows    []cpu.Row
	loads   []elf.ProgHeader
	python  *pyRuntime
	refs    int
	lastUse uint64
}

// trackedProc is a described process.
type trackedProc struct {
	objs []*unwindObject
	maps []mapping // as described
	// stale: code ran outside these maps, yet they had not changed (a
	// stray address, say, from a frame-pointer step through code without
	// frame pointers). The program stays quiet about the process until
	// it is described again; the tracker looks at its maps now and then.
	stale bool
}

// staleCheck is how often the maps of stale processes are read again.
const staleCheck = 5 * time.Second

// pyProcess is a described process's interpreter, for the symbolizer.
type pyProcess struct {
	layout   *pyLayout
	codeType uint64 // absolute address of PyCode_Type, 0 when unknown
}

func newTracker(s *cpu.Sampler, procRoot string, log *slog.Logger, set *metrics.Set, prepared func(uint32, []mapping, *pyProcess)) *tracker {
	t := &tracker{
		s: s, procRoot: procRoot, log: log, prepared: prepared, requests: make(chan uint32, 256),
		objects: map[fileKey]*unwindObject{}, byBuild: map[string]*unwindObject{}, procs: map[uint32]*trackedProc{},
		described:     set.GetOrCreateCounter("loupe_cpuprof_unwind_processes_total"),
		tableFull:     set.GetOrCreateCounter("loupe_cpuprof_unwind_tables_full_total"),
		procsFull:     set.GetOrCreateCounter("loupe_cpuprof_unwind_processes_full_total"),
		pyUnsupported: set.GetOrCreateCounter("loupe_cpuprof_python_unsupported_total"),
	}
	set.GetOrCreateGauge("loupe_cpuprof_unwind_rows", func() float64 { return float64(s.Usage().Rows) })
	set.GetOrCreateGauge("loupe_cpuprof_unwind_rows_capacity", func() float64 { return float64(s.Usage().RowsCap) })
	set.GetOrCreateGauge("loupe_cpuprof_unwind_mappings", func() float64 { return float64(s.Usage().Mappings) })
	set.GetOrCreateGauge("loupe_cpuprof_unwind_mappings_capacity", func() float64 { return float64(s.Usage().MappingsCap) })
	return t
}

// run handles the sampler's events and the requests until the sampler is
// closed.
func (t *tracker) run() {
	events := make(chan cpu.Event, 256)
	go func() {
		defer close(events)
		for {
			ev, err := t.s.ReadEvent()
			if errors.Is(err, ringbuf.ErrClosed) {
				return
			}
			if err != nil {
				t.log.Debug("cpuprof: reading unwinder events", "err", err)
				continue
			}
			events <- ev
		}
	}()
	stale := time.NewTicker(staleCheck)
	defer stale.Stop()
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return
			}
			switch ev.Kind {
			case cpu.EventNew:
				t.describe(ev.PID, false)
			case cpu.EventMaps:
				t.describe(ev.PID, true)
			case cpu.EventExit:
				t.forget(ev.PID)
			}
		case pid := <-t.requests:
			if added, err := t.s.Track(pid); added {
				t.describe(pid, false)
			} else if err != nil {
				t.log.Debug("cpuprof: tracking a process", "pid", pid, "err", err)
			}
		case <-stale.C:
			t.mu.Lock()
			var pids []uint32
			for pid, tp := range t.procs {
				if tp.stale {
					pids = append(pids, pid)
				}
			}
			t.mu.Unlock()
			for _, pid := range pids {
				t.describe(pid, true)
			}
		}
	}
}

// request asks for processes to be described soon, before their first
// sample if possible. It never blocks: a process not queued is described
// at its first sample.
func (t *tracker) request(pids []int) {
	for _, pid := range pids {
		select {
		case t.requests <- uint32(pid):
		default:
			return
		}
	}
}

// describe reads a process's maps and gives the unwinder what it needs.
// For a reported miss (or a stale process), it does so only when the maps
// changed; else the process is marked stale.
func (t *tracker) describe(pid uint32, miss bool) {
	start := time.Now()
	dir := filepath.Join(t.procRoot, strconv.Itoa(int(pid)))
	b, err := os.ReadFile(filepath.Join(dir, "maps"))
	if err != nil {
		// Gone already: drop the pending entry the program made.
		t.forget(pid)
		return
	}
	maps, err := parseMaps(string(b))
	if err != nil {
		t.log.Debug("cpuprof: unreadable memory map", "pid", pid, "err", err)
		t.forget(pid)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if tp, ok := t.procs[pid]; ok && miss && slices.Equal(tp.maps, maps) {
		tp.stale = true
		return
	}
	t.gen++
	proc := cpu.Process{NoUser: len(maps) == 0}
	var objs []*unwindObject
	var py *pyProcess
	for i := range maps {
		m := &maps[i]
		cm := cpu.Mapping{Start: m.start, End: m.end, Table: cpu.NoTable}
		var o *unwindObject
		switch {
		case m.path == "[vdso]":
			o = t.vdsoObject()
		case m.anonymous() || m.pseudo():
		default:
			o = t.object(dir, m)
		}
		if o != nil {
			objs = append(objs, o)
			o.refs++
			o.lastUse = t.gen
			if bias, ok := o.bias(m); ok {
				cm.Bias = bias
				if o.loaded {
					cm.Table = o.table.ID
				}
				if o.python != nil && proc.Python == nil {
					pr := o.python
					proc.Python = &cpu.Python{Offsets: pr.layout.bpf, Runtime: pr.runtime + bias}
					for j, r := range pr.eval {
						if r[1] > 0 {
							proc.Python.Eval[j] = [2]uint64{r[0] + bias, r[1] + bias}
						}
					}
					py = &pyProcess{layout: &pr.layout}
					if pr.codeType != 0 {
						py.codeType = pr.codeType + bias
					}
				}
			}
		}
		proc.Mappings = append(proc.Mappings, cm)
	}
	t.release(pid)
	err = t.s.SetProcess(pid, proc)
	switch {
	case errors.Is(err, cpu.ErrGone), errors.Is(err, cpu.ErrClosed):
		t.unref(objs)
		return
	case errors.Is(err, cpu.ErrFull):
		t.unref(objs)
		t.procsFull.Inc()
		// Once at warning level: on a host that outgrew the map every new
		// process would say it again.
		level := slog.LevelDebug
		if !t.warnedFull {
			level, t.warnedFull = slog.LevelWarn, true
		}
		t.log.Log(context.Background(), level, "cpuprof: no room to describe a process to the unwinder; its stacks follow frame pointers (raise cpu.unwind_mappings; counted in loupe_cpuprof_unwind_processes_full_total)", "pid", pid, "err", err)
		return
	case err != nil:
		t.unref(objs)
		t.log.Warn("cpuprof: cannot describe a process to the unwinder; its stacks follow frame pointers", "pid", pid, "err", err)
		return
	}
	t.procs[pid] = &trackedProc{objs: objs, maps: maps}
	t.described.Inc()
	if t.prepared != nil {
		t.prepared(pid, maps, py)
	}
	t.log.Debug("cpuprof: process described to the unwinder", "pid", pid, "mappings", len(maps), "python", py != nil, "took", time.Since(start))
}

// isDescribed reports whether the unwinder has a description of pid.
func (t *tracker) isDescribed(pid uint32) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.procs[pid]
	return ok
}

// object returns the unwind object of a file mapping, compiling its table
// the first time the file is seen.
func (t *tracker) object(dir string, m *mapping) *unwindObject {
	f, err := os.Open(filepath.Join(dir, "root", m.path))
	if err != nil {
		if f, err = os.Open(filepath.Join(dir, "map_files", fmt.Sprintf("%x-%x", m.start, m.end))); err != nil {
			return nil
		}
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	key := fileKey{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		key.dev, key.ino = st.Dev, st.Ino
	}
	o, ok := t.objects[key]
	if !ok {
		var err error
		o, err = compileObject(f, m.path)
		if err != nil {
			t.log.Debug("cpuprof: no unwind table", "path", m.path, "err", err)
		}
		if o == nil {
			return nil
		}
		o.key = key
		if prev, ok := t.byBuild[o.buildID]; ok && o.buildID != "" {
			o = prev
		} else if o.buildID != "" {
			t.byBuild[o.buildID] = o
		}
		t.objects[key] = o
		if o.python == nil && err != nil {
			t.pyUnsupported.Inc()
			t.log.Warn("cpuprof: Python frames of this interpreter stay unnamed; native frames only", "path", m.path, "err", err)
		}
		t.prune()
	}
	if !o.loaded && o.hasRows {
		if o.rows == nil { // evicted earlier: compile again
			if ef, err := elf.NewFile(f); err == nil {
				o.rows, _ = unwindRows(ef)
			}
		}
		t.ensureLoaded(o)
	}
	return o
}

// maxTrackedObjects bounds the objects remembered; unused ones beyond it
// are forgotten (and compiled again if they come back).
const maxTrackedObjects = 1024

func (t *tracker) prune() {
	if len(t.objects) <= maxTrackedObjects {
		return
	}
	for k, o := range t.objects {
		if o.refs == 0 && !o.loaded {
			delete(t.objects, k)
			if t.byBuild[o.buildID] == o {
				delete(t.byBuild, o.buildID)
			}
		}
	}
}

// compileObject reads an ELF file's load segments, unwind rows and
// CPython runtime, if any. A non-nil object comes with a non-nil error
// when only its interpreter is unsupported.
func compileObject(f *os.File, path string) (*unwindObject, error) {
	ef, err := elf.NewFile(f)
	if err != nil {
		return nil, err
	}
	o := &unwindObject{buildID: buildID(ef)}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_LOAD {
			o.loads = append(o.loads, p.ProgHeader)
		}
	}
	if o.rows, err = unwindRows(ef); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	o.hasRows = len(o.rows) > 0
	py, isPy, err := findPython(ef, f, path)
	if isPy {
		o.python = py
	}
	return o, err
}

// vdsoObject compiles the kernel's vDSO, the same image in every process,
// from this process's copy.
func (t *tracker) vdsoObject() *unwindObject {
	if t.vdso != nil {
		if !t.vdso.loaded && t.vdso.hasRows {
			t.vdso = nil // evicted: read it again
		} else {
			return t.vdso
		}
	}
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return nil
	}
	var vm *mapping
	for _, line := range bytes.Split(b, []byte("\n")) {
		if m, err := parseMapsLine(string(line)); err == nil && m.path == "[vdso]" {
			vm = &m
			break
		}
	}
	if vm == nil {
		return nil
	}
	mem, err := os.Open("/proc/self/mem")
	if err != nil {
		return nil
	}
	defer mem.Close()
	img := make([]byte, vm.end-vm.start)
	if _, err := mem.ReadAt(img, int64(vm.start)); err != nil {
		return nil
	}
	ef, err := elf.NewFile(bytes.NewReader(img))
	if err != nil {
		return nil
	}
	o := &unwindObject{}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_LOAD {
			o.loads = append(o.loads, p.ProgHeader)
		}
	}
	o.rows, _ = unwindRows(ef)
	o.hasRows = len(o.rows) > 0
	t.vdso = o
	if !o.loaded && o.hasRows {
		t.ensureLoaded(o)
	}
	return o
}

// bias returns what to subtract from an address in mapping m to get the
// object's ELF virtual address.
func (o *unwindObject) bias(m *mapping) (uint64, bool) {
	for _, p := range o.loads {
		if m.offset >= p.Off && m.offset < p.Off+max(p.Filesz, 1) {
			return m.start - (m.offset - p.Off + p.Vaddr), true
		}
	}
	return 0, false
}

// ensureLoaded puts the object's rows into the kernel, evicting tables no
// live process uses when the rows map is full. It reports whether the
// object has a table there.
func (t *tracker) ensureLoaded(o *unwindObject) bool {
	if o.loaded {
		return true
	}
	if len(o.rows) == 0 {
		return false
	}
	for {
		tab, err := t.s.LoadTable(o.rows)
		if err == nil {
			o.table, o.loaded, o.rows = tab, true, nil
			return true
		}
		if errors.Is(err, cpu.ErrClosed) {
			return false
		}
		if !errors.Is(err, cpu.ErrFull) || !t.evictOne() {
			t.tableFull.Inc()
			t.log.Debug("cpuprof: unwind table not loaded; frames there follow frame pointers", "rows", len(o.rows), "err", err)
			o.rows = nil // compiled again when next needed
			return false
		}
	}
}

// evictOne frees the least recently used table that no process uses.
func (t *tracker) evictOne() bool {
	var victim *unwindObject
	seen := map[*unwindObject]bool{}
	for _, o := range t.objects {
		if seen[o] || !o.loaded || o.refs > 0 {
			continue
		}
		seen[o] = true
		if victim == nil || o.lastUse < victim.lastUse {
			victim = o
		}
	}
	if v := t.vdso; v != nil && v.loaded && v.refs == 0 && (victim == nil || v.lastUse < victim.lastUse) {
		victim = v
	}
	if victim == nil {
		return false
	}
	if err := t.s.FreeTable(victim.table); err != nil {
		return false
	}
	victim.loaded = false
	return true
}

// release drops the references a process's previous description held.
func (t *tracker) release(pid uint32) {
	if tp, ok := t.procs[pid]; ok {
		t.unref(tp.objs)
		delete(t.procs, pid)
	}
}

func (t *tracker) unref(objs []*unwindObject) {
	for _, o := range objs {
		o.refs--
	}
}

// forget drops a process (it exited, or cannot be described).
func (t *tracker) forget(pid uint32) {
	t.mu.Lock()
	t.release(pid)
	t.mu.Unlock()
	if err := t.s.ForgetProcess(pid); err != nil {
		t.log.Debug("cpuprof: forgetting a process", "pid", pid, "err", err)
	}
}
