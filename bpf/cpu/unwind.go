package cpu

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// CFAKind says how the canonical frame address (CFA: the caller's stack
// pointer) of a frame is found (enum cfa_kind in C).
type CFAKind uint8

// The CFA kinds.
const (
	CFANone   CFAKind = iota // no unwind information: follow the frame pointer
	CFARSP                   // CFA = rsp + CFAOffset
	CFARBP                   // CFA = rbp + CFAOffset
	CFAPLT                   // PLT stub: rsp + 8, + 8 once rip&15 >= CFAOffset
	CFASignal                // signal trampoline: registers in a ucontext at rsp
	CFAEnd                   // outermost frame of a thread
)

// Rule is how to step from one frame to its caller on x86-64: the return
// address is always at CFA-8; the caller's rbp is at CFA+FPOffset when
// FPSaved, else unchanged.
type Rule struct {
	CFA       CFAKind
	CFAOffset int32
	FPSaved   bool
	FPOffset  int32
}

// Limits of what a Rule can encode.
const (
	maxCFAOffset = 1<<17 - 1
	maxFPOffset  = (1<<9 - 1) * 8
)

// ErrRuleRange reports a rule whose offsets do not fit the packed form.
var ErrRuleRange = errors.New("unwind rule offsets out of range")

// Encode packs r as the BPF program reads it: kind (3 bits), FP saved (1),
// FP offset / 8 (10, signed), CFA offset (18, signed).
func (r Rule) Encode() (uint32, error) {
	if r.CFAOffset > maxCFAOffset || r.CFAOffset < -maxCFAOffset-1 ||
		r.FPOffset%8 != 0 || r.FPOffset > maxFPOffset || r.FPOffset < -maxFPOffset-8 || r.CFA > CFAEnd {
		return 0, fmt.Errorf("%w: %+v", ErrRuleRange, r)
	}
	v := uint32(r.CFA) | uint32(r.CFAOffset)<<14
	if r.FPSaved {
		v |= 8 | (uint32(r.FPOffset/8)&0x3ff)<<4
	}
	return v, nil
}

// DecodeRule unpacks a rule encoded by Encode.
func DecodeRule(v uint32) Rule {
	r := Rule{CFA: CFAKind(v & 7), CFAOffset: int32(v) >> 14}
	if v&8 != 0 {
		r.FPSaved = true
		r.FPOffset = (int32(v<<18) >> 22) * 8
	}
	return r
}

// Row is one unwind row: from PC (an ELF virtual address in its object)
// up to the next row's PC, frames follow Rule (encoded).
type Row struct {
	PC   uint32
	Rule uint32
}

// Table is an object's unwind rows as loaded into the kernel.
type Table struct {
	ID    uint32
	First uint32
	Count uint32
}

// NoTable marks a mapping without unwind rows: it is unwound with frame
// pointers.
const NoTable = ^uint32(0)

// Mapping is one executable mapping of a process: addresses [Start, End)
// are ELF virtual addresses + Bias of the object whose rows are Table.
type Mapping struct {
	Start, End, Bias uint64
	Table            uint32
}

// PyKind is how a CPython version chains its frames (enum py_kind in C).
type PyKind uint32

// The CPython frame layouts.
const (
	PyFrameObject PyKind = iota // 3.9, 3.10: one PyFrameObject per eval call
	PyIFrame311                 // 3.11: _PyInterpreterFrame, is_entry ends an eval call
	PyIFrame312                 // 3.12+: _PyInterpreterFrame, a C-stack shim ends it
)

// NoOffset marks a PyOffsets field the version does not have.
const NoOffset = ^uint32(0)

// PyOffsets are the byte offsets the BPF program reads a CPython
// interpreter's thread states and frames with.
type PyOffsets struct {
	Kind              PyKind
	RuntimeInterpHead uint32 // _PyRuntime.interpreters.head
	InterpThreadsHead uint32 // PyInterpreterState's first thread state
	TstateNext        uint32
	TstateThreadID    uint32 // pthread_self() of the thread
	TstateFrame       uint32 // frame (3.9, 3.10), cframe (3.11, 3.12) or current_frame (3.13)
	CFrameCurrent     uint32 // _PyCFrame.current_frame, NoOffset without a cframe
	FrameBack         uint32 // f_back or previous
	FrameCode         uint32 // f_code or f_executable
	FrameLasti        uint32 // f_lasti, prev_instr or instr_ptr
	FrameEntry        uint32 // is_entry (3.11) or owner (3.12+)
	CodeAdaptive      uint32 // co_code_adaptive (3.11+)
}

