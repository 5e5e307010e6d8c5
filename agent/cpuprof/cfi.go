package cpuprof

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"unsafe"

	"github.com/loupe-dev/loupe/bpf/cpu"
)

// This file compiles an object's call frame information (.eh_frame, and
// .debug_frame when present) into the compact rows the BPF unwinder reads:
// per address range one rule for the canonical frame address (CFA) and the
// caller's rbp, on x86-64. Rules the unwinder cannot apply (CFA from an
// expression other than the PLT's, or from a register other than rsp and
// rbp) become frame-pointer rows, so unwinding goes on where it can.

// x86-64 DWARF register numbers.
const (
	dwRBP = 6
	dwRSP = 7
	dwRIP = 16
)

// maxCFIRecord bounds one CIE or FDE: real ones are tens of bytes.
const maxCFIRecord = 1 << 20

// errCFI reports malformed call frame information.
var errCFI = errors.New("malformed call frame information")

// cfiRow is a row before packing, pc<<32 | rule, so that a table of
// millions of rows sorts in place at 8 bytes a row. The end of an FDE is a
// gap row, rule 0 (frame pointers): sorted before any FDE's own row at the
// same pc, which overrides it.
type cfiRow uint64

func newCFIRow(pc uint64, rule uint32) cfiRow { return cfiRow(pc<<32 | uint64(rule)) }

func (r cfiRow) pc() uint64   { return uint64(r) >> 32 }
func (r cfiRow) rule() uint32 { return uint32(r) }

// cie is the part of a common information entry that its FDEs need.
type cie struct {
	codeAlign uint64
	dataAlign int64
	raReg     uint64
	fdeEnc    byte // pointer encoding of the FDEs' addresses
	hasAug    bool // 'z': FDEs carry augmentation data
	signal    bool // 'S': a signal trampoline
	addrSize  int
	initial   []byte
}

// regRule is how a register of the caller is found.
type regRule struct {
	kind regKind
	off  int64
}

type regKind uint8

const (
	regSame   regKind = iota // unchanged (also the default)
	regUndef                 // not recoverable (RA: the outermost frame)
	regOffset                // saved at CFA + off
	regOther                 // somewhere the unwinder does not follow
)

// cfaState is the rule set at one address.
type cfaState struct {
	cfaReg   uint64
	cfaOff   int64
	cfaPLT   int64 // > 0: the PLT expression with this threshold
	cfaOther bool  // an expression the unwinder cannot evaluate
	rbp, ra  regRule
}

// cfiSection is one call frame section to read.
type cfiSection struct {
	r    io.ReaderAt
	size uint64
	addr uint64 // its virtual address (for pc-relative pointers)
	eh   bool   // .eh_frame (else .debug_frame)
}

