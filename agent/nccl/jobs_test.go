package nccl

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/agent/nccl/nccltest"
	"github.com/loupe-dev/loupe/traces"
)

// collectQuiet reads the rows of pids until at least least arrived and
// none came for half a second.
func collectQuiet(t *testing.T, ch <-chan traces.NCCLEvent, pids map[int32]int32, least int) []traces.NCCLEvent {
	t.Helper()
	var rows []traces.NCCLEvent
	deadline := time.After(30 * time.Second)
	for {
		select {
		case e := <-ch:
			if _, ok := pids[e.PID]; ok {
				rows = append(rows, e)
			}
		case <-time.After(500 * time.Millisecond):
			if len(rows) >= least {
				return rows
			}
		case <-deadline:
			t.Fatalf("got %d rows, want at least %d", len(rows), least)
		}
	}
}

// matched aligns rows the way a capture does.
func matched(rows []traces.NCCLEvent) ([]traces.NCCLEvent, traces.NCCLMatchSummary) {
	var m traces.NCCLMatcher
	for i := range rows {
		m.Add("", &rows[i])
	}
	sum := m.Match()
	for i := range rows {
		m.Apply("", &rows[i])
	}
	return rows, sum
}

// straggler is the rank Skew puts first for the communicator that most
// rows of the given op use.
func straggler(t *testing.T, rows []traces.NCCLEvent, op string) (RankSkew, []RankSkew) {
	t.Helper()
	n := map[uint64]int{}
	for _, e := range rows {
		if e.Op == op {
			n[e.CommID]++
		}
	}
	var comm uint64
	for id, c := range n {
		if c > n[comm] {
			comm = id
		}
	}
	var mine []RankSkew
	for _, sk := range Skew(rows) {
		if sk.CommID == comm {
			mine = append(mine, sk)
		}
	}
	if len(mine) == 0 {
		t.Fatalf("no skew for the %s communicator %x", op, comm)
	}
	return mine[0], mine
}

// The agent starts after a 4-rank job created its communicators: no init
// is seen, every row still carries the process's global rank, the calls
// are matched across ranks by their pattern, and the slow rank is named.
func TestTracerLateAttach(t *testing.T) {
	s := nccltest.Build(t)
	j := nccltest.StartJob(t, s.Rank, "ranks", 4, 0, 2, 4000, []string{"NCCLRANK_NO_GO=1", "NCCLRANK_UNTIL_STOP=1"}, nil)
	pids := j.PIDs()
	// The job runs a while without the agent: its inits are long gone.
	time.Sleep(500 * time.Millisecond)
	tr := startTracer(t, nil)
	waitFor(t, "the tracer to find every rank", func() bool { return len(tracedPIDs(tr)) >= 4 })
	attached := time.Now()
	time.Sleep(1500 * time.Millisecond)
	rows := tr.Events(attached, time.Now().Add(-100*time.Millisecond))
	j.Stop(t)

	var mine []traces.NCCLEvent
	for _, e := range rows {
		r, ok := pids[e.PID]
		if !ok {
			continue
		}
		if strings.HasPrefix(e.Op, "CommInit") {
			t.Fatalf("an init call was seen although the job started first: %+v", e)
		}
		if e.GlobalRank != r || e.WorldSize != 4 || e.CommID != 0 || e.Rank != -1 || e.Matched != "" || e.Source != traces.SourceUprobe {
			t.Fatalf("row %+v: want global rank %d of 4, communicator unknown", e, r)
		}
		mine = append(mine, e)
	}
	mine, sum := matched(mine)
	// Collectives run on one of the three communicators (Send and Recv on
	// another are not matched).
	if sum.Streams != 4 || sum.Matched != 4 || sum.Communicators != 1 {
		t.Fatalf("matching %+v, want the 4 ranks' streams of collectives matched into 1 communicator", sum)
	}
	top, all := straggler(t, mine, "AllReduce")
	for _, sk := range all {
		t.Logf("rank %d: mean lag %v, last in %d of %d", sk.Rank, time.Duration(sk.MeanLagNs), sk.LastArrivals, sk.Collectives)
	}
	if top.Rank != 2 || len(all) != 4 || top.MeanLagNs < int64(time.Millisecond) || top.LastArrivals < top.Collectives*8/10 {
		t.Fatalf("straggler %+v, want global rank 2, last in most collectives", top)
	}
}

