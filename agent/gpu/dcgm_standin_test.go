package gpu

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

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
	if !againstStandIn(t) {
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

// againstStandIn reports whether the test runs against the stand-in
// libdcgm; if not, it builds the library, runs the test again in a child
// process that loads it, and reports false.
func againstStandIn(t *testing.T) bool {
	t.Helper()
	if os.Getenv("LOUPE_DCGM_STANDIN_CHILD") != "" {
		return true
	}
	dir := buildDCGMStandIn(t)
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+dir, "LOUPE_DCGM_STANDIN_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("the run against the stand-in libdcgm failed: %v\n%s", err, out)
	}
	return false
}

// dcgmSamples counts the distinct DCGM samples (by DCGM's timestamp) among
// GPU 0's samples in [from, to], and checks that each carries the value the
// stand-in gave at that time: DRAM active is the update number mod 1000.
func dcgmSamples(t *testing.T, c *Collector, from, to time.Time, every time.Duration) (distinct, samples int) {
	t.Helper()
	seen := map[int64]bool{}
	for _, s := range c.Samples(from, to) {
		if s.GPU != 0 || !s.ProfValid {
			continue
		}
		samples++
		seen[s.ProfTimeNs] = true
		if want := float64((s.ProfTimeNs/every.Nanoseconds())%1000) / 1000; !near(s.DRAMActive, want) {
			t.Fatalf("sample at %d: DRAM active %v is not DCGM's value %v of its time %d", s.TimeNs, s.DRAMActive, want, s.ProfTimeNs)
		}
		if s.ProfTimeNs > s.TimeNs {
			t.Fatalf("sample at %d holds DCGM values from the future (%d)", s.TimeNs, s.ProfTimeNs)
		}
	}
	return len(seen), samples
}

// Inside a capture window DCGM's profiling fields are watched at the
// capture rate, so the window's samples carry a new DCGM sample at nearly
// every tick instead of repeating the steady second's value; the steady
// watch is restored after. A DCGM that refuses the rate gets the fallback
// interval, or keeps the steady one, and the capture's notes say so; one
// that multiplexes the fields (pre-Hopper metric groups) is noted too.
func TestDCGMAtCaptureRate(t *testing.T) {
	if !againstStandIn(t) {
		return
	}
	window := func(t *testing.T, c *Collector, d time.Duration, every time.Duration) (int, int) {
		from := time.Now()
		time.Sleep(d)
		return dcgmSamples(t, c, from, time.Now(), every)
	}
	t.Run("capture rate", func(t *testing.T) {
		tg := newTestGPUs(t)
		os.Setenv("LOUPE_STANDIN_UUIDS", tg.device(0).UUID)
		cfg := testConfig()
		cfg.DCGM.Enabled, cfg.DCGM.FieldsInterval, cfg.CaptureHz = true, time.Second, 100
		c, _ := start(t, cfg, tg.srv, nil)
		eventually(t, "profiling fields", func() bool { n, _ := dcgmSamples(t, c, time.Time{}, time.Now(), time.Second); return n > 0 })

		if n, samples := window(t, c, 1100*time.Millisecond, time.Second); n > 2 || samples < 5 {
			t.Errorf("steady: %d DCGM samples in %d samples over 1.1 s, want at most 2 (a 1 s watch)", n, samples)
		}
		end, notes := c.BeginCapture()
		if len(notes) != 0 {
			t.Errorf("notes %q for a DCGM that takes the capture rate", notes)
		}
		time.Sleep(50 * time.Millisecond) // the first tick at the new rate
		n, samples := window(t, c, 600*time.Millisecond, 10*time.Millisecond)
		end()
		// 100 Hz for 0.6 s is 60 ticks and as many DCGM updates; a loaded
		// machine misses ticks, and polls that fall between two updates
		// repeat one. The steady watch would give at most one.
		if samples < 15 || n < 10 || 3*n < samples {
			t.Errorf("capture window: %d distinct DCGM samples in %d samples, want new DCGM samples at the capture rate", n, samples)
		}
		time.Sleep(100 * time.Millisecond)
		if n, _ := window(t, c, 1100*time.Millisecond, time.Second); n > 2 {
			t.Errorf("after the capture: %d DCGM samples over 1.1 s, want the steady 1 s watch back", n)
		}

		// A driver that refuses 10 ms but takes 100 ms.
		os.Setenv("LOUPE_STANDIN_MIN_US", "50000")
		end, notes = c.BeginCapture()
		if len(notes) != 1 || !strings.Contains(notes[0], "refused a 10ms update interval") || !strings.Contains(notes[0], "sampled every 100ms") {
			t.Errorf("notes %q, want the refusal and the 100 ms fallback", notes)
		}
		time.Sleep(150 * time.Millisecond)
		if n, _ := window(t, c, 800*time.Millisecond, 100*time.Millisecond); n < 4 || n > 10 {
			t.Errorf("fallback: %d DCGM samples over 0.8 s, want about 8 (a 100 ms watch)", n)
		}
		end()
		// One that refuses both: the steady interval stays, and says so.
		os.Setenv("LOUPE_STANDIN_MIN_US", "2000000")
		end, notes = c.BeginCapture()
		end()
		if len(notes) != 1 || !strings.Contains(notes[0], "kept the steady 1s interval") {
			t.Errorf("notes %q, want that the steady interval was kept", notes)
		}
		os.Unsetenv("LOUPE_STANDIN_MIN_US")
	})
	t.Run("multiplexing on pre-Hopper GPUs", func(t *testing.T) {
		tg := newTestGPUs(t)
		for i := range tg.srv.Devices {
			tg.device(i).GetArchitectureFunc = func() (nvml.DeviceArchitecture, nvml.Return) { return nvml.DEVICE_ARCH_AMPERE, nvml.SUCCESS }
		}
		os.Setenv("LOUPE_STANDIN_UUIDS", tg.device(0).UUID)
		os.Setenv("LOUPE_STANDIN_MULTIPLEX", "1")
		defer os.Unsetenv("LOUPE_STANDIN_MULTIPLEX")
		cfg := testConfig()
		cfg.DCGM.Enabled = true
		c, _ := start(t, cfg, tg.srv, nil)
		end, notes := c.BeginCapture()
		end()
		if len(notes) != 1 || !strings.Contains(notes[0], "multiplexes the profiling fields") || !strings.Contains(notes[0], "group 1.0") || !strings.Contains(notes[0], "group 1.1") {
			t.Errorf("notes %q, want the multiplexing of groups 1.0 and 1.1", notes)
		}
	})
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
