package goodput

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces"
)

// Benchmark shape: a fleet of jobs of benchRanks ranks, each with 30 days
// of 1 s steps kept as the agent keeps them (a 2000-step head, then at
// most 1000 rows merged pairwise: rows of 4096 steps after 30 days), a
// checkpoint every 2000 steps, a restart on every other job, and a capture
// window a day.
const (
	benchJobs     = 1000
	benchRanks    = 8
	benchDays     = 30
	benchHead     = 2000
	benchStride   = 4096
	benchVariants = 8 // distinct histories, written once, read by every job in turn
)

// benchHistory builds a 30-day step history of benchRanks ranks directly as
// rows (stepping 2.6 million steps per rank would dwarf what is measured).
func benchHistory(variant int) []traces.StepSpan {
	steps := int64(benchDays * 86400)
	var out []traces.StepSpan
	for rank := range int32(benchRanks) {
		at := t0.UnixNano()
		restartAt := int64(-1)
		if variant%2 == 1 {
			restartAt = steps / 3 // the process dies a third of the way in
		}
		pid := int32(100 + rank)
		emit := func(first int64, n int64) {
			d := int64(0)
			longest := int64(1050 * time.Millisecond)
			for it := first; it < first+n; it++ {
				if it > 0 && it%2000 == 0 {
					d += 110e9
					longest = 111e9
				}
			}
			jitter := int64(20e6 * math.Sin(float64(first+int64(rank)+int64(variant))))
			d += n*int64(time.Second) + jitter
			out = append(out, traces.StepSpan{Rank: rank, PID: pid, FirstIteration: first, Steps: int32(n), StartNs: at, EndNs: at + d,
				MinNs: int64(950 * time.Millisecond), MaxNs: longest, Source: traces.StepSourceMarker})
			at += d
		}
		for it := int64(0); it < steps; {
			n := int64(1)
			if it >= benchHead {
				n = min(benchStride, steps-it)
			}
			if restartAt > 0 && it < restartAt && it+n > restartAt {
				n = restartAt - it
			}
			emit(it, n)
			it += n
			if it == restartAt {
				// 1200 steps since the last save are lost; 3 minutes down.
				it = it/2000*2000 + 1
				at += 180e9
				pid += 1000
				restartAt = -1
			}
		}
	}
	return out
}

// benchWindows are a day's capture windows with 3 % straggler wait.
func benchWindows() []Window {
	var ws []Window
	for d := range benchDays {
		start := t0.Add(time.Duration(d)*24*time.Hour + 12*time.Hour)
		ws = append(ws, Window{Start: start, End: start.Add(30 * time.Second),
			Shares:   map[string]float64{traces.CauseStraggler: 0.03, traces.CauseDataStall: 0.01},
			Measured: map[string]bool{traces.CauseStraggler: true, traces.CauseDataStall: true}})
	}
	return ws
}

// cpuSeconds is the process's user and system CPU time so far.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// peakRSS resets (clear_refs 5) or reads (VmHWM) the process's peak RSS.
func peakRSS(reset bool) float64 {
	if reset {
		os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
		return 0
	}
	data, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// BenchmarkFleet30Days computes the goodput of 1000 jobs from 30 days of
// step history each, read from committed bundles (Parquet decode included),
// GOMAXPROCS jobs at a time. Run it with -cpu 2 for the 2 cores.
func BenchmarkFleet30Days(b *testing.B) {
	dir := b.TempDir()
	var dirs []string
	rows := 0
	for v := range benchVariants {
		hist := benchHistory(v)
		rows += len(hist)
		m := traces.Manifest{CaptureID: fmt.Sprintf("cap-%d", v), Cluster: "c1", Job: fmt.Sprintf("job-%d", v), Run: "r1", Host: "node-1",
			Start: t0.Add(benchDays * 24 * time.Hour), End: t0.Add(benchDays*24*time.Hour + 30*time.Second), AgentVersion: "bench"}
		for r := range benchRanks {
			m.Ranks = append(m.Ranks, r)
			m.Processes = append(m.Processes, traces.Process{PID: 100 + r, Rank: r, Started: t0.Add(-5 * time.Minute)})
			m.GPUs = append(m.GPUs, traces.GPUInfo{Index: r, Name: "NVIDIA H100 80GB HBM3", Ranks: []int{r}})
		}
		d := filepath.Join(dir, m.Job)
		w, err := traces.NewBundleWriter(d, m)
		if err != nil {
			b.Fatal(err)
		}
		if err := traces.WriteTable(w, traces.PartStepHistory, hist); err != nil {
			b.Fatal(err)
		}
		if _, err := w.Commit(); err != nil {
			b.Fatal(err)
		}
		dirs = append(dirs, d)
	}
	windows := benchWindows()
	ctx := context.Background()
	one := func(job int) error {
		h, err := analyzers.HostFromDir(dirs[job%len(dirs)])
		if err != nil {
			return err
		}
		g, err := FromCapture(ctx, &analyzers.Input{Hosts: []analyzers.Host{h}}, nil, windows, Options{FLOPsPerStep: 8 * 400e12})
		if err == nil && (g.Restarts != job%2 || g.Cause(traces.CauseCheckpoint).Share < 0.03) {
			err = fmt.Errorf("job %d: restarts %d, checkpoint %.3f: not the history written", job, g.Restarts, g.Cause(traces.CauseCheckpoint).Share)
		}
		return err
	}
	if err := one(1); err != nil {
		b.Fatal(err)
	}
	// Peak heap, sampled while the jobs run.
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var peakHeap atomic.Uint64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for {
			metrics.Read(sample)
			if v := sample[0].Value.Uint64(); v > peakHeap.Load() {
				peakHeap.Store(v)
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	})
	runtime.GC()
	peakRSS(true)
	cpu0 := cpuSeconds()
	b.ResetTimer()
	for range b.N {
		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, runtime.GOMAXPROCS(0))
		for range runtime.GOMAXPROCS(0) {
			wg.Go(func() {
				for job := int(next.Add(1) - 1); job < benchJobs; job = int(next.Add(1) - 1) {
					if err := one(job); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	cpu := cpuSeconds() - cpu0
	close(stop)
	sampler.Wait()
	perJob := float64(rows) / benchVariants
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e9, "s/1000jobs")
	// CPU time, which a machine busy with other work does not inflate.
	b.ReportMetric(cpu/float64(b.N), "cpu-s/1000jobs")
	b.ReportMetric(perJob*benchJobs*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(perJob, "rows/job")
	b.ReportMetric(float64(peakHeap.Load())/(1<<20), "peak-heap-MiB")
	b.ReportMetric(peakRSS(false), "peak-RSS-MiB")
}