// A job that starts half a second after the agent is found through the
// exec hook and its loader's probe, not the /proc scan (here it scans
// once, at start), and its slow rank is named.
func TestTracerJobStartsAfterAgent(t *testing.T) {
	s := nccltest.Build(t)
	set := metrics.NewSet()
	cfg := testConfig()
	cfg.ScanInterval = time.Hour
	tr := startTracerConfig(t, cfg, set)
	ch, cancel := tr.Subscribe(1 << 16)
	defer cancel()
	time.Sleep(500 * time.Millisecond)
	j := nccltest.StartJob(t, s.Rank, "ranks", 4, 40, 1, 3000, []string{"NCCLRANK_NO_GO=1"}, nil)
	pids := j.PIDs()
	waitFor(t, "the tracer to find every rank without a scan", func() bool { return len(tracedPIDs(tr)) >= 4 })
	rows := collectQuiet(t, ch, pids, 4*35*11)
	nccltest.Touch(t, filepath.Join(j.Dir, "exit"))
	for _, p := range j.Procs {
		p.Wait(t)
	}
	inits := 0
	for _, e := range rows {
		if strings.HasPrefix(e.Op, "CommInit") {
			inits++
		}
		if e.GlobalRank != pids[e.PID] {
			t.Fatalf("row %+v: want global rank %d", e, pids[e.PID])
		}
	}
	// The job races the attach: inits seen or not, the rank is named.
	t.Logf("%d of 12 init calls seen", inits)
	rows, _ = matched(rows)
	if top, _ := straggler(t, rows, "AllReduce"); top.Rank != 1 {
		t.Fatalf("straggler %+v, want global rank 1", top)
	}
	if !strings.Contains(metricsText(set), "loupe_nccl_load_events_total") ||
		strings.Contains(metricsText(set), "loupe_nccl_load_events_total 0\n") {
		t.Fatalf("no load events counted:\n%s", metricsText(set))
	}
}

// A data-parallel communicator split into tensor-parallel pairs, the
// agent running first: the pairs' communicators get ids from the split
// (equal within a pair, different across), and each pair names its own
// straggler by global rank.
func TestTracerSplit(t *testing.T) {
	s := nccltest.Build(t)
	tr := startTracer(t, nil)
	j := nccltest.StartJob(t, s.Rank, "split", 4, 30, 1, 3000, []string{"NCCLRANK_TP_SLOW_RANKS=2"}, nil)
	pids := j.PIDs()
	waitFor(t, "the tracer to find every rank", func() bool { return len(tracedPIDs(tr)) >= 4 })
	ch, cancel := tr.Subscribe(1 << 16)
	defer cancel()
	nccltest.Touch(t, filepath.Join(j.Dir, "go"))
	rows := collectQuiet(t, ch, pids, 4*(2+30*4))
	if len(rows) != 4*(2+30*4) {
		t.Fatalf("%d rows, want %d", len(rows), 4*(2+30*4))
	}
	nccltest.Touch(t, filepath.Join(j.Dir, "exit"))
	for _, p := range j.Procs {
		p.Wait(t)
	}
	pairOf := map[int32]uint64{}
	for _, e := range rows {
		if e.Op == "CommSplit" {
			if e.Matched != traces.MatchSplit || e.CommID == 0 || e.Peer != e.GlobalRank/2 {
				t.Fatalf("split row %+v", e)
			}
			pairOf[e.GlobalRank] = e.CommID
		}
	}
	if len(pairOf) != 4 || pairOf[0] != pairOf[1] || pairOf[2] != pairOf[3] || pairOf[0] == pairOf[2] {
		t.Fatalf("pair ids by rank %v: want equal within a pair, different across", pairOf)
	}
	skews := map[uint64][]RankSkew{}
	for _, sk := range Skew(rows) {
		skews[sk.CommID] = append(skews[sk.CommID], sk)
	}
	for want, comm := range map[int32]uint64{1: pairOf[0], 2: pairOf[2]} {
		got := skews[comm]
		if len(got) != 2 || got[0].Rank != want || got[0].LastArrivals < got[0].Collectives*8/10 {
			t.Errorf("pair %x: skew %+v, want 2 ranks led by global rank %d", comm, got, want)
		}
	}
}

