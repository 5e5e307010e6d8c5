package gpu

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/traces"
)

func TestSamplesFollowTheDevices(t *testing.T) {
	tg := newTestGPUs(t)
	c, _ := start(t, testConfig(), tg.srv, nil)
	if got := len(c.Devices()); got != 8 {
		t.Fatalf("Devices() = %d, want 8", got)
	}
	// The DGX H100 mock's driver 550.54.15 reports CUDA 12040.
	if driver, cuda := c.Versions(); driver != "550.54.15" || cuda != "12.4" {
		t.Errorf("Versions() = %q, %q; want 550.54.15, 12.4", driver, cuda)
	}
	eventually(t, "5 samples of every GPU", func() bool {
		return tg.calls[7].Load() >= 5 && tg.calls[0].Load() >= 5
	})
	samples := c.Samples(time.Now().Add(-time.Minute), time.Now())
	perGPU := map[int32][]traces.GPUSample{}
	for i, s := range samples {
		if i > 0 && s.TimeNs < samples[i-1].TimeNs {
			t.Fatalf("samples not ordered by time at %d", i)
		}
		perGPU[s.GPU] = append(perGPU[s.GPU], s)
	}
	for i := range 8 {
		ss := perGPU[int32(i)]
		if len(ss) < 4 {
			t.Fatalf("gpu %d: %d samples, want >= 4", i, len(ss))
		}
		info := c.Devices()[i]
		for k, s := range ss {
			if s.UUID != info.UUID || s.FBTotalMiB != 81920 || s.FBFreeMiB != 81920-10240 || s.FBUsedMiB != 10240 || s.SMClockMHz != 1980 || s.MemClockMHz != 2619 {
				t.Fatalf("gpu %d sample %d = %+v: wrong identity or static readings", i, k, s)
			}
			if s.GPUTempC != float32(50+i) {
				t.Errorf("gpu %d temp = %v, want %d", i, s.GPUTempC, 50+i)
			}
			if k > 0 && (s.PowerW <= ss[k-1].PowerW || s.EnergyMJ <= ss[k-1].EnergyMJ) {
				t.Errorf("gpu %d: power/energy did not move between samples: %v -> %v W", i, ss[k-1].PowerW, s.PowerW)
			}
			if int(s.GPUUtil)/10 < i {
				t.Errorf("gpu %d: util %v is not this device's", i, s.GPUUtil)
			}
		}
	}
	eventually(t, "processes", func() bool { return len(c.Processes()) == 8 })
	procs := c.Processes()
	slices.SortFunc(procs, func(a, b GPUProcess) int { return a.GPU - b.GPU })
	for i, p := range procs {
		want := GPUProcess{PID: 1000 + i, GPU: i, UUID: c.Devices()[i].UUID, UsedMemoryBytes: 8 << 30, SMUtil: 77, MemUtil: 33}
		if p != want {
			t.Errorf("process %d = %+v, want %+v", i, p, want)
		}
	}
}

