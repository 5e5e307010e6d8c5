package nccl

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/agent/nccl/nccltest"
	bpfnccl "github.com/loupe-dev/loupe/bpf/nccl"
	"github.com/loupe-dev/loupe/traces"
)

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// idleCPU is the agent's CPU per second with no NCCL process to trace
// (scans, timers): what a benchmark's window costs whatever it does.
func idleCPU(b *testing.B) float64 {
	b.Helper()
	c0, t0 := cpuTime(b), time.Now()
	time.Sleep(2 * time.Second)
	return float64(cpuTime(b)-c0) / time.Since(t0).Seconds()
}

// reportAgentCPU reports the agent's CPU per 1000 calls over a window of
// elapsed, as measured and less the idle cost.
func reportAgentCPU(b *testing.B, cpu time.Duration, elapsed time.Duration, idle float64) {
	b.ReportMetric(float64(cpu.Microseconds())*1000/float64(b.N), "agent-cpu-us/1000calls")
	net := float64(cpu) - idle*elapsed.Seconds()
	b.ReportMetric(max(net, 0)/1e3*1000/float64(b.N), "net-agent-cpu-us/1000calls")
}

// runBench runs b.N back-to-back ncclAllReduce calls in the stand-in (no
// simulated enqueue cost) and returns the program's CPU ns per call, which
// includes the kernel's probe handling and is little affected by other
// load on the machine.
func runBench(b *testing.B, s nccltest.StandIn, dir string, started func(pid int), done func()) float64 {
	b.Helper()
	return runBenchProgram(b, s.Rank, nil, dir, started, done)
}

// runBenchProgram is runBench with another build of ncclrank and more
// environment.
func runBenchProgram(b *testing.B, bin string, env []string, dir string, started func(pid int), done func()) float64 {
	b.Helper()
	p := nccltest.Start(b, append([]string{"NCCL_STANDIN_ENQUEUE_US=0"}, env...), bin, "bench", dir, strconv.Itoa(b.N))
	if started != nil {
		started(p.Cmd.Process.Pid)
	}
	b.ResetTimer()
	nccltest.Touch(b, filepath.Join(dir, "go"))
	if done != nil {
		done()
	}
	b.StopTimer()
	nccltest.Touch(b, filepath.Join(dir, "exit"))
	p.Wait(b)
	ns, err := strconv.ParseFloat(strings.TrimSpace(p.Stdout.String()), 64)
	if err != nil {
		b.Fatalf("bench output %q: %v", p.Stdout.String(), err)
	}
	return ns / float64(b.N)
}

// BenchmarkCallUntraced is the stand-in's cost per call with no probes: the
// baseline for the traced figure below.
func BenchmarkCallUntraced(b *testing.B) {
	s := nccltest.Build(b)
	b.ReportMetric(runBench(b, s, b.TempDir(), nil, nil), "cpu-ns/call")
}

// BenchmarkRingBuffer pushes b.N calls through the uprobes and the ring
// buffer into the tracer, with the default scan interval. It reports the
// events per second delivered, the agent's CPU per 1000 collectives (the
// whole test process: ring buffer reader, decoding, buffering, scans), the
// traced process's cost per call (compare with BenchmarkCallUntraced) and
// records lost to a full ring buffer.
func BenchmarkRingBuffer(b *testing.B) {
	s := nccltest.Build(b)
	set := metrics.NewSet()
	tr := startTracerConfig(b, DefaultConfig(), set)
	events := set.GetOrCreateCounter(`loupe_nccl_events_total{op="AllReduce"}`)
	dir := b.TempDir()
	var (
		cpu0, cpu1 time.Duration
		elapsed    time.Duration
		lost       uint64
	)
	idle := idleCPU(b)
	perCall := runBench(b, s, dir,
		func(pid int) {
			waitFor(b, "attach", func() bool { _, ok := tracedPIDs(tr)[pid]; return ok })
			cpu0 = cpuTime(b)
		},
		func() {
			start := time.Now()
			deadline := start.Add(time.Minute + time.Duration(b.N)*10*time.Microsecond)
			for i := 0; ; i++ {
				if i%10 == 0 { // a map lookup is a syscall: not every poll
					lost, _ = tr.objs.Lost()
				}
				if events.Get()+lost >= uint64(b.N) {
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("%d of %d events after %v", events.Get(), b.N, time.Since(start))
				}
				time.Sleep(2 * time.Millisecond)
			}
			elapsed = time.Since(start)
			cpu1 = cpuTime(b)
		})
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	reportAgentCPU(b, cpu1-cpu0, elapsed, idle)
	b.ReportMetric(perCall, "traced-cpu-ns/call")
	b.ReportMetric(float64(lost), "lost")
}

// BenchmarkDeliver is the user-space cost of one event: decoding the record,
// converting it, buffering it and fanning it out to one subscriber.
func BenchmarkDeliver(b *testing.B) {
	tr := &Tracer{opEvents: map[bpfnccl.Op]*metrics.Counter{}, comms: map[commKey]*Comm{}, ranks: map[int32]procRank{}, recent: newRing[record](1 << 17),
		subs: map[int]chan traces.NCCLEvent{}}
	set := metrics.NewSet()
	for _, op := range bpfnccl.Ops() {
		tr.opEvents[op] = set.GetOrCreateCounter(`x{op="` + op.String() + `"}`)
	}
	tr.subDropped = set.GetOrCreateCounter("dropped")
	ch, cancel := tr.Subscribe(1 << 10)
	defer cancel()
	rec := make([]byte, bpfnccl.EventSize)
	rec[80] = byte(bpfnccl.OpAllReduce)
	rec[16] = 0x10 // comm handle
	var ev bpfnccl.Event
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := bpfnccl.ParseEvent(rec, &ev); err != nil {
			b.Fatal(err)
		}
		ev.Seq = int64(i)
		tr.deliver(&ev)
		select {
		case <-ch:
		default:
		}
	}
}

