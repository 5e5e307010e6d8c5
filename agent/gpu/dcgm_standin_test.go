package gpu

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// TestDCGMStandIn runs the DCGM collector, through go-dcgm's own code,
// against a stand-in libdcgm.so.4 built from testdata/dcgm_standin.c: the
// profiling fields reach the samples and the metrics of the GPUs DCGM
// knows, blanks are not values, and pause/resume reach the library with
// the session's handle.
//
// libdcgm is found by dlopen through LD_LIBRARY_PATH, which is read at
// process start, so the test builds the library and re-runs itself.
func TestDCGMStandIn(t *testing.T) {
	if os.Getenv("LOUPE_DCGM_STANDIN_CHILD") == "" {
		dir := buildDCGMStandIn(t)
		cmd := exec.Command(os.Args[0], "-test.run=^TestDCGMStandIn$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+dir, "LOUPE_DCGM_STANDIN_CHILD=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestDCGMStandIn") {
			t.Fatalf("the run against the stand-in libdcgm failed: %v\n%s", err, out)
		}
		return
	}

	tg := newTestGPUs(t)
	// DCGM knows GPUs 0 and 1 only.
	if err := os.Setenv("LOUPE_STANDIN_UUIDS", tg.device(0).UUID+","+tg.device(1).UUID); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.DCGM.Enabled = true
	cfg.DCGM.FieldsInterval = 100 * time.Millisecond
	c, set := start(t, cfg, tg.srv, nil)
	if c.profReason != "ok" {
		t.Fatalf("DCGM not used with the stand-in library: %s", c.profReason)
	}
	latest := func(gpu int32) (s traces.GPUSample) {
		for _, x := range c.Samples(time.Time{}, time.Now()) {
			if x.GPU == gpu {
				s = x
			}
		}
		return s
	}
	eventually(t, "profiling fields on GPUs 0 and 1", func() bool { return latest(0).ProfValid && latest(1).ProfValid })
	s0, s1 := latest(0), latest(1)
	if !near(s0.SMActive, 0.2) || !near(s1.SMActive, 0.21) || !near(s0.TensorActive, 0.4) || !near(s1.FP16Active, 0.81) {
		t.Errorf("profiling ratios: gpu0 SM %v tensor %v, gpu1 SM %v fp16 %v", s0.SMActive, s0.TensorActive, s1.SMActive, s1.FP16Active)
	}
	if s0.ProfPCIeTxBps != 9e9 || s1.ProfNVLinkRxBps != 12e9+1 {
		t.Errorf("profiling byte rates: gpu0 PCIe TX %d, gpu1 NVLink RX %d", s0.ProfPCIeTxBps, s1.ProfNVLinkRxBps)
	}
	if latest(2).ProfValid {
		t.Error("GPU 2, unknown to DCGM, has profiling fields")
	}
	all := scrape(t, set)
	if got := find(all, "loupe_dcgm_available", map[string]string{"reason": "ok"}); len(got) != 1 || got[0].value != 1 {
		t.Errorf("loupe_dcgm_available = %v, want 1 with reason ok", got)
	}
	if got := find(all, "DCGM_FI_PROF_SM_ACTIVE", nil); len(got) != 2 {
		t.Errorf("%d DCGM_FI_PROF_SM_ACTIVE series, want 2 (the GPUs DCGM knows)", len(got))
	}

	if err := c.PauseProfiling(true); err != nil {
		t.Fatalf("pause: %v", err)
	}
	paused := time.Now()
	eventually(t, "samples while paused", func() bool { return len(c.Samples(paused, time.Now())) >= 16 })
	for _, s := range c.Samples(paused, time.Now()) {
		if s.ProfValid {
			t.Fatalf("profiling fields while paused (DCGM returns blanks): %+v", s)
		}
	}
	if got := find(scrape(t, set), "loupe_dcgm_profiling_paused", nil); len(got) != 1 || got[0].value != 1 {
		t.Errorf("loupe_dcgm_profiling_paused = %v, want 1", got)
	}
	if err := c.PauseProfiling(false); err != nil {
		t.Fatalf("resume: %v", err)
	}
	eventually(t, "profiling fields after resume", func() bool { return latest(0).ProfValid })
}

func near(a float32, b float64) bool { return float64(a)-b < 1e-6 && b-float64(a) < 1e-6 }

// buildDCGMStandIn compiles the stand-in library against go-dcgm's copy of
// DCGM's headers and returns its folder.
func buildDCGMStandIn(t *testing.T) string {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("gcc is needed to build the stand-in libdcgm: apt-get install gcc")
		}
		t.Skip("gcc not found; cannot build the stand-in libdcgm")
	}
	mod, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/NVIDIA/go-dcgm").Output()
	if err != nil {
		t.Fatalf("locating go-dcgm's headers: %v", err)
	}
	dir := t.TempDir()
	out, err := exec.Command(gcc, "-shared", "-fPIC", "-Wall", "-Werror",
		"-I", strings.TrimSpace(string(mod))+"/pkg/dcgm",
		"-o", dir+"/libdcgm.so.4", "testdata/dcgm_standin.c").CombinedOutput()
	if err != nil {
		t.Fatalf("building the stand-in libdcgm: %v\n%s", err, out)
	}
	return dir
}
