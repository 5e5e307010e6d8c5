package cpuprof

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"sort"
)

// lineTable answers "which source line is this address" from an object's
// DWARF line programs (.debug_line, versions 2 to 5) without holding them:
// it keeps the address range of every sequence and the offset of its
// unit, and decodes that one unit when asked. debug/dwarf would need the
// whole .debug_info in memory, tens of MiB for a large library.
type lineTable struct {
	line    io.ReaderAt // .debug_line
	lineLen uint64
	str     []byte // .debug_line_str and .debug_str, for DWARF 5 names
	lineStr []byte
	seqs    []lineSeq // sorted by low
	// units are the units decoded last, most recent first: the hot code
	// of a process sits in a few of them.
	units []*decodedUnit
}

// maxDecodedUnits bounds the decoded units a table keeps.
const maxDecodedUnits = 8

// decodedUnit is one unit's rows, sorted by address, and its file names.
type decodedUnit struct {
	off   uint64
	rows  []unitRow
	files []string
}

// unitRow is a decoded row, compact: file endFile marks the end of a
// sequence.
type unitRow struct {
	addr       uint64
	line, file uint32
}

const endFile = ^uint32(0)

type lineSeq struct {
	low, high uint64
	unit      uint64 // offset of the unit header in .debug_line
}

// srcLine is a source position.
type srcLine struct {
	file string
	line int64
}

// Limits on outside data.
const (
	maxLineUnit    = 64 << 20
	maxStrSection  = 32 << 20
	maxLineSection = 256 << 20
	maxLineFiles   = 1 << 20
)

var errDWARFLine = errors.New("malformed .debug_line")

// readSection returns a section's contents if it is at most limit bytes.
func readSection(ef *elf.File, name string, limit uint64) []byte {
	sec := ef.Section(name)
	if sec == nil || sec.Type == elf.SHT_NOBITS || sec.Size > limit {
		return nil
	}
	b, err := sec.Data()
	if err != nil || uint64(len(b)) > limit {
		return nil
	}
	return b
}

// newLineTable indexes ef's .debug_line; nil when it has none.
func newLineTable(ef *elf.File) (*lineTable, error) {
	sec := ef.Section(".debug_line")
	if sec == nil || sec.Type == elf.SHT_NOBITS || sec.Size == 0 {
		return nil, nil
	}
	lt := &lineTable{str: readSection(ef, ".debug_str", maxStrSection), lineStr: readSection(ef, ".debug_line_str", maxStrSection)}
	if sec.Flags&elf.SHF_COMPRESSED != 0 {
		// Compressed sections cannot be read at an offset: hold it.
		b := readSection(ef, ".debug_line", maxLineSection)
		if b == nil {
			return nil, fmt.Errorf("compressed .debug_line larger than %d bytes", maxLineSection)
		}
		lt.line, lt.lineLen = bytes.NewReader(b), uint64(len(b))
	} else {
		lt.line, lt.lineLen = sec, sec.Size
	}
	for off := uint64(0); off < lt.lineLen; {
		u, next, err := lt.readUnit(off)
		if err != nil {
			break // keep what was indexed before the damage
		}
		u.run(func(row lineRow) bool { return true }, func(low, high uint64) {
			if high > low {
				lt.seqs = append(lt.seqs, lineSeq{low: low, high: high, unit: off})
			}
		})
		off = next
	}
	sort.Slice(lt.seqs, func(i, j int) bool { return lt.seqs[i].low < lt.seqs[j].low })
	return lt, nil
}

// lookup returns the source position of address pc.
func (lt *lineTable) lookup(pc uint64) (srcLine, bool) {
	i := sort.Search(len(lt.seqs), func(i int) bool { return lt.seqs[i].low > pc })
	// Sequences may nest or overlap (inlined sections): try the nearest.
	for j := i - 1; j >= 0 && j >= i-4; j-- {
		s := lt.seqs[j]
		if pc < s.low || pc >= s.high {
			continue
		}
		d := lt.decoded(s.unit)
		if d == nil {
			return srcLine{}, false
		}
		// The last row at or before pc, within a sequence.
		k := sort.Search(len(d.rows), func(k int) bool { return d.rows[k].addr > pc }) - 1
		if k >= 0 && d.rows[k].file != endFile && k+1 < len(d.rows) {
			r := d.rows[k]
			name := ""
			if r.file < uint32(len(d.files)) {
				name = d.files[r.file]
			}
			return srcLine{file: name, line: int64(r.line)}, true
		}
	}
	return srcLine{}, false
}

