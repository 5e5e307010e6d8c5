package cpuprof

import (
	"fmt"
	"strconv"
	"strings"
)

// mapping is one line of /proc/<pid>/maps.
type mapping struct {
	start, end, offset uint64
	exec               bool
	path               string // "" for anonymous memory
}

// parseMaps parses the text of /proc/<pid>/maps, keeping executable mappings
// only (those are the ones stack addresses fall in), in address order.
func parseMaps(text string) ([]mapping, error) {
	var out []mapping
	for n, line := range strings.Split(text, "\n") {
		if line == "" {
			continue
		}
		m, err := parseMapsLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		if m.exec {
			out = append(out, m)
		}
	}
	return out, nil
}

// parseMapsLine parses "start-end perms offset dev inode [path]".
func parseMapsLine(line string) (mapping, error) {
	var m mapping
	fields := make([]string, 0, 5)
	rest := line
	for len(fields) < 5 {
		rest = strings.TrimLeft(rest, " ")
		f, r, _ := strings.Cut(rest, " ")
		if f == "" {
			return m, fmt.Errorf("malformed maps line %q: want 5 fields and a path", line)
		}
		fields = append(fields, f)
		rest = r
	}
	lo, hi, ok := strings.Cut(fields[0], "-")
	var err1, err2, err3, err4 error
	m.start, err1 = strconv.ParseUint(lo, 16, 64)
	m.end, err2 = strconv.ParseUint(hi, 16, 64)
	m.offset, err3 = strconv.ParseUint(fields[2], 16, 64)
	_, err4 = strconv.ParseUint(fields[4], 10, 64) // inode: validated, unused
	if !ok || err1 != nil || err2 != nil || err3 != nil || err4 != nil || m.end < m.start || len(fields[1]) < 3 {
		return m, fmt.Errorf("malformed maps line %q", line)
	}
	m.exec = fields[1][2] == 'x'
	m.path = strings.TrimLeft(rest, " ")
	return m, nil
}

// findMapping returns the index of the mapping holding addr in maps sorted
// by address.
func findMapping(maps []mapping, addr uint64) (int, bool) {
	lo, hi := 0, len(maps)
	for lo < hi {
		mid := (lo + hi) / 2
		switch {
		case addr < maps[mid].start:
			hi = mid
		case addr >= maps[mid].end:
			lo = mid + 1
		default:
			return mid, true
		}
	}
	return 0, false
}

// anonymous reports whether the mapping has no backing file: JIT code and
// interpreter trampolines live there, named by perf map files.
func (m *mapping) anonymous() bool {
	return m.path == "" || strings.HasPrefix(m.path, "[anon") || strings.HasPrefix(m.path, "//anon")
}

// pseudo reports whether the mapping is a kernel-provided region such as
// [vdso] or [vsyscall].
func (m *mapping) pseudo() bool {
	return strings.HasPrefix(m.path, "[") && !m.anonymous()
}
