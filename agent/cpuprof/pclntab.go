package cpuprof

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// goFuncs names code in Go binaries from .gopclntab, which Go (1.18 and
// later) keeps even in stripped binaries. Only the function table, 8 bytes
// a function, is held in memory; names are read from the file on demand.
// (debug/gosym decodes the whole table into tens of MiB for a large
// binary, too much for an agent.)
type goFuncs struct {
	r        io.ReaderAt
	order    binary.ByteOrder
	text     uint64   // runtime.text: function entries are offsets from it
	entries  []uint32 // entry offsets, ascending; the last one is the end of text
	funcOffs []uint32 // per function: offset of its _func from the function table
	names    uint64   // file offset of the function name table
	funcs    uint64   // file offset of the function table
	end      uint64   // file offset of the end of .gopclntab
}

// pclntab header magics of Go 1.18-1.19 and of Go 1.20 and later; the layout
// that matters here is the same.
const (
	go118magic = 0xfffffff0
	go120magic = 0xfffffff1
)

// openGoFuncs reads the function table of a .gopclntab section. text is
// the .text section's address, used when the header does not carry one.
func openGoFuncs(r io.ReaderAt, sec *elf.Section, order binary.ByteOrder, text uint64) (*goFuncs, error) {
	var hdr [8 + 8*8]byte
	if sec.Size < 8 {
		return nil, errors.New("truncated .gopclntab")
	}
	n, err := r.ReadAt(hdr[:min(uint64(len(hdr)), sec.Size)], int64(sec.Offset))
	if n < 8 {
		return nil, fmt.Errorf("reading .gopclntab header: %w", err)
	}
	if magic := order.Uint32(hdr[:]); magic != go118magic && magic != go120magic {
		return nil, fmt.Errorf(".gopclntab magic %#x: only Go 1.18 and later binaries are supported", magic)
	}
	ptr := int(hdr[7])
	if ptr != 4 && ptr != 8 || n < 8+8*ptr {
		return nil, errors.New("malformed .gopclntab header")
	}
	word := func(i int) uint64 {
		if ptr == 8 {
			return order.Uint64(hdr[8+8*i:])
		}
		return uint64(order.Uint32(hdr[8+4*i:]))
	}
	// Header words: nfunc, nfiles, textStart, funcnametab, cutab,
	// filetab, pctab, functab (offsets from the header).
	nfunc, textStart, nameOff, funcOff := word(0), word(2), word(3), word(7)
	size := (2*nfunc + 1) * 4
	if nfunc == 0 || nfunc > 1<<24 || nameOff >= sec.Size || funcOff >= sec.Size || size > sec.Size-funcOff {
		return nil, errors.New("malformed .gopclntab header")
	}
	if textStart != 0 { // 0: relocated at run time (PIE); .text it is
		text = textStart
	}
	// Allocate only for a table the file really holds.
	if _, err := r.ReadAt(hdr[:1], int64(sec.Offset+funcOff+size-1)); err != nil {
		return nil, fmt.Errorf("reading the Go function table: %w", err)
	}
	tab := make([]byte, size)
	if _, err := r.ReadAt(tab, int64(sec.Offset+funcOff)); err != nil {
		return nil, fmt.Errorf("reading the Go function table: %w", err)
	}
	g := &goFuncs{
		r: r, order: order, text: text,
		entries:  make([]uint32, nfunc+1),
		funcOffs: make([]uint32, nfunc),
		names:    sec.Offset + nameOff,
		funcs:    sec.Offset + funcOff,
		end:      sec.Offset + sec.Size,
	}
	for i := range nfunc {
		g.entries[i] = order.Uint32(tab[8*i:])
		g.funcOffs[i] = order.Uint32(tab[8*i+4:])
	}
	g.entries[nfunc] = order.Uint32(tab[8*nfunc:])
	if !sort.SliceIsSorted(g.entries, func(i, j int) bool { return g.entries[i] < g.entries[j] }) {
		return nil, errors.New("malformed Go function table: entries out of order")
	}
	return g, nil
}

// lookup returns the index of the function holding pc.
func (g *goFuncs) lookup(pc uint64) (int, bool) {
	if pc < g.text || pc-g.text >= uint64(g.entries[len(g.entries)-1]) {
		return 0, false
	}
	off := uint32(pc - g.text)
	i := sort.Search(len(g.funcOffs), func(i int) bool { return g.entries[i] > off })
	return i - 1, i > 0
}

// name reads the name of function i: its _func record starts with the
// entry offset and then the name's offset in the name table.
func (g *goFuncs) name(i int) (string, error) {
	var b [4]byte
	at := g.funcs + uint64(g.funcOffs[i]) + 4
	if at+4 > g.end {
		return "", errors.New("Go function record out of bounds")
	}
	if _, err := g.r.ReadAt(b[:], int64(at)); err != nil {
		return "", err
	}
	off := g.names + uint64(g.order.Uint32(b[:]))
	if off >= g.end {
		return "", errors.New("Go function name out of bounds")
	}
	var buf [256]byte
	var name []byte
	for len(name) < 4096 && off < g.end {
		n, err := g.r.ReadAt(buf[:min(uint64(len(buf)), g.end-off)], int64(off))
		if i := bytes.IndexByte(buf[:n], 0); i >= 0 {
			return string(append(name, buf[:i]...)), nil
		}
		name = append(name, buf[:n]...)
		off += uint64(n)
		if err != nil {
			return "", err
		}
	}
	return "", errors.New("unterminated Go function name")
}
