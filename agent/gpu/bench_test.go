package gpu

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// cpuTime is the process's user+system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCollector runs the whole collector (fast and slow loops, event
// watcher, simulated profiling) on 8 simulated H100s for a fixed wall time
// and reports the process CPU time per wall second, allocations per sample
// and missed ticks. One op is one run.
func BenchmarkCollector(b *testing.B) {
	for _, tc := range []struct {
		name    string
		capture bool
		wall    time.Duration
	}{
		{"8gpu_1Hz", false, 10 * time.Second},
		{"8gpu_100Hz", true, 5 * time.Second},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var cpu, wall time.Duration
			var samples, mallocs, missed, heap uint64
			for range b.N {
				cfg := DefaultConfig()
				sim := NewSimulator(8, cfg.Sim)
				c := newCollector(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.NewSet(), sim.Interface(), sim)
				if tc.capture {
					end, _ := c.BeginCapture()
					defer end()
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- c.Run(ctx) }()
				time.Sleep(100 * time.Millisecond) // past start-up
				var m0, m1 runtime.MemStats
				runtime.ReadMemStats(&m0)
				s0, x0, c0, t0 := c.metrics.samples.Get(), c.metrics.missed.Get(), cpuTime(b), time.Now()
				time.Sleep(tc.wall)
				c1, t1 := cpuTime(b), time.Now()
				runtime.ReadMemStats(&m1)
				cpu += c1 - c0
				wall += t1.Sub(t0)
				samples += c.metrics.samples.Get() - s0
				missed += c.metrics.missed.Get() - x0
				mallocs += m1.Mallocs - m0.Mallocs
				heap = max(heap, m1.HeapInuse)
				cancel()
				<-done
			}
			b.ReportMetric(float64(cpu)/wall.Seconds(), "cpu-ns/wall-s")
			b.ReportMetric(100*float64(cpu)/float64(wall), "%core")
			b.ReportMetric(float64(mallocs)/float64(max(samples, 1)), "allocs/sample")
			b.ReportMetric(float64(samples)/wall.Seconds(), "samples/s")
			b.ReportMetric(float64(missed), "missed-ticks")
			b.ReportMetric(float64(heap)/(1<<20), "heap-MiB")
		})
	}
}

// BenchmarkSampleAll is one tick of the fast loop over 8 simulated GPUs.
func BenchmarkSampleAll(b *testing.B) {
	sim := NewSimulator(8, DefaultConfig().Sim)
	c := newCollector(DefaultConfig(), slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.NewSet(), sim.Interface(), sim)
	b.ReportAllocs()
	for b.Loop() {
		c.sampleAll()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/8, "ns/gpu-sample")
}

// BenchmarkScrape formats the per-GPU series of 8 GPUs from the cache.
func BenchmarkScrape(b *testing.B) {
	sim := NewSimulator(8, DefaultConfig().Sim)
	set := metrics.NewSet()
	c := newCollector(DefaultConfig(), slog.New(slog.NewTextHandler(io.Discard, nil)), set, sim.Interface(), sim)
	c.sampleAll()
	b.ReportAllocs()
	for b.Loop() {
		set.WritePrometheus(io.Discard)
	}
}
