package cpuprof

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
)

// kernelSymbols holds the kernel's text symbols compactly: names live in
// one arena, so the ~150k symbols of a distribution kernel cost a few MiB.
type kernelSymbols struct {
	syms    []ksymEntry
	arena   []byte
	modules []string
}

type ksymEntry struct {
	addr    uint64
	nameOff uint32
	nameLen uint16
	module  uint16 // index into modules; 0 is the kernel itself
}

// ksym is one kernel text symbol.
type ksym struct {
	addr   uint64
	name   string
	module string
}

// kallsymsSize is how many text symbols, and bytes of their names, a
// kallsyms file holds: with it the tables are allocated once, at their
// size (a few MiB), instead of growing through several times that.
type kallsymsSize struct{ syms, names int }

// sizeKallsyms counts the text symbols of a kallsyms file.
func sizeKallsyms(r io.Reader) kallsymsSize {
	var n kallsymsSize
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		_, rest, _ := bytes.Cut(line, []byte{' '})
		typ, rest, _ := bytes.Cut(rest, []byte{' '})
		name, _, _ := bytes.Cut(rest, []byte{'\t'})
		if len(typ) == 1 && (typ[0]|0x20 == 't' || typ[0]|0x20 == 'w') {
			n.syms++
			n.names += len(name)
		}
	}
	return n
}

// parseKallsyms reads /proc/kallsyms ("ADDR TYPE NAME [MODULE]"), keeping
// text symbols, sorted by address; size, when known, sizes the tables.
// All-zero addresses mean kptr_restrict hides them from this process: an
// error, since nothing can be resolved.
func parseKallsyms(r io.Reader, size kallsymsSize) (*kernelSymbols, error) {
	ks := &kernelSymbols{modules: []string{""}, syms: make([]ksymEntry, 0, size.syms), arena: make([]byte, 0, size.names)}
	modIdx := map[string]uint16{"": 0}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	zero := 0
	for sc.Scan() {
		line := sc.Bytes()
		addrField, rest, ok1 := bytes.Cut(line, []byte{' '})
		typ, rest, ok2 := bytes.Cut(rest, []byte{' '})
		name, module, _ := bytes.Cut(rest, []byte{'\t'})
		if !ok1 || !ok2 || len(typ) != 1 || len(name) == 0 || len(name) > 1<<16-1 {
			return nil, fmt.Errorf("parsing kallsyms: malformed line %q", line)
		}
		if t := typ[0] | 0x20; t != 't' && t != 'w' {
			continue
		}
		addr, err := strconv.ParseUint(string(addrField), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("parsing kallsyms: bad address in %q", line)
		}
		if addr == 0 {
			zero++
			continue
		}
		mod := string(bytes.Trim(module, "[] "))
		mi, ok := modIdx[mod]
		if !ok {
			if len(ks.modules) >= 1<<16 {
				return nil, fmt.Errorf("parsing kallsyms: too many modules")
			}
			mi = uint16(len(ks.modules))
			modIdx[mod] = mi
			ks.modules = append(ks.modules, mod)
		}
		if len(ks.arena)+len(name) > 1<<32-1 {
			return nil, fmt.Errorf("parsing kallsyms: names too large")
		}
		ks.syms = append(ks.syms, ksymEntry{addr: addr, nameOff: uint32(len(ks.arena)), nameLen: uint16(len(name)), module: mi})
		ks.arena = append(ks.arena, name...)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading kallsyms: %w", err)
	}
	if len(ks.syms) == 0 && zero > 0 {
		return nil, fmt.Errorf("kallsyms shows only zero addresses (kernel.kptr_restrict): run the agent as root or with CAP_SYSLOG to name kernel frames")
	}
	slices.SortFunc(ks.syms, func(a, b ksymEntry) int {
		switch {
		case a.addr < b.addr:
			return -1
		case a.addr > b.addr:
			return 1
		}
		return 0
	})
	return ks, nil
}

// lookup returns the symbol at or before addr.
func (ks *kernelSymbols) lookup(addr uint64) (ksym, bool) {
	if ks == nil {
		return ksym{}, false
	}
	i := sort.Search(len(ks.syms), func(i int) bool { return ks.syms[i].addr > addr })
	if i == 0 {
		return ksym{}, false
	}
	e := ks.syms[i-1]
	return ksym{
		addr:   e.addr,
		name:   string(ks.arena[e.nameOff : e.nameOff+uint32(e.nameLen)]),
		module: ks.modules[e.module],
	}, true
}
