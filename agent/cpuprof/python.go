package cpuprof

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf16"

	"github.com/loupe-dev/loupe/bpf/cpu"
)

// This file knows CPython's memory layout, so that the BPF program can walk
// an unmodified interpreter's frames (3.9 to 3.13) and user space can name
// the code objects it finds: function, file and line.

// lineFormat is how a code object maps instruction offsets to lines.
type lineFormat uint8

const (
	lineLnotab    lineFormat = iota // 3.9: co_lnotab
	lineTable310                    // 3.10: co_linetable
	lineLocations                   // 3.11+: co_linetable, the location table
)

// pyLayout is one CPython version's layout on x86-64.
type pyLayout struct {
	major, minor int
	bpf          cpu.PyOffsets
	// PyCodeObject fields; qualname 0 where there is none (3.9, 3.10).
	codeFirstLine, codeFilename, codeName, codeQualname, codeLineTable uint64
	lines                                                              lineFormat
	// PyASCIIObject and PyCompactUnicodeObject sizes: where string data
	// starts.
	asciiSize, compactSize uint64
}

// Offsets shared by the versions here: ob_type, a str's length and state,
// a bytes object's size and data.
const (
	pyObType     = 8
	pyStrLength  = 16
	pyStrState   = 32
	pyBytesSize  = 16
	pyBytesData  = 32
	pyMaxString  = 4096
	pyMaxLineTab = 1 << 20
)

// pyLayouts are the layouts of the versions before 3.13, read from their
// headers (and checked against the DWARF of real builds by the tests);
// 3.13 describes itself in _Py_DebugOffsets.
var pyLayouts = []pyLayout{
	{
		major: 3, minor: 9,
		bpf: cpu.PyOffsets{Kind: cpu.PyFrameObject, RuntimeInterpHead: 32, InterpThreadsHead: 8, TstateNext: 8,
			TstateThreadID: 176, TstateFrame: 24, CFrameCurrent: cpu.NoOffset, FrameBack: 24, FrameCode: 32,
			FrameLasti: 104, FrameEntry: cpu.NoOffset},
		codeFirstLine: 40, codeFilename: 104, codeName: 112, codeLineTable: 120,
		lines: lineLnotab, asciiSize: 48, compactSize: 72,
	},
	{
		major: 3, minor: 10,
		bpf: cpu.PyOffsets{Kind: cpu.PyFrameObject, RuntimeInterpHead: 32, InterpThreadsHead: 8, TstateNext: 8,
			TstateThreadID: 176, TstateFrame: 24, CFrameCurrent: cpu.NoOffset, FrameBack: 24, FrameCode: 32,
			FrameLasti: 96, FrameEntry: cpu.NoOffset},
		codeFirstLine: 40, codeFilename: 104, codeName: 112, codeLineTable: 120,
		lines: lineTable310, asciiSize: 48, compactSize: 72,
	},
	{
		major: 3, minor: 11,
		bpf: cpu.PyOffsets{Kind: cpu.PyIFrame311, RuntimeInterpHead: 40, InterpThreadsHead: 16, TstateNext: 8,
			TstateThreadID: 152, TstateFrame: 56, CFrameCurrent: 8, FrameBack: 48, FrameCode: 32,
			FrameLasti: 56, FrameEntry: 68, CodeAdaptive: 184},
		codeFirstLine: 72, codeFilename: 112, codeName: 120, codeQualname: 128, codeLineTable: 136,
		lines: lineLocations, asciiSize: 48, compactSize: 72,
	},
	{
		major: 3, minor: 12,
		bpf: cpu.PyOffsets{Kind: cpu.PyIFrame312, RuntimeInterpHead: 40, InterpThreadsHead: 72, TstateNext: 8,
			TstateThreadID: 136, TstateFrame: 56, CFrameCurrent: 0, FrameBack: 8, FrameCode: 0,
			FrameLasti: 56, FrameEntry: 70, CodeAdaptive: 192},
		codeFirstLine: 68, codeFilename: 112, codeName: 120, codeQualname: 128, codeLineTable: 136,
		lines: lineLocations, asciiSize: 40, compactSize: 56,
	},
}

// pyRuntime is what the tracker finds in an object holding an interpreter.
type pyRuntime struct {
	layout pyLayout
	// ELF virtual addresses in the object.
	runtime, codeType uint64
	eval              [2][2]uint64
}

// errNoDebugOffsets reports a 3.13+ interpreter whose _Py_DebugOffsets
// cannot be read or are of a layout this agent does not know.
var errNoDebugOffsets = errors.New("no usable _Py_DebugOffsets")

var pyNameVersion = regexp.MustCompile(`python(\d)\.(\d+)`)