// decoded returns the unit at off decoded, from the small cache or by
// running its program.
func (lt *lineTable) decoded(off uint64) *decodedUnit {
	for i, d := range lt.units {
		if d.off == off {
			copy(lt.units[1:i+1], lt.units[:i])
			lt.units[0] = d
			return d
		}
	}
	u, _, err := lt.readUnit(off)
	if err != nil {
		return nil
	}
	d := &decodedUnit{off: off}
	u.run(func(row lineRow) bool {
		r := unitRow{addr: row.addr, line: uint32(min(row.line, 1<<32-1)), file: uint32(min(row.file, uint64(endFile-1)))}
		if row.end {
			r.file = endFile
		}
		d.rows = append(d.rows, r)
		return true
	}, nil)
	// The last row at an address wins: sort stably, keep the last.
	sort.SliceStable(d.rows, func(i, j int) bool { return d.rows[i].addr < d.rows[j].addr })
	kept := d.rows[:0]
	for i, r := range d.rows {
		if i+1 < len(d.rows) && d.rows[i+1].addr == r.addr && d.rows[i+1].file != endFile {
			continue
		}
		kept = append(kept, r)
	}
	d.rows = slices.Clip(kept)
	d.files = make([]string, len(u.files))
	for i := range u.files {
		d.files[i] = u.fileName(uint64(i))
	}
	if len(lt.units) < maxDecodedUnits {
		lt.units = append(lt.units, nil)
	}
	copy(lt.units[1:], lt.units)
	lt.units[0] = d
	return d
}

// lineUnit is one decoded line program header and its opcodes.
type lineUnit struct {
	lt                *lineTable
	version           uint16
	addrSize          int
	minInst           uint8
	maxOps            uint8
	defaultStmt       bool
	lineBase          int8
	lineRange         uint8
	opcodeBase        uint8
	stdLengths        []uint8
	dirs, files       []string
	fileDirs          []uint64
	program           []byte
	dwarf64           bool
	firstFileIsCUFile bool
}

// lineRow is one row of a line program.
type lineRow struct {
	addr uint64
	file uint64
	line uint64
	end  bool
}

// readUnit reads the unit at off and returns it and the next unit's offset.
func (lt *lineTable) readUnit(off uint64) (*lineUnit, uint64, error) {
	var hdr [12]byte
	if _, err := lt.line.ReadAt(hdr[:4], int64(off)); err != nil {
		return nil, 0, err
	}
	length, hl := uint64(binary.LittleEndian.Uint32(hdr[:4])), uint64(4)
	dwarf64 := false
	if length == 0xffffffff {
		if _, err := lt.line.ReadAt(hdr[4:12], int64(off+4)); err != nil {
			return nil, 0, err
		}
		length, hl, dwarf64 = binary.LittleEndian.Uint64(hdr[4:12]), 12, true
	}
	if length < 2 || length > maxLineUnit || off+hl+length > lt.lineLen {
		return nil, 0, errDWARFLine
	}
	b := make([]byte, length)
	if _, err := lt.line.ReadAt(b, int64(off+hl)); err != nil {
		return nil, 0, err
	}
	u, err := lt.parseUnit(b, dwarf64)
	return u, off + hl + length, err
}