// Python locates a process's interpreter.
type Python struct {
	Offsets PyOffsets
	Runtime uint64 // address of _PyRuntime
	// Eval holds up to two [start, end) address ranges of
	// _PyEval_EvalFrameDefault (its hot and cold parts).
	Eval [2][2]uint64
}

// Process describes one process to the unwinder.
type Process struct {
	Mappings []Mapping // sorted by Start, not overlapping
	Python   *Python
	// NoUser marks a process without user address space (a kernel
	// thread): samples carry no user stack.
	NoUser bool
}

// Python frames in a user stack: bit 63 set, the instruction index (code
// units) in bits 47-62, the code object's address in bits 0-46.
const (
	pyFrameBit  = 1 << 63
	pyAddrMask  = 1<<47 - 1
	pyLastiMask = 1<<16 - 1
)

// PythonFrame decodes a Python frame of a user stack: the code object's
// address and the index of the instruction last run, in code units. ok is
// false for a native frame.
func PythonFrame(v uint64) (code uint64, lasti uint32, ok bool) {
	if v&pyFrameBit == 0 {
		return 0, 0, false
	}
	return v & pyAddrMask, uint32(v>>47) & pyLastiMask, true
}

// EventKind is what an Event reports.
type EventKind uint32

// The event kinds (enum event_kind in C).
const (
	EventNew  EventKind = iota // a process was sampled that is not described yet
	EventMaps                  // code ran outside every described mapping
	EventExit                  // a process exited or exec'd; its description is gone
)

// Event is a message from the BPF program about a process.
type Event struct {
	Kind EventKind
	PID  uint32
}

// ErrFull reports that an unwinding map has no room left.
var ErrFull = errors.New("unwind map full")

// ErrGone reports a process that exited before it was described.
var ErrGone = errors.New("process gone")

// ErrClosed reports a call after Close, as when the profiler stops while a
// process is being described.
var ErrClosed = errors.New("CPU sampler closed")

// UnwindUsage is how full the unwinding maps are.
type UnwindUsage struct {
	Rows, RowsCap         uint32
	Mappings, MappingsCap uint32
	Tables, TablesCap     uint32
}

// unwindMaps holds the allocators of the unwinding pools. Guarded by the
// sampler's mutex.
type unwindMaps struct {
	rows, mappings *pool
	tableIDs       []uint32 // free table ids
	tables         uint32   // ids in use
	procs          map[uint32]segment
	pyOffsets      []PyOffsets
	events         *ringbuf.Reader
}

func newUnwindMaps(objs *SamplerObjects) (*unwindMaps, error) {
	u := &unwindMaps{
		rows:     newPool(objs.Rows.MaxEntries()),
		mappings: newPool(objs.Mappings.MaxEntries()),
		procs:    map[uint32]segment{},
	}
	for id := objs.Tables.MaxEntries(); id > 0; id-- {
		u.tableIDs = append(u.tableIDs, id-1)
	}
	var err error
	if u.events, err = ringbuf.NewReader(objs.Events); err != nil {
		return nil, fmt.Errorf("opening the CPU sampler's event ring: %w", err)
	}
	return u, nil
}

// batch is how many entries one map update writes.
const batch = 4096

// putArray writes values to consecutive indexes of an array map from first.
func putArray[T any](m *ebpf.Map, first uint32, values []T) error {
	keys := make([]uint32, 0, min(len(values), batch))
	for off := 0; off < len(values); off += batch {
		chunk := values[off:min(off+batch, len(values))]
		keys = keys[:0]
		for i := range chunk {
			keys = append(keys, first+uint32(off+i))
		}
		if _, err := m.BatchUpdate(keys, chunk, nil); err != nil {
			return err
		}
	}
	return nil
}

// writeRows copies rows into the memory-mapped rows map from index first:
// only the pages it writes are mapped, and only while it writes them, so
// the rows do not stay in this process's resident memory.
func writeRows(m *ebpf.Map, first uint32, rows []Row) error {
	if len(rows) == 0 {
		return nil
	}
	const rowSize = 8
	page := int64(os.Getpagesize())
	start := int64(first) * rowSize
	end := start + int64(len(rows))*rowSize
	off := start &^ (page - 1)
	mem, err := unix.Mmap(m.FD(), off, int(end-off), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mapping the rows map: %w", err)
	}
	copy(mem[start-off:], unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(rows))), len(rows)*rowSize))
	return unix.Munmap(mem)
}

// SetUnwind turns table-driven unwinding on or off; while off, user stacks
// are followed by frame pointers only.
func (s *Sampler) SetUnwind(on bool) error {
	var v uint32
	if on {
		v = 1
	}
	if err := s.objs.Unwind.Set(v); err != nil {
		return fmt.Errorf("switching CPU sampler unwinding: %w", err)
	}
	return nil
}

