package cpuprof

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/google/pprof/profile"
)

// requireRoot skips (fails in CI) when eBPF cannot be loaded.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("the cpuprof tests load eBPF programs: run go test as root (CAP_BPF, CAP_PERFMON)")
	}
	t.Skip("the cpuprof tests load eBPF programs: run go test as root")
}

func requireTool(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is needed to build the test programs: apt-get install %s", name, name)
	}
	t.Skipf("%s is needed to build the test programs", name)
	return ""
}

var (
	buildMu  sync.Mutex
	buildDir string
	built    = map[string]string{}
)

// testProgram builds a test program once per test run: goburn (plain or
// stripped) or cburn (with flags).
func testProgram(t testing.TB, name string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[name]; ok {
		return p
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "cpuprof-test-")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = d
	}
	out := filepath.Join(buildDir, name)
	var cmd *exec.Cmd
	switch name {
	case "goburn":
		cmd = exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", out, "testdata/goburn/main.go")
	case "goburn-stripped":
		cmd = exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-ldflags=-s -w", "-o", out, "testdata/goburn/main.go")
	case "cburn":
		cmd = exec.Command(requireTool(t, "gcc"), "-O0", "-fno-omit-frame-pointer", "-o", out, "testdata/cburn.c")
	case "cburn-stripped":
		// -rdynamic puts burn_c into .dynsym, which strip keeps.
		cmd = exec.Command(requireTool(t, "gcc"), "-O0", "-fno-omit-frame-pointer", "-rdynamic", "-s", "-o", out, "testdata/cburn.c")
	case "cppburn":
		cmd = exec.Command(requireTool(t, "g++"), "-O0", "-fno-omit-frame-pointer", "-o", out, "testdata/cppburn.cc")
	case "cburn-nofp":
		cmd = exec.Command(requireTool(t, "gcc"), "-O2", "-fomit-frame-pointer", "-o", out, "testdata/cburn.c")
	case "cdeep-nofp":
		cmd = exec.Command(requireTool(t, "gcc"), "-O2", "-fomit-frame-pointer", "-o", out, "testdata/cdeep.c")
	case "cdeep-g":
		cmd = exec.Command(requireTool(t, "gcc"), "-O2", "-fomit-frame-pointer", "-g", "-o", out, "testdata/cdeep.c")
	case "cdeep-dwarf4":
		cmd = exec.Command(requireTool(t, "gcc"), "-O2", "-fomit-frame-pointer", "-gdwarf-4", "-o", out, "testdata/cdeep.c")
	case "cppdeep-nofp":
		cmd = exec.Command(requireTool(t, "g++"), "-O2", "-fomit-frame-pointer", "-g", "-o", out, "testdata/cppdeep.cc")
	default:
		t.Fatalf("unknown test program %q", name)
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", name, err, b)
	}
	built[name] = out
	return out
}

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		unprivilegedChild()
		return
	}
	if spec := os.Getenv(benchAgentEnv); spec != "" {
		benchAgentChild(spec)
		return
	}
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// start runs a test program until the test ends.
func start(t testing.TB, path string, args ...string) (*exec.Cmd, string) {
	t.Helper()
	return run(t, false, path, args...)
}

// startJIT runs cburn jit (possibly through a wrapper) until the test ends
// and returns the "ADDRESS SIZE" line it prints.
func startJIT(t testing.TB, path string, args ...string) (*exec.Cmd, string) {
	t.Helper()
	return run(t, true, path, args...)
}

func run(t testing.TB, firstLine bool, path string, args ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(path, args...)
	return cmd, runCmd(t, cmd, firstLine)
}

// runCmdPipe starts cmd until the test ends and returns its output.
func runCmdPipe(t testing.TB, cmd *exec.Cmd) *bufio.Reader {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return bufio.NewReader(stdout)
}

// runCmd starts cmd until the test ends and returns its first line of
// output when firstLine is set.
func runCmd(t testing.TB, cmd *exec.Cmd, firstLine bool) string {
	t.Helper()
	out := runCmdPipe(t, cmd)
	if !firstLine {
		go io.Copy(io.Discard, out)
		return ""
	}
	line, err := out.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the first line of %s: %v", cmd.Path, err)
	}
	return strings.TrimSpace(line)
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// cpuWanted is the CPU time each watched process gets during a capture:
// about 30 samples at 99 Hz, however busy the machine is.
const cpuWanted = 300 * time.Millisecond