func (lt *lineTable) parseUnit(b []byte, dwarf64 bool) (*lineUnit, error) {
	r := &cfiReader{b: b}
	u := &lineUnit{lt: lt, addrSize: 8, dwarf64: dwarf64}
	u.version = uint16(r.fixed(2))
	if u.version < 2 || u.version > 5 {
		return nil, fmt.Errorf("%w: version %d", errDWARFLine, u.version)
	}
	if u.version >= 5 {
		u.addrSize = int(r.u8())
		r.u8() // segment selector size
	}
	hlen := r.offset(dwarf64)
	if r.err || hlen > uint64(len(r.b)) {
		return nil, errDWARFLine
	}
	u.program = r.b[hlen:]
	h := &cfiReader{b: r.b[:hlen]}
	u.minInst = h.u8()
	u.maxOps = 1
	if u.version >= 4 {
		u.maxOps = h.u8()
	}
	u.defaultStmt = h.u8() != 0
	u.lineBase = int8(h.u8())
	u.lineRange = h.u8()
	u.opcodeBase = h.u8()
	if u.lineRange == 0 || u.opcodeBase == 0 {
		return nil, errDWARFLine
	}
	u.stdLengths = h.bytes(uint64(u.opcodeBase - 1))
	if h.err {
		return nil, errDWARFLine
	}
	if u.version < 5 {
		u.dirs = append(u.dirs, "")
		for len(h.b) > 0 && h.b[0] != 0 {
			u.dirs = append(u.dirs, h.cstr())
		}
		h.u8()
		u.files, u.fileDirs = append(u.files, ""), append(u.fileDirs, 0)
		for len(h.b) > 0 && h.b[0] != 0 && len(u.files) < maxLineFiles {
			u.files = append(u.files, h.cstr())
			u.fileDirs = append(u.fileDirs, h.uleb())
			h.uleb() // mtime
			h.uleb() // length
		}
	} else {
		var err error
		if u.dirs, _, err = u.entries(h); err != nil {
			return nil, err
		}
		if u.files, u.fileDirs, err = u.entries(h); err != nil {
			return nil, err
		}
	}
	if h.err {
		return nil, errDWARFLine
	}
	return u, nil
}

// offset reads a 4- or 8-byte section offset.
func (r *cfiReader) offset(dwarf64 bool) uint64 {
	if dwarf64 {
		return r.fixed(8)
	}
	return r.fixed(4)
}

func (r *cfiReader) cstr() string {
	i := bytes.IndexByte(r.b, 0)
	if i < 0 {
		r.err = true
		r.b = nil
		return ""
	}
	s := string(r.b[:i])
	r.b = r.b[i+1:]
	return s
}

// DWARF 5 line header content types and forms.
const (
	lnctPath           = 1
	lnctDirectoryIndex = 2
	formString         = 0x08
	formLineStrp       = 0x1f
	formStrp           = 0x0e
	formUdata          = 0x0f
	formData1          = 0x0b
	formData2          = 0x05
	formData4          = 0x06
	formData8          = 0x07
	formData16         = 0x1e
	formBlock          = 0x09
)

// entries reads a DWARF 5 directory or file name table: names, and for
// files their directory indexes.
func (u *lineUnit) entries(h *cfiReader) ([]string, []uint64, error) {
	n := int(h.u8())
	type format struct{ content, form uint64 }
	formats := make([]format, 0, n)
	for range n {
		formats = append(formats, format{h.uleb(), h.uleb()})
	}
	count := h.uleb()
	if h.err || count > maxLineFiles {
		return nil, nil, errDWARFLine
	}
	names := make([]string, 0, count)
	dirs := make([]uint64, 0, count)
	for range count {
		name, dir := "", uint64(0)
		for _, f := range formats {
			var s string
			var v uint64
			switch f.form {
			case formString:
				s = h.cstr()
			case formLineStrp:
				s = cstrAt(u.lt.lineStr, h.offset(u.dwarf64))
			case formStrp:
				s = cstrAt(u.lt.str, h.offset(u.dwarf64))
			case formUdata:
				v = h.uleb()
			case formData1:
				v = h.fixed(1)
			case formData2:
				v = h.fixed(2)
			case formData4:
				v = h.fixed(4)
			case formData8:
				h.bytes(8)
			case formData16:
				h.bytes(16)
			case formBlock:
				h.bytes(h.uleb())
			default:
				return nil, nil, fmt.Errorf("%w: form %#x in a file table", errDWARFLine, f.form)
			}
			switch f.content {
			case lnctPath:
				name = s
			case lnctDirectoryIndex:
				dir = v
			}
		}
		if h.err {
			return nil, nil, errDWARFLine
		}
		names = append(names, name)
		dirs = append(dirs, dir)
	}
	return names, dirs, nil
}

