package cpuprof

import (
	"fmt"
	"sort"
	"strings"
)

// rootFunctions are where a complete user stack ends: the entry points of
// the main thread and of new threads in glibc, musl, the dynamic loader and
// the Go runtime. frame-pointer unwinding through code built without frame
// pointers stops early (or wanders into garbage) and reaches none of them.
var rootFunctions = map[string]bool{
	"_start": true, "__libc_start_main": true, "__libc_start_call_main": true, "_dl_start_user": true,
	"start_thread": true, "clone": true, "clone3": true, "__clone": true, "__clone3": true, "thread_start": true,
	"runtime.goexit": true, "runtime.goexit.abi0": true, "runtime.mstart": true, "runtime.mstart.abi0": true,
	"runtime.rt0_go": true, "runtime.rt0_go.abi0": true,
}

// reachesRoot reports whether a user stack contains a thread entry point,
// or ends in the C library: distributions strip glibc's local symbols, so
// the frame that called main or a thread function there often has no name.
func reachesRoot(user []frame) bool {
	// The unwinder reports a Python thread's frames down to its first
	// (module or thread) function, even where native unwinding stopped.
	if len(user) > 0 && (cRuntime(user[len(user)-1].Object) || user[len(user)-1].Object == pythonObject) {
		return true
	}
	for i := len(user) - 1; i >= 0; i-- {
		if rootFunctions[user[i].Function] {
			return true
		}
	}
	return false
}

// cRuntime reports whether path is the C library or the dynamic loader
// (glibc or musl), where every thread's stack starts.
func cRuntime(path string) bool {
	base := path[strings.LastIndexByte(path, '/')+1:]
	for _, prefix := range []string{"libc.so", "libc-", "ld-linux", "ld-musl", "libc.musl"} {
		if strings.HasPrefix(base, prefix) {
			return true
		}
	}
	return false
}

// Thresholds above which a process's stacks are reported as truncated.
const (
	truncatedMinSamples = 10
	truncatedShare      = 0.5
)

// truncationNotes returns one profile comment per process whose user stacks
// mostly stop before a thread entry point, and logs them in one line.
func (w *Window) truncationNotes() []string {
	pids := make([]uint32, 0, len(w.procs))
	for pid := range w.procs {
		pids = append(pids, pid)
	}
	sort.Slice(pids, func(i, j int) bool { return pids[i] < pids[j] })
	var notes, procs []string
	for _, pid := range pids {
		ps := w.procs[pid]
		if ps.samples < truncatedMinSamples || float64(ps.truncated) < truncatedShare*float64(ps.samples) {
			continue
		}
		share := 100 * float64(ps.truncated) / float64(ps.samples)
		where := mostCommon(ps.stopsIn)
		notes = append(notes, fmt.Sprintf("truncated stacks: pid %d (%s): %.0f%% of %d user stacks stop in %s before reaching a thread entry point, so callers are missing; %s",
			pid, ps.comm, share, ps.samples, where, w.p.truncationAdvice()))
		procs = append(procs, fmt.Sprintf("%d (%s, %.0f%%, in %s)", pid, ps.comm, share, where))
	}
	if len(procs) > 0 && !w.quiet {
		const show = 10
		more := ""
		if len(procs) > show {
			more = fmt.Sprintf(" and %d more", len(procs)-show)
			procs = procs[:show]
		}
		w.p.logger.Warn("cpuprof: truncated stacks (built without frame pointers?); see the profile's comments",
			"processes", strings.Join(procs, ", ")+more)
	}
	return notes
}

// truncationAdvice says what to do about truncated stacks.
func (p *Profiler) truncationAdvice() string {
	if p.tracker == nil {
		return "the agent follows frame pointers only (cpu.frame_pointers_only) and the code was likely built without them: " +
			"turn that off so the agent unwinds with the objects' unwind tables, or rebuild with -fno-omit-frame-pointer " +
			"-mno-omit-leaf-frame-pointer (C/C++, Rust: -C force-frame-pointers=yes)"
	}
	return "the code there has no unwind table the agent could use (no .eh_frame, a JIT without a perf map, or the table did not fit: " +
		"see loupe_cpuprof_unwind_tables_full_total and raise cpu.unwind_rows) and was built without frame pointers"
}

func mostCommon(m map[string]uint64) string {
	best, n := "", uint64(0)
	for k, v := range m {
		if v > n || (v == n && strings.Compare(k, best) < 0) {
			best, n = k, v
		}
	}
	return best
}