func TestUnsupportedFieldIsNotAskedAgain(t *testing.T) {
	tg := newTestGPUs(t)
	d := tg.device(3)
	d.GetPcieThroughputFunc = func(nvml.PcieUtilCounter) (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	c, set := start(t, testConfig(), tg.srv, nil)
	eventually(t, "several slow rounds", func() bool { return len(tg.device(0).GetPcieThroughputCalls()) >= 8 })
	if n := len(d.GetPcieThroughputCalls()); n != 1 {
		t.Errorf("unsupported PCIe throughput asked %d times, want once", n)
	}
	all := scrape(t, set)
	if got := find(all, "DCGM_FI_DEV_PCIE_TX_THROUGHPUT", gpuLabel(3)); len(got) != 0 {
		t.Errorf("gpu 3 exports PCIe throughput it does not support: %v", got)
	}
	if got := find(all, "DCGM_FI_DEV_PCIE_TX_THROUGHPUT", gpuLabel(2)); len(got) != 1 || got[0].value != 1000 {
		t.Errorf("gpu 2 PCIe TX = %v, want one series of 1000 KB/s", got)
	}
	if got := find(all, "DCGM_FI_DEV_MEMORY_TEMP", gpuLabel(3)); len(got) != 1 || got[0].value != 63 {
		t.Errorf("gpu 3 memory temperature = %v, want 63", got)
	}
	_ = c
}

func TestXIDEvents(t *testing.T) {
	tg := newTestGPUs(t)
	c, set := start(t, testConfig(), tg.srv, nil)
	before := time.Now()
	tg.events <- nvml.EventData{Device: tg.device(3), EventType: nvml.EventTypeXidCriticalError, EventData: 79}
	tg.events <- nvml.EventData{Device: tg.device(5), EventType: nvml.EventTypeDoubleBitEccError}
	eventually(t, "two events", func() bool { return len(c.Events(before, time.Now())) == 2 })
	evs := c.Events(before, time.Now())
	if e := evs[0]; e.Kind != traces.EventXID || e.GPU != 3 || e.Code != 79 || e.Attrs["uuid"] != c.Devices()[3].UUID || e.Rank != -1 {
		t.Errorf("xid event = %+v", e)
	}
	if e := evs[1]; e.Kind != traces.EventECC || e.GPU != 5 || !strings.Contains(e.Message, "double-bit") {
		t.Errorf("ecc event = %+v", e)
	}
	if got := c.Events(time.Now().Add(time.Hour), time.Now().Add(2*time.Hour)); len(got) != 0 {
		t.Errorf("events outside the window: %v", got)
	}
	eventually(t, "a sample after the event", func() bool { return tg.calls[3].Load() > 2 })
	all := scrape(t, set)
	if got := find(all, "DCGM_FI_DEV_XID_ERRORS", gpuLabel(3)); len(got) != 1 || got[0].value != 79 {
		t.Errorf("DCGM_FI_DEV_XID_ERRORS{gpu=3} = %v, want 79", got)
	}
	if got := find(all, "DCGM_FI_DEV_XID_ERRORS", gpuLabel(2)); len(got) != 1 || got[0].value != 0 {
		t.Errorf("DCGM_FI_DEV_XID_ERRORS{gpu=2} = %v, want 0", got)
	}
	if got := find(all, "loupe_gpu_events_total", map[string]string{"kind": "xid"}); len(got) != 1 || got[0].value != 1 {
		t.Errorf("loupe_gpu_events_total{kind=xid} = %v, want 1", got)
	}
}

func TestLostGPUIsReportedAndOthersGoOn(t *testing.T) {
	tg := newTestGPUs(t)
	d := tg.device(5)
	ok := d.GetUtilizationRatesFunc
	lostAfter := int64(3)
	d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
		if tg.calls[5].Load() >= lostAfter {
			return nvml.Utilization{}, nvml.ERROR_GPU_IS_LOST
		}
		return ok()
	}
	c, set := start(t, testConfig(), tg.srv, nil)
	eventually(t, "the lost event", func() bool {
		evs := c.Events(time.Time{}, time.Now())
		return len(evs) == 1 && evs[0].Kind == traces.EventGPULost && evs[0].GPU == 5
	})
	lostAt := time.Now()
	calls5 := len(d.GetUtilizationRatesCalls())
	eventually(t, "5 more samples of gpu 4", func() bool {
		return len(c.Samples(lostAt, time.Now().Add(time.Second))) >= 5*7
	})
	after := c.Samples(lostAt, time.Now())
	for _, s := range after {
		if s.GPU == 5 {
			t.Fatalf("a sample of the lost GPU after it was lost: %+v", s)
		}
	}
	if n := len(d.GetUtilizationRatesCalls()); n != calls5 {
		t.Errorf("the lost GPU was read %d more times", n-calls5)
	}
	all := scrape(t, set)
	if got := find(all, "loupe_gpu_lost", gpuLabel(5)); len(got) != 1 || got[0].value != 1 {
		t.Errorf("loupe_gpu_lost{gpu=5} = %v, want 1", got)
	}
	if got := find(all, "loupe_gpu_lost", gpuLabel(4)); len(got) != 1 || got[0].value != 0 {
		t.Errorf("loupe_gpu_lost{gpu=4} = %v, want 0", got)
	}
	if got := find(all, "DCGM_FI_DEV_GPU_UTIL", gpuLabel(5)); len(got) != 0 {
		t.Errorf("the lost GPU still exports utilization: %v", got)
	}
	if got := find(all, "loupe_gpu_events_total", map[string]string{"kind": "gpu_lost"}); len(got) != 1 || got[0].value != 1 {
		t.Errorf("loupe_gpu_events_total{kind=gpu_lost} = %v, want 1", got)
	}
}

