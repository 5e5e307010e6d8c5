package cpuprof

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ianlancetaylor/demangle"
)

// object is one loaded ELF file (executable or shared library) ready to name
// addresses. Symbol names stay in the file and are read on demand, so a
// library with half a million C++ symbols costs 16 bytes per function here.
type object struct {
	path    string
	buildID string
	f       readerAtCloser
	loads   []elf.ProgHeader
	text    []addrRange // executable sections
	syms    []elfSym
	strtabs [2]strtab // .symtab's and .dynsym's string tables
	names   map[elfSym]string
	gofuncs *goFuncs       // stripped Go binaries
	isGo    bool           // a Go binary: its frames are named without DWARF
	gonames map[int]string // names read from gofuncs, by function index
	lastUse uint64
	// lines names source lines from DWARF, of the file itself or of its
	// debuginfo file; loaded at the first lookup (linesTried).
	lines      *lineTable
	debugFile  readerAtCloser
	linesTried bool
	lineCache  map[uint64]srcLine
	fileNames  map[string]string // interned
}

// maxLineCache bounds the source positions remembered per object.
const maxLineCache = 4096

// sourceLine returns the file and line of ELF virtual address pc, from
// the object's DWARF, or else from a debuginfo file found by build id
// under one of debugDirs (/usr/lib/debug/.build-id/xx/yyyy.debug).
func (o *object) sourceLine(pc uint64, debugDirs []string) (srcLine, bool) {
	if !o.linesTried {
		o.linesTried = true
		o.loadLines(debugDirs)
	}
	if o.lines == nil {
		return srcLine{}, false
	}
	if l, ok := o.lineCache[pc]; ok {
		return l, l.line != 0
	}
	l, _ := o.lines.lookup(pc)
	if len(o.lineCache) >= maxLineCache {
		clear(o.lineCache)
		clear(o.fileNames)
	}
	if name, ok := o.fileNames[l.file]; ok {
		l.file = name
	} else {
		o.fileNames[l.file] = l.file
	}
	o.lineCache[pc] = l
	return l, l.line != 0
}

func (o *object) loadLines(debugDirs []string) {
	if o.isGo {
		return // its DWARF is large and compressed; names suffice
	}
	if ef, err := elf.NewFile(o.f); err == nil {
		if lt, err := newLineTable(ef); err == nil && lt != nil {
			o.lines, o.lineCache, o.fileNames = lt, map[uint64]srcLine{}, map[string]string{}
			return
		}
	}
	if len(o.buildID) < 4 {
		return
	}
	for _, dir := range debugDirs {
		f, err := os.Open(filepath.Join(dir, ".build-id", o.buildID[:2], o.buildID[2:]+".debug"))
		if err != nil {
			continue
		}
		ef, err := elf.NewFile(f)
		if err == nil && buildID(ef) == o.buildID {
			if lt, err := newLineTable(ef); err == nil && lt != nil {
				o.lines, o.lineCache, o.fileNames, o.debugFile = lt, map[uint64]srcLine{}, map[string]string{}, f
				return
			}
		}
		f.Close()
	}
}

type elfSym struct {
	addr  uint64
	size  uint32
	name  uint32 // offset in the string table
	table uint8  // index into object.strtabs
}

type strtab struct{ off, size uint64 }

type addrRange struct{ start, end uint64 }

type readerAtCloser interface {
	io.ReaderAt
	io.Closer
}

// openObject reads the program headers, build id, function symbols and Go
// line table of an ELF file. The object keeps f open for lazy name reads.
func openObject(f readerAtCloser, path string) (*object, error) {
	ef, err := elf.NewFile(f)
	if err != nil {
		return nil, fmt.Errorf("reading ELF file %s: %w", path, err)
	}
	o := &object{path: path, f: f, names: map[elfSym]string{}}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_LOAD {
			o.loads = append(o.loads, p.ProgHeader)
		}
	}
	for _, sec := range ef.Sections {
		if sec.Flags&elf.SHF_EXECINSTR != 0 && sec.Flags&elf.SHF_ALLOC != 0 {
			o.text = append(o.text, addrRange{sec.Addr, sec.Addr + sec.Size})
		}
	}
	o.buildID = buildID(ef)
	if ef.Class == elf.ELFCLASS64 && ef.ByteOrder == binary.LittleEndian {
		for i, name := range []string{".symtab", ".dynsym"} {
			if err := o.readSymbols(ef, name, uint8(i)); err != nil {
				return nil, fmt.Errorf("reading %s of %s: %w", name, path, err)
			}
		}
	}
	sort.Slice(o.syms, func(i, j int) bool {
		if o.syms[i].addr != o.syms[j].addr {
			return o.syms[i].addr < o.syms[j].addr
		}
		return o.syms[i].table < o.syms[j].table
	})
	o.syms = dedupSyms(o.syms)
	// A stripped Go binary keeps its pclntab.
	o.isGo = ef.Section(".gopclntab") != nil
	if sec := ef.Section(".gopclntab"); sec != nil && !o.hasSymtab() {
		var text uint64
		if t := ef.Section(".text"); t != nil {
			text = t.Addr
		}
		if g, err := openGoFuncs(f, sec, ef.ByteOrder, text); err == nil {
			o.gofuncs, o.gonames = g, map[int]string{}
		}
	}
	return o, nil
}

func (o *object) hasSymtab() bool {
	for _, s := range o.syms {
		if s.table == 0 {
			return true
		}
	}
	return false
}

