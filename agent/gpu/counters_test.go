package gpu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/traces"
)

// fixedProfiler stands in for DCGM in scrape tests: it fills the profiling
// fields with fixed ratios and rates.
type fixedProfiler struct{}

func (fixedProfiler) fill(_ *device, s *traces.GPUSample) bool {
	s.ProfValid = true
	s.GrEngineActive, s.SMActive, s.SMOccupancy, s.TensorActive, s.DRAMActive = 0.9, 0.8, 0.4, 0.45, 0.3
	s.FP64Active, s.FP32Active, s.FP16Active = 0.01, 0.05, 0.1
	s.ProfPCIeTxBps, s.ProfPCIeRxBps, s.ProfNVLinkTxBps, s.ProfNVLinkRxBps = 9e9, 8e9, 100e9, 90e9
	return true
}

func (fixedProfiler) pause(bool) error { return nil }

// withNVLink makes the test GPUs answer NVLink data counters on 4 links,
// growing 1 MiB per read.
func withNVLink(tg *testGPUs) {
	for i := range tg.srv.Devices {
		d := tg.device(i)
		var reads atomic.Uint64
		d.GetFieldValuesFunc = func(vs []nvml.FieldValue) nvml.Return {
			n := reads.Add(1)
			for k := range vs {
				v := &vs[k]
				v.NvmlReturn = uint32(nvml.ERROR_NOT_SUPPORTED)
				switch {
				case v.FieldId == nvml.FI_DEV_MEMORY_TEMP:
					v.NvmlReturn, v.ValueType = uint32(nvml.SUCCESS), uint32(nvml.VALUE_TYPE_UNSIGNED_INT)
					binary.LittleEndian.PutUint32(v.Value[:], uint32(60+i))
				case (v.FieldId == nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_TX || v.FieldId == nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_RX) && v.ScopeId < 4:
					v.NvmlReturn, v.ValueType = uint32(nvml.SUCCESS), uint32(nvml.VALUE_TYPE_UNSIGNED_LONG_LONG)
					binary.LittleEndian.PutUint64(v.Value[:], n*1024)
				}
			}
			return nvml.SUCCESS
		}
	}
}

// runCollector runs a collector over lib with prof as its profiling source.
func runCollector(t *testing.T, cfg Config, lib nvml.Interface, prof profiler) *metrics.Set {
	t.Helper()
	set := metrics.NewSet()
	c := newCollector(cfg, nil, set, lib, nil)
	c.prof = prof
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return set
}

// exposition scrapes set and returns its text, its series and the TYPE and
// HELP of each family.
func exposition(t *testing.T, set *metrics.Set) (all []series, types, help map[string]string) {
	t.Helper()
	var b bytes.Buffer
	set.WritePrometheus(&b)
	types, help = map[string]string{}, map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b.Bytes()))
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 4)
		if len(f) >= 4 && f[0] == "#" && f[1] == "TYPE" {
			types[f[2]] = f[3]
		}
		if len(f) >= 3 && f[0] == "#" && f[1] == "HELP" {
			help[f[2]] = strings.Join(f[3:], " ")
		}
	}
	return parseExposition(t, b.String()), types, help
}