// runProfiler starts a profiler's Run and waits until it has attached;
// stop ends Run (which hands out the last continuous profile, if any) and
// checks it returned no error.
func runProfiler(t testing.TB, cfg Config, set *metrics.Set) (p *Profiler, stop func()) {
	t.Helper()
	p, err := New(cfg, testLogger(t), set)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	waitAttached(t, p, done)
	stopped := false
	stop = func() {
		t.Helper()
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(stop)
	return p, stop
}

// capture profiles pids (all when empty) until each of the watched
// processes (pids, by default) has used cpuWanted of CPU time.
func capture(t testing.TB, cfg Config, pids []int, watch ...int) *profile.Profile {
	t.Helper()
	if len(watch) == 0 {
		watch = pids
	}
	p, stop := runProfiler(t, cfg, metrics.NewSet())
	waitDescribed(t, p, pids...)
	w := p.StartWindow(pids)
	waitCPU(t, watch...)
	prof, err := w.Stop()
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if err := prof.CheckValid(); err != nil {
		t.Fatalf("invalid profile: %v", err)
	}
	return prof
}

// waitAttached waits until Run has attached the sampler.
func waitAttached(t testing.TB, p *Profiler, done chan error) {
	t.Helper()
	select {
	case <-p.attached:
	case err := <-done:
		t.Fatalf("Run returned before attaching: %v", err)
	}
}

// waitDescribed waits until the unwinder has described the processes, so
// that a capture measures unwinding rather than its first milliseconds
// (when stacks follow frame pointers).
func waitDescribed(t testing.TB, p *Profiler, pids ...int) {
	t.Helper()
	if p.tracker == nil {
		return
	}
	p.tracker.request(pids)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		all := true
		for _, pid := range pids {
			all = all && p.tracker.isDescribed(uint32(pid))
		}
		if all {
			return
		}
	}
	t.Fatalf("the unwinder did not describe processes %v within 30 s", pids)
}

// waitCPU waits until each process has used cpuWanted of CPU time, at most
// a minute.
func waitCPU(t testing.TB, pids ...int) {
	t.Helper()
	cpu0 := map[int]time.Duration{}
	for _, pid := range pids {
		cpu0[pid] = cpuTime(t, pid)
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		enough := true
		for _, pid := range pids {
			enough = enough && cpuTime(t, pid)-cpu0[pid] >= cpuWanted
		}
		if enough {
			return
		}
	}
}

// pidSamples sums the sample counts of pid, and of those the ones for which
// match accepts the sample's frame names (leaf first).
func pidSamples(prof *profile.Profile, pid int, match func(names []string) bool) (total, matched int64) {
	for _, s := range prof.Sample {
		if s.Label["pid"][0] != strconv.Itoa(pid) {
			continue
		}
		total += s.Value[0]
		if match(frameNames(s)) {
			matched += s.Value[0]
		}
	}
	return total, matched
}

func frameNames(s *profile.Sample) []string {
	var names []string
	for _, loc := range s.Location {
		name := ""
		if len(loc.Line) > 0 {
			name = loc.Line[0].Function.Name
		}
		names = append(names, name)
	}
	return names
}

// samplesOf returns the samples of pid.
func samplesOf(prof *profile.Profile, pid int) []*profile.Sample {
	var out []*profile.Sample
	for _, s := range prof.Sample {
		if s.Label["pid"][0] == strconv.Itoa(pid) {
			out = append(out, s)
		}
	}
	return out
}

// requireShare fails unless prof holds at least minSamples samples of pid
// and match accepts at least share of them; what names what match looks for.
func requireShare(t testing.TB, prof *profile.Profile, pid int, share float64, what string, match func(names []string) bool) {
	t.Helper()
	total, matched := pidSamples(prof, pid, match)
	if total < minSamples {
		t.Fatalf("%d samples of pid %d, want >= %d", total, pid, minSamples)
	}
	if got := float64(matched) / float64(total); got < share {
		t.Errorf("%s in %.0f%% of %d samples, want >= %.0f%%\n%s", what, 100*got, total, 100*share, top(prof))
	}
}

// calledFrom returns a matcher: fn is among the top frames (after kernel
// frames of an interrupt), called from caller.
func calledFrom(fn, caller string) func([]string) bool {
	return func(names []string) bool {
		for i := 0; i < min(5, len(names)-1); i++ {
			if names[i] == fn {
				return names[i+1] == caller
			}
		}
		return false
	}
}