// findPython reports whether the object defines CPython's runtime state
// (_PyRuntime), and if so where it and the eval loop are and which layout
// the version has. ok is false for every other object; err says why an
// interpreter is not supported.
func findPython(ef *elf.File, r io.ReaderAt, path string) (py *pyRuntime, ok bool, err error) {
	syms := map[string]elf.Symbol{}
	want := map[string]bool{"_PyRuntime": true, "_PyEval_EvalFrameDefault": true, "_PyEval_EvalFrameDefault.cold": true,
		"Py_Version": true, "PyCode_Type": true}
	for _, get := range []func() ([]elf.Symbol, error){ef.DynamicSymbols, ef.Symbols} {
		list, _ := get()
		for _, s := range list {
			if want[s.Name] && s.Section != elf.SHN_UNDEF && s.Value != 0 {
				if _, dup := syms[s.Name]; !dup {
					syms[s.Name] = s
				}
			}
		}
	}
	rt, ok := syms["_PyRuntime"]
	if !ok {
		return nil, false, nil
	}
	eval, ok := syms["_PyEval_EvalFrameDefault"]
	if !ok {
		return nil, true, fmt.Errorf("%s defines _PyRuntime but not _PyEval_EvalFrameDefault", path)
	}
	py = &pyRuntime{runtime: rt.Value, codeType: syms["PyCode_Type"].Value}
	py.eval[0] = [2]uint64{eval.Value, eval.Value + eval.Size}
	if cold, ok := syms["_PyEval_EvalFrameDefault.cold"]; ok {
		py.eval[1] = [2]uint64{cold.Value, cold.Value + max(cold.Size, 1)}
	}
	major, minor := 0, 0
	if v, ok := syms["Py_Version"]; ok {
		if b, err := readVaddr(ef, r, v.Value, 4); err == nil {
			hex := binary.LittleEndian.Uint32(b)
			major, minor = int(hex>>24), int(hex>>16&0xff)
		}
	}
	if major == 0 {
		if m := pyNameVersion.FindStringSubmatch(path[strings.LastIndexByte(path, '/')+1:]); m != nil {
			major, _ = strconv.Atoi(m[1])
			minor, _ = strconv.Atoi(m[2])
		}
	}
	if major == 3 && minor >= 13 {
		l, err := debugOffsetsLayout(ef, r, rt.Value)
		if err != nil {
			return nil, true, fmt.Errorf("CPython %d.%d in %s: %w", major, minor, path, err)
		}
		py.layout = l
		return py, true, nil
	}
	for _, l := range pyLayouts {
		if l.major == major && l.minor == minor {
			py.layout = l
			return py, true, nil
		}
	}
	if major == 0 {
		return nil, true, fmt.Errorf("%s holds a CPython interpreter of unknown version (no Py_Version, no version in its name)", path)
	}
	return nil, true, fmt.Errorf("CPython %d.%d in %s is not supported (3.9 to 3.13 are)", major, minor, path)
}

// readVaddr reads n bytes of the object's file at ELF virtual address v.
func readVaddr(ef *elf.File, r io.ReaderAt, v uint64, n int) ([]byte, error) {
	for _, p := range ef.Progs {
		if p.Type == elf.PT_LOAD && v >= p.Vaddr && v+uint64(n) <= p.Vaddr+p.Filesz {
			b := make([]byte, n)
			if _, err := r.ReadAt(b, int64(p.Off+v-p.Vaddr)); err != nil {
				return nil, err
			}
			return b, nil
		}
	}
	return nil, fmt.Errorf("address %#x is not in the file's loaded data", v)
}

// debugOffsetsSize is sizeof(_Py_DebugOffsets) in 3.13; its layout
// changes with every minor version.
const debugOffsetsSize = 584

// debugOffsetsLayout reads the _Py_DebugOffsets that 3.13 puts at the
// start of _PyRuntime (statically initialized, so in the file).
func debugOffsetsLayout(ef *elf.File, r io.ReaderAt, runtime uint64) (pyLayout, error) {
	b, err := readVaddr(ef, r, runtime, debugOffsetsSize)
	if err != nil {
		return pyLayout{}, fmt.Errorf("%w: %v", errNoDebugOffsets, err)
	}
	return parseDebugOffsets(b)
}

