package daemon

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// TestContinuousBundles runs the agent with the real CPU profiler and a
// one-second continuous interval: continuous profile bundles of the
// default job (this test's process has none) arrive in the store with
// their part and this process's samples in it.
func TestContinuousBundles(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("TestContinuousBundles needs root for the real eBPF CPU profiler")
		}
		t.Skip("needs root for the real eBPF CPU profiler")
	}
	cfg := testConfig(t)
	cfg.CPU.Enabled = true
	cfg.CPU.Continuous.Interval = time.Second
	start(t, cfg)
	runDir := filepath.Join(strings.TrimPrefix(cfg.Store, "file://"), filepath.FromSlash(
		traces.Key{Cluster: cfg.Cluster, Job: cfg.DefaultJob, Run: cfg.DefaultRun}.JobPrefix()))
	deadline := time.Now().Add(30 * time.Second)
	var sink int
	for time.Now().Before(deadline) {
		for i := 0; i < 1e7; i++ { // CPU for the profiler to see
			sink += i * i
		}
		ents, _ := os.ReadDir(runDir)
		for _, e := range ents {
			if !traces.IsContinuous(e.Name()) {
				t.Errorf("capture %s in the run folder", e.Name())
				continue
			}
			dir := filepath.Join(runDir, e.Name(), cfg.Host)
			if _, err := os.Stat(filepath.Join(dir, traces.ManifestName)); err != nil {
				continue
			}
			m, err := traces.ReadDir(dir, traces.DefaultMaxPartSize)
			if err != nil {
				t.Fatal(err)
			}
			if m.Trigger.Kind != traces.TriggerContinuous || m.End.Sub(m.Start) <= 0 {
				t.Errorf("manifest %+v", m)
			}
			start, d, err := traces.ParseContinuousCaptureID(m.CaptureID)
			if err != nil || d != time.Second || start.Sub(m.Start).Abs() > time.Second {
				t.Errorf("capture id %s for a window %v..%v: %v", m.CaptureID, m.Start, m.End, err)
			}
			f, err := os.Open(filepath.Join(dir, traces.PartContinuousProfile))
			if err != nil {
				t.Fatal(err)
			}
			p, err := traces.ReadProfile(f)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range p.Sample {
				if s.Label["pid"][0] == strconv.Itoa(os.Getpid()) {
					return
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("no continuous profile with this process's samples under %s (sink %d)", runDir, sink)
}