// minSamples is the fewest samples a capture at 99 Hz must hold of a
// process that used cpuWanted of CPU time (about 30 expected).
const minSamples = 15

func TestBurnFunctionOnTop(t *testing.T) {
	requireRoot(t)
	// GCC 12 drops the frame pointer of leaf functions whatever the flags
	// at -O1 and above, which would hide their callers: the C test
	// programs are built with -O0.
	for _, tc := range []struct {
		program, fn, caller string
	}{
		// Go keeps no frame pointer in frameless leaf functions either,
		// so burnGo's caller is skipped: the stack goes on at runtime.main.
		{"goburn", "main.burnGo", "runtime.main"},
		{"goburn-stripped", "main.burnGo", "runtime.main"}, // named from .gopclntab
		{"cburn", "burn_c", "main"},
		{"cburn-stripped", "burn_c", "main"},       // named from .dynsym
		{"cppburn", "loupe::Burner::burn", "main"}, // demangled
	} {
		t.Run(tc.program, func(t *testing.T) {
			cmd, _ := start(t, testProgram(t, tc.program), "burn")
			prof := capture(t, Config{Hz: 99}, []int{cmd.Process.Pid})
			requireShare(t, prof, cmd.Process.Pid, 0.9, fmt.Sprintf("%s (called from %s) on top", tc.fn, tc.caller), calledFrom(tc.fn, tc.caller))
			for _, c := range prof.Comments {
				if strings.HasPrefix(c, "truncated stacks") {
					t.Errorf("frame-pointer program reported as truncated: %s", c)
				}
			}
		})
	}
}

func TestPIDFilter(t *testing.T) {
	requireRoot(t)
	a, _ := start(t, testProgram(t, "cburn"), "burn")
	b, _ := start(t, testProgram(t, "goburn"), "burn")
	labeler := func(pid int) map[string]string {
		return map[string]string{"container": fmt.Sprintf("c-%d", pid), "job": "train", "rank": "3", "empty": ""}
	}
	prof := capture(t, Config{Hz: 99, Labeler: labeler}, []int{a.Process.Pid})
	pids := map[string]int64{}
	for _, s := range prof.Sample {
		pids[s.Label["pid"][0]] += s.Value[0]
		want := map[string][]string{
			"pid": {strconv.Itoa(a.Process.Pid)}, "comm": {"cburn"},
			"container": {fmt.Sprintf("c-%d", a.Process.Pid)}, "job": {"train"}, "rank": {"3"},
		}
		if !reflect.DeepEqual(s.Label, want) {
			t.Errorf("sample labels %v, want %v", s.Label, want)
			break
		}
	}
	if len(pids) != 1 || pids[strconv.Itoa(a.Process.Pid)] == 0 {
		t.Fatalf("profile of pid %d holds samples of pids %v", a.Process.Pid, pids)
	}

	// Without a filter, both burners (and others) show up.
	all := capture(t, Config{Hz: 99}, nil, a.Process.Pid, b.Process.Pid)
	for _, pid := range []int{a.Process.Pid, b.Process.Pid} {
		if n, _ := pidSamples(all, pid, func([]string) bool { return false }); n == 0 {
			t.Errorf("whole-machine profile has no samples of pid %d", pid)
		}
	}
}

func TestKernelFrames(t *testing.T) {
	requireRoot(t)
	cmd, _ := start(t, testProgram(t, "cburn"), "sys")
	prof := capture(t, Config{Hz: 99}, []int{cmd.Process.Pid})
	inRead := func(names []string) bool {
		// libc's read keeps no frame pointer, so read_dev_zero is skipped.
		return slices.Contains(names, "vfs_read") && slices.Contains(names, "read") && slices.Contains(names, "main")
	}
	// The loop spends nearly all its time clearing buffers in the kernel.
	requireShare(t, prof, cmd.Process.Pid, 0.5, "vfs_read (kernel) under read and main (user)", inRead)
	for _, loc := range prof.Location {
		if loc.Mapping.File == kernelObject && loc.Address < 0xffff000000000000 {
			t.Errorf("kernel frame at user address %#x", loc.Address)
		}
	}
}