func cstrAt(b []byte, off uint64) string {
	if off >= uint64(len(b)) {
		return ""
	}
	if i := bytes.IndexByte(b[off:], 0); i >= 0 {
		return string(b[off : off+uint64(i)])
	}
	return ""
}

// fileName joins a file entry with its directory.
func (u *lineUnit) fileName(i uint64) string {
	if i >= uint64(len(u.files)) {
		return ""
	}
	name := u.files[i]
	if path.IsAbs(name) {
		return name
	}
	if d := u.fileDirs[i]; d < uint64(len(u.dirs)) && u.dirs[d] != "" {
		return path.Join(u.dirs[d], name)
	}
	return name
}

// Standard and extended line opcodes (DW_LNS_*, DW_LNE_*).
const (
	lnsCopy          = 1
	lnsAdvancePC     = 2
	lnsAdvanceLine   = 3
	lnsSetFile       = 4
	lnsSetColumn     = 5
	lnsNegateStmt    = 6
	lnsSetBasicBlock = 7
	lnsConstAddPC    = 8
	lnsFixedAdvPC    = 9
	lneEndSequence   = 1
	lneSetAddress    = 2
	maxLineOps       = 1 << 26
)

// run executes the line program, calling row for each row (false stops)
// and seq, when not nil, with each finished sequence's address range.
func (u *lineUnit) run(row func(lineRow) bool, seq func(low, high uint64)) {
	r := &cfiReader{b: u.program}
	st := lineRow{file: 1, line: 1}
	start := st
	low, haveLow := uint64(0), false
	emit := func() bool {
		if !haveLow {
			low, haveLow = st.addr, true
		}
		return row(st)
	}
	advance := func(opAdv uint64) {
		st.addr += uint64(u.minInst) * opAdv
	}
	for n := 0; len(r.b) > 0 && n < maxLineOps; n++ {
		op := r.u8()
		switch {
		case op >= u.opcodeBase:
			adj := uint64(op - u.opcodeBase)
			advance(adj / uint64(u.lineRange))
			st.line = uint64(int64(st.line) + int64(u.lineBase) + int64(adj%uint64(u.lineRange)))
			if !emit() {
				return
			}
		case op == 0:
			n := r.uleb()
			ext := r.bytes(n)
			if r.err || len(ext) == 0 {
				return
			}
			switch ext[0] {
			case lneEndSequence:
				st.end = true
				if !emit() {
					return
				}
				if seq != nil && haveLow {
					seq(low, st.addr)
				}
				st, haveLow = start, false
			case lneSetAddress:
				if a := ext[1:]; len(a) == 4 || len(a) == 8 {
					st.addr = (&cfiReader{b: a}).fixed(len(a))
				}
			}
		case op == lnsCopy:
			if !emit() {
				return
			}
		case op == lnsAdvancePC:
			advance(r.uleb())
		case op == lnsAdvanceLine:
			st.line = uint64(int64(st.line) + r.sleb())
		case op == lnsSetFile:
			st.file = r.uleb()
		case op == lnsConstAddPC:
			advance(uint64(255-u.opcodeBase) / uint64(u.lineRange))
		case op == lnsFixedAdvPC:
			st.addr += r.fixed(2)
		case op == lnsSetColumn, op == lnsNegateStmt, op == lnsSetBasicBlock:
			if op == lnsSetColumn {
				r.uleb()
			}
		default:
			// An opcode this decoder does not know: skip its operands.
			if int(op-1) < len(u.stdLengths) {
				for range u.stdLengths[op-1] {
					r.uleb()
				}
			}
		}
		if r.err {
			return
		}
	}
}