// parseDebugOffsets decodes a 3.13 _Py_DebugOffsets.
func parseDebugOffsets(b []byte) (pyLayout, error) {
	if len(b) < debugOffsetsSize || string(b[:8]) != "xdebugpy" {
		return pyLayout{}, fmt.Errorf("%w: no xdebugpy cookie", errNoDebugOffsets)
	}
	u := func(off int) uint64 { return binary.LittleEndian.Uint64(b[off:]) }
	version := u(8)
	major, minor := int(version>>24), int(version>>16&0xff)
	if major != 3 || minor != 13 {
		return pyLayout{}, fmt.Errorf("%w: layout of version %d.%d unknown", errNoDebugOffsets, major, minor)
	}
	if u(16) != 0 {
		return pyLayout{}, fmt.Errorf("%w: free-threaded builds are not supported", errNoDebugOffsets)
	}
	var vals [debugOffsetsSize / 8]uint64
	for i := range vals {
		vals[i] = u(8 * i)
	}
	// Field positions (index = byte offset / 8) in the 3.13 struct.
	const (
		interpretersHead = 5
		threadsHead      = 9
		tstateNext       = 21
		tstateFrame      = 23
		tstateThreadID   = 24
		framePrevious    = 29
		frameExecutable  = 30
		frameInstrPtr    = 31
		frameOwner       = 33
		codeFilename     = 35
		codeName         = 36
		codeQualname     = 37
		codeLinetable    = 38
		codeFirstLine    = 39
		codeAdaptive     = 43
		asciiobjectSize  = 70
	)
	l := pyLayout{
		major: 3, minor: 13,
		codeFirstLine: vals[codeFirstLine], codeFilename: vals[codeFilename], codeName: vals[codeName],
		codeQualname: vals[codeQualname], codeLineTable: vals[codeLinetable], lines: lineLocations,
		asciiSize: vals[asciiobjectSize], compactSize: vals[asciiobjectSize] + 16,
	}
	o := cpu.PyOffsets{Kind: cpu.PyIFrame312, CFrameCurrent: cpu.NoOffset}
	for _, f := range []struct {
		dst *uint32
		idx int
	}{
		{&o.RuntimeInterpHead, interpretersHead}, {&o.InterpThreadsHead, threadsHead}, {&o.TstateNext, tstateNext},
		{&o.TstateThreadID, tstateThreadID}, {&o.TstateFrame, tstateFrame}, {&o.FrameBack, framePrevious},
		{&o.FrameCode, frameExecutable}, {&o.FrameLasti, frameInstrPtr}, {&o.FrameEntry, frameOwner},
		{&o.CodeAdaptive, codeAdaptive},
	} {
		if vals[f.idx] > 1<<20 {
			return pyLayout{}, fmt.Errorf("%w: implausible offset %d", errNoDebugOffsets, vals[f.idx])
		}
		*f.dst = uint32(vals[f.idx])
	}
	l.bpf = o
	return l, nil
}

// pyCode is what the symbolizer keeps of one code object.
type pyCode struct {
	name, file string
	firstLine  int64
	table      []byte
}

// memReader reads a process's memory.
type memReader interface {
	ReadAt(b []byte, off int64) (int, error)
}

// readPyCode reads a code object out of a process.
func readPyCode(mem memReader, l *pyLayout, addr, codeType uint64) (*pyCode, error) {
	hdr := make([]byte, max(l.codeLineTable, l.codeQualname, l.codeFirstLine)+8)
	if _, err := mem.ReadAt(hdr, int64(addr)); err != nil {
		return nil, err
	}
	u64 := func(off uint64) uint64 { return binary.LittleEndian.Uint64(hdr[off:]) }
	if codeType != 0 && u64(pyObType) != codeType {
		return nil, fmt.Errorf("object at %#x is not a code object", addr)
	}
	c := &pyCode{firstLine: int64(int32(binary.LittleEndian.Uint32(hdr[l.codeFirstLine:])))}
	nameField := l.codeName
	if l.codeQualname != 0 {
		nameField = l.codeQualname
	}
	var err error
	if c.name, err = readPyStr(mem, l, u64(nameField)); err != nil {
		return nil, fmt.Errorf("code object %#x name: %w", addr, err)
	}
	if c.file, err = readPyStr(mem, l, u64(l.codeFilename)); err != nil {
		return nil, fmt.Errorf("code object %#x file: %w", addr, err)
	}
	if c.table, err = readPyBytes(mem, u64(l.codeLineTable)); err != nil {
		return nil, fmt.Errorf("code object %#x line table: %w", addr, err)
	}
	return c, nil
}

// readPyStr reads a compact str object as UTF-8.
func readPyStr(mem memReader, l *pyLayout, addr uint64) (string, error) {
	var hdr [40]byte
	if addr == 0 {
		return "", errors.New("NULL string")
	}
	if _, err := mem.ReadAt(hdr[:], int64(addr)); err != nil {
		return "", err
	}
	n := binary.LittleEndian.Uint64(hdr[pyStrLength:])
	state := binary.LittleEndian.Uint32(hdr[pyStrState:])
	kind, compact, ascii := state>>2&7, state>>5&1, state>>6&1
	if compact == 0 || n > pyMaxString || (kind != 1 && kind != 2 && kind != 4) {
		return "", fmt.Errorf("str at %#x is not a compact string of at most %d characters", addr, pyMaxString)
	}
	data := addr + l.compactSize
	if ascii == 1 {
		data = addr + l.asciiSize
	}
	buf := make([]byte, n*uint64(kind))
	if _, err := mem.ReadAt(buf, int64(data)); err != nil {
		return "", err
	}
	return decodePyStr(buf, kind), nil
}

