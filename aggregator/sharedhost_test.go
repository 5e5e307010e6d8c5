package aggregator_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/agent/api"
	"github.com/loupe-dev/loupe/agent/daemon"
	"github.com/loupe-dev/loupe/agent/gpu"
	"github.com/loupe-dev/loupe/aggregator"
	aggapi "github.com/loupe-dev/loupe/aggregator/api"
	"github.com/loupe-dev/loupe/traces"
)

// sleeper starts a process of job job (its environment names it, as Slurm
// does) that lives until the test ends.
func sleeper(t *testing.T, job string) int {
	t.Helper()
	cmd := exec.Command("sleep", "300")
	cmd.Env = append(os.Environ(), "SLURM_JOB_ID="+job, "RANK=0", "LOCAL_RANK=0", "WORLD_SIZE=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd.Process.Pid
}

// A shared host: the real agent on 8 simulated GPUs runs job gpu-job on
// GPU 2 and job cpu-job on no GPU; XID 79 hits GPU 2 and GPU 5 (which no
// job uses). The real aggregator finds GPU 2's fault for gpu-job alone;
// cpu-job gets no finding and no GPU, and nothing about GPU 5 is
// anyone's job finding.
func TestSharedHostFindingsGoToTheGPUsJob(t *testing.T) {
	dir := t.TempDir()
	storeURL := "file://" + filepath.Join(dir, "store")
	gpuPID, cpuPID := sleeper(t, "gpu-job"), sleeper(t, "cpu-job")

	cfg := daemon.DefaultConfig()
	cfg.MetricsAddr, cfg.APIAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Store, cfg.SpoolDir, cfg.Host, cfg.Cluster = storeURL, filepath.Join(dir, "spool"), "shared-1", "c1"
	cfg.Upload.Interval = 100 * time.Millisecond
	cfg.CPU.Enabled, cfg.NCCL.Enabled, cfg.Kineto.Enabled = false, false, false
	cfg.Attribution.PodResourcesSocket = filepath.Join(dir, "no-kubelet.sock")
	cfg.Trigger.Disabled = true
	cfg.SimulateGPUs = 8
	cfg.GPU.Sim = gpu.SimOptions{
		PIDs: []int{0, 0, gpuPID, 0, 0, 0, 0, 0},
		XIDs: []gpu.SimXID{{GPU: 2, Code: 79, After: 300 * time.Millisecond}, {GPU: 5, Code: 79, After: 300 * time.Millisecond}},
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := daemon.New(ctx, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { d.Run(ctx) })

	c := &api.Client{Addr: d.APIAddr()}
	if err := c.Step(ctx, api.StepRequest{Job: "cpu-job", Rank: 0, PID: cpuPID, Iteration: 1}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, job := range []string{"gpu-job", "cpu-job"} {
		// The agent knows gpu-job's process from its first GPU sample.
		var rep api.CaptureReply
		var err error
		waitFor(t, "a capture of "+job, func() bool {
			rep, err = c.Capture(ctx, api.CaptureRequest{Job: job, Duration: 1500 * time.Millisecond})
			return err == nil
		})
		ids = append(ids, rep.ID)
	}

	acfg := aggregator.DefaultConfig()
	acfg.Store, acfg.SweepInterval, acfg.LeaseTTL = storeURL, 50*time.Millisecond, 10*time.Second
	base, _ := serveReplica(t, acfg)
	for i, job := range []string{"gpu-job", "cpu-job"} {
		waitFor(t, job+"'s capture analyzed", func() bool {
			var resp aggapi.CaptureResponse
			r, err := http.Get(base + "/api/v1/captures/c1/" + job + "/default/" + ids[i])
			if err != nil {
				return false
			}
			defer r.Body.Close()
			return r.StatusCode == 200 && json.NewDecoder(r.Body).Decode(&resp) == nil && resp.Record != nil
		})
	}

	var gpuJob, cpuJob aggapi.FindingsResponse
	getJSON(t, base+"/api/v1/findings?job=gpu-job", http.StatusOK, &gpuJob)
	getJSON(t, base+"/api/v1/findings?job=cpu-job", http.StatusOK, &cpuJob)
	var fault bool
	for _, f := range gpuJob.Findings {
		if f.Scope.GPU >= 0 && f.Scope.GPU != 2 {
			t.Errorf("gpu-job has a finding about GPU %d, which it does not use: %s (%s)", f.Scope.GPU, f.Title, f.Scope)
		}
		if f.Analyzer == "hw-faults" && f.Scope.GPU == 2 && !f.Scope.HostWide {
			fault = true
		}
	}
	if !fault {
		t.Errorf("gpu-job lacks the XID finding on its GPU 2: %+v", gpuJob.Findings)
	}
	for _, f := range cpuJob.Findings {
		if f.Scope.GPU >= 0 || strings.Contains(f.Title, "XID") || f.Analyzer == "hw-faults" || f.Analyzer == "throttle" {
			t.Errorf("cpu-job, which uses no GPU, got a GPU finding: %s (%s)", f.Title, f.Scope)
		}
	}
	var cpuCapture aggapi.CaptureResponse
	getJSON(t, base+"/api/v1/captures/c1/cpu-job/default/"+ids[1], http.StatusOK, &cpuCapture)
	for _, m := range cpuCapture.Manifests {
		if len(m.GPUs) != 0 {
			t.Errorf("cpu-job's bundle lists GPUs %+v", m.GPUs)
		}
		if _, ok := m.Part(traces.PartGPUSamples); ok {
			t.Error("cpu-job's bundle carries GPU samples")
		}
	}
}