func TestPerfMapFrame(t *testing.T) {
	requireRoot(t)
	cburn := testProgram(t, "cburn")
	for _, tc := range []struct {
		name string
		// start runs cburn jit and returns its pid on the host, its pid
		// in its own namespace and its address line.
		start func(t *testing.T) (hostPID, nsPID int, line string)
	}{
		{"host", func(t *testing.T) (int, int, string) {
			cmd, line := startJIT(t, cburn, "jit")
			return cmd.Process.Pid, cmd.Process.Pid, line
		}},
		{"container", func(t *testing.T) (int, int, string) {
			// New pid and mount namespaces with a private /tmp, as in a
			// container: the perf map is /tmp/perf-1.map in there. The
			// binary, hidden by the new /tmp, runs from an open fd.
			requireTool(t, "unshare")
			// --kill-child: the namespace's init ignores SIGTERM and would
			// outlive unshare.
			cmd, line := startJIT(t, "unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private",
				"sh", "-c", `exec 3<"$0" && mount -t tmpfs tmpfs /tmp && exec /proc/self/fd/3 jit`, cburn)
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
			if err != nil {
				t.Fatal(err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatalf("finding the process in the new namespace from %q: %v", b, err)
			}
			t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
			return pid, 1, line
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pid, nsPID, line := tc.start(t)
			var addr, size uint64
			if _, err := fmt.Sscanf(line, "%x %x", &addr, &size); err != nil {
				t.Fatalf("parsing %q: %v", line, err)
			}
			path := fmt.Sprintf("/proc/%d/root/tmp/perf-%d.map", pid, nsPID)
			// Other entries around it, as a JIT writes them.
			text := fmt.Sprintf("%x 10 py::other:/x.py\n%x %x py::jit_burn_loop:/app/train.py\nnot a line\n%x 20 py::after:/x.py\n", addr-0x100, addr, size, addr+0x100)
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Remove(path) })
			prof := capture(t, Config{Hz: 99}, []int{pid})
			requireShare(t, prof, pid, 0.9, "perf-map frame on top (called from main)", calledFrom("py::jit_burn_loop:/app/train.py", "main"))
		})
	}
}

// TestTruncatedStacksReported follows frame pointers only, through code
// built without them: the profile must say its stacks are truncated.
func TestTruncatedStacksReported(t *testing.T) {
	requireRoot(t)
	cmd, _ := start(t, testProgram(t, "cburn-nofp"), "burn")
	prof := capture(t, Config{Hz: 99, FramePointersOnly: true}, []int{cmd.Process.Pid})
	want := fmt.Sprintf("truncated stacks: pid %d (cburn-nofp)", cmd.Process.Pid)
	for _, c := range prof.Comments {
		if strings.HasPrefix(c, want) {
			return
		}
	}
	t.Errorf("no comment %q in %q\n%s", want, prof.Comments, top(prof))
}

// TestUnwindWithoutFramePointers profiles C built with -O2
// -fomit-frame-pointer, a hot loop three noinline calls deep: the unwind
// tables find every caller, down to main and the C library, which frame
// pointers cannot (checked too).
func TestUnwindWithoutFramePointers(t *testing.T) {
	requireRoot(t)
	cmd, _ := start(t, testProgram(t, "cdeep-nofp"))
	pid := cmd.Process.Pid
	prof := capture(t, Config{Hz: 99}, []int{pid})
	requireShare(t, prof, pid, 0.8, "deep_inner < deep_middle < deep_outer < main", wholeDeepStack)
	for _, c := range prof.Comments {
		if strings.HasPrefix(c, "truncated stacks") {
			t.Errorf("unwound stacks reported as truncated: %s", c)
		}
	}
	t.Logf("unwound:\n%s", top(prof))
	fp := capture(t, Config{Hz: 99, FramePointersOnly: true}, []int{pid})
	if total, matched := pidSamples(fp, pid, wholeDeepStack); matched*2 > total {
		t.Errorf("frame pointers alone found the whole stack in %d of %d samples: the test program keeps frame pointers\n%s", matched, total, top(fp))
	}
}

// wholeDeepStack matches cdeep's whole stack, deep_inner up to main.
func wholeDeepStack(names []string) bool {
	i := slices.Index(names, "deep_inner")
	return i >= 0 && i+3 < len(names) && names[i+1] == "deep_middle" && names[i+2] == "deep_outer" && names[i+3] == "main"
}

