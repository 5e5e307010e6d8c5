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

// snapshot is what a scrape reads of one device, copied under its lock.
type snapshot struct {
	labels    string
	s         traces.GPUSample
	x         extraFields
	mig       []migSnapshot
	xid       int64
	supported field
	lost      bool
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
		x := snapshot{labels: d.labels, s: d.last, x: d.extra, mig: d.mig, xid: d.lastXID,
			supported: field(d.supported.Load()), lost: d.lost.Load()}
		d.mu.Unlock()
		if !x.s.ProfValid {
			x.supported &^= fProf
		}
		snaps = append(snaps, x)
	}
	var b bytes.Buffer
	b.Grow(int(c.scrapeSize.Load())) // about the size of the last scrape
	for _, m := range c.counters {
		header := false
		for i := range snaps {
			x := &snaps[i]
			if x.lost || x.s.TimeNs == 0 || x.supported&m.need != m.need {
				continue
			}
			if !header {
				c.writeHeader(&b, m)
				header = true
			}
			writeLine(&b, m.name, x.labels, m.get(x))
			if m.mig == nil {
				continue
			}
			for k := range x.mig {
				if x.mig[k].ok {
					writeLine(&b, m.name, x.mig[k].labels, m.mig(&x.mig[k]))
				}
			}
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

// writeHeader writes a family's TYPE line, with the counters file's (or the
// agent's) type as dcgm-exporter does, so that dashboards and recording
// rules built for it see the same types; and its HELP line when the file
// gives a text (the daemon's exposition fills in the others').
func (c *Collector) writeHeader(b *bytes.Buffer, m exported) {
	if h := c.help[m.name]; h != "" {
		b.WriteString("# HELP ")
		b.WriteString(m.name)
		b.WriteByte(' ')
		b.WriteString(helpEscaper.Replace(h))
		b.WriteByte('\n')
	}
	b.WriteString("# TYPE ")
	b.WriteString(m.name)
	b.WriteByte(' ')
	b.WriteString(m.typ)
	b.WriteByte('\n')
}

var helpEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`)

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
func (c *Collector) labelSet(d *device) string { return c.buildLabels(d, nil, d.pod) }

// migLabelSet builds the labels of one MIG instance of d: the device's,
// with GPU_I_PROFILE and GPU_I_ID after modelName as dcgm-exporter places
// them, and the pod that holds the instance (by its MIG UUID).
func (c *Collector) migLabelSet(d *device, m migInstance) string {
	var pod [3]string
	if c.cfg.Pods != nil && m.uuid != "" {
		pod[0], pod[1], pod[2] = c.cfg.Pods.GPU(m.uuid)
	}
	return c.buildLabels(d, &m, pod)
}

func (c *Collector) buildLabels(d *device, mig *migInstance, pod [3]string) string {
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
	if mig != nil {
		add("GPU_I_PROFILE", mig.profile)
		add("GPU_I_ID", strconv.Itoa(mig.giID))
	}
	add("Hostname", c.hostname)
	add("DCGM_FI_DRIVER_VERSION", c.driver)
	if pod[0] != "" {
		add("container", pod[2])
		add("namespace", pod[1])
		add("pod", pod[0])
	}
	if c.sim != nil {
		add("simulated", "true")
	}
	b.WriteByte('}')
	return b.String()
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func escapeLabel(v string) string { return labelEscaper.Replace(v) }
