package hang

import (
	"bufio"
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/loupe-dev/loupe/traces"
)

// maxThreads bounds the threads described per process.
const maxThreads = 64

// threads describes what each thread of a process is doing now, from
// /proc: its scheduler state, what it waits in, its system call and, for a
// thread asleep in one, where its user code is (the instruction pointer
// the kernel saved, symbolized from the mapped file), and its kernel stack
// when the agent may read it. A sleeping thread is invisible to a CPU
// profile; this is where it sleeps.
func threads(procRoot string, pid int) []traces.NCCLHangThread {
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	ents, err := os.ReadDir(filepath.Join(dir, "task"))
	if err != nil {
		return nil
	}
	var maps []mapped
	var out []traces.NCCLHangThread
	for _, e := range ents {
		if len(out) == maxThreads {
			break
		}
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		tdir := filepath.Join(dir, "task", e.Name())
		th := traces.NCCLHangThread{TID: tid, Name: readTrim(filepath.Join(tdir, "comm")), WChan: readTrim(filepath.Join(tdir, "wchan"))}
		if th.WChan == "0" {
			th.WChan = ""
		}
		if stat := readTrim(filepath.Join(tdir, "stat")); stat != "" {
			// pid (comm) state ...: the comm may hold spaces and parentheses.
			if i := strings.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
				th.State = stat[i+2 : i+3]
			}
		}
		if f := strings.Fields(readTrim(filepath.Join(tdir, "syscall"))); len(f) == 9 {
			// nr args... sp pc: the thread sleeps in system call nr.
			th.Syscall = "syscall " + f[0]
			if pc, err := strconv.ParseUint(strings.TrimPrefix(f[8], "0x"), 16, 64); err == nil {
				if maps == nil {
					maps = readMaps(filepath.Join(dir, "maps"))
				}
				th.PC = symbolize(dir, maps, pc)
			}
		} else if len(f) > 0 {
			th.Syscall = f[0] // "running"
		}
		for _, line := range strings.Split(readTrim(filepath.Join(tdir, "stack")), "\n") {
			// [<0>] do_nanosleep+0x67/0x190
			if _, fn, ok := strings.Cut(line, "] "); ok {
				th.Kernel = append(th.Kernel, fn)
			}
		}
		out = append(out, th)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TID < out[j].TID })
	return out
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// mapped is one file-backed executable mapping.
type mapped struct {
	start, end, off uint64
	path            string
}

func readMaps(path string) []mapped {
	f, err := os.Open(path)
	if err != nil {
		return []mapped{}
	}
	defer f.Close()
	out := []mapped{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || !strings.HasPrefix(fs[5], "/") || !strings.Contains(fs[1], "x") {
			continue
		}
		lo, hi, _ := strings.Cut(fs[0], "-")
		s, err1 := strconv.ParseUint(lo, 16, 64)
		e, err2 := strconv.ParseUint(hi, 16, 64)
		o, err3 := strconv.ParseUint(fs[2], 16, 64)
		if err1 == nil && err2 == nil && err3 == nil {
			out = append(out, mapped{s, e, o, strings.Join(fs[5:], " ")})
		}
	}
	return out
}

// symbolize names pc as function+offset (file) from the ELF symbols of the
// file mapped there, or file+offset when it has none.
func symbolize(procDir string, maps []mapped, pc uint64) string {
	for _, m := range maps {
		if pc < m.start || pc >= m.end {
			continue
		}
		off := pc - m.start + m.off
		base := filepath.Base(m.path)
		f, err := elf.Open(filepath.Join(procDir, "root", m.path))
		if err != nil {
			return fmt.Sprintf("%s+%#x", base, off)
		}
		defer f.Close()
		// The file offset's virtual address, through the segment holding it.
		addr := off
		for _, p := range f.Progs {
			if p.Type == elf.PT_LOAD && off >= p.Off && off < p.Off+p.Filesz {
				addr = off - p.Off + p.Vaddr
				break
			}
		}
		syms, _ := f.Symbols()
		dyn, _ := f.DynamicSymbols()
		best := elf.Symbol{}
		for _, s := range append(syms, dyn...) {
			if elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Value <= addr && addr < s.Value+max(s.Size, 1) && s.Value >= best.Value {
				best = s
			}
		}
		if best.Name == "" {
			return fmt.Sprintf("%s+%#x", base, off)
		}
		return fmt.Sprintf("%s+%#x (%s)", best.Name, addr-best.Value, base)
	}
	return fmt.Sprintf("%#x", pc)
}