func TestCaptureRaisesTheRate(t *testing.T) {
	tg := newTestGPUs(t)
	cfg := testConfig()
	cfg.Interval = time.Second
	cfg.CaptureHz = 50
	c, set := start(t, cfg, tg.srv, nil)
	eventually(t, "the first sample", func() bool { return tg.calls[0].Load() >= 1 })
	from := time.Now()
	end := c.BeginCapture()
	end2 := c.BeginCapture() // nested
	gpu0 := func() int {
		n := 0
		for _, s := range c.Samples(from, time.Now()) {
			if s.GPU == 0 {
				n++
			}
		}
		return n
	}
	// At the steady 1 Hz, 10 samples would take 10 s, past eventually's limit.
	eventually(t, "10 capture-rate samples", func() bool { return gpu0() >= 10 })
	end()
	end() // twice is harmless
	if got := find(scrape(t, set), "loupe_gpu_sampling_hz", nil); len(got) != 1 || got[0].value != 50 {
		t.Errorf("with a capture still open, loupe_gpu_sampling_hz = %v, want 50", got)
	}
	end2()
	eventually(t, "the steady rate again", func() bool {
		g := find(scrape(t, set), "loupe_gpu_sampling_hz", nil)
		return len(g) == 1 && g[0].value == 1
	})
}