// TestMappingsFull leaves room for 16 executable mappings: a Python process
// that imported numpy (about 30) does not fit, is counted and logged, and
// is still sampled, by frame pointers; the C program beside it (about 5)
// fits and is unwound whole.
func TestMappingsFull(t *testing.T) {
	requireRoot(t)
	const python = "/usr/bin/python3"
	c, _ := start(t, testProgram(t, "cdeep-nofp"))
	py, _ := start(t, python, "-c", "import numpy\nwhile True: numpy.sort(numpy.random.rand(1000))")
	cpid, ppid := c.Process.Pid, py.Process.Pid
	set := metrics.NewSet()
	p, stop := runProfiler(t, Config{Hz: 99, UnwindMappings: 16}, set)
	defer stop()
	w := p.StartWindow([]int{cpid, ppid})
	full := set.GetOrCreateCounter("loupe_cpuprof_unwind_processes_full_total")
	for deadline := time.Now().Add(30 * time.Second); full.Get() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s with numpy was never counted as not fitting (is python3-numpy installed?)", python)
		}
	}
	waitDescribed(t, p, cpid)
	waitCPU(t, cpid, ppid)
	prof, err := w.Stop()
	if err != nil {
		t.Fatal(err)
	}
	requireShare(t, prof, cpid, 0.8, "deep_inner < deep_middle < deep_outer < main", wholeDeepStack)
	if total, _ := pidSamples(prof, ppid, func([]string) bool { return true }); total < minSamples || p.tracker.isDescribed(uint32(ppid)) {
		t.Errorf("the process that did not fit: %d samples (want >= %d), described %v", total, minSamples, p.tracker.isDescribed(uint32(ppid)))
	}
	if u := p.sampler.Usage(); u.MappingsCap != 16 || u.Mappings > 16 || u.Mappings == 0 {
		t.Errorf("mappings in use %d of %d, want the C program's within 16", u.Mappings, u.MappingsCap)
	}
}

// TestCPlusPlusWithoutFramePointers profiles C++ with exceptions thrown
// and caught on every round and inlined templates, built with -O2
// -fomit-frame-pointer: the function template's frame shows under the
// function that catches, under main.
func TestCPlusPlusWithoutFramePointers(t *testing.T) {
	requireRoot(t)
	cmd, _ := start(t, testProgram(t, "cppdeep-nofp"))
	pid := cmd.Process.Pid
	prof := capture(t, Config{Hz: 99}, []int{pid})
	requireShare(t, prof, pid, 0.8, "loupe::crunch<unsigned long> < work < main", func(names []string) bool {
		i := slices.Index(names, "loupe::crunch<unsigned long>")
		return i >= 0 && i+2 < len(names) && names[i+1] == "work" && names[i+2] == "main"
	})
}

// TestShortLivedProcess starts a process after the profiler and lets it
// exit within a second, before the next drain: it is still profiled, its
// frames named and its stacks unwound.
func TestShortLivedProcess(t *testing.T) {
	requireRoot(t)
	bin := testProgram(t, "cdeep-nofp")
	p, stop := runProfiler(t, Config{Hz: 99, DrainInterval: 5 * time.Second}, metrics.NewSet())
	w := p.StartWindow(nil)
	cmd := exec.Command(bin, "800")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	prof, err := w.Stop()
	stop()
	if err != nil {
		t.Fatal(err)
	}
	total, matched := pidSamples(prof, pid, func(names []string) bool {
		i := slices.Index(names, "deep_inner")
		return i >= 0 && i+2 < len(names) && names[i+1] == "deep_middle" && names[i+2] == "deep_outer"
	})
	// 800 ms of CPU at 99 Hz is about 80 samples, fewer on a busy machine.
	if total < 10 || float64(matched) < 0.7*float64(total) {
		t.Errorf("exited process %d: %d samples, %d of them deep_inner < deep_middle < deep_outer; want >= 10 and >= 70%%\n%s", pid, total, matched, top(prof))
	}
}