func dedupSyms(syms []elfSym) []elfSym {
	out := syms[:0]
	for i, s := range syms {
		if i > 0 && s.addr == syms[i-1].addr {
			continue
		}
		out = append(out, s)
	}
	return out
}

// readSymbols streams a 64-bit little-endian symbol table, keeping defined
// functions.
func (o *object) readSymbols(ef *elf.File, name string, table uint8) error {
	sec := ef.Section(name)
	if sec == nil || sec.Type == elf.SHT_NOBITS || sec.Link >= uint32(len(ef.Sections)) {
		return nil
	}
	str := ef.Sections[sec.Link]
	o.strtabs[table] = strtab{off: str.Offset, size: str.Size}
	r := bufio.NewReaderSize(sec.Open(), 64<<10)
	var ent [elf.Sym64Size]byte
	for {
		if _, err := io.ReadFull(r, ent[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil
			}
			return err
		}
		info := ent[4]
		shndx := binary.LittleEndian.Uint16(ent[6:])
		value := binary.LittleEndian.Uint64(ent[8:])
		size := binary.LittleEndian.Uint64(ent[16:])
		typ := elf.SymType(info & 0xf)
		if (typ != elf.STT_FUNC && typ != elf.STT_GNU_IFUNC) || shndx == uint16(elf.SHN_UNDEF) || value == 0 {
			continue
		}
		o.syms = append(o.syms, elfSym{
			addr:  value,
			size:  uint32(min(size, 1<<32-1)),
			name:  binary.LittleEndian.Uint32(ent[0:]),
			table: table,
		})
	}
}

// vaddr converts a file offset to the ELF virtual address it is loaded at.
func (o *object) vaddr(fileOff uint64) (uint64, bool) {
	for _, p := range o.loads {
		if fileOff >= p.Off && fileOff < p.Off+p.Filesz {
			return fileOff - p.Off + p.Vaddr, true
		}
	}
	return 0, false
}

// symbolize names the ELF virtual address pc.
func (o *object) symbolize(pc uint64) (string, bool) {
	if o.gofuncs != nil {
		if i, ok := o.gofuncs.lookup(pc); ok {
			name, ok := o.gonames[i]
			if !ok {
				name, _ = o.gofuncs.name(i)
				o.gonames[i] = name
			}
			return name, name != ""
		}
	}
	i := sort.Search(len(o.syms), func(i int) bool { return o.syms[i].addr > pc })
	if i == 0 {
		return "", false
	}
	s := o.syms[i-1]
	if s.size > 0 && pc >= s.addr+uint64(s.size) {
		return "", false
	}
	if s.size == 0 && !o.sameSection(s.addr, pc) {
		// A size-less symbol such as _init or _fini does not cover
		// the sections after it (the PLT, or nothing at all).
		return "", false
	}
	name, ok := o.names[s]
	if !ok {
		name = demangleName(o.readName(s))
		o.names[s] = name
	}
	return name, name != ""
}

func (o *object) sameSection(a, b uint64) bool {
	for _, r := range o.text {
		if a >= r.start && a < r.end {
			return b >= r.start && b < r.end
		}
	}
	return false
}

func (o *object) readName(s elfSym) string {
	st := o.strtabs[s.table]
	if uint64(s.name) >= st.size {
		return ""
	}
	var buf [256]byte
	var name []byte
	for off := st.off + uint64(s.name); len(name) < 4096; off += uint64(len(buf)) {
		n, err := o.f.ReadAt(buf[:], int64(off))
		if i := bytes.IndexByte(buf[:n], 0); i >= 0 {
			return string(append(name, buf[:i]...))
		}
		name = append(name, buf[:n]...)
		if err != nil {
			break
		}
	}
	return string(name)
}

// demangleName turns C++ and Rust symbols into readable names without
// parameter lists, as pprof shows them; other names pass through.
func demangleName(s string) string {
	if strings.HasPrefix(s, "_Z") || strings.HasPrefix(s, "_R") {
		return demangle.Filter(s, demangle.NoParams, demangle.NoClones)
	}
	return s
}

func (o *object) close() error {
	if o.debugFile != nil {
		o.debugFile.Close()
	}
	return o.f.Close()
}

// buildID returns the GNU build id in hex, or else the Go build id.
func buildID(ef *elf.File) string {
	var goID string
	for _, sec := range ef.Sections {
		if sec.Type != elf.SHT_NOTE {
			continue
		}
		data, err := sec.Data()
		if err != nil {
			continue
		}
		for len(data) >= 12 {
			namesz := ef.ByteOrder.Uint32(data[0:])
			descsz := ef.ByteOrder.Uint32(data[4:])
			typ := ef.ByteOrder.Uint32(data[8:])
			nameEnd := 12 + align4(uint64(namesz))
			descEnd := nameEnd + align4(uint64(descsz))
			if descEnd > uint64(len(data)) {
				break
			}
			name := strings.TrimRight(string(data[12:12+namesz]), "\x00")
			desc := data[nameEnd : nameEnd+uint64(descsz)]
			switch {
			case name == "GNU" && typ == 3: // NT_GNU_BUILD_ID
				return hex.EncodeToString(desc)
			case name == "Go" && typ == 4: // Go's build id note
				goID = string(desc)
			}
			data = data[descEnd:]
		}
	}
	return goID
}

func align4(n uint64) uint64 { return (n + 3) &^ 3 }