// unwindRows compiles the call frame information of an ELF file into rows
// sorted by pc. It returns no rows (and no error) for objects that are not
// x86-64, or whose addresses do not fit in 32 bits.
func unwindRows(ef *elf.File) ([]cpu.Row, error) {
	if ef.Machine != elf.EM_X86_64 || ef.Class != elf.ELFCLASS64 {
		return nil, nil
	}
	var rows []cfiRow
	for _, name := range []string{".eh_frame", ".debug_frame"} {
		sec := ef.Section(name)
		if sec == nil || sec.Type == elf.SHT_NOBITS || sec.Size == 0 {
			continue
		}
		if sec.Flags&elf.SHF_COMPRESSED != 0 {
			continue // compressed .debug_frame: rare, and .eh_frame covers it
		}
		cs := cfiSection{r: sec, size: sec.Size, addr: sec.Addr, eh: name == ".eh_frame"}
		var err error
		if rows, err = cs.appendRows(rows); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	return packRows(rows), nil
}

// packRows sorts rows by pc, keeps one row per pc (the last: an FDE's own
// row over a gap) and drops rows that repeat the previous rule. It packs
// in place: a cpu.Row is the same 8 bytes as a cfiRow.
func packRows(rows []cfiRow) []cpu.Row {
	slices.Sort(rows)
	out := unsafe.Slice((*cpu.Row)(unsafe.Pointer(unsafe.SliceData(rows))), len(rows))[:0]
	for i, r := range rows {
		if i+1 < len(rows) && rows[i+1].pc() == r.pc() {
			continue
		}
		if n := len(out); n > 0 && out[n-1].Rule == r.rule() {
			continue
		}
		out = append(out, cpu.Row{PC: uint32(r.pc()), Rule: r.rule()})
	}
	return slices.Clip(out)
}

// appendRows reads every FDE of the section in order and appends its rows.
func (cs cfiSection) appendRows(rows []cfiRow) ([]cfiRow, error) {
	br := bufio.NewReaderSize(io.NewSectionReader(cs.r, 0, int64(cs.size)), 64<<10)
	cies := map[uint64]*cie{}
	var buf []byte
	for off := uint64(0); off+4 <= cs.size; {
		var hdr [12]byte
		if _, err := io.ReadFull(br, hdr[:4]); err != nil {
			return rows, fmt.Errorf("%w: record at %#x: %v", errCFI, off, err)
		}
		length, hlen := uint64(binary.LittleEndian.Uint32(hdr[:4])), uint64(4)
		if length == 0 {
			if cs.eh {
				break // the terminator
			}
			off += 4
			continue
		}
		if length == 0xffffffff {
			if _, err := io.ReadFull(br, hdr[4:12]); err != nil {
				return rows, fmt.Errorf("%w: record at %#x: %v", errCFI, off, err)
			}
			length, hlen = binary.LittleEndian.Uint64(hdr[4:12]), 12
		}
		if length > maxCFIRecord || length < 4 || off+hlen+length > cs.size {
			return rows, fmt.Errorf("%w: record at %#x of %d bytes", errCFI, off, length)
		}
		buf = slices.Grow(buf[:0], int(length))[:length]
		if _, err := io.ReadFull(br, buf); err != nil {
			return rows, fmt.Errorf("%w: record at %#x: %v", errCFI, off, err)
		}
		body := off + hlen // section offset of the record's id field
		off = body + length
		if hlen == 12 {
			continue // 64-bit DWARF records: not produced for x86-64 code
		}
		id := uint64(binary.LittleEndian.Uint32(buf))
		if isCIE := (cs.eh && id == 0) || (!cs.eh && id == 0xffffffff); isCIE {
			c, err := parseCIE(buf[4:])
			if err == nil {
				cies[body-4] = c
			}
			continue
		}
		cieOff := id
		if cs.eh {
			cieOff = body - id // relative to the id field
		}
		c, ok := cies[cieOff]
		if !ok {
			var err error
			if c, err = cs.readCIE(cieOff); err != nil {
				continue // an FDE without a usable CIE is skipped
			}
			cies[cieOff] = c
		}
		rows = appendFDE(rows, c, buf[4:], cs.addr+body+4, cs.eh)
	}
	return rows, nil
}

// readCIE reads a CIE at a section offset out of order.
func (cs cfiSection) readCIE(off uint64) (*cie, error) {
	if off+4 > cs.size {
		return nil, errCFI
	}
	var hdr [4]byte
	if _, err := cs.r.ReadAt(hdr[:], int64(off)); err != nil {
		return nil, err
	}
	length := uint64(binary.LittleEndian.Uint32(hdr[:]))
	if length < 4 || length > maxCFIRecord || off+4+length > cs.size {
		return nil, errCFI
	}
	buf := make([]byte, length)
	if _, err := cs.r.ReadAt(buf, int64(off+4)); err != nil {
		return nil, err
	}
	id := binary.LittleEndian.Uint32(buf)
	if (cs.eh && id != 0) || (!cs.eh && id != 0xffffffff) {
		return nil, errCFI
	}
	return parseCIE(buf[4:])
}

// cfiReader decodes the primitive values of call frame information.
type cfiReader struct {
	b   []byte
	err bool
}

func (r *cfiReader) u8() byte {
	if len(r.b) < 1 {
		r.err = true
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *cfiReader) bytes(n uint64) []byte {
	if uint64(len(r.b)) < n {
		r.err = true
		r.b = nil
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *cfiReader) uleb() uint64 {
	var v uint64
	for shift := uint(0); ; shift += 7 {
		b := r.u8()
		if r.err {
			return 0
		}
		if shift < 64 {
			v |= uint64(b&0x7f) << shift
		}
		if b&0x80 == 0 {
			return v
		}
	}
}

func (r *cfiReader) sleb() int64 {
	var v int64
	var shift uint
	var b byte
	for {
		b = r.u8()
		if r.err {
			return 0
		}
		if shift < 64 {
			v |= int64(b&0x7f) << shift
		}
		shift += 7
		if b&0x80 == 0 {
			break
		}
	}
	if shift < 64 && b&0x40 != 0 {
		v |= -1 << shift
	}
	return v
}

// fixed reads an n-byte little-endian unsigned value (n of 1, 2, 4, 8).
func (r *cfiReader) fixed(n int) uint64 {
	b := r.bytes(uint64(n))
	if r.err {
		return 0
	}
	switch n {
	case 1:
		return uint64(b[0])
	case 2:
		return uint64(binary.LittleEndian.Uint16(b))
	case 4:
		return uint64(binary.LittleEndian.Uint32(b))
	}
	return binary.LittleEndian.Uint64(b)
}

// Pointer encodings (DW_EH_PE_*).
const (
	peAbsptr  = 0x00
	peUleb    = 0x01
	peUdata2  = 0x02
	peUdata4  = 0x03
	peUdata8  = 0x04
	peSleb    = 0x09
	peSdata2  = 0x0a
	peSdata4  = 0x0b
	peSdata8  = 0x0c
	pePCRel   = 0x10
	peOmit    = 0xff
	peApplied = 0x70
)

// pointer decodes an encoded pointer; at is the virtual address of its
// first byte (for pc-relative ones).
func (r *cfiReader) pointer(enc byte, at uint64, addrSize int) uint64 {
	if enc == peOmit {
		return 0
	}
	var v uint64
	switch enc & 0x0f {
	case peAbsptr:
		v = r.fixed(addrSize)
	case peUleb:
		v = r.uleb()
	case peUdata2:
		v = r.fixed(2)
	case peUdata4:
		v = r.fixed(4)
	case peUdata8, peSdata8:
		v = r.fixed(8)
	case peSleb:
		v = uint64(r.sleb())
	case peSdata2:
		v = uint64(int64(int16(r.fixed(2))))
	case peSdata4:
		v = uint64(int64(int32(r.fixed(4))))
	default:
		r.err = true
		return 0
	}
	switch enc & peApplied {
	case 0:
	case pePCRel:
		v += at
	default:
		// textrel, datarel, funcrel: not used for code addresses on x86-64.
		r.err = true
	}
	return v
}

func parseCIE(b []byte) (*cie, error) {
	r := &cfiReader{b: b}
	version := r.u8()
	if version != 1 && version != 3 && version != 4 {
		return nil, fmt.Errorf("%w: CIE version %d", errCFI, version)
	}
	i := bytes.IndexByte(r.b, 0)
	if i < 0 {
		return nil, fmt.Errorf("%w: unterminated CIE augmentation", errCFI)
	}
	aug := string(r.b[:i])
	r.b = r.b[i+1:]
	c := &cie{fdeEnc: peAbsptr, addrSize: 8}
	if version == 4 {
		c.addrSize = int(r.u8())
		r.u8() // segment selector size
		if c.addrSize != 4 && c.addrSize != 8 {
			return nil, fmt.Errorf("%w: CIE address size %d", errCFI, c.addrSize)
		}
	}
	c.codeAlign = r.uleb()
	c.dataAlign = r.sleb()
	if version == 1 {
		c.raReg = uint64(r.u8())
	} else {
		c.raReg = r.uleb()
	}
	if len(aug) > 0 && aug[0] == 'z' {
		c.hasAug = true
		data := r.bytes(r.uleb())
		ar := &cfiReader{b: data}
		for _, a := range aug[1:] {
			switch a {
			case 'R':
				c.fdeEnc = ar.u8()
			case 'P':
				enc := ar.u8()
				ar.pointer(enc&^0x80&^peApplied, 0, c.addrSize) // personality: skipped
			case 'L':
				ar.u8() // LSDA encoding: FDEs carry the LSDA in their augmentation data
			case 'S':
				c.signal = true
			case 'B', 'G':
			default:
				// An unknown augmentation: its data length still lets
				// the instructions be found.
			}
		}
	} else if aug != "" && aug != "eh" {
		return nil, fmt.Errorf("%w: CIE augmentation %q", errCFI, aug)
	}
	if r.err {
		return nil, fmt.Errorf("%w: truncated CIE", errCFI)
	}
	c.initial = slices.Clone(r.b) // b is the reader's reused buffer
	return c, nil
}

// appendFDE runs an FDE's instructions and appends its rows. at is the
// virtual address of the byte after the FDE's CIE pointer.
func appendFDE(rows []cfiRow, c *cie, b []byte, at uint64, eh bool) []cfiRow {
	r := &cfiReader{b: b}
	enc := c.fdeEnc
	if !eh {
		enc = peAbsptr
	}
	start := r.pointer(enc, at, c.addrSize)
	rng := r.pointer(enc&0x0f, 0, c.addrSize)
	if c.hasAug {
		r.bytes(r.uleb())
	}
	// Rows keep 32-bit addresses: objects beyond 4 GiB follow frame pointers.
	if r.err || rng == 0 || start+rng < start || start+rng > 0xffffffff {
		return rows
	}
	end := start + rng
	if c.signal {
		rule, _ := cpu.Rule{CFA: cpu.CFASignal}.Encode()
		return append(rows, newCFIRow(start, rule), newCFIRow(end, 0))
	}
	init := cfaState{ra: regRule{kind: regOffset, off: -8}}
	m := &cfaMachine{c: c, enc: enc, loc: start}
	if !m.run(c.initial, &init, nil, nil) {
		return rows
	}
	state := init
	loc := start
	n0 := len(rows)
	ok := m.run(r.b, &state, &init, func(next uint64) bool {
		if next < loc || next > end {
			return false
		}
		if next > loc {
			rows = append(rows, newCFIRow(loc, state.rule()))
			loc = next
		}
		return true
	})
	if !ok {
		return rows[:n0]
	}
	if loc < end {
		rows = append(rows, newCFIRow(loc, state.rule()))
	}
	return append(rows, newCFIRow(end, 0))
}

// cfaMachine interprets call frame instructions.
type cfaMachine struct {
	c   *cie
	enc byte
	loc uint64
}

// Call frame instruction opcodes (DW_CFA_*).
const (
	cfaAdvanceLoc        = 0x40
	cfaOffset            = 0x80
	cfaRestore           = 0xc0
	cfaNop               = 0x00
	cfaSetLoc            = 0x01
	cfaAdvanceLoc1       = 0x02
	cfaAdvanceLoc2       = 0x03
	cfaAdvanceLoc4       = 0x04
	cfaOffsetExtended    = 0x05
	cfaRestoreExtended   = 0x06
	cfaUndefined         = 0x07
	cfaSameValue         = 0x08
	cfaRegister          = 0x09
	cfaRememberState     = 0x0a
	cfaRestoreState      = 0x0b
	cfaDefCFA            = 0x0c
	cfaDefCFARegister    = 0x0d
	cfaDefCFAOffset      = 0x0e
	cfaDefCFAExpression  = 0x0f
	cfaExpression        = 0x10
	cfaOffsetExtendedSF  = 0x11
	cfaDefCFASF          = 0x12
	cfaDefCFAOffsetSF    = 0x13
	cfaValOffset         = 0x14
	cfaValOffsetSF       = 0x15
	cfaValExpression     = 0x16
	cfaGNUWindowSave     = 0x2d
	cfaGNUArgsSize       = 0x2e
	cfaGNUNegOffsetExt   = 0x2f
	maxRememberedStates  = 64
	maxCFIInstructions   = 1 << 16
	pltExpressionLength  = 11
	pltThresholdLitFirst = 0x30
)

// run executes instructions on st. init is the CIE's state, for
// DW_CFA_restore; advance is called with each new location. Both are nil
// for a CIE's initial instructions, which may not advance. It reports
// false on malformed or unsupported input.
func (m *cfaMachine) run(b []byte, st *cfaState, init *cfaState, advance func(uint64) bool) bool {
	r := &cfiReader{b: b}
	var stack []cfaState
	for n := 0; len(r.b) > 0; n++ {
		if n > maxCFIInstructions {
			return false
		}
		op := r.u8()
		var arg byte
		if op&0xc0 != 0 {
			op, arg = op&0xc0, op&0x3f
		}
		adv := func(delta uint64) bool {
			if advance == nil {
				return false
			}
			m.loc += delta * m.c.codeAlign
			return advance(m.loc)
		}
		switch op {
		case cfaAdvanceLoc:
			if !adv(uint64(arg)) {
				return false
			}
		case cfaAdvanceLoc1:
			if !adv(uint64(r.u8())) {
				return false
			}
		case cfaAdvanceLoc2:
			if d := r.fixed(2); r.err || !adv(d) {
				return false
			}
		case cfaAdvanceLoc4:
			if d := r.fixed(4); r.err || !adv(d) {
				return false
			}
		case cfaSetLoc:
			if advance == nil || m.enc&peApplied != 0 {
				return false // a pc-relative DW_CFA_set_loc: never emitted
			}
			m.loc = r.pointer(m.enc, 0, m.c.addrSize)
			if r.err || !advance(m.loc) {
				return false
			}
		case cfaOffset:
			st.set(uint64(arg), regRule{regOffset, int64(r.uleb()) * m.c.dataAlign}, m.c.raReg)
		case cfaOffsetExtended:
			reg := r.uleb()
			st.set(reg, regRule{regOffset, int64(r.uleb()) * m.c.dataAlign}, m.c.raReg)
		case cfaOffsetExtendedSF:
			reg := r.uleb()
			st.set(reg, regRule{regOffset, r.sleb() * m.c.dataAlign}, m.c.raReg)
		case cfaGNUNegOffsetExt:
			reg := r.uleb()
			st.set(reg, regRule{regOffset, -int64(r.uleb()) * m.c.dataAlign}, m.c.raReg)
		case cfaRestore, cfaRestoreExtended:
			reg := uint64(arg)
			if op == cfaRestoreExtended {
				reg = r.uleb()
			}
			if init == nil {
				return false
			}
			st.set(reg, init.get(reg, m.c.raReg), m.c.raReg)
		case cfaUndefined:
			st.set(r.uleb(), regRule{kind: regUndef}, m.c.raReg)
		case cfaSameValue:
			st.set(r.uleb(), regRule{kind: regSame}, m.c.raReg)
		case cfaRegister:
			reg := r.uleb()
			r.uleb()
			st.set(reg, regRule{kind: regOther}, m.c.raReg)
		case cfaExpression, cfaValExpression:
			reg := r.uleb()
			r.bytes(r.uleb())
			st.set(reg, regRule{kind: regOther}, m.c.raReg)
		case cfaValOffset:
			reg := r.uleb()
			r.uleb()
			st.set(reg, regRule{kind: regOther}, m.c.raReg)
		case cfaValOffsetSF:
			reg := r.uleb()
			r.sleb()
			st.set(reg, regRule{kind: regOther}, m.c.raReg)
		case cfaRememberState:
			if len(stack) >= maxRememberedStates {
				return false
			}
			stack = append(stack, *st)
		case cfaRestoreState:
			if len(stack) == 0 {
				return false
			}
			// The CFA rule is restored too (DWARF 5 6.4.2.4).
			*st = stack[len(stack)-1]
			stack = stack[:len(stack)-1]
		case cfaDefCFA:
			st.cfaReg, st.cfaOff = r.uleb(), int64(r.uleb())
			st.cfaPLT, st.cfaOther = 0, false
		case cfaDefCFASF:
			st.cfaReg, st.cfaOff = r.uleb(), r.sleb()*m.c.dataAlign
			st.cfaPLT, st.cfaOther = 0, false
		case cfaDefCFARegister:
			st.cfaReg = r.uleb()
			st.cfaPLT, st.cfaOther = 0, false
		case cfaDefCFAOffset:
			st.cfaOff = int64(r.uleb())
		case cfaDefCFAOffsetSF:
			st.cfaOff = r.sleb() * m.c.dataAlign
		case cfaDefCFAExpression:
			expr := r.bytes(r.uleb())
			st.cfaPLT, st.cfaOther = pltThreshold(expr), true
			if st.cfaPLT > 0 {
				st.cfaOther = false
			}
		case cfaNop, cfaGNUWindowSave:
		case cfaGNUArgsSize:
			r.uleb()
		default:
			return false
		}
		if r.err {
			return false
		}
	}
	return true
}

// pltThreshold recognizes the CFA expression of x86-64 PLT entries,
// rsp + 8 + ((rip & 15) >= N) << 3, and returns N (0 when it is not one).
func pltThreshold(e []byte) int64 {
	// DW_OP_breg7 8; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_litN;
	// DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus
	if len(e) != pltExpressionLength || e[0] != 0x77 || e[1] != 8 || e[2] != 0x80 || e[3] != 0 || e[4] != 0x3f ||
		e[5] != 0x1a || e[6] < pltThresholdLitFirst || e[6] > 0x4f || e[7] != 0x2a || e[8] != 0x33 || e[9] != 0x24 || e[10] != 0x22 {
		return 0
	}
	return int64(e[6] - pltThresholdLitFirst)
}

func (st *cfaState) set(reg uint64, r regRule, raReg uint64) {
	switch reg {
	case dwRBP:
		st.rbp = r
	case raReg:
		st.ra = r
	}
}

func (st *cfaState) get(reg, raReg uint64) regRule {
	switch reg {
	case dwRBP:
		return st.rbp
	case raReg:
		return st.ra
	}
	return regRule{}
}

// rule packs the state for the BPF unwinder, falling back to frame
// pointers where it cannot be expressed.
func (st *cfaState) rule() uint32 {
	var r cpu.Rule
	switch {
	case st.ra.kind == regUndef:
		r.CFA = cpu.CFAEnd
	case st.ra.kind != regOffset || st.ra.off != -8 || st.cfaOther:
		r.CFA = cpu.CFANone
	case st.cfaPLT > 0:
		r = cpu.Rule{CFA: cpu.CFAPLT, CFAOffset: int32(st.cfaPLT)}
	case st.cfaReg == dwRSP:
		r = cpu.Rule{CFA: cpu.CFARSP, CFAOffset: int32(st.cfaOff)}
	case st.cfaReg == dwRBP:
		r = cpu.Rule{CFA: cpu.CFARBP, CFAOffset: int32(st.cfaOff)}
	default:
		r.CFA = cpu.CFANone
	}
	if r.CFA != cpu.CFANone && r.CFA != cpu.CFAEnd && st.rbp.kind == regOffset {
		r.FPSaved, r.FPOffset = true, int32(st.rbp.off)
	}
	if int64(r.CFAOffset) != st.cfaOff && (r.CFA == cpu.CFARSP || r.CFA == cpu.CFARBP) {
		r = cpu.Rule{} // did not fit in 32 bits
	}
	v, err := r.Encode()
	if err != nil {
		v, _ = cpu.Rule{}.Encode()
	}
	return v
}
