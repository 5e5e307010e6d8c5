package daemon

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/agent/nccl/nccltest"
	"github.com/loupe-dev/loupe/traces"
)

// findBundle waits for a committed bundle of job whose trigger is kind.
func findBundle(t *testing.T, cfg Config, job, kind string, within time.Duration) (*traces.Manifest, string) {
	t.Helper()
	root := filepath.Join(strings.TrimPrefix(cfg.Store, "file://"), "v1", cfg.Cluster, job)
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		found, _ := filepath.Glob(filepath.Join(root, "*", "*", cfg.Host, traces.ManifestName))
		for _, f := range found {
			m, err := traces.ReadDir(filepath.Dir(f), traces.DefaultMaxPartSize)
			if err == nil && m.Trigger.Kind == kind {
				return m, filepath.Dir(f)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no %s bundle of job %s under %s within %v", kind, job, root, within)
	return nil, ""
}

// The whole agent on a 4-rank job (launched with SLURM_JOB_ID, RANK,
// WORLD_SIZE) whose rank 2 stops calling collectives while the job's log
// reports a watchdog timeout: a hang capture arrives in the store with the
// hang report (rank 2 missing, its stack), the stall's NCCL calls, GPU
// samples and log faults, and the CPU profile of the stuck processes.
func TestHangCapture(t *testing.T) {
	s := nccltest.Build(t)
	cfg := testConfig(t)
	cfg.SimulateGPUs = 2
	cfg.CPU.Enabled, cfg.NCCL.Enabled = true, true
	cfg.NCCL.ScanInterval, cfg.NCCL.StepInterval = 50*time.Millisecond, time.Hour
	cfg.NCCL.Libraries = []string{s.Dir()}
	cfg.Hang.Timeout, cfg.Hang.CheckInterval, cfg.Hang.Lookback = 2*time.Second, 200*time.Millisecond, 30*time.Second
	logFile := filepath.Join(t.TempDir(), "train.log")
	if err := os.WriteFile(logFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Logs.Files = []string{logFile}
	// The job runs before the agent starts, as after an agent restart;
	// ranks 0 and 2 have the two simulated GPUs, so the hang capture
	// carries those GPUs' samples.
	j := nccltest.StartJob(t, s.Rank, "ranks", 4, 1000, -1, 0, []string{"SLURM_JOB_ID=hangjob"}, func(r int) []string {
		return []string{"NCCLRANK_STALL_RANK=2", "NCCLRANK_STALL_AT=20"}
	})
	defer j.Kill()
	cfg.GPU.Sim.PIDs = []int{j.Procs[0].Cmd.Process.Pid, j.Procs[2].Cmd.Process.Pid}
	d := start(t, cfg)
	waitUntil(t, "the tracer to find the ranks", func() bool { return len(d.nccl.Processes()) >= 4 })
	j.Touch(t, "go")
	time.Sleep(time.Second)
	f, err := os.OpenFile(logFile, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=140, OpType=ALLREDUCE, NumelIn=1048576, NumelOut=1048576, Timeout(ms)=1000) ran for 1002 milliseconds before timing out.\n")
	f.Close()

	m, dir := findBundle(t, cfg, "hangjob", traces.TriggerNCCLHang, 60*time.Second)
	if m.WorldSize != 0 || !slices.Equal(m.Ranks, []int{0, 1, 2, 3}) || !strings.Contains(m.Trigger.Reason, "rank 2 outside NCCL never arrived at collective 140") {
		t.Fatalf("manifest %+v", m)
	}
	for _, p := range []string{traces.PartNCCLHang, traces.PartNCCLEvents, traces.PartGPUSamples, traces.PartEvents, traces.PartCPUProfile} {
		if _, ok := m.Part(p); !ok {
			t.Errorf("hang bundle lacks %s: %+v", p, m.Parts)
		}
	}
	data, err := os.ReadFile(filepath.Join(dir, traces.PartNCCLHang))
	if err != nil {
		t.Fatal(err)
	}
	var rep traces.NCCLHang
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	var stuck traces.NCCLHangRank
	for _, rk := range rep.Ranks {
		if rk.Rank == 2 {
			stuck = rk
		}
	}
	if rep.State != traces.HangStateHung || rep.Seq != 140 || rep.WorldSize != 4 || stuck.State != traces.HangRankMissing || stuck.InNCCL ||
		len(stuck.Stack) == 0 || stuck.Stack[0] != "stuck_outside_nccl" {
		t.Fatalf("report %+v, rank 2 %+v: want rank 2 missing at collective 140, spinning in stuck_outside_nccl", rep, stuck)
	}
	events, err := os.ReadFile(filepath.Join(dir, traces.PartEvents))
	if err != nil || !strings.Contains(string(events), traces.EventNCCLWatchdog) {
		t.Errorf("events %s (%v): want the watchdog fault", events, err)
	}
	rows := readRows[traces.NCCLEvent](t, dir, traces.PartNCCLEvents)
	if len(rows) < 100 {
		t.Errorf("%d NCCL rows in a hang capture looking back 30 s", len(rows))
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
