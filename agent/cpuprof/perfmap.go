package cpuprof

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// perfSym is one entry of a perf map file: code at [start, start+size) named name.
type perfSym struct {
	start, size uint64
	name        string
}

// parsePerfMap parses a perf map file (/tmp/perf-<pid>.map): one
// "START SIZE NAME" line per code region, START and SIZE in hex with or
// without 0x, as written by Python 3.12+ (-X perf), the JVM, Node and other
// JITs. Malformed lines are skipped and counted, since a JIT may be writing
// the file while we read it.
func parsePerfMap(text string) (syms []perfSym, bad int) {
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		s, err := parsePerfMapLine(line)
		if err != nil {
			bad++
			continue
		}
		syms = append(syms, s)
	}
	// Later entries win for the same start (code regions get reused).
	sort.SliceStable(syms, func(i, j int) bool { return syms[i].start < syms[j].start })
	return syms, bad
}

func parsePerfMapLine(line string) (perfSym, error) {
	start, rest, ok1 := strings.Cut(line, " ")
	size, name, ok2 := strings.Cut(strings.TrimLeft(rest, " "), " ")
	name = strings.TrimSpace(name)
	if !ok1 || !ok2 || name == "" {
		return perfSym{}, fmt.Errorf("malformed perf map line %q", line)
	}
	s, err1 := strconv.ParseUint(strings.TrimPrefix(start, "0x"), 16, 64)
	n, err2 := strconv.ParseUint(strings.TrimPrefix(size, "0x"), 16, 64)
	if err1 != nil || err2 != nil || n == 0 || s+n < s {
		return perfSym{}, fmt.Errorf("malformed perf map line %q", line)
	}
	return perfSym{start: s, size: n, name: name}, nil
}

// lookupPerfMap returns the name of the region holding addr; when regions
// overlap, the one listed last at the nearest start wins.
func lookupPerfMap(syms []perfSym, addr uint64) (string, bool) {
	i := sort.Search(len(syms), func(i int) bool { return syms[i].start > addr })
	for j := i - 1; j >= 0 && j >= i-8; j-- {
		if addr < syms[j].start+syms[j].size {
			return syms[j].name, true
		}
	}
	return "", false
}
