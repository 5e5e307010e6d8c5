package cpuprof

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/cilium/ebpf"
	"github.com/google/pprof/profile"
	"golang.org/x/sys/unix"
)

// BenchmarkOverhead measures the profiler's own CPU time over wall time
// while the machine is kept busy by one burner per CPU and one window is
// open: on the burners (a capture of given processes, e.g. the GPU
// processes) or on all processes (the worst case: everything running is
// symbolized, here including other users' short-lived compilers). One
// iteration is one drain interval (1 s): run with -benchtime=10x or more.
// The budget is 0.5 %core at 19 Hz.
func BenchmarkOverhead(b *testing.B) {
	requireRoot(b)
	var burners []int
	for range runtime.NumCPU() {
		cmd, _ := start(b, testProgram(b, "cburn"), "burn")
		burners = append(burners, cmd.Process.Pid)
	}
	for _, tc := range []struct {
		hz   int
		pids []int
	}{{19, burners}, {99, burners}, {19, nil}, {99, nil}} {
		scope := "pids"
		if tc.pids == nil {
			scope = "all"
		}
		hz := tc.hz
		b.Run(fmt.Sprintf("%dHz/%s", hz, scope), func(b *testing.B) {
			set := metrics.NewSet()
			p, err := New(Config{Hz: hz, DrainInterval: time.Second}, slog.New(slog.DiscardHandler), set)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- p.Run(ctx) }()
			waitAttached(b, p, done)
			w := p.StartWindow(tc.pids)
			time.Sleep(1500 * time.Millisecond) // first drain done: caches warm

			samples0 := set.GetOrCreateCounter("loupe_cpuprof_samples_total").Get()
			cpu0, wall0 := selfCPU(b), time.Now()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				time.Sleep(time.Second)
			}
			b.StopTimer()
			cpu, wall := selfCPU(b)-cpu0, time.Since(wall0)
			samples := set.GetOrCreateCounter("loupe_cpuprof_samples_total").Get() - samples0
			// Live heap with the caches full and the window open.
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if path := os.Getenv("LOUPE_BENCH_HEAPPROFILE"); path != "" {
				writeHeapProfile(b, path)
			}

			if _, err := w.Stop(); err != nil {
				b.Fatal(err)
			}
			cancel()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "MiB-heap")
			b.ReportMetric(100*cpu.Seconds()/wall.Seconds(), "%core")
			b.ReportMetric(float64(samples)/wall.Seconds(), "samples/s")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// selfCPU returns this process's user+system CPU time.
func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSymbolize measures naming one user frame of a running process
// through the caches (maps, object, symbol), the per-frame cost of a drain.
func BenchmarkSymbolize(b *testing.B) {
	s := newSymbolizer("/proc", slog.New(slog.DiscardHandler))
	defer s.close()
	s.beginDrain()
	pc := uint64(reflect.ValueOf(symbolizeMe).Pointer())
	pid := uint32(os.Getpid())
	if f := s.user(pid, pc, true); f.Function == "" {
		b.Fatalf("%#x not symbolized", pc)
	}
	b.ReportAllocs()
	for b.Loop() {
		s.user(pid, pc, true)
	}
}

func writeHeapProfile(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		b.Fatal(err)
	}
}

// benchAgentEnv makes the test binary a bench agent (benchAgentChild).
const benchAgentEnv = "LOUPE_CPUPROF_BENCH_AGENT"

// agentFigures is what a bench agent reports.
type agentFigures struct {
	CPU      time.Duration // the agent's user+system CPU while measured
	Wall     time.Duration
	BPF      time.Duration // the sampling program's run time
	BPFRuns  uint64
	Samples  uint64
	Lost     uint64
	PeakRSS  int64 // VmHWM, bytes
	Profiles int   // continuous profiles handed out (and encoded)
}

