package cpuprof

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"runtime"
	"runtime/pprof"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
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
	if f := s.user(pid, pc); f.Function == "" {
		b.Fatalf("%#x not symbolized", pc)
	}
	b.ReportAllocs()
	for b.Loop() {
		s.user(pid, pc)
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