// TestNoLostSamples samples a burner at 99 Hz for 10 s and checks that no
// sample was dropped, and that the samples account for the CPU time the
// kernel charged the process.
func TestNoLostSamples(t *testing.T) {
	requireRoot(t)
	if testing.Short() {
		t.Skip("10 s of sampling; run without -short")
	}
	cmd, _ := start(t, testProgram(t, "cburn"), "burn")
	pid := cmd.Process.Pid
	set := metrics.NewSet()
	p, stop := runProfiler(t, Config{Hz: 99}, set)
	w := p.StartWindow(nil)
	cpu0 := cpuTime(t, pid)
	time.Sleep(10 * time.Second)
	cpu1 := cpuTime(t, pid)
	prof, err := w.Stop()
	stop()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	set.WritePrometheus(&out)
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "loupe_cpuprof_lost_samples_total") && !strings.HasSuffix(line, " 0") {
			t.Errorf("lost samples: %s", line)
		}
	}
	if !strings.Contains(out.String(), `loupe_cpuprof_lost_samples_total{reason="stack_map_full"} 0`) {
		t.Errorf("lost-sample metrics missing:\n%s", out.String())
	}
	n, _ := pidSamples(prof, pid, func([]string) bool { return false })
	want := (cpu1 - cpu0).Seconds() * 99
	t.Logf("pid %d: %d samples, %.0f expected from %s of CPU time", pid, n, want, cpu1-cpu0)
	if float64(n) < 0.85*want || float64(n) > 1.15*want {
		t.Errorf("%d samples for %s of CPU time at 99 Hz, want %.0f ± 15%%", n, cpu1-cpu0, want)
	}
}

// cpuTime returns the user+system time of pid from /proc/<pid>/stat.
func cpuTime(t testing.TB, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

func top(prof *profile.Profile) string {
	counts := map[string]int64{}
	for _, s := range prof.Sample {
		names := frameNames(s)
		key := strings.Join(names[:min(4, len(names))], " < ")
		counts[key] += s.Value[0]
	}
	type kv struct {
		k string
		v int64
	}
	var kvs []kv
	for k, v := range counts {
		kvs = append(kvs, kv{k, v})
	}
	slices.SortFunc(kvs, func(a, b kv) int { return int(b.v - a.v) })
	var sb strings.Builder
	for _, e := range kvs[:min(10, len(kvs))] {
		fmt.Fprintf(&sb, "%6d %s\n", e.v, e.k)
	}
	return sb.String()
}

// python312 finds a CPython 3.12+ interpreter (perf map support).
func python312(t testing.TB) string {
	t.Helper()
	var candidates []string
	if home, err := os.UserHomeDir(); err == nil { // pyenv builds, not its shell shims
		candidates, _ = filepath.Glob(filepath.Join(home, ".pyenv/versions/3.1[2-9]*/bin/python3"))
	}
	candidates = append(candidates, "python3.13", "python3.12")
	for _, c := range candidates {
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no Python 3.12+ interpreter (python3.12 or python3.13 on PATH, or under ~/.pyenv): install one")
	}
	t.Skip("no Python 3.12+ interpreter")
	return ""
}

// TestPythonPerfSupport profiles a real Python 3.12+ started with -X perf:
// it writes /tmp/perf-<pid>.map, which the profiler reads (the path JITs
// take). Following frame pointers only, through an interpreter that (like
// most python.org and pyenv builds) has none, the stacks stop inside
// libpython: the profile and the log must say so rather than show
// misleading stacks silently.
func TestPythonPerfSupport(t *testing.T) {
	requireRoot(t)
	py := python312(t)
	cmd, _ := start(t, py, "-X", "perf", "-c", `
def burn_py():
    x = 0
    for i in range(10**6):
        x += i * i
    return x
while True:
    burn_py()
`)
	pid := cmd.Process.Pid
	t.Cleanup(func() { os.Remove(fmt.Sprintf("/tmp/perf-%d.map", pid)) })
	var b []byte
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		b, err = os.ReadFile(fmt.Sprintf("/proc/%d/root/tmp/perf-%d.map", pid, pid))
		if strings.Contains(string(b), "py::burn_py:") {
			break
		}
	}
	if !strings.Contains(string(b), "py::burn_py:") {
		t.Fatalf("%s -X perf wrote no perf map entry for burn_py: %v", py, err)
	}
	prof := capture(t, Config{Hz: 99, FramePointersOnly: true}, []int{pid})
	total, inInterp := pidSamples(prof, pid, func(names []string) bool {
		return len(names) > 0 && names[0] != ""
	})
	if total < minSamples || float64(inInterp) < 0.8*float64(total) {
		t.Errorf("%d of %d samples have a named leaf frame, want >= 80%%\n%s", inInterp, total, top(prof))
	}
	want := fmt.Sprintf("truncated stacks: pid %d (", pid)
	for _, c := range prof.Comments {
		if strings.HasPrefix(c, want) && strings.Contains(c, "frame_pointers_only") {
			return
		}
	}
	t.Errorf("no truncated-stack note for the frame-pointer-less interpreter in %q", prof.Comments)
}

