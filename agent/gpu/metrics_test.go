package gpu

import (
	"context"
	"fmt"
	"testing"

	"github.com/VictoriaMetrics/metrics"
)

// The families dcgm-exporter users' dashboards query (issue 3).
var dcgmExporterNames = []string{
	"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE",
	"DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_GPU_TEMP",
	"DCGM_FI_DEV_MEMORY_TEMP", "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_XID_ERRORS",
	"DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_SM_ACTIVE", "DCGM_FI_PROF_SM_OCCUPANCY",
	"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "DCGM_FI_PROF_DRAM_ACTIVE", "DCGM_FI_PROF_PCIE_TX_BYTES",
	"DCGM_FI_PROF_PCIE_RX_BYTES", "DCGM_FI_PROF_NVLINK_TX_BYTES", "DCGM_FI_PROF_NVLINK_RX_BYTES",
}

// pods is a PodLookup with two GPUs in a pod whose name needs escaping.
type pods map[string][3]string

func (p pods) GPU(uuid string) (string, string, string) {
	v := p[uuid]
	return v[0], v[1], v[2]
}

func TestScrapeHasDCGMExporterNamesAndLabels(t *testing.T) {
	sim := NewSimulator(8, SimOptions{})
	lookup := pods{}
	for i, g := range sim.gpus {
		if i < 2 {
			lookup[g.UUID] = [3]string{`trainer-"0"`, "ml", "worker"}
		}
	}
	cfg := testConfig()
	cfg.Pods = lookup
	c, set := start(t, cfg, sim.Interface(), sim)
	// Wait for a full slow round (memory temperature, PCIe, pods) on every GPU.
	var all []series
	eventually(t, "every family on every GPU, with pod labels", func() bool {
		all = scrape(t, set)
		for _, name := range dcgmExporterNames {
			if len(find(all, name, nil)) != 8 {
				return false
			}
		}
		return len(find(all, "DCGM_FI_DEV_MEMORY_TEMP", map[string]string{"pod": `trainer-"0"`})) == 2
	})
	devs := c.Devices()
	for _, name := range dcgmExporterNames {
		got := find(all, name, nil)
		if len(got) != 8 {
			t.Errorf("%s: %d series, want one per GPU (8)", name, len(got))
			continue
		}
		for _, s := range got {
			i := -1
			fmt.Sscan(s.labels["gpu"], &i)
			if i < 0 || i >= 8 {
				t.Fatalf("%s: bad gpu label %q", name, s.labels["gpu"])
			}
			want := map[string]string{
				"gpu": fmt.Sprint(i), "UUID": devs[i].UUID, "device": fmt.Sprintf("nvidia%d", i),
				"modelName": "NVIDIA H100 80GB HBM3", "Hostname": "node-7", "pci_bus_id": fmt.Sprintf("0000:%02x:00.0", i),
				"DCGM_FI_DRIVER_VERSION": "550.54.15", "simulated": "true",
			}
			if i < 2 {
				want["pod"], want["namespace"], want["container"] = `trainer-"0"`, "ml", "worker"
			}
			if len(s.labels) != len(want) {
				t.Errorf("%s{gpu=%d} labels %v, want exactly %v", name, i, s.labels, want)
			}
			for k, v := range want {
				if s.labels[k] != v {
					t.Errorf("%s{gpu=%d} label %s = %q, want %q", name, i, k, s.labels[k], v)
				}
			}
		}
	}
	// Units: percentages, MiB, watts, ratios.
	for _, s := range find(all, "DCGM_FI_DEV_GPU_UTIL", nil) {
		if s.value < 0 || s.value > 100 {
			t.Errorf("GPU_UTIL %v out of 0..100", s.value)
		}
	}
	for _, s := range find(all, "DCGM_FI_PROF_SM_ACTIVE", nil) {
		if s.value < 0 || s.value > 1 {
			t.Errorf("PROF_SM_ACTIVE %v is not a ratio", s.value)
		}
	}
	for _, s := range find(all, "DCGM_FI_DEV_FB_USED", nil) {
		free := find(all, "DCGM_FI_DEV_FB_FREE", map[string]string{"gpu": s.labels["gpu"]})[0].value
		if sum := s.value + free; sum < 81919 || sum > 81920 { // each is rounded down to MiB
			t.Errorf("FB_USED+FB_FREE = %v MiB, want 81920", sum)
		}
	}
	for _, s := range find(all, "DCGM_FI_DEV_POWER_USAGE", nil) {
		if s.value < 50 || s.value > 700 {
			t.Errorf("POWER_USAGE %v W is not an H100's", s.value)
		}
	}
	if got := find(all, "loupe_gpu_devices", map[string]string{"simulated": "true"}); len(got) != 1 || got[0].value != 8 {
		t.Errorf("loupe_gpu_devices = %v, want 8 with simulated=\"true\"", got)
	}
}

func TestScrapeOfRealDevicesHasNoSimulatedLabel(t *testing.T) {
	tg := newTestGPUs(t)
	set := metrics.NewSet()
	c := newCollector(testConfig(), nil, set, tg.srv, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	eventually(t, "samples", func() bool { return tg.calls[7].Load() >= 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	calls := len(tg.device(0).GetUtilizationRatesCalls()) + len(tg.device(0).GetPcieThroughputCalls())
	var all []series
	for range 20 {
		all = scrape(t, set)
	}
	// Scrapes read the cache: they still answer with the collector
	// stopped, and make no NVML call.
	if now := len(tg.device(0).GetUtilizationRatesCalls()) + len(tg.device(0).GetPcieThroughputCalls()); now != calls {
		t.Errorf("20 scrapes made %d NVML calls; a scrape must not call NVML", now-calls)
	}
	if got := find(all, "DCGM_FI_DEV_GPU_UTIL", nil); len(got) != 8 {
		t.Errorf("%d GPU_UTIL series, want 8", len(got))
	}
	for _, s := range all {
		if _, ok := s.labels["simulated"]; ok {
			t.Errorf("series of a real device labelled simulated: %s %v", s.name, s.labels)
		}
	}
	if got := find(all, "loupe_gpu_devices", nil); len(got) != 1 || got[0].value != 8 || len(got[0].labels) != 0 {
		t.Errorf("loupe_gpu_devices = %v, want 8 without labels", got)
	}
}