// decodePyStr turns a str's data of kind 1, 2 or 4 bytes a character into
// UTF-8.
func decodePyStr(b []byte, kind uint32) string {
	switch kind {
	case 1:
		rs := make([]rune, len(b))
		for i, c := range b {
			rs[i] = rune(c) // Latin-1
		}
		return string(rs)
	case 2:
		u := make([]uint16, len(b)/2)
		for i := range u {
			u[i] = binary.LittleEndian.Uint16(b[2*i:])
		}
		return string(utf16.Decode(u))
	}
	rs := make([]rune, len(b)/4)
	for i := range rs {
		rs[i] = rune(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return string(rs)
}

func readPyBytes(mem memReader, addr uint64) ([]byte, error) {
	var hdr [8]byte
	if addr == 0 {
		return nil, errors.New("NULL bytes")
	}
	if _, err := mem.ReadAt(hdr[:], int64(addr+pyBytesSize)); err != nil {
		return nil, err
	}
	n := binary.LittleEndian.Uint64(hdr[:])
	if n > pyMaxLineTab {
		return nil, fmt.Errorf("bytes at %#x of %d bytes", addr, n)
	}
	b := make([]byte, n)
	if _, err := mem.ReadAt(b, int64(addr+pyBytesData)); err != nil {
		return nil, err
	}
	return b, nil
}

// line returns the source line of the instruction at lasti as the BPF
// program reports it (f_lasti itself for 3.9 and 3.10: bytes, then code
// units; a code unit index for 3.11+), or 0 when the table has none.
func (c *pyCode) line(f lineFormat, lasti uint32) int64 {
	switch f {
	case lineLnotab:
		return lnotabLine(c.table, c.firstLine, int64(lasti))
	case lineTable310:
		return linetable310Line(c.table, c.firstLine, int64(lasti)*2)
	}
	return locationLine(c.table, c.firstLine, int64(lasti))
}

// lnotabLine decodes 3.9's co_lnotab: pairs of (bytecode offset delta,
// signed line delta), offsets in bytes.
func lnotabLine(tab []byte, first, offset int64) int64 {
	line, addr := first, int64(0)
	for i := 0; i+1 < len(tab); i += 2 {
		addr += int64(tab[i])
		if addr > offset {
			break
		}
		line += int64(int8(tab[i+1]))
	}
	return line
}

// linetable310Line decodes 3.10's co_linetable: pairs of (offset delta in
// bytes, signed line delta, -128 meaning no line) that each end a range.
func linetable310Line(tab []byte, first, offset int64) int64 {
	line, end := first, int64(0)
	for i := 0; i+1 < len(tab); i += 2 {
		start := end
		end += int64(tab[i])
		d := int8(tab[i+1])
		if d != -128 {
			line += int64(d)
		}
		if offset >= start && offset < end {
			if d == -128 {
				return 0
			}
			return line
		}
	}
	return 0
}

// locationLine decodes the 3.11+ location table: entries of a header byte
// (bit 7 set, code in bits 3-6, length-1 code units in bits 0-2) and the
// code's payload; only the start line is needed here.
func locationLine(tab []byte, first, index int64) int64 {
	line, pc := first, int64(0)
	r := bytes.NewReader(tab)
	varint := func() int64 {
		var v int64
		for shift := uint(0); shift < 64; shift += 6 {
			b, err := r.ReadByte()
			if err != nil {
				return v
			}
			v |= int64(b&63) << shift
			if b&64 == 0 {
				break
			}
		}
		return v
	}
	svarint := func() int64 {
		v := varint()
		if v&1 != 0 {
			return -(v >> 1)
		}
		return v >> 1
	}
	for {
		h, err := r.ReadByte()
		if err != nil || h&0x80 == 0 {
			return 0
		}
		code, n := h>>3&15, int64(h&7)+1
		delta, has := int64(0), true
		switch {
		case code == 15: // no location
			has = false
		case code == 14: // long form: line delta, end line, columns
			delta = svarint()
			varint()
			varint()
			varint()
		case code == 13: // no columns
			delta = svarint()
		case code >= 10: // one line: delta code-10, two column bytes
			delta = int64(code - 10)
			r.ReadByte()
			r.ReadByte()
		default: // short form: same line, one column byte
			r.ReadByte()
		}
		line += delta
		if index >= pc && index < pc+n {
			if !has {
				return 0
			}
			return line
		}
		pc += n
	}
}
