package gpu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/VictoriaMetrics/metrics"
)

// testGPUs is go-nvml's DGX H100 mock with every reading the collector
// uses set on each device. Readings move with a per-device call counter:
// utilization climbs 1 % per sample from 10*i, power 1 W per sample.
type testGPUs struct {
	srv    *server.Server
	calls  []*atomic.Int64 // GetUtilizationRates calls per device
	events chan nvml.EventData
}

func newTestGPUs(t *testing.T) *testGPUs {
	t.Helper()
	srv := dgxh100.New()
	tg := &testGPUs{srv: srv, events: make(chan nvml.EventData, 16)}
	for i, h := range srv.Devices {
		d := h.(*server.Device)
		n := new(atomic.Int64)
		tg.calls = append(tg.calls, n)
		d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
			k := n.Add(1)
			return nvml.Utilization{Gpu: uint32(10*i) + uint32(k%50), Memory: 20}, nvml.SUCCESS
		}
		d.MemoryInfo.Used, d.MemoryInfo.Free = 10<<30, d.MemoryInfo.Total-10<<30
		d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return uint32(300_000 + 1000*n.Load()), nvml.SUCCESS }
		d.GetTotalEnergyConsumptionFunc = func() (uint64, nvml.Return) { return uint64(1e6 + 300*n.Load()), nvml.SUCCESS }
		d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return uint32(50 + i), nvml.SUCCESS }
		d.GetClockInfoFunc = func(c nvml.ClockType) (uint32, nvml.Return) {
			if c == nvml.CLOCK_SM {
				return 1980, nvml.SUCCESS
			}
			return 2619, nvml.SUCCESS
		}
		d.GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) { return 0, nvml.SUCCESS }
		d.GetPcieThroughputFunc = func(nvml.PcieUtilCounter) (uint32, nvml.Return) { return 1000, nvml.SUCCESS }
		d.GetFieldValuesFunc = func(vs []nvml.FieldValue) nvml.Return {
			for k := range vs {
				vs[k].NvmlReturn = uint32(nvml.ERROR_NOT_SUPPORTED)
				if vs[k].FieldId == nvml.FI_DEV_MEMORY_TEMP {
					vs[k].NvmlReturn, vs[k].ValueType = uint32(nvml.SUCCESS), uint32(nvml.VALUE_TYPE_UNSIGNED_INT)
					binary.LittleEndian.PutUint32(vs[k].Value[:], uint32(60+i))
				}
			}
			return nvml.SUCCESS
		}
		d.GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) { return 0, nvml.SUCCESS }
		d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 2, 1, false, i == 7, nvml.SUCCESS }
		d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
			return []nvml.ProcessInfo{{Pid: uint32(1000 + i), UsedGpuMemory: 8 << 30}}, nvml.SUCCESS
		}
		d.GetProcessUtilizationFunc = func(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
			return []nvml.ProcessUtilizationSample{{Pid: uint32(1000 + i), TimeStamp: 5, SmUtil: 77, MemUtil: 33}}, nvml.SUCCESS
		}
		d.RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return nvml.SUCCESS }
		d.GetPcieReplayCounterFunc = func() (int, nvml.Return) { return 3 + i, nvml.SUCCESS }
		d.GetEncoderUtilizationFunc = func() (uint32, uint32, nvml.Return) { return uint32(i), 167000, nvml.SUCCESS }
		d.GetDecoderUtilizationFunc = func() (uint32, uint32, nvml.Return) { return uint32(2 * i), 167000, nvml.SUCCESS }
		d.GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) {
			return nvml.Memory_v2{Total: d.MemoryInfo.Total, Reserved: 512 << 20, Used: d.MemoryInfo.Used - 512<<20, Free: d.MemoryInfo.Free}, nvml.SUCCESS
		}
		// A licensed vGPU, as a cloud VM's GPU is.
		d.GetGridLicensableFeaturesFunc = func() (nvml.GridLicensableFeatures, nvml.Return) {
			f := nvml.GridLicensableFeatures{IsGridLicenseSupported: 1, LicensableFeaturesCount: 1}
			f.GridLicensableFeatures[0].FeatureState = 1
			return f, nvml.SUCCESS
		}
	}
	srv.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		return &mock.EventSet{
			WaitFunc: func(ms uint32) (nvml.EventData, nvml.Return) {
				select {
				case e := <-tg.events:
					return e, nvml.SUCCESS
				case <-time.After(time.Duration(ms) * time.Millisecond):
					return nvml.EventData{}, nvml.ERROR_TIMEOUT
				}
			},
			FreeFunc: func() nvml.Return { return nvml.SUCCESS },
		}, nvml.SUCCESS
	}
	return tg
}

func (tg *testGPUs) device(i int) *server.Device { return tg.srv.Devices[i].(*server.Device) }

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Interval = 50 * time.Millisecond
	cfg.DCGM.Enabled = false
	cfg.Hostname = "node-7"
	return cfg
}

// start runs a collector on lib until the test ends.
func start(t *testing.T, cfg Config, lib nvml.Interface, sim *Simulator) (*Collector, *metrics.Set) {
	t.Helper()
	set := metrics.NewSet()
	c := newCollector(cfg, nil, set, lib, sim)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return c, set
}

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// series is one parsed exposition line.
type series struct {
	name   string
	labels map[string]string
	value  float64
}

// parseExposition parses Prometheus text exposition (no metadata lines
// are needed by the tests; comment lines are skipped).
func parseExposition(t *testing.T, text string) []series {
	t.Helper()
	var out []series
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s := series{labels: map[string]string{}}
		rest := line
		if i := strings.IndexAny(line, "{ "); i >= 0 && line[i] == '{' {
			s.name = line[:i]
			rest = line[i+1:]
			for !strings.HasPrefix(rest, "}") {
				eq := strings.IndexByte(rest, '=')
				if eq < 0 || len(rest) < eq+2 || rest[eq+1] != '"' {
					t.Fatalf("bad labels in %q", line)
				}
				key := rest[:eq]
				rest = rest[eq+2:]
				var val strings.Builder
				for i := 0; ; i++ {
					if i >= len(rest) {
						t.Fatalf("unterminated label value in %q", line)
					}
					if rest[i] == '\\' && i+1 < len(rest) {
						i++
						if rest[i] == 'n' {
							val.WriteByte('\n')
						} else {
							val.WriteByte(rest[i])
						}
						continue
					}
					if rest[i] == '"' {
						rest = rest[i+1:]
						break
					}
					val.WriteByte(rest[i])
				}
				s.labels[key] = val.String()
				rest = strings.TrimPrefix(rest, ",")
			}
			rest = strings.TrimSpace(rest[1:])
		} else {
			name, v, ok := strings.Cut(line, " ")
			if !ok {
				t.Fatalf("bad line %q", line)
			}
			s.name, rest = name, v
		}
		v, err := strconv.ParseFloat(rest, 64)
		if err != nil {
			t.Fatalf("bad value in %q: %v", line, err)
		}
		s.value = v
		out = append(out, s)
	}
	return out
}

func scrape(t *testing.T, set *metrics.Set) []series {
	t.Helper()
	var b bytes.Buffer
	set.WritePrometheus(&b)
	return parseExposition(t, b.String())
}

// find returns the series with this name whose labels include want.
func find(all []series, name string, want map[string]string) []series {
	var out []series
next:
	for _, s := range all {
		if s.name != name {
			continue
		}
		for k, v := range want {
			if s.labels[k] != v {
				continue next
			}
		}
		out = append(out, s)
	}
	return out
}

func gpuLabel(i int) map[string]string { return map[string]string{"gpu": fmt.Sprint(i)} }
