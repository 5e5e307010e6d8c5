package cpuprof

import (
	"bufio"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
)

// ksym is one kernel text symbol.
type ksym struct {
	addr   uint64
	name   string
	module string
}

// parseKallsyms reads /proc/kallsyms ("ADDR TYPE NAME [MODULE]"), keeping
// text symbols, sorted by address. All-zero addresses mean kptr_restrict
// hides them from this process: an error, since nothing can be resolved.
func parseKallsyms(r io.Reader) ([]ksym, error) {
	var syms []ksym
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	zero := 0
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) < 3 || len(f[1]) != 1 {
			return nil, fmt.Errorf("parsing kallsyms: malformed line %q", line)
		}
		if t := f[1][0] | 0x20; t != 't' && t != 'w' {
			continue
		}
		addr, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil {
			return nil, fmt.Errorf("parsing kallsyms: bad address in %q", line)
		}
		if addr == 0 {
			zero++
			continue
		}
		s := ksym{addr: addr, name: f[2]}
		if len(f) > 3 {
			s.module = strings.Trim(f[3], "[]")
		}
		syms = append(syms, s)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading kallsyms: %w", err)
	}
	if len(syms) == 0 && zero > 0 {
		return nil, fmt.Errorf("kallsyms shows only zero addresses (kernel.kptr_restrict): run the agent as root or with CAP_SYSLOG to name kernel frames")
	}
	sort.Slice(syms, func(i, j int) bool { return syms[i].addr < syms[j].addr })
	return syms, nil
}

// lookupKsym returns the symbol at or before addr.
func lookupKsym(syms []ksym, addr uint64) (ksym, bool) {
	i := sort.Search(len(syms), func(i int) bool { return syms[i].addr > addr })
	if i == 0 {
		return ksym{}, false
	}
	return syms[i-1], true
}
