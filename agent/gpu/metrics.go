package gpu

import (
	"bytes"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/traces"
)

// healthMetrics are the collector's own loupe_* series.
type healthMetrics struct {
	set     *metrics.Set
	devices *metrics.Gauge
	missed  *metrics.Counter
	samples *metrics.Counter
	lag     *metrics.Gauge
	busy    *metrics.Gauge
	rate    *metrics.Gauge
	paused  *metrics.Gauge
}

func newHealthMetrics(set *metrics.Set, simulated bool) *healthMetrics {
	devices := "loupe_gpu_devices"
	if simulated {
		devices += `{simulated="true"}`
	}
	return &healthMetrics{
		set:     set,
		devices: set.NewGauge(devices, nil),
		missed:  set.NewCounter("loupe_gpu_missed_ticks_total"),
		samples: set.NewCounter("loupe_gpu_samples_total"),
		lag:     set.NewGauge("loupe_gpu_sampling_lag_seconds", nil),
		busy:    set.NewGauge("loupe_gpu_sampling_duration_seconds", nil),
		rate:    set.NewGauge("loupe_gpu_sampling_hz", nil),
		paused:  set.NewGauge("loupe_dcgm_profiling_paused", nil),
	}
}

// errors counts one failed read by its source: nvml, dcgm or events.
func (m *healthMetrics) errors(source string) {
	m.set.GetOrCreateCounter(`loupe_gpu_collector_errors_total{source="` + source + `"}`).Inc()
}

// event counts one GPU event by kind (xid, ecc, gpu_lost).
func (m *healthMetrics) event(kind string) {
	m.set.GetOrCreateCounter(`loupe_gpu_events_total{kind="` + kind + `"}`).Inc()
}

// reason sets a gauge whose one label names why something is (not) there,
// such as loupe_gpu_unavailable{reason="driver_not_loaded"} 1.
func (m *healthMetrics) reason(name, reason string, v float64) {
	m.set.GetOrCreateGauge(name+`{reason="`+reason+`"}`, nil).Set(v)
}

// gpuMetric is one dcgm-exporter series family, read from a snapshot of a
// device. need is the field that must have been read at least once.
type gpuMetric struct {
	name string
	typ  string // gauge or counter
	need field
	get  func(s *snapshot) float64
}

// snapshot is what a scrape reads of one device, copied under its lock.
type snapshot struct {
	labels    string
	s         traces.GPUSample
	xid       int64
	supported field
	lost      bool
}

