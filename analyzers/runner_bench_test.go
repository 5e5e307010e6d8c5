package analyzers

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"runtime/metrics"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// Size of the benchmark job: 128 hosts x 8 GPUs = 1024 ranks, a 60 s window
// at 10 Hz, 1000 collectives per rank, a step a second (per 60 s window).
const (
	benchHosts       = 128
	benchGPUs        = 8
	benchSamples     = 600
	benchCollectives = 1000
	benchSteps       = 60
)

// benchJob writes a benchmark job of nHosts hosts and a window of the
// given seconds under dir, with collectives and steps in proportion. Some
// anti-patterns are planted so the analyzers report, as they would on a
// real fleet: a slow rank, a throttled GPU, an XID.
func benchJob(b *testing.B, dir string, nHosts, seconds int) *Input {
	rng := rand.New(rand.NewPCG(1, 2))
	nSamples, nColl, nSteps := seconds*benchSamples/60, seconds*benchCollectives/60, seconds*benchSteps/60
	hosts := make([]hostBundle, nHosts)
	for hi := range hosts {
		ranks := make([]int, benchGPUs)
		for g := range ranks {
			ranks[g] = hi*benchGPUs + g
		}
		hb := hostBundle{name: fmt.Sprintf("node-%03d", hi), ranks: ranks, seconds: float64(seconds)}
		hb.samples = series(benchGPUs, nSamples, func(i int, s *traces.GPUSample) {
			s.GPUUtil = 90 + 10*rng.Float32()
			s.SMActive = 0.5 + 0.4*rng.Float32()
			s.DRAMActive = 0.2 + 0.3*rng.Float32()
			s.TensorActive = 0.3 + 0.3*rng.Float32()
			if hi == 7 && s.GPU == 3 && i%3 == 0 {
				s.ClockEventReasons, s.SMClockMHz = traces.ClockEventSWThermalSlowdown, 1500
			}
		})
		for _, r := range ranks {
			late := 0.2 * rng.Float64()
			if r == 77 {
				late = 3
			}
			for seq := range nColl {
				at := t0.Add(time.Duration(seq)*60*time.Millisecond + time.Duration((late+rng.Float64())*float64(time.Millisecond)))
				hb.nccl = append(hb.nccl, traces.NCCLEvent{
					TimeNs: at.UnixNano(), DurationNs: 40_000, PID: int32(pid(r)), TID: int32(pid(r)), Rank: int32(r),
					NRanks: int32(nHosts * benchGPUs), CommID: 0xabc, Op: "AllReduce", Seq: int64(seq), Count: 1 << 22,
					Datatype: "bfloat16", Bytes: 8 << 20, Peer: -1,
				})
			}
			start := t0
			for it := range nSteps {
				d := time.Second - 20*time.Millisecond + time.Duration(rng.IntN(40))*time.Millisecond
				if r == 77 {
					d += 300 * time.Millisecond
				}
				hb.steps = append(hb.steps, traces.Step{Rank: int32(r), PID: int32(pid(r)), Iteration: int64(it), StartNs: start.UnixNano(), EndNs: start.Add(d).UnixNano(), Source: traces.StepSourceMarker})
				start = start.Add(d)
			}
		}
		hb.events = []traces.Event{{TimeNs: t0.Add(time.Second).UnixNano(), Kind: traces.EventNote, GPU: -1, Rank: -1, Message: "capture started"}}
		if hi == nHosts-1 {
			hb.events = append(hb.events, traces.Event{TimeNs: t0.Add(30 * time.Second).UnixNano(), Kind: traces.EventXID, GPU: 2, Rank: -1, Code: 74})
		}
		load := map[int][2]int{}
		for _, r := range ranks {
			load[r] = [2]int{100, 1000}
		}
		hb.profile = cpuProfile(load)
		hosts[hi] = hb
	}
	return writeCapture(b, dir, hosts...)
}

// peakHeap samples the live heap while it runs, without stopping the world.
type peakHeap struct {
	stop chan struct{}
	done sync.WaitGroup
	peak uint64
}

func startPeakHeap() *peakHeap {
	p := &peakHeap{stop: make(chan struct{})}
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(s)
			p.peak = max(p.peak, s[0].Value.Uint64())
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
		}
	}()
	return p
}

func (p *peakHeap) Stop() uint64 {
	close(p.stop)
	p.done.Wait()
	return p.peak
}

// BenchmarkAllAnalyzers1024Ranks runs every registered analyzer over a
// 1024-rank job. Run with -cpu 2 for the 2-core budget (< 5 s, < 512 MiB).
func BenchmarkAllAnalyzers1024Ranks(b *testing.B) {
	benchAll(b, benchJob(b, b.TempDir(), benchHosts, 60))
}

// BenchmarkWindowScaling shows that peak memory does not grow with the
// length of the capture: the same 128 ranks over 60 s, 300 s and 900 s.
func BenchmarkWindowScaling(b *testing.B) {
	for _, secs := range []int{60, 300, 900} {
		b.Run(fmt.Sprintf("window=%ds", secs), func(b *testing.B) {
			benchAll(b, benchJob(b, b.TempDir(), 16, secs))
		})
	}
}

// benchAll measures Run(All) over in: wall and CPU time, peak live heap.
func benchAll(b *testing.B, in *Input) {
	// Skipped Kineto analyzers log once per run; not what is measured here.
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.DiscardHandler))
	// Twice: the first moves the generator's pooled zstd encoders to the
	// pools' victim caches, the second frees them.
	runtime.GC()
	runtime.GC()
	var peak uint64
	var findings int
	cpu0 := cpuTime()
	for b.Loop() {
		ph := startPeakHeap()
		fs, err := Run(context.Background(), in, All)
		peak = max(peak, ph.Stop())
		if err != nil {
			b.Fatal(err)
		}
		findings = len(fs)
	}
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
	b.ReportMetric(float64(findings), "findings")
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/op")
	// On a shared machine wall time includes waiting for a CPU; CPU time
	// does not.
	b.ReportMetric((cpuTime()-cpu0).Seconds()/float64(b.N), "cpu-s/op")
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