// BenchmarkAgent is the always-on profiler as the agent runs it, on a
// machine with both cores busy: a C program built without frame pointers
// and CPython 3.11 running Python and a C extension. A copy of the test
// binary runs the profiler so that its CPU time and peak RSS (VmHWM, from
// /proc) are the profiler's alone; BPF run time comes from the kernel's
// program statistics. "all" is continuous profiling of every process at 19
// or 99 Hz (.eh_frame unwinding, Python frames, a 10 s interval whose
// profile is encoded as the spool would), which on a shared machine also
// profiles everything else that runs there; "pids" samples the two busy
// processes only (a window on them, continuous profiling off), the
// figures of a quiet machine. One iteration is one second measured after a
// 3 s warm-up (kernel symbols loaded): run with -benchtime=20x.
// LOUPE_BENCH_AGENT_CPUPROFILE=FILE writes the agent's CPU profile.
func BenchmarkAgent(b *testing.B) {
	requireRoot(b)
	c, _ := start(b, testProgram(b, "cdeep-nofp"))
	python := pyenvPython(b, "3.11")
	script, err := filepath.Abs("testdata/pyburn.py")
	if err != nil {
		b.Fatal(err)
	}
	py, _ := start(b, python, script, buildPyExt(b, python))
	for _, tc := range []struct {
		scope string
		hz    int
	}{{"all", 19}, {"all", 99}, {"pids", 19}, {"pids", 99}} {
		b.Run(fmt.Sprintf("%s/%dHz", tc.scope, tc.hz), func(b *testing.B) {
			pids := "0,0"
			if tc.scope == "pids" {
				pids = fmt.Sprintf("%d,%d", c.Process.Pid, py.Process.Pid)
			}
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d,%d,%s", benchAgentEnv, tc.hz, b.N, pids))
			cmd.Stderr = os.Stderr
			out, err := cmd.Output()
			if err != nil {
				b.Fatalf("bench agent: %v\n%s", err, out)
			}
			var f agentFigures
			if err := json.Unmarshal(out[bytes.LastIndexByte(bytes.TrimSpace(out), '\n')+1:], &f); err != nil {
				b.Fatalf("bench agent output %q: %v", out, err)
			}
			b.ReportMetric(100*f.CPU.Seconds()/f.Wall.Seconds(), "%core")
			b.ReportMetric(100*f.BPF.Seconds()/f.Wall.Seconds(), "%core-bpf")
			if f.BPFRuns > 0 {
				b.ReportMetric(float64(f.BPF.Nanoseconds())/float64(f.BPFRuns), "ns/bpf-run")
			}
			b.ReportMetric(float64(f.PeakRSS)/(1<<20), "MiB-peak-rss")
			b.ReportMetric(float64(f.Samples)/f.Wall.Seconds(), "samples/s")
			b.ReportMetric(float64(f.Lost), "lost")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// benchAgentChild runs the profiler for BenchmarkAgent and prints its
// figures as JSON.
func benchAgentChild(spec string) {
	var hz, n, pid1, pid2 int
	fmt.Sscanf(spec, "%d,%d,%d,%d", &hz, &n, &pid1, &pid2)
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "bench agent:", err)
		os.Exit(1)
	}
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		fail(err)
	}
	defer stats.Close()
	set := metrics.NewSet()
	var profiles atomic.Int32
	cfg := DefaultConfig()
	cfg.Hz, cfg.Continuous.Hz, cfg.Continuous.Interval = hz, hz, 10*time.Second
	cfg.Continuous.Sink = func(p *profile.Profile) {
		p.Write(io.Discard)
		profiles.Add(1)
	}
	cfg.Continuous.Enabled = pid1 == 0
	if path := os.Getenv("LOUPE_BENCH_AGENT_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			fail(err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	p, err := New(cfg, slog.New(slog.DiscardHandler), set)
	if err != nil {
		fail(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	if pid1 != 0 {
		<-p.attached
		w := p.StartWindow([]int{pid1, pid2})
		defer w.Stop()
	}
	time.Sleep(3 * time.Second) // every busy process described, caches warm
	// Kernel symbols load at the first kernel frame, a one-off cost that
	// the busy processes may reach only inside the measured seconds.
	p.mu.Lock()
	p.sym.loadKernel()
	p.mu.Unlock()
	st0, err := p.sampler.Stats()
	if err != nil {
		fail(err)
	}
	samples0 := set.GetOrCreateCounter("loupe_cpuprof_samples_total").Get()
	cpu0, wall0 := procCPU(), time.Now()
	time.Sleep(time.Duration(n) * time.Second)
	cpu, wall := procCPU()-cpu0, time.Since(wall0)
	st1, err := p.sampler.Stats()
	if err != nil {
		fail(err)
	}
	samples := set.GetOrCreateCounter("loupe_cpuprof_samples_total").Get() - samples0
	cancel()
	if err := <-done; err != nil {
		fail(err)
	}
	var lost uint64
	var sb strings.Builder
	set.WritePrometheus(&sb)
	for _, line := range strings.Split(sb.String(), "\n") {
		if v, ok := strings.CutPrefix(line, "loupe_cpuprof_lost_samples_total{"); ok {
			var n uint64
			fmt.Sscanf(v[strings.IndexByte(v, ' ')+1:], "%d", &n)
			lost += n
		}
	}
	json.NewEncoder(os.Stdout).Encode(agentFigures{
		CPU: cpu, Wall: wall, BPF: st1.Runtime - st0.Runtime, BPFRuns: st1.RunCount - st0.RunCount,
		Samples: samples, Lost: lost, PeakRSS: peakRSS(), Profiles: int(profiles.Load()),
	})
}

// procCPU is this process's user+system CPU time from /proc/self/stat.
func procCPU() time.Duration {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// peakRSS is this process's VmHWM from /proc/self/status, in bytes.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkUnwindRows compiles the unwind rows of real objects (the C
// library, and CPython 3.11's library when pyenv has it): what describing
// a process costs the first time an object is seen.
func BenchmarkUnwindRows(b *testing.B) {
	paths := []string{"/lib/x86_64-linux-gnu/libc.so.6"}
	if home, err := os.UserHomeDir(); err == nil {
		if libs, _ := filepath.Glob(filepath.Join(home, ".pyenv/versions/3.11.*/lib/libpython3.11.so.1.0")); len(libs) > 0 {
			paths = append(paths, libs[0])
		}
	}
	for _, path := range paths {
		b.Run(filepath.Base(path), func(b *testing.B) {
			ef, err := elf.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			defer ef.Close()
			var rows int
			b.ReportAllocs()
			for b.Loop() {
				r, err := unwindRows(ef)
				if err != nil {
					b.Fatal(err)
				}
				rows = len(r)
			}
			b.ReportMetric(float64(rows), "rows")
		})
	}
}