func readCounters(t *testing.T, path string) []Counter {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cs, err := ParseCounters(f)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// Every field dcgm-exporter's default counters file enables is on
// /metrics, under its name, on every GPU, with the type that file gives it.
func TestScrapeServesDCGMExporterDefaultCounters(t *testing.T) {
	want := readCounters(t, "testdata/dcgm-exporter-default-counters.csv")
	tg := newTestGPUs(t)
	withNVLink(tg)
	set := runCollector(t, testConfig(), tg.srv, fixedProfiler{})
	var all []series
	var types map[string]string
	eventually(t, "every default counter on every GPU", func() bool {
		all, types, _ = exposition(t, set)
		for _, c := range want {
			if c.Type != typeLabel && len(find(all, c.Field, nil)) != 8 {
				return false
			}
		}
		// A slow round's readings reach the samples at the next tick.
		pcie := find(all, "DCGM_FI_DEV_PCIE_TX_THROUGHPUT", gpuLabel(3))
		return len(pcie) == 1 && pcie[0].value > 0
	})
	for _, c := range want {
		if c.Type == typeLabel {
			for _, s := range find(all, "DCGM_FI_DEV_GPU_UTIL", nil) {
				if s.labels[c.Field] != "550.54.15" {
					t.Errorf("label %s = %q on %v, want the driver version", c.Field, s.labels[c.Field], s.labels)
				}
			}
			continue
		}
		if types[c.Field] != c.Type {
			t.Errorf("%s: TYPE %q, want dcgm-exporter's %q", c.Field, types[c.Field], c.Type)
		}
	}
	// Values in dcgm-exporter's units, from the readings the mock gives.
	gpu3 := gpuLabel(3)
	for name, v := range map[string]float64{
		"DCGM_FI_DEV_PCIE_REPLAY_COUNTER": 6, "DCGM_FI_DEV_ENC_UTIL": 3, "DCGM_FI_DEV_DEC_UTIL": 6,
		"DCGM_FI_DEV_FB_RESERVED": 512, "DCGM_FI_DEV_VGPU_LICENSE_STATUS": 1, "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": 2,
		"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": 1, "DCGM_FI_DEV_ROW_REMAP_FAILURE": 0, "DCGM_FI_DEV_PCIE_TX_THROUGHPUT": 1000,
		"DCGM_FI_PROF_GR_ENGINE_ACTIVE": 0.9,
	} {
		if got := find(all, name, gpu3); len(got) != 1 || got[0].value != v {
			t.Errorf("%s{gpu=3} = %v, want %v", name, got, v)
		}
	}
	if got := find(all, "DCGM_FI_DEV_ROW_REMAP_FAILURE", gpuLabel(7)); len(got) != 1 || got[0].value != 1 {
		t.Errorf("ROW_REMAP_FAILURE{gpu=7} = %v, want 1 (its remapping failed)", got)
	}
	// 4 links x (TX + RX) x k reads of 1 MiB each: a multiple of 8 MiB.
	for _, s := range find(all, "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", nil) {
		if s.value <= 0 || int64(s.value)%(8<<20) != 0 {
			t.Errorf("NVLINK_BANDWIDTH_TOTAL %v bytes: want the links' data counters summed", s.value)
		}
	}
}

// A counters file in dcgm-exporter's format limits /metrics to its fields,
// with its types and help texts; the agent's own health series stay.
func TestCountersFileLimitsTheSet(t *testing.T) {
	path := filepath.Join(t.TempDir(), "counters.csv")
	os.WriteFile(path, []byte("# Format,,\n# DCGM FIELD, Prometheus metric type, help message\n\n"+
		"DCGM_FI_DEV_GPU_UTIL, gauge, Busy (in %).\n"+
		"DCGM_FI_DEV_POWER_USAGE ,gauge,Power draw (in W), from NVML\n"+
		"DCGM_FI_PROF_SM_ACTIVE, gauge, SM active.\n"+
		"DCGM_FI_DRIVER_VERSION, label, Driver version\n"), 0o644)
	cfg := testConfig()
	cfg.Collectors = path
	tg := newTestGPUs(t)
	set := runCollector(t, cfg, tg.srv, fixedProfiler{})
	var all []series
	var types, help map[string]string
	eventually(t, "the three families", func() bool {
		all, types, help = exposition(t, set)
		return len(find(all, "DCGM_FI_PROF_SM_ACTIVE", nil)) == 8 && len(find(all, "DCGM_FI_DEV_POWER_USAGE", nil)) == 8
	})
	families := map[string]bool{}
	for _, s := range all {
		if strings.HasPrefix(s.name, "DCGM_") {
			families[s.name] = true
		}
	}
	if len(families) != 3 {
		t.Errorf("families %v, want only the file's three", families)
	}
	if help["DCGM_FI_DEV_POWER_USAGE"] != "Power draw (in W), from NVML" || types["DCGM_FI_DEV_POWER_USAGE"] != "gauge" {
		t.Errorf("POWER_USAGE HELP %q TYPE %q, want the file's", help["DCGM_FI_DEV_POWER_USAGE"], types["DCGM_FI_DEV_POWER_USAGE"])
	}
	if len(find(all, "loupe_gpu_devices", nil)) != 1 {
		t.Error("the agent's health series went with the file")
	}
	if _, err := New(cfg, nil, metrics.NewSet()); err != nil {
		t.Errorf("New with a good counters file: %v", err)
	}
}

func TestParseCounters(t *testing.T) {
	cs, err := ParseCounters(strings.NewReader("# Clocks,,\nDCGM_FI_DEV_SM_CLOCK,  gauge, SM clock frequency (in MHz).\n" +
		"DCGM_FI_DEV_DEC_UTIL ,     gauge, Decoder utilization (in %).\nDCGM_FI_DEV_XID_ERRORS,COUNTER\n\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Counter{{"DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."}, {"DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %)."}, {"DCGM_FI_DEV_XID_ERRORS", "counter", ""}}
	if len(cs) != len(want) {
		t.Fatalf("parsed %+v, want %+v", cs, want)
	}
	for i := range want {
		if cs[i] != want[i] {
			t.Errorf("line %d: %+v, want %+v", i, cs[i], want[i])
		}
	}
	for _, tc := range []struct{ in, err string }{
		{"DCGM_FI_DEV_GPU_UTIL\n", `line 1 "DCGM_FI_DEV_GPU_UTIL": want`},
		{"DCGM_FI_DEV_GPU_UTIL, histogram, x\n", `type "histogram"`},
		{"GPU_UTIL, gauge, x\n", "not a DCGM field name"},
		{"DCGM_FI_DEV_GPU_UTIL, gauge\n# c\nDCGM_FI_DEV_GPU_UTIL, counter\n", "line 3: field DCGM_FI_DEV_GPU_UTIL is listed again (first on line 1)"},
	} {
		if _, err := ParseCounters(strings.NewReader(tc.in)); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ParseCounters(%q): err %v, want %q", tc.in, err, tc.err)
		}
	}
	for _, tc := range []struct {
		cs  []Counter
		err string
	}{
		{[]Counter{{Field: "DCGM_FI_DEV_POWER_VIOLATION", Type: "counter"}}, "not collected by loupe-agent; it serves DCGM_FI_DEV_SM_CLOCK"},
		{[]Counter{{Field: "DCGM_FI_DEV_NAME", Type: "label"}}, "only DCGM_FI_DRIVER_VERSION"},
		{[]Counter{{Field: "DCGM_FI_DRIVER_VERSION", Type: "label"}}, "names no field"},
	} {
		if _, _, err := selectCounters(tc.cs); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("selectCounters(%+v): err %v, want %q", tc.cs, err, tc.err)
		}
	}
	cfg := testConfig()
	cfg.Collectors = filepath.Join(t.TempDir(), "missing.csv")
	if _, err := New(cfg, nil, metrics.NewSet()); err == nil || !strings.Contains(err.Error(), "gpu collectors file") {
		t.Errorf("New with a missing counters file: %v, want an error naming it", err)
	}
}

func FuzzParseCounters(f *testing.F) {
	f.Add([]byte("DCGM_FI_DEV_SM_CLOCK, gauge, SM clock\n# x\nDCGM_FI_DRIVER_VERSION, label, v\n"))
	f.Add([]byte("DCGM_FI_DEV_GPU_UTIL,gauge,a,b,c\r\n,,\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cs, err := ParseCounters(bytes.NewReader(data))
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, c := range cs {
			if !strings.HasPrefix(c.Field, "DCGM_FI_") || seen[c.Field] || (c.Type != typeGauge && c.Type != typeCounter && c.Type != typeLabel) {
				t.Fatalf("accepted %+v", c)
			}
			seen[c.Field] = true
		}
		if sel, _, err := selectCounters(cs); err == nil {
			for _, e := range sel {
				if e.get == nil {
					t.Fatalf("selected %s without a reading", e.name)
				}
			}
		}
	})
}