// BenchmarkScan is one /proc scan of this machine in steady state (each
// iteration advances the clock by one scan interval, so processes without
// NCCL are re-read with their backoff). Divide by the scan interval for the
// share of a core.
func BenchmarkScan(b *testing.B) {
	nccltest.Need(b, os.Geteuid() == 0, "loading eBPF needs root")
	cfg := DefaultConfig()
	tr, err := New(cfg, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	now := time.Now()
	tr.scan(now)
	for b.Loop() {
		now = now.Add(cfg.ScanInterval)
		tr.scan(now)
	}
	b.ReportMetric(float64(len(tr.procs)), "processes")
}

// untracedLib is a copy of the stand-in under a name the tracer does not
// take for NCCL, for ncclrank-dl: no uprobes, only the plugin if loaded.
func untracedLib(b *testing.B, s nccltest.StandIn) string {
	b.Helper()
	data, err := os.ReadFile(s.Lib)
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "libstandin-collectives.so")
	if err := os.WriteFile(path, data, 0o755); err != nil {
		b.Fatal(err)
	}
	return path
}

// pluginBench runs a tracer with cfg and a plugin socket, and returns the
// stand-in, its untraced copy, the socket and the tracer's metrics.
func pluginBench(b *testing.B, cfg Config) (nccltest.StandIn, string, string, *metrics.Set) {
	b.Helper()
	s := nccltest.Build(b)
	cfg.PluginSocket = filepath.Join(b.TempDir(), "plugin.sock")
	set := metrics.NewSet()
	startTracerConfig(b, cfg, set)
	return s, untracedLib(b, s), cfg.PluginSocket, set
}

// pluginBenchEnv runs the stand-in's simulated GPU with no simulated
// delays, and, with plugin set, Loupe's profiler plugin sending to socket.
func pluginBenchEnv(lib, plugin, socket string) []string {
	env := []string{"LOUPE_NCCL_LIB=" + lib, "NCCL_STANDIN_GPU=1", "NCCL_STANDIN_TRANSFER_US=0", "NCCL_STANDIN_PROXY_POLL_US=0"}
	if plugin != "" {
		env = append(env, "NCCL_PROFILER_PLUGIN="+plugin, "LOUPE_NCCL_PLUGIN_SOCKET="+socket)
	}
	return env
}

// BenchmarkPluginOverhead is what the profiler plugin costs the job per
// collective: b.N calls on the stand-in with its simulated GPU (whose proxy
// thread calls the plugin's kernel and proxy events), first without the
// plugin, then with it sending to a running receiver; CPU of the whole
// process (the calling thread, the proxy thread, the plugin's sender).
func BenchmarkPluginOverhead(b *testing.B) {
	s, lib, socket, set := pluginBench(b, testConfig())
	events := set.GetOrCreateCounter("loupe_nccl_plugin_events_total")
	base := runBenchProgram(b, s.RankDL, pluginBenchEnv(lib, "", ""), b.TempDir(), nil, nil)
	with := runBenchProgram(b, s.RankDL, pluginBenchEnv(lib, s.Plugin, socket), b.TempDir(), nil, nil)
	b.ReportMetric(base, "base-cpu-ns/call")
	b.ReportMetric(with, "plugin-cpu-ns/call")
	b.ReportMetric(with-base, "overhead-ns/call")
	b.ReportMetric(float64(events.Get()), "records")
}

// BenchmarkPluginReceiver is the agent's CPU per 1000 collectives on the
// plugin path alone (no uprobes on the job), with the default scan
// interval: b.N calls reported by the plugin, received, decoded and
// buffered.
func BenchmarkPluginReceiver(b *testing.B) {
	s, lib, socket, set := pluginBench(b, DefaultConfig())
	events := set.GetOrCreateCounter("loupe_nccl_plugin_events_total")
	lost := set.GetOrCreateCounter("loupe_nccl_plugin_lost_events_total")
	var cpu0, cpu1 time.Duration
	var began time.Time
	idle := idleCPU(b)
	perCall := runBenchProgram(b, s.RankDL, pluginBenchEnv(lib, s.Plugin, socket), b.TempDir(),
		func(int) { cpu0, began = cpuTime(b), time.Now() },
		func() {
			deadline := time.Now().Add(time.Minute + time.Duration(b.N)*20*time.Microsecond)
			for events.Get()+lost.Get() < uint64(b.N) {
				if time.Now().After(deadline) {
					b.Fatalf("%d of %d plugin records", events.Get(), b.N)
				}
				time.Sleep(50 * time.Millisecond) // the job is slow: polling less keeps the count honest
			}
			cpu1 = cpuTime(b)
		})
	reportAgentCPU(b, cpu1-cpu0, time.Since(began), idle)
	b.ReportMetric(perCall, "traced-cpu-ns/call")
	b.ReportMetric(float64(lost.Get()), "lost")
}