// The profiler plugin path: a job whose NCCL loads Loupe's plugin, with
// rank 1 late on the host (it sleeps before every collective) and rank 2
// late on the GPU (its kernels start 4 ms after their enqueue, as behind
// slow compute), its host on time. The plugin's records arrive over the
// socket and join the probes' rows: NCCL's commHash and numbering, GPU
// times converted from the GPU's clock into the run, algorithm and
// protocol, network waits on the ranks that waited for the others. By
// host arrival rank 1 is the straggler; by GPU start, rank 2. Run with the
// newest interface (v7) and with v4, as an older NCCL takes.
func TestTracerPlugin(t *testing.T) {
	s := nccltest.Build(t)
	for _, api := range []string{"7", "4"} {
		t.Run("v"+api, func(t *testing.T) {
			set := metrics.NewSet()
			cfg := testConfig()
			cfg.PluginSocket = filepath.Join(t.TempDir(), "plugin.sock")
			tr := startTracerConfig(t, cfg, set)
			waitFor(t, "the plugin socket", func() bool { _, err := os.Stat(cfg.PluginSocket); return err == nil })
			began := time.Now()
			j := nccltest.StartJob(t, s.Rank, "ranks", 4, 25, 1, 1500, []string{
				"NCCL_PROFILER_PLUGIN=" + s.Plugin, "LOUPE_NCCL_PLUGIN_SOCKET=" + cfg.PluginSocket,
				"NCCL_STANDIN_PROFILER_VERSIONS=" + api,
			}, func(r int) []string {
				if r == 2 {
					return []string{"NCCL_STANDIN_KERNEL_DELAY_US=4000"}
				}
				return nil
			})
			pids := j.PIDs()
			waitFor(t, "the tracer to find every rank", func() bool { return len(tracedPIDs(tr)) >= 4 })
			nccltest.Touch(t, filepath.Join(j.Dir, "go"))
			// 3 inits, then per iteration 7 collectives, a group of Send
			// and Recv; the plugin reports each collective and p2p call.
			want := 4 * (25 * 7)
			records := set.GetOrCreateCounter("loupe_nccl_plugin_events_total")
			lost := set.GetOrCreateCounter("loupe_nccl_plugin_lost_events_total")
			deadline := time.Now().Add(time.Minute)
			for records.Get()+lost.Get() < 4*25*9 {
				if time.Now().After(deadline) {
					t.Fatalf("%d records and %d lost of %d", records.Get(), lost.Get(), 4*25*9)
				}
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(100 * time.Millisecond)
			nccltest.Touch(t, filepath.Join(j.Dir, "exit"))
			for _, p := range j.Procs {
				p.Wait(t)
			}
			ended := time.Now()
			rows := tr.Events(began, ended)
			var colls []traces.NCCLEvent
			comms := map[int32]uint64{}
			for _, e := range rows {
				if _, ok := pids[e.PID]; !ok || !e.IsCollective() {
					continue
				}
				if e.Source != traces.SourceBoth || e.Matched != traces.MatchPlugin || e.GlobalRank != pids[e.PID] {
					for _, p := range tr.plugin.between(0, 1<<62) {
						if p.pid == e.PID && p.op == e.Op && p.count == e.Count {
							t.Logf("record %+v", p)
						}
					}
					t.Fatalf("row %+v: want the probe's and the plugin's merged", e)
				}
				if e.GPUStartNs < e.TimeNs || e.GPUEndNs <= e.GPUStartNs || e.GPUEndNs > ended.UnixNano() {
					t.Fatalf("row %+v: GPU times not within the call and the run", e)
				}
				if e.Algo != "RING" || (e.Proto != "SIMPLE" && e.Proto != "LL") || e.NChannels != 2 {
					t.Fatalf("row %+v: want NCCL's algorithm, protocol and channels", e)
				}
				if e.Op == "AllReduce" && e.Count == 1<<20 {
					comms[e.GlobalRank] = e.CommID
				}
				colls = append(colls, e)
			}
			if len(colls) != want {
				t.Fatalf("%d merged collectives, want %d", len(colls), want)
			}
			for _, p := range tr.plugin.between(0, 1<<62) {
				if strconv.Itoa(int(p.api)) != api {
					t.Fatalf("record %+v came through profiler API v%d, want v%s", p, p.api, api)
				}
			}
			if len(comms) != 4 || comms[0] != comms[1] || comms[0] != comms[2] || comms[0] != comms[3] {
				t.Fatalf("commHash by rank %v: want one communicator", comms)
			}
			host, _ := straggler(t, colls, "AllReduce")
			gpu := make([]traces.NCCLEvent, len(colls))
			var netWait [4]int64
			for i, e := range colls {
				gpu[i] = e
				gpu[i].TimeNs = e.GPUStartNs
				netWait[e.GlobalRank] += e.NetWaitNs
			}
			onGPU, _ := straggler(t, gpu, "AllReduce")
			t.Logf("host straggler %+v, GPU straggler %+v, network waits %v", host, onGPU, netWait)
			if host.Rank != 1 || onGPU.Rank != 2 {
				t.Fatalf("straggler by host arrival %d, by GPU start %d; want 1 and 2", host.Rank, onGPU.Rank)
			}
			if netWait[2] >= netWait[0] {
				t.Errorf("the GPU-late rank waited %v on the network, rank 0 %v: want less", netWait[2], netWait[0])
			}
			text := metricsText(set)
			if !strings.Contains(text, "loupe_nccl_plugin_lost_events_total 0") || !strings.Contains(text, "loupe_nccl_plugin_bad_datagrams_total 0") {
				t.Errorf("plugin losses:\n%s", text)
			}
		})
	}
}