func TestNoGPUIsNormal(t *testing.T) {
	// The real go-nvml: on a host without the driver, Init fails.
	set := metrics.NewSet()
	cfg := DefaultConfig()
	c, err := New(cfg, nil, set)
	if err != nil {
		t.Fatalf("New on a host without a GPU: %v", err)
	}
	all := scrape(t, set)
	if len(c.Devices()) > 0 {
		// A host with a real GPU: the same path must find and sample it.
		t.Logf("real GPUs found: %+v", c.Devices())
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if err := c.Run(ctx); err != nil {
			t.Fatal(err)
		}
		if s := c.Samples(time.Now().Add(-time.Minute), time.Now()); len(s) == 0 {
			t.Fatal("real GPUs but no samples")
		} else {
			t.Logf("real sample: %+v", s[len(s)-1])
		}
		return
	}
	if got := find(all, "loupe_gpu_devices", nil); len(got) != 1 || got[0].value != 0 {
		t.Errorf("loupe_gpu_devices = %v, want 0", got)
	}
	un := find(all, "loupe_gpu_unavailable", nil)
	if len(un) != 1 || un[0].value != 1 || un[0].labels["reason"] == "" {
		t.Errorf("loupe_gpu_unavailable = %v, want one series = 1 with a reason", un)
	}
	if got := find(all, "DCGM_FI_DEV_GPU_UTIL", nil); len(got) != 0 {
		t.Errorf("GPU series without a GPU: %v", got)
	}
	if err := c.PauseProfiling(true); !errors.Is(err, errNoDCGM) {
		t.Errorf("PauseProfiling without DCGM: err = %v, want errNoDCGM", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Run(ctx); err != nil {
		t.Errorf("Run without a GPU: %v", err)
	}
	if c.Samples(time.Time{}, time.Now()) != nil || c.Processes() != nil {
		t.Error("samples or processes without a GPU")
	}
}

func TestDCGMMissingKeepsNVML(t *testing.T) {
	tg := newTestGPUs(t)
	cfg := testConfig()
	cfg.DCGM.Enabled = true
	c, set := start(t, cfg, tg.srv, nil)
	if c.profReason == "ok" {
		t.Skip("this host has a working DCGM; the missing-DCGM path cannot be shown here")
	}
	eventually(t, "NVML samples", func() bool { return tg.calls[0].Load() >= 3 })
	all := scrape(t, set)
	av := find(all, "loupe_dcgm_available", nil)
	if len(av) != 1 || av[0].value != 0 || av[0].labels["reason"] != "libdcgm_not_found" {
		t.Errorf("loupe_dcgm_available = %v, want 0 with reason libdcgm_not_found", av)
	}
	if got := find(all, "DCGM_FI_DEV_GPU_UTIL", nil); len(got) != 8 {
		t.Errorf("%d NVML utilization series, want 8", len(got))
	}
	if got := find(all, "DCGM_FI_PROF_SM_ACTIVE", nil); len(got) != 0 {
		t.Errorf("profiling series without DCGM: %v", got)
	}
	for _, s := range c.Samples(time.Time{}, time.Now()) {
		if s.ProfValid {
			t.Fatalf("a sample claims profiling fields without DCGM: %+v", s)
		}
	}
	if err := c.PauseProfiling(true); err == nil || !strings.Contains(err.Error(), "libdcgm_not_found") {
		t.Errorf("PauseProfiling: err = %v, want one naming the reason", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"defaults", func(*Config) {}, ""},
		{"capture too fast", func(c *Config) { c.CaptureHz = 1000 }, "capture_hz"},
		{"capture too slow", func(c *Config) { c.CaptureHz = 1 }, "capture_hz"},
		{"interval", func(c *Config) { c.Interval = 0 }, "interval"},
		{"ring", func(c *Config) { c.RingSeconds = 1 }, "ring_seconds"},
		{"standalone without address", func(c *Config) { c.DCGM.Mode = DCGMStandalone }, "dcgm.address"},
		{"unknown mode", func(c *Config) { c.DCGM.Mode = "remote" }, "unknown"},
		{"dcgm off ignores mode", func(c *Config) { c.DCGM.Enabled, c.DCGM.Mode = false, "x" }, ""},
		{"simulate", func(c *Config) { c.Simulate = -1 }, "simulate_gpus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.edit(&cfg)
			err := cfg.Validate()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("Validate() = %v, want %q", err, tt.want)
			}
			if _, nerr := New(cfg, nil, metrics.NewSet()); (nerr != nil) != (tt.want != "") {
				t.Errorf("New() err = %v", nerr)
			}
		})
	}
}

func TestCaptureSkipsBlockingPCIeReads(t *testing.T) {
	tg := newTestGPUs(t)
	c, _ := start(t, testConfig(), tg.srv, nil) // slow loop every 50 ms
	d := tg.device(0)
	eventually(t, "a few slow rounds", func() bool { return len(d.GetPcieThroughputCalls()) >= 4 })
	end := c.BeginCapture()
	before := len(d.GetPcieThroughputCalls())
	rounds := len(d.GetComputeRunningProcessesCalls())
	eventually(t, "5 slow rounds during the capture", func() bool {
		return len(d.GetComputeRunningProcessesCalls()) >= rounds+5
	})
	during := len(d.GetPcieThroughputCalls()) - before
	end()
	// A round already under way when the capture began may finish (2 calls).
	if during > 2 {
		t.Errorf("%d PCIe throughput reads in 5 slow rounds of a capture, want none", during)
	}
	after := len(d.GetPcieThroughputCalls())
	eventually(t, "PCIe reads after the capture", func() bool { return len(d.GetPcieThroughputCalls()) > after })
}