// TestOverlappingWindows runs two windows on different processes in one
// profiler, and checks that Run leaves no file descriptor behind.
func TestOverlappingWindows(t *testing.T) {
	requireRoot(t)
	a, _ := start(t, testProgram(t, "cburn"), "burn")
	b, _ := start(t, testProgram(t, "cppburn"))
	fds0 := openFDs(t)

	p, err := New(Config{Hz: 99, DrainInterval: 200 * time.Millisecond}, testLogger(t), metrics.NewSet())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	waitAttached(t, p, done)
	wa := p.StartWindow([]int{a.Process.Pid})
	wb := p.StartWindow([]int{b.Process.Pid})
	waitCPU(t, a.Process.Pid, b.Process.Pid)
	pa, err := wa.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wa.Stop(); err == nil {
		t.Error("a second Stop succeeded")
	}
	waitCPU(t, b.Process.Pid)
	pb, err := wb.Stop()
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		prof *profile.Profile
		pid  int
	}{{pa, a.Process.Pid}, {pb, b.Process.Pid}} {
		total, _ := pidSamples(tc.prof, tc.pid, func([]string) bool { return false })
		if total < minSamples {
			t.Errorf("window on pid %d got %d samples of it", tc.pid, total)
		}
		for _, s := range tc.prof.Sample {
			if s.Label["pid"][0] != strconv.Itoa(tc.pid) {
				t.Errorf("window on pid %d holds a sample of pid %s", tc.pid, s.Label["pid"][0])
				break
			}
		}
	}
	if pb.DurationNanos <= pa.DurationNanos {
		t.Errorf("window durations %d (first) and %d (second, longer)", pa.DurationNanos, pb.DurationNanos)
	}
	if fds := openFDs(t); fds > fds0 {
		t.Errorf("%d file descriptors open after Run returned, %d before New: perf events or maps left behind", fds, fds0)
	}
}