// LoadTable copies an object's unwind rows (sorted by PC) into the
// kernel. It fails with ErrFull when the rows map or the table ids are
// used up, and with ErrClosed after Close.
func (s *Sampler) LoadTable(rows []Row) (Table, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Table{}, ErrClosed
	}
	u := s.unwind
	if len(u.tableIDs) == 0 {
		return Table{}, fmt.Errorf("%w: all %d tables in use", ErrFull, s.objs.Tables.MaxEntries())
	}
	seg, ok := u.rows.alloc(uint32(len(rows)))
	if !ok {
		return Table{}, fmt.Errorf("%w: %d rows wanted, %d of %d free", ErrFull, len(rows), u.rows.capacity-u.rows.used, u.rows.capacity)
	}
	if err := writeRows(s.objs.Rows, seg.first, rows); err != nil {
		u.rows.free(seg)
		return Table{}, fmt.Errorf("writing %d unwind rows: %w", len(rows), err)
	}
	id := u.tableIDs[len(u.tableIDs)-1]
	if err := s.objs.Tables.Put(id, SamplerTable{First: seg.first, Count: seg.count}); err != nil {
		u.rows.free(seg)
		return Table{}, fmt.Errorf("writing unwind table %d: %w", id, err)
	}
	u.tableIDs = u.tableIDs[:len(u.tableIDs)-1]
	u.tables++
	return Table{ID: id, First: seg.first, Count: seg.count}, nil
}

// FreeTable releases a table. The caller must first describe again (or
// forget) every process whose mappings use it.
func (s *Sampler) FreeTable(t Table) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.objs.Tables.Put(t.ID, SamplerTable{}); err != nil {
		return fmt.Errorf("clearing unwind table %d: %w", t.ID, err)
	}
	s.unwind.rows.free(segment{t.First, t.Count})
	s.unwind.tableIDs = append(s.unwind.tableIDs, t.ID)
	s.unwind.tables--
	return nil
}

// SetProcess describes a process the program reported with EventNew or
// EventMaps. It fails with ErrGone when the process has exited meanwhile,
// with ErrFull when the mappings map has no room, and with ErrClosed after
// Close.
func (s *Sampler) SetProcess(pid uint32, p Process) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	u := s.unwind
	if len(p.Mappings) > 1<<16 {
		return fmt.Errorf("%w: process %d has %d executable mappings, at most %d", ErrFull, pid, len(p.Mappings), 1<<16)
	}
	if !slices.IsSortedFunc(p.Mappings, func(a, b Mapping) int { return cmp.Compare(a.Start, b.Start) }) {
		return fmt.Errorf("process %d: mappings not sorted by start", pid)
	}
	v := SamplerProc{State: 1}
	if p.NoUser {
		v.State = 2
	}
	seg := segment{}
	if len(p.Mappings) > 0 {
		var ok bool
		if seg, ok = u.mappings.alloc(uint32(len(p.Mappings))); !ok {
			return fmt.Errorf("%w: %d mappings wanted for process %d, %d of %d free", ErrFull, len(p.Mappings), pid, u.mappings.capacity-u.mappings.used, u.mappings.capacity)
		}
		vals := make([]SamplerMapping, len(p.Mappings))
		for i, m := range p.Mappings {
			vals[i] = SamplerMapping{Start: m.Start, End: m.End, Bias: m.Bias, Table: m.Table}
		}
		if err := putArray(s.objs.Mappings, seg.first, vals); err != nil {
			u.mappings.free(seg)
			return fmt.Errorf("writing the mappings of process %d: %w", pid, err)
		}
	}
	v.First, v.Count = seg.first, seg.count
	if py := p.Python; py != nil {
		idx := slices.Index(u.pyOffsets, py.Offsets)
		if idx < 0 {
			idx = len(u.pyOffsets)
			if uint32(idx) >= s.objs.PyOffsetSets.MaxEntries() {
				u.mappings.free(seg)
				return fmt.Errorf("%w: more than %d CPython layouts", ErrFull, idx)
			}
			o := py.Offsets
			if err := s.objs.PyOffsetSets.Put(uint32(idx), SamplerPyOffsets{
				Kind: uint32(o.Kind), RuntimeInterpHead: o.RuntimeInterpHead, InterpThreadsHead: o.InterpThreadsHead,
				TstateNext: o.TstateNext, TstateThreadId: o.TstateThreadID, TstateFrame: o.TstateFrame,
				CframeCurrent: o.CFrameCurrent, FrameBack: o.FrameBack, FrameCode: o.FrameCode,
				FrameLasti: o.FrameLasti, FrameEntry: o.FrameEntry, CodeAdaptive: o.CodeAdaptive,
			}); err != nil {
				u.mappings.free(seg)
				return fmt.Errorf("writing CPython offsets: %w", err)
			}
			u.pyOffsets = append(u.pyOffsets, o)
		}
		v.Py = uint32(idx) + 1
		v.PyRuntime = py.Runtime
		v.EvalStart, v.EvalEnd = py.Eval[0][0], py.Eval[0][1]
		v.Eval2Start, v.Eval2End = py.Eval[1][0], py.Eval[1][1]
	}
	// Only a process the program reported and that has not exited.
	if err := s.objs.Procs.Update(pid, v, ebpf.UpdateExist); err != nil {
		u.mappings.free(seg)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("describing process %d: %w", pid, ErrGone)
		}
		return fmt.Errorf("describing process %d: %w", pid, err)
	}
	if old, ok := u.procs[pid]; ok {
		u.mappings.free(old)
	}
	u.procs[pid] = seg
	return nil
}

