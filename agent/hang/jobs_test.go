package hang

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/agent/cpuprof"
	"github.com/loupe-dev/loupe/agent/nccl"
	"github.com/loupe-dev/loupe/agent/nccl/nccltest"
	"github.com/loupe-dev/loupe/traces"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// live runs the real NCCL tracer, the real CPU profiler and a detector
// with a short timeout until the test ends; hangs arrive on the channel.
// The job's ranks start once the tracer traces them all.
func live(t *testing.T, timeout time.Duration, j *nccltest.Job) (<-chan *Hang, *cpuprof.Profiler) {
	t.Helper()
	ncfg := nccl.DefaultConfig()
	ncfg.ScanInterval, ncfg.DetachAfter, ncfg.PluginSocket = 20*time.Millisecond, 0, ""
	ncfg.Libraries = []string{nccltest.Build(t).Dir()} // not other packages' tests, run at the same time
	tr, err := nccl.New(ncfg, quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	prof, err := cpuprof.New(cpuprof.DefaultConfig(), quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Timeout, cfg.CheckInterval = timeout, 100*time.Millisecond
	hangs := make(chan *Hang, 8)
	d := New(cfg, tr, nil, func(h *Hang) { hangs <- h }, quiet, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 3)
	for _, run := range []func(context.Context) error{tr.Run, prof.Run, d.Run} {
		go func() { run(ctx); done <- struct{}{} }()
	}
	t.Cleanup(func() {
		cancel()
		for range 3 {
			<-done
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for len(tr.Processes()) < len(j.Procs) {
		if time.Now().After(deadline) {
			t.Fatalf("the tracer found %d of %d ranks", len(tr.Processes()), len(j.Procs))
		}
		time.Sleep(10 * time.Millisecond)
	}
	j.Touch(t, "go")
	return hangs, prof
}

func waitHang(t *testing.T, hangs <-chan *Hang, within time.Duration) *Hang {
	t.Helper()
	select {
	case h := <-hangs:
		return h
	case <-time.After(within):
		t.Fatalf("no hang reported within %v", within)
	}
	return nil
}

// byRank indexes a report's ranks.
func byRank(r traces.NCCLHang) map[int]traces.NCCLHangRank {
	out := map[int]traces.NCCLHangRank{}
	for _, rk := range r.Ranks {
		out[rk.Rank] = rk
	}
	return out
}

// A 4-rank job whose rank 2 stops calling collectives at iteration 5 and
// spins in its own code: the others enter collective 35 and wait. The
// hang is reported once the timeout passed, naming rank 2 as missing and
// outside NCCL, and the stack sample taken at once shows where it spins.
func TestHangOutsideNCCL(t *testing.T) {
	s := nccltest.Build(t)
	j := nccltest.StartJob(t, s.Rank, "ranks", 4, 1000, -1, 0, nil, func(r int) []string {
		return []string{"NCCLRANK_STALL_RANK=2", "NCCLRANK_STALL_AT=5"}
	})
	defer j.Kill()
	hangs, prof := live(t, 2*time.Second, j)
	h := waitHang(t, hangs, 60*time.Second)
	w := prof.StartWindow(h.PIDs)
	time.Sleep(2 * time.Second)
	p, err := w.Stop()
	if err != nil {
		t.Fatal(err)
	}
	r := h.Finish(p)
	t.Logf("%s", h.Reason())
	ranks := byRank(r)
	if r.Seq != 35 || r.Op != "AllReduce" || len(ranks) != 4 {
		t.Fatalf("report %+v: want collective 35, an AllReduce, 4 ranks", r)
	}
	stuck := ranks[2]
	if stuck.State != traces.HangRankMissing || stuck.InNCCL || stuck.LastSeq != 34 {
		t.Fatalf("rank 2 %+v: want missing after collective 34, outside NCCL", stuck)
	}
	if len(stuck.Stack) == 0 || stuck.Stack[0] != "stuck_outside_nccl" {
		t.Errorf("rank 2's stack %v, want it spinning in stuck_outside_nccl", stuck.Stack)
	}
	if len(stuck.Threads) == 0 || stuck.Threads[0].State != "R" {
		t.Errorf("rank 2's threads %+v, want its main thread running", stuck.Threads)
	}
	for _, rk := range []int{0, 1, 3} {
		if ranks[rk].State != traces.HangRankArrived || ranks[rk].LastSeq < 35 {
			t.Errorf("rank %d %+v: want arrived at collective 35", rk, ranks[rk])
		}
	}
	if !strings.Contains(h.Reason(), "rank 2 outside NCCL never arrived at collective 35") {
		t.Errorf("reason %q", h.Reason())
	}
}

// Rank 2 blocks inside its ncclAllReduce of collective 35: missing (its
// call never returned: nothing was enqueued), stuck inside NCCL in that
// call, asleep.
func TestHangInsideNCCL(t *testing.T) {
	s := nccltest.Build(t)
	j := nccltest.StartJob(t, s.Rank, "ranks", 4, 1000, -1, 0, nil, func(r int) []string {
		if r == 2 {
			return []string{"NCCL_STANDIN_HANG_CALL=" + strconv.Itoa(35+1)}
		}
		return nil
	})
	defer j.Kill()
	hangs, _ := live(t, 2*time.Second, j)
	h := waitHang(t, hangs, 60*time.Second)
	stuck := byRank(h.Report)[2]
	t.Logf("%s", h.Reason())
	if stuck.State != traces.HangRankMissing || !stuck.InNCCL || !strings.HasPrefix(stuck.InCall, "AllReduce (collective 35) since") {
		t.Fatalf("rank 2 %+v: want missing, inside NCCL's AllReduce of collective 35", stuck)
	}
	asleep := false
	for _, th := range stuck.Threads {
		asleep = asleep || th.State == "S" && th.Syscall != "" && th.PC != ""
	}
	if !asleep {
		t.Errorf("rank 2's threads %+v: want one asleep in a system call, with its user PC", stuck.Threads)
	}
}

// Rank 2 stalls for 5 s with a 2 s timeout: a hang, then its recovery
// with the same id; then a job whose rank 2 sleeps 20 ms before every
// collective (the others wait for it at every iteration) is never
// reported.
func TestHangRecoversAndSlowJobDoesNot(t *testing.T) {
	s := nccltest.Build(t)
	j := nccltest.StartJob(t, s.Rank, "ranks", 4, 1000, -1, 0, []string{"NCCLRANK_UNTIL_STOP=1"}, func(r int) []string {
		return []string{"NCCLRANK_STALL_RANK=2", "NCCLRANK_STALL_AT=5", "NCCLRANK_STALL_MS=5000"}
	})
	defer j.Kill()
	hangs, _ := live(t, 2*time.Second, j)
	h := waitHang(t, hangs, 60*time.Second)
	back := waitHang(t, hangs, 60*time.Second)
	j.Stop(t)
	if h.Report.State != traces.HangStateHung || back.Report.State != traces.HangStateRecovered || back.Report.ID != h.Report.ID ||
		!back.Report.Recovered.After(h.Report.Detected) {
		t.Fatalf("hang %+v then %+v: want the hang, then its recovery", h.Report, back.Report)
	}

	slow := nccltest.StartJob(t, s.Rank, "ranks", 4, 1000, 2, 20000, []string{"NCCLRANK_NO_GO=1", "NCCLRANK_UNTIL_STOP=1"}, nil)
	defer slow.Kill()
	select {
	case h := <-hangs:
		t.Fatalf("a slow job was reported: %s", h.Reason())
	case <-time.After(6 * time.Second):
	}
	slow.Stop(t)
}