func openFDs(t testing.TB) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// TestProfileFunction covers the on-demand helper: a fixed duration, and a
// context cancelled early, which still returns what was sampled.
func TestProfileFunction(t *testing.T) {
	requireRoot(t)
	cmd, _ := start(t, testProgram(t, "cburn"), "burn")
	prof, err := Profile(context.Background(), Config{Hz: 99}, []int{cmd.Process.Pid}, time.Second, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Duration(prof.DurationNanos); d < time.Second || d > 5*time.Second {
		t.Errorf("profile of 1s lasted %s", d)
	}
	if prof.Period != int64(time.Second)/99 || prof.SampleType[1].Type != "cpu" || prof.SampleType[1].Unit != "nanoseconds" {
		t.Errorf("period %d, sample types %v", prof.Period, prof.SampleType)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	prof, err = Profile(ctx, Config{Hz: 99}, []int{cmd.Process.Pid}, time.Hour, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), "cut short") || prof == nil {
		t.Errorf("cancelled capture: profile %v, error %v; want the partial profile and a cut-short error", prof != nil, err)
	}

	if _, err := Profile(context.Background(), Config{Hz: 5000}, nil, time.Second, testLogger(t)); err == nil || !strings.Contains(err.Error(), "999") {
		t.Errorf("Hz 5000 accepted or unclear error: %v", err)
	}
}

// TestContinuousProfile runs always-on profiling at 19 Hz with a capture
// window at 99 Hz in the middle of it: every interval's profile holds the
// burner (started after the profiler), its CPU time is accounted for
// across the rate switches, and the window sees its own process only.
func TestContinuousProfile(t *testing.T) {
	requireRoot(t)
	var mu sync.Mutex
	var profs []*profile.Profile
	cfg := Config{Hz: 99, Continuous: ContinuousConfig{Enabled: true, Hz: 19, Interval: 2 * time.Second, Sink: func(p *profile.Profile) {
		mu.Lock()
		profs = append(profs, p)
		mu.Unlock()
	}}, Labeler: func(pid int) map[string]string { return map[string]string{"job": "train", "pod": "p-1"} }}
	p, stop := runProfiler(t, cfg, metrics.NewSet())
	cmd, _ := start(t, testProgram(t, "cdeep-nofp"))
	pid := cmd.Process.Pid
	cpu0 := cpuTime(t, pid)
	time.Sleep(3 * time.Second)
	w := p.StartWindow([]int{pid})
	time.Sleep(1500 * time.Millisecond)
	wp, err := w.Stop()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	stop() // Run hands out the last, partial profile
	cpu := cpuTime(t, pid) - cpu0
	mu.Lock()
	defer mu.Unlock()
	if len(profs) < 3 {
		t.Fatalf("%d continuous profiles in about 7.5 s at one per 2 s", len(profs))
	}
	var ns, deep, samples int64
	for _, prof := range profs {
		if err := prof.CheckValid(); err != nil {
			t.Fatal(err)
		}
		for _, s := range samplesOf(prof, pid) {
			if s.Label["job"][0] != "train" || s.Label["pod"][0] != "p-1" || s.Label["comm"][0] != "cdeep-nofp" {
				t.Errorf("labels %v", s.Label)
			}
			samples += s.Value[0]
			ns += s.Value[1]
			if names := frameNames(s); slices.Contains(names, "deep_outer") {
				deep += s.Value[0]
			}
		}
	}
	// The burner ran before, during and after the window: its CPU time
	// is in the continuous profiles whatever the rate (within 35%; the
	// time after its last drain and before its first one is missing).
	got := time.Duration(ns)
	t.Logf("burner: %d samples, %s of CPU in the continuous profiles, %s used", samples, got, cpu)
	if got < cpu*65/100 || got > cpu*135/100 {
		t.Errorf("continuous profiles account for %s of CPU time, the burner used %s", got, cpu)
	}
	if deep*10 < samples*8 {
		t.Errorf("%d of %d samples unwound through deep_outer", deep, samples)
	}
	if total, _ := pidSamples(wp, pid, func([]string) bool { return false }); total < 50 {
		t.Errorf("the 99 Hz window of 1.5 s holds %d samples of the burner", total)
	}
	for _, s := range wp.Sample {
		if s.Label["pid"][0] != strconv.Itoa(pid) {
			t.Fatalf("the window on pid %d holds a sample of pid %s", pid, s.Label["pid"][0])
		}
	}
}

// TestSourceLines profiles the C program built with -g: its frames carry
// the file and line DWARF gives.
func TestSourceLines(t *testing.T) {
	requireRoot(t)
	cmd, _ := start(t, testProgram(t, "cdeep-g"))
	pid := cmd.Process.Pid
	prof := capture(t, Config{Hz: 99}, []int{pid})
	var total, inLoop int64
	for _, s := range samplesOf(prof, pid) {
		total += s.Value[0]
		for _, loc := range s.Location {
			// deep_inner's loop: its counter on line 17, its body on
			// line 18 of testdata/cdeep.c (gcc -O2 interleaves them).
			if l := loc.Line; len(l) > 0 && l[0].Function.Name == "deep_inner" && strings.HasSuffix(l[0].Function.Filename, "cdeep.c") &&
				l[0].Line >= 17 && l[0].Line <= 18 {
				inLoop += s.Value[0]
				break
			}
		}
	}
	if total < minSamples || float64(inLoop) < 0.8*float64(total) {
		t.Errorf("%d of %d samples in deep_inner at cdeep.c:17-18\n%s", inLoop, total, top(prof))
	}
}

// TestExecDescribedAnew: a process that execs another program keeps its
// pid but not its mappings; it is described again and its new program's
// stacks are unwound whole.
func TestExecDescribedAnew(t *testing.T) {
	requireRoot(t)
	bin := testProgram(t, "cdeep-nofp")
	cmd := exec.Command("sh", "-c", `read x; exec "$0"`, bin)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	runCmdPipe(t, cmd)
	pid := cmd.Process.Pid
	set := metrics.NewSet()
	p, _ := runProfiler(t, Config{Hz: 99}, set)
	waitDescribed(t, p, pid)
	w := p.StartWindow([]int{pid})
	in.Write([]byte("\n"))
	// The exec hook drops the shell's description; the next sample of
	// the new program has it described again.
	for deadline := time.Now().Add(30 * time.Second); set.GetOrCreateCounter("loupe_cpuprof_unwind_processes_total").Get() < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the exec'd process was not described again")
		}
	}
	waitCPU(t, pid)
	prof, err := w.Stop()
	if err != nil {
		t.Fatal(err)
	}
	requireShare(t, prof, pid, 0.8, "deep_inner < deep_middle < deep_outer after exec", func(names []string) bool {
		i := slices.Index(names, "deep_inner")
		return i >= 0 && i+2 < len(names) && names[i+1] == "deep_middle" && names[i+2] == "deep_outer"
	})
}