// gpuMetrics lists the exported families with dcgm-exporter's names and
// units (MiB, W, mJ, MHz, C, %, ratios for the DCP fields, bytes/s).
var gpuMetrics = []gpuMetric{
	{"DCGM_FI_DEV_SM_CLOCK", "gauge", fSMClock, func(x *snapshot) float64 { return float64(x.s.SMClockMHz) }},
	{"DCGM_FI_DEV_MEM_CLOCK", "gauge", fMemClock, func(x *snapshot) float64 { return float64(x.s.MemClockMHz) }},
	{"DCGM_FI_DEV_MEMORY_TEMP", "gauge", fMemTemp, func(x *snapshot) float64 { return float64(x.s.MemTempC) }},
	{"DCGM_FI_DEV_GPU_TEMP", "gauge", fGPUTemp, func(x *snapshot) float64 { return float64(x.s.GPUTempC) }},
	{"DCGM_FI_DEV_POWER_USAGE", "gauge", fPower, func(x *snapshot) float64 { return float64(x.s.PowerW) }},
	{"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", fEnergy, func(x *snapshot) float64 { return float64(x.s.EnergyMJ) }},
	{"DCGM_FI_DEV_PCIE_TX_THROUGHPUT", "gauge", fPCIe, func(x *snapshot) float64 { return float64(x.s.PCIeTxBps / 1024) }},
	{"DCGM_FI_DEV_PCIE_RX_THROUGHPUT", "gauge", fPCIe, func(x *snapshot) float64 { return float64(x.s.PCIeRxBps / 1024) }},
	{"DCGM_FI_DEV_GPU_UTIL", "gauge", fUtil, func(x *snapshot) float64 { return float64(x.s.GPUUtil) }},
	{"DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", fUtil, func(x *snapshot) float64 { return float64(x.s.MemCopyUtil) }},
	{"DCGM_FI_DEV_FB_FREE", "gauge", fMemory, func(x *snapshot) float64 { return float64(x.s.FBFreeMiB) }},
	{"DCGM_FI_DEV_FB_USED", "gauge", fMemory, func(x *snapshot) float64 { return float64(x.s.FBUsedMiB) }},
	{"DCGM_FI_DEV_FB_TOTAL", "gauge", fMemory, func(x *snapshot) float64 { return float64(x.s.FBTotalMiB) }},
	{"DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "gauge", fClockEvents, func(x *snapshot) float64 { return float64(x.s.ClockEventReasons) }},
	{"DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "counter", fECC, func(x *snapshot) float64 { return float64(x.s.ECCSingleBit) }},
	{"DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "counter", fECC, func(x *snapshot) float64 { return float64(x.s.ECCDoubleBit) }},
	{"DCGM_FI_DEV_XID_ERRORS", "gauge", 0, func(x *snapshot) float64 { return float64(x.xid) }},
	{"DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", fProf, func(x *snapshot) float64 { return float64(x.s.GrEngineActive) }},
	{"DCGM_FI_PROF_SM_ACTIVE", "gauge", fProf, func(x *snapshot) float64 { return float64(x.s.SMActive) }},
	{"DCGM_FI_PROF_SM_OCCUPANCY", "gauge", fProf, func(x *snapshot) float64 { return float64(x.s.SMOccupancy) }},
	{"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge", fProf, func(x *snapshot) float64 { return float64(x.s.TensorActive) }},
	{"DCGM_FI_PROF_DRAM_ACTIVE", "gauge", fProf, func(x *snapshot) float64 { return float64(x.s.DRAMActive) }},
	{"DCGM_FI_PROF_PIPE_FP64_ACTIVE", "gauge", fProf, func(x *snapshot) float64 { return float64(x.s.FP64Active) }},
	{"DCGM_FI_PROF_PIPE_FP32_ACTIVE", "gauge", fProf, func(x *snapshot) float64 { return float64(x.s.FP32Active) }},
	{"DCGM_FI_PROF_PIPE_FP16_ACTIVE", "gauge", fProf, func(x *snapshot) float64 { return float64(x.s.FP16Active) }},
	{"DCGM_FI_PROF_PCIE_TX_BYTES", "gauge", fProf, func(x *snapshot) float64 { return float64(x.s.ProfPCIeTxBps) }},
	{"DCGM_FI_PROF_PCIE_RX_BYTES", "gauge", fProf, func(x *snapshot) float64 { return float64(x.s.ProfPCIeRxBps) }},
	{"DCGM_FI_PROF_NVLINK_TX_BYTES", "gauge", fProf, func(x *snapshot) float64 { return float64(x.s.ProfNVLinkTxBps) }},
	{"DCGM_FI_PROF_NVLINK_RX_BYTES", "gauge", fProf, func(x *snapshot) float64 { return float64(x.s.ProfNVLinkRxBps) }},
}

// writeGPUMetrics writes the per-GPU series from the devices' cached
// samples. It is registered with the metrics.Set, so it runs on scrape and
// must never touch NVML.
func (c *Collector) writeGPUMetrics(w io.Writer) {
	snaps := make([]snapshot, 0, len(c.devs))
	for _, d := range c.devs {
		d.mu.Lock()
		if d.labels == "" {
			d.labels = c.labelSet(d)
		}
		x := snapshot{labels: d.labels, s: d.last, xid: d.lastXID,
			supported: field(d.supported.Load()), lost: d.lost.Load()}
		d.mu.Unlock()
		if !x.s.ProfValid {
			x.supported &^= fProf
		}
		snaps = append(snaps, x)
	}
	var b bytes.Buffer
	b.Grow(int(c.scrapeSize.Load())) // about the size of the last scrape
	for _, m := range gpuMetrics {
		header := false
		for i := range snaps {
			x := &snaps[i]
			if x.lost || x.s.TimeNs == 0 || x.supported&m.need != m.need {
				continue
			}
			if !header {
				metrics.WriteMetadataIfNeeded(&b, m.name, m.typ)
				header = true
			}
			writeLine(&b, m.name, x.labels, m.get(x))
		}
	}
	if len(snaps) > 0 {
		metrics.WriteMetadataIfNeeded(&b, "loupe_gpu_lost", "gauge")
		for i := range snaps {
			v := 0.0
			if snaps[i].lost {
				v = 1
			}
			writeLine(&b, "loupe_gpu_lost", snaps[i].labels, v)
		}
	}
	c.scrapeSize.Store(int64(b.Len()))
	_, _ = w.Write(b.Bytes())
}

func writeLine(b *bytes.Buffer, name, labels string, v float64) {
	b.WriteString(name)
	b.WriteString(labels)
	b.WriteByte(' ')
	// Most readings are float32; four decimals keep them free of
	// conversion noise (333.2, not 333.20001220703125).
	if v != math.Trunc(v) {
		v = math.Round(v*1e4) / 1e4
	}
	b.Write(strconv.AppendFloat(b.AvailableBuffer(), v, 'g', -1, 64))
	b.WriteByte('\n')
}

// labelSet builds a device's labels in dcgm-exporter's order; pod,
// namespace and container only when known, simulated="true" on simulated
// GPUs. Called with d.mu held.
func (c *Collector) labelSet(d *device) string {
	var b strings.Builder
	add := func(k, v string) {
		if b.Len() == 0 {
			b.WriteByte('{')
		} else {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteString(`="`)
		b.WriteString(escapeLabel(v))
		b.WriteByte('"')
	}
	add("gpu", strconv.Itoa(d.info.Index))
	add("UUID", d.info.UUID)
	add("pci_bus_id", d.info.PCIBusID)
	add("device", "nvidia"+strconv.Itoa(d.minor))
	add("modelName", d.info.Name)
	add("Hostname", c.hostname)
	add("DCGM_FI_DRIVER_VERSION", c.driver)
	if d.pod[0] != "" {
		add("container", d.pod[2])
		add("namespace", d.pod[1])
		add("pod", d.pod[0])
	}
	if c.sim != nil {
		add("simulated", "true")
	}
	b.WriteByte('}')
	return b.String()
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func escapeLabel(v string) string { return labelEscaper.Replace(v) }
