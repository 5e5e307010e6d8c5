package daemon

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/agent/api"
	"github.com/loupe-dev/loupe/traces/promtext"
	"github.com/loupe-dev/loupe/traces/promtext/promtexttest"
)

// dcgmExporterNames are the families promtool flags that keep dcgm-exporter's
// names and labels (modelName, UUID, Hostname; counters without _total):
// dashboards and alerts built for dcgm-exporter must work unchanged on the
// agent. loupe_gpu_lost carries the same labels, so it joins with them.
func dcgmExporterNames(t *testing.T, scrape []byte) map[string]string {
	out := map[string]string{"loupe_gpu_lost": "dcgm-exporter's label names, to join with its series"}
	for name := range promtexttest.Families(t, scrape) {
		if strings.HasPrefix(name, "DCGM_FI_") {
			out[name] = "dcgm-exporter's name and labels"
		}
	}
	return out
}

// The agent's scrape after a capture with every collector that runs here
// (eBPF ones as root) has HELP and TYPE on every family and passes
// promtool; every metric named in the agent's source has help too.
func TestMetricsHelp(t *testing.T) {
	cfg := testConfig(t)
	cfg.SimulateGPUs = 2
	cfg.GPU.Sim.PIDs = []int{os.Getpid()}
	root := os.Geteuid() == 0
	cfg.CPU.Enabled, cfg.NCCL.Enabled, cfg.Kineto.Enabled = root, root, true
	cfg.NCCL.StepInterval = time.Hour
	logs := filepath.Join(t.TempDir(), "app.log")
	if err := os.WriteFile(logs, []byte("start\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Logs.Files, cfg.Logs.PollInterval = []string{logs}, 10*time.Millisecond
	d := start(t, cfg)
	c := &api.Client{Addr: d.APIAddr()}
	ctx := context.Background()
	for i := range 5 {
		if err := c.Step(ctx, api.StepRequest{Job: "train", Rank: 0, PID: os.Getpid(), Iteration: int64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	// The capture service starts with Run; ask until it answers.
	var rep api.CaptureReply
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if rep, err = c.Capture(ctx, api.CaptureRequest{Job: "train", Duration: 200 * time.Millisecond}); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	waitBundle(t, cfg, "train", "default", rep.ID)
	var scrape string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if scrape = get(t, "http://"+d.MetricsAddr()+"/metrics"); strings.Contains(scrape, "\nloupe_upload_captures_total 1\n") {
			break
		}
	}
	promtexttest.RequireHelp(t, []byte(scrape), "agent/daemon/metrics_help.go")
	promtexttest.RequireSourceHelp(t, "..", regexp.MustCompile(`^(loupe|DCGM_FI_(DEV|PROF))_[a-zA-Z0-9_]+($|\{)`),
		"agent/daemon/metrics_help.go", metricsHelp, promtext.RuntimeHelp)
	promtexttest.Lint(t, []byte(scrape), dcgmExporterNames(t, []byte(scrape)))
	if t.Failed() {
		t.Logf("scrape:\n%s", scrape)
	}
}