// Track asks for a process to be described before the program samples
// it: it reports true when it added the process as pending, and the caller
// then describes it with SetProcess as for an EventNew.
func (s *Sampler) Track(pid uint32) (bool, error) {
	err := s.objs.Procs.Update(pid, SamplerProc{}, ebpf.UpdateNoExist)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ebpf.ErrKeyExist):
		return false, nil
	}
	return false, fmt.Errorf("tracking process %d: %w", pid, err)
}

// ForgetProcess drops a process's description (after EventExit, or to
// have it reported again) and frees its mappings.
func (s *Sampler) ForgetProcess(pid uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.objs.Procs.Delete(pid)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		err = nil
	}
	if seg, ok := s.unwind.procs[pid]; ok {
		s.unwind.mappings.free(seg)
		delete(s.unwind.procs, pid)
	}
	if err != nil {
		return fmt.Errorf("forgetting process %d: %w", pid, err)
	}
	return nil
}

// ReadEvent waits for the next event. After Close it returns an error
// wrapping ringbuf.ErrClosed.
func (s *Sampler) ReadEvent() (Event, error) {
	rec, err := s.unwind.events.Read()
	if err != nil {
		return Event{}, fmt.Errorf("reading CPU sampler events: %w", err)
	}
	if len(rec.RawSample) < 8 {
		return Event{}, fmt.Errorf("reading CPU sampler events: short record of %d bytes", len(rec.RawSample))
	}
	b := rec.RawSample
	return Event{
		Kind: EventKind(uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24),
		PID:  uint32(b[4]) | uint32(b[5])<<8 | uint32(b[6])<<16 | uint32(b[7])<<24,
	}, nil
}

// Usage reports how full the unwinding maps are.
func (s *Sampler) Usage() UnwindUsage {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.unwind
	return UnwindUsage{
		Rows: u.rows.used, RowsCap: u.rows.capacity,
		Mappings: u.mappings.used, MappingsCap: u.mappings.capacity,
		Tables: u.tables, TablesCap: s.objs.Tables.MaxEntries(),
	}
}

// segment is a run of entries [first, first+count) of an array map.
type segment struct{ first, count uint32 }

// pool hands out segments of an array map, first fit; freed segments
// merge with their free neighbours.
type pool struct {
	capacity, used uint32
	spans          []segment // sorted by first, never adjacent
}

func newPool(capacity uint32) *pool {
	return &pool{capacity: capacity, spans: []segment{{0, capacity}}}
}

func (p *pool) alloc(n uint32) (segment, bool) {
	if n == 0 {
		return segment{}, true
	}
	for i, f := range p.spans {
		if f.count < n {
			continue
		}
		if f.count == n {
			p.spans = slices.Delete(p.spans, i, i+1)
		} else {
			p.spans[i] = segment{f.first + n, f.count - n}
		}
		p.used += n
		return segment{f.first, n}, true
	}
	return segment{}, false
}

func (p *pool) free(s segment) {
	if s.count == 0 {
		return
	}
	p.used -= s.count
	i, _ := slices.BinarySearchFunc(p.spans, s.first, func(f segment, first uint32) int { return cmp.Compare(f.first, first) })
	p.spans = slices.Insert(p.spans, i, s)
	// Merge with the next, then with the previous segment.
	if i+1 < len(p.spans) && p.spans[i].first+p.spans[i].count == p.spans[i+1].first {
		p.spans[i].count += p.spans[i+1].count
		p.spans = slices.Delete(p.spans, i+1, i+2)
	}
	if i > 0 && p.spans[i-1].first+p.spans[i-1].count == p.spans[i].first {
		p.spans[i-1].count += p.spans[i].count
		p.spans = slices.Delete(p.spans, i, i+1)
	}
}
