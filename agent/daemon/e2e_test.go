package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/agent/api"
	"github.com/loupe-dev/loupe/agent/capture"
	"github.com/loupe-dev/loupe/agent/trigger"
	"github.com/loupe-dev/loupe/traces"
)

// postMarkers posts iterations from..to of (train, rank 0) from this
// process, stepping every 20ms in real time with exact marker times.
func postMarkers(t *testing.T, c *api.Client, base time.Time, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		at := base.Add(time.Duration(i) * 20 * time.Millisecond)
		time.Sleep(time.Until(at))
		if err := c.Step(context.Background(), api.StepRequest{Job: "train", Rank: 0, PID: os.Getpid(), Iteration: int64(i), Time: at}); err != nil {
			t.Fatal(err)
		}
	}
}

// The whole agent in-process: two simulated GPUs running this test's
// process, the real CPU profiler and NCCL tracer when eBPF is allowed,
// the Kineto endpoint, the spool, the uploader and a file:// store.
// Markers posted over the API settle, the stable-iteration trigger fires,
// and the committed bundle arrives in the store with every part.
func TestEndToEnd(t *testing.T) {
	root := os.Geteuid() == 0
	if !root && os.Getenv("CI") == "true" {
		t.Fatal("TestEndToEnd needs root in CI for the real eBPF CPU profiler and NCCL tracer")
	}
	cfg := testConfig(t)
	cfg.SimulateGPUs = 2
	cfg.GPU.Sim.PIDs = []int{os.Getpid()}
	cfg.CPU.Enabled, cfg.NCCL.Enabled, cfg.Kineto.Enabled = true, true, true
	cfg.Trigger = trigger.Config{AtIteration: 30, Window: 10, MaxCV: 0.1, Iterations: 10, Roundup: 10}
	// NCCL programs of other tests on this machine must not become jobs
	// that the trigger captures too.
	cfg.NCCL.StepInterval = time.Hour
	d := start(t, cfg)
	c := &api.Client{Addr: d.APIAddr()}
	ctx := context.Background()

	base := time.Now()
	postMarkers(t, c, base, 0, 55)

	// Iteration 30 is the first that may decide; 40 is the next multiple of 10.
	m, dir := waitBundle(t, cfg, "train", "default", "iter40-n10")
	if m.Trigger.Kind != traces.TriggerStableIteration || m.Trigger.StartIteration != 40 || m.Trigger.Iterations != 10 ||
		!strings.Contains(m.Trigger.Reason, "reached iteration 30") {
		t.Errorf("trigger %+v", m.Trigger)
	}
	if m.Cluster != "test" || m.Host != "host-a" || !m.Simulated || len(m.GPUs) != 2 || !slices.Equal(m.Ranks, []int{0}) || m.AgentVersion != Version {
		t.Errorf("manifest %+v", m)
	}
	if i := slices.IndexFunc(m.Processes, func(p traces.Process) bool { return p.PID == os.Getpid() }); i < 0 ||
		m.Processes[i].Rank != 0 || m.Processes[i].GPU != 0 || m.Processes[i].Comm == "" {
		t.Errorf("processes %+v lack this test (pid %d, rank 0, gpu 0)", m.Processes, os.Getpid())
	}
	// The simulated GPUs run go-nvml's DGX H100 mock: its driver and CUDA.
	if m.DriverVersion != "550.54.15" || m.CUDAVersion != "12.4" {
		t.Errorf("driver %q CUDA %q, want the mock's 550.54.15 and 12.4", m.DriverVersion, m.CUDAVersion)
	}
	if want, got := base.Add(40*20*time.Millisecond), m.Start; got.Sub(want).Abs() > 5*time.Millisecond {
		t.Errorf("window starts %v, want when iteration 40 began (%v)", got, want)
	}
	if want, got := base.Add(50*20*time.Millisecond), m.End; got.Sub(want).Abs() > 5*time.Millisecond {
		t.Errorf("window ends %v, want when iteration 50 began (%v)", got, want)
	}
	wantParts := []string{traces.PartGPUSamples, traces.PartSteps, traces.PartEvents}
	if root {
		wantParts = append(wantParts, traces.PartCPUProfile, traces.PartNCCLEvents)
	}
	for _, p := range wantParts {
		if _, ok := m.Part(p); !ok {
			t.Errorf("bundle lacks %s (parts %+v, notes %q)", p, m.Parts, m.Notes)
		}
	}
	if !slices.ContainsFunc(m.Notes, func(n string) bool { return strings.HasPrefix(n, "kineto traces: no Kineto process of job train") }) {
		t.Errorf("notes %q lack the Kineto one", m.Notes)
	}
	var its []int64
	for _, s := range readRows[traces.Step](t, dir, traces.PartSteps) {
		if s.Source != traces.StepSourceMarker || int(s.PID) != os.Getpid() {
			t.Errorf("step %+v", s)
		}
		its = append(its, s.Iteration)
	}
	for i := int64(40); i < 50; i++ {
		if !slices.Contains(its, i) {
			t.Errorf("steps %v lack iteration %d", its, i)
		}
	}
	perGPU := map[int32]int{}
	for _, s := range readRows[traces.GPUSample](t, dir, traces.PartGPUSamples) {
		if s.TimeNs < m.Start.UnixNano() || s.TimeNs > m.End.UnixNano() {
			t.Errorf("GPU sample at %v outside the window", time.Unix(0, s.TimeNs))
		}
		perGPU[s.GPU]++
	}
	// 200ms at the steady 1 Hz would give at most one sample per GPU.
	if perGPU[0] < 3 || perGPU[1] < 3 {
		t.Errorf("GPU samples per device %v: the capture rate was not raised", perGPU)
	}

	// The automatic capture happens once per run.
	if got := d.capturer.List(); len(got) != 1 {
		t.Errorf("captures %+v, want just the automatic one", got)
	}

	// On demand, by job and duration.
	rep, err := c.Capture(ctx, api.CaptureRequest{Job: "train", Duration: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Processes) != 1 || rep.Processes[0].PID != os.Getpid() || !strings.Contains(rep.Message, "1 processes: pid") {
		t.Errorf("reply %+v", rep)
	}
	m, _ = waitBundle(t, cfg, "train", "default", rep.ID)
	if m.Trigger.Kind != traces.TriggerOnDemand || m.End.Sub(m.Start) < 300*time.Millisecond {
		t.Errorf("on-demand manifest %+v", m)
	}

	// On demand, by iterations: the job is at 55, so it starts at 60.
	rep, err = c.Capture(ctx, api.CaptureRequest{Job: "train", Iterations: 5})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ID != "od-iter60-n5" || rep.StartIteration != 60 || rep.State != capture.StateWaiting {
		t.Errorf("iteration reply %+v", rep)
	}
	postMarkers(t, c, base, 56, 66)
	m, _ = waitBundle(t, cfg, "train", "default", "od-iter60-n5")
	if m.Trigger.StartIteration != 60 || m.Trigger.Iterations != 5 {
		t.Errorf("iteration manifest trigger %+v", m.Trigger)
	}

	// Bad requests are the caller's to fix.
	for _, tc := range []struct {
		req  api.CaptureRequest
		code int
		want string
	}{
		{api.CaptureRequest{Job: "nope"}, http.StatusNotFound, `no process matched job "nope" on this host (jobs seen here: train`},
		{api.CaptureRequest{PIDs: []int{4194000}}, http.StatusNotFound, "none of pids [4194000] runs on this host"},
		{api.CaptureRequest{Job: "train", Duration: time.Hour}, http.StatusBadRequest, fmt.Sprintf("longer than the %v allowed", cfg.Capture.MaxDuration)},
		{api.CaptureRequest{Job: "train", Duration: time.Second, Iterations: 2}, http.StatusBadRequest, "not both"},
		{api.CaptureRequest{Job: "train", Duration: time.Second, ID: "od-iter60-n5"}, http.StatusConflict, "already used"},
	} {
		_, err := c.Capture(ctx, tc.req)
		var e *api.Error
		if !errors.As(err, &e) || e.Code != tc.code || !strings.Contains(e.Message, tc.want) {
			t.Errorf("Capture(%+v) = %v; want %d mentioning %q", tc.req, err, tc.code, tc.want)
		}
	}

	// The uploader counts a capture just after its manifest is stored.
	var out string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if out = get(t, "http://"+d.MetricsAddr()+"/metrics"); strings.Contains(out, "\nloupe_upload_captures_total 3\n") {
			break
		}
	}
	for _, want := range []string{
		`loupe_step_time_seconds{job="train",rank="0",quantile="0.5"} 0.0199999`,
		`loupe_step_time_seconds_count{job="train",rank="0"} 10` + "\n",
		`loupe_steps_total{job="train",rank="0",source="marker"} 66` + "\n",
		"\nloupe_upload_captures_total 3\n",
		`loupe_gpu_devices{simulated="true"} 2` + "\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(out)
	}
}
