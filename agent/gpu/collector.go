package gpu

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/traces"
)

// Collector samples the host's GPUs into ring buffers and keeps the live
// metrics. Create it with New, run it with Run.
type Collector struct {
	cfg      Config
	log      *slog.Logger
	lib      nvml.Interface
	sim      *Simulator
	devs     []*device
	driver   string
	cuda     string // the CUDA version the driver supports, "12.4"
	hostname string
	metrics  *healthMetrics

	prof       profiler      // nil without DCGM (or its simulation)
	dcgm       *dcgmProfiler // the real DCGM session, polled by Run
	profReason string

	events   eventLog
	captures atomic.Int32
	wake     chan struct{}
	running  atomic.Bool

	scrapeSize atomic.Int64 // bytes of the last per-GPU exposition

	onNVMLError func(error)
}

// New prepares a Collector: it opens NVML (or the simulator), discovers
// the devices and, when enabled, DCGM. A host without the driver or without
// GPUs is not an error: the Collector then has no devices and
// loupe_gpu_unavailable{reason} says why. Only an invalid cfg is an error.
func New(cfg Config, logger *slog.Logger, set *metrics.Set) (*Collector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Simulate > 0 {
		sim := NewSimulator(cfg.Simulate, cfg.Sim)
		return newCollector(cfg, logger, set, sim.Interface(), sim), nil
	}
	return newCollector(cfg, logger, set, nvml.New(), nil), nil
}

// newCollector is New with the NVML library given (the real one, the
// simulator, or a test's mock server).
func newCollector(cfg Config, logger *slog.Logger, set *metrics.Set, lib nvml.Interface, sim *Simulator) *Collector {
	if logger == nil {
		logger = slog.Default()
	}
	c := &Collector{cfg: cfg, log: logger.With("component", "gpu"), lib: lib, sim: sim,
		hostname: cfg.Hostname, wake: make(chan struct{}, 1), events: eventLog{max: 4096}}
	if c.hostname == "" {
		c.hostname, _ = os.Hostname()
	}
	c.metrics = newHealthMetrics(set, sim != nil)
	c.onNVMLError = func(err error) {
		c.metrics.errors("nvml")
		c.log.Debug("nvml read failed", "err", err)
	}
	set.RegisterMetricsWriter(c.writeGPUMetrics)
	c.metrics.rate.Set(1 / cfg.Interval.Seconds())

	if ret := lib.Init(); ret != nvml.SUCCESS {
		reason := nvmlReason(ret)
		c.log.Info("no NVIDIA GPU: NVML is not available; serving without GPU metrics", "reason", reason, "nvml", ret.Error())
		c.lib = nil
		c.noGPU(reason)
		return c
	}
	if v, ret := lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		c.driver = v
	}
	if v, ret := lib.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS && v > 0 {
		// NVML encodes it as 1000*major + 10*minor.
		c.cuda = fmt.Sprintf("%d.%d", v/1000, v%1000/10)
	}
	ringMin := int(float64(cfg.RingSeconds)/cfg.Interval.Seconds()) + 2
	ringMax := int(float64(cfg.RingSeconds)*max(cfg.CaptureHz, 1/cfg.Interval.Seconds())) + 2
	devs, errs := discover(lib, int64(cfg.RingSeconds)*int64(time.Second), ringMin, ringMax)
	for _, err := range errs {
		c.log.Warn("gpu left out", "err", err)
		c.metrics.errors("nvml")
	}
	c.devs = devs
	c.metrics.devices.Set(float64(len(devs)))
	if len(devs) == 0 {
		c.log.Info("no NVIDIA GPU: the driver reports no usable device")
		_ = lib.Shutdown()
		c.lib = nil
		c.noGPU("no_devices")
		return c
	}
	c.metrics.reason("loupe_gpu_unavailable", "none", 0)
	c.log.Info("gpus found", "count", len(devs), "driver", c.driver, "simulated", sim != nil)
	c.openProfiler()
	return c
}

func (c *Collector) noGPU(reason string) {
	c.metrics.devices.Set(0)
	c.metrics.reason("loupe_gpu_unavailable", reason, 1)
	c.profReason = "no_gpu"
	c.metrics.reason("loupe_dcgm_available", c.profReason, 0)
}

// openProfiler sets up the DCGM profiling fields: simulated on simulated
// GPUs, otherwise from DCGM when enabled. DCGM missing is normal on many
// hosts: one log line, loupe_dcgm_available 0 with the reason, and NVML
// sampling goes on.
func (c *Collector) openProfiler() {
	switch {
	case c.sim != nil:
		c.prof, c.profReason = &simProfiler{}, "simulated"
		c.metrics.reason("loupe_dcgm_available", c.profReason, 1)
	case !c.cfg.DCGM.Enabled:
		c.profReason = "disabled"
		c.metrics.reason("loupe_dcgm_available", c.profReason, 0)
	default:
		p, err := openDCGM(c.cfg.DCGM)
		if err != nil {
			c.profReason = dcgmReason(err)
			c.log.Info("DCGM profiling fields unavailable; NVML metrics continue", "reason", c.profReason, "err", err)
			c.metrics.reason("loupe_dcgm_available", c.profReason, 0)
			return
		}
		c.prof, c.dcgm, c.profReason = p, p, "ok"
		c.metrics.reason("loupe_dcgm_available", c.profReason, 1)
	}
}

// nvmlReason is a short, stable label value for an NVML start-up failure.
func nvmlReason(ret nvml.Return) string {
	switch ret {
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return "driver_library_not_found"
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return "driver_not_loaded"
	case nvml.ERROR_NO_PERMISSION:
		return "no_permission"
	case nvml.ERROR_INSUFFICIENT_SIZE, nvml.ERROR_LIB_RM_VERSION_MISMATCH:
		return "driver_version_mismatch"
	default:
		return "nvml_init_failed"
	}
}

// Run samples until ctx is done, then closes NVML and DCGM. It returns nil
// on cancellation; with no GPU it just waits for ctx.
func (c *Collector) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("gpu collector: Run called twice")
	}
	if c.lib == nil {
		<-ctx.Done()
		return nil
	}
	defer c.lib.Shutdown()
	var wg sync.WaitGroup
	wg.Go(func() { c.fastLoop(ctx) })
	wg.Go(func() { c.slowLoop(ctx) })
	wg.Go(func() {
		if err := c.watchEvents(ctx); err != nil {
			c.metrics.errors("events")
			c.log.Warn("gpu events (XID, ECC) are not watched", "err", err)
		}
	})
	if c.dcgm != nil {
		wg.Go(func() {
			c.dcgm.run(ctx, func(err error) {
				c.metrics.errors("dcgm")
				c.log.Debug("dcgm read failed", "err", err)
			})
		})
	}
	wg.Wait()
	return nil
}

// period is the current sampling period: the capture rate while any
// capture is open, the steady interval otherwise.
func (c *Collector) period() time.Duration {
	if c.captures.Load() > 0 {
		return min(c.cfg.Interval, time.Duration(float64(time.Second)/c.cfg.CaptureHz))
	}
	return c.cfg.Interval
}

func (c *Collector) fastLoop(ctx context.Context) {
	p := c.period()
	t := newTicker(p, time.Now())
	for {
		tk, ok := t.wait(ctx, c.wake)
		if !ok {
			if ctx.Err() != nil {
				return
			}
			p = c.period()
			t.reset(p, time.Now())
			c.metrics.rate.Set(1 / p.Seconds())
			continue
		}
		if tk.missed > 0 {
			c.metrics.missed.Add(int(tk.missed))
		}
		c.metrics.lag.Set(tk.lag.Seconds())
		start := time.Now()
		c.sampleAll()
		c.metrics.busy.Set(time.Since(start).Seconds())
	}
}

// sampleAll takes one sample of every device that is not lost.
func (c *Collector) sampleAll() {
	for _, d := range c.devs {
		if d.lost.Load() {
			continue
		}
		s := &d.cur
		*s = traces.GPUSample{TimeNs: time.Now().UnixNano(), GPU: int32(d.info.Index), UUID: d.info.UUID}
		if err := d.readFast(s, c.onNVMLError); err != nil {
			c.markLost(d)
			continue
		}
		if c.prof != nil && c.prof.fill(d, s) {
			d.supported.Or(uint32(fProf))
		}
		d.mu.Lock()
		sf := &d.slow
		s.MemTempC = sf.MemTempC
		s.PCIeTxBps, s.PCIeRxBps = sf.PCIeTxBps, sf.PCIeRxBps
		s.NVLinkTxBps, s.NVLinkRxBps = sf.NVLinkTxBps, sf.NVLinkRxBps
		s.ECCSingleBit, s.ECCDoubleBit, s.RemappedRows = sf.ECCSingleBit, sf.ECCDoubleBit, sf.RemappedRows
		d.last = *s
		d.mu.Unlock()
		d.ring.push(s)
		c.metrics.samples.Inc()
	}
}

func (c *Collector) slowLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		now := time.Now()
		for _, d := range c.devs {
			if d.lost.Load() {
				continue
			}
			sf, procs, err := d.readSlow(now, c.captures.Load() > 0, c.onNVMLError)
			if err != nil {
				c.markLost(d)
				continue
			}
			var pod [3]string
			if c.cfg.Pods != nil {
				pod[0], pod[1], pod[2] = c.cfg.Pods.GPU(d.info.UUID)
			}
			d.mu.Lock()
			d.slow = sf
			if d.supported.Load()&uint32(fProcesses) != 0 {
				d.procs = procs
			}
			if pod != d.pod {
				d.pod = pod
				d.info.Pod, d.info.Namespace, d.info.Container = pod[0], pod[1], pod[2]
				d.labels = ""
			}
			d.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// markLost records, once, that a device answered ERROR_GPU_IS_LOST. The
// device is not read again; the others keep being sampled.
func (c *Collector) markLost(d *device) {
	if !d.lost.CompareAndSwap(false, true) {
		return
	}
	d.mu.Lock()
	d.procs = nil
	d.mu.Unlock()
	c.events.add(traces.Event{TimeNs: time.Now().UnixNano(), Kind: traces.EventGPULost, GPU: d.info.Index, Rank: -1,
		Message: "GPU is lost (NVML ERROR_GPU_IS_LOST): it needs a reset or a reboot",
		Attrs:   map[string]string{"uuid": d.info.UUID}})
	c.metrics.event(traces.EventGPULost)
	c.metrics.errors("nvml")
	c.log.Error("gpu lost; its sampling stops, the other GPUs go on", "gpu", d.info.Index, "uuid", d.info.UUID)
}

// Devices lists the GPUs found, with their pod when known.
func (c *Collector) Devices() []traces.GPUInfo {
	out := make([]traces.GPUInfo, 0, len(c.devs))
	for _, d := range c.devs {
		d.mu.Lock()
		out = append(out, d.info)
		d.mu.Unlock()
	}
	return out
}

// Versions are the NVIDIA driver's version and the CUDA version it
// supports, as NVML reports them; empty without a GPU.
func (c *Collector) Versions() (driver, cuda string) { return c.driver, c.cuda }

// Simulated reports whether the GPUs are simulated.
func (c *Collector) Simulated() bool { return c.sim != nil }

// BeginCapture raises sampling to CaptureHz until the returned end is
// called. Captures nest: the rate falls back only when the last one ends.
// end may be called more than once.
func (c *Collector) BeginCapture() (end func()) {
	if c.captures.Add(1) == 1 {
		c.nudge()
	}
	return sync.OnceFunc(func() {
		if c.captures.Add(-1) == 0 {
			c.nudge()
		}
	})
}

func (c *Collector) nudge() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Samples returns the samples of every GPU taken in [from, to], ordered by
// time then GPU, from the ring buffers.
func (c *Collector) Samples(from, to time.Time) []traces.GPUSample {
	var out []traces.GPUSample
	for _, d := range c.devs {
		out = d.ring.appendRange(out, from.UnixNano(), to.UnixNano())
	}
	slices.SortFunc(out, func(a, b traces.GPUSample) int {
		if c := cmp.Compare(a.TimeNs, b.TimeNs); c != 0 {
			return c
		}
		return cmp.Compare(a.GPU, b.GPU)
	})
	return out
}

// Events returns the XID, ECC and lost-GPU events in [from, to].
func (c *Collector) Events(from, to time.Time) []traces.Event {
	return c.events.between(from.UnixNano(), to.UnixNano())
}

// Processes lists the compute processes on the GPUs as of the last steady
// interval.
func (c *Collector) Processes() []GPUProcess {
	var out []GPUProcess
	for _, d := range c.devs {
		d.mu.Lock()
		out = append(out, d.procs...)
		d.mu.Unlock()
	}
	return out
}

// PauseProfiling pauses (true) or resumes (false) DCGM's profiling fields,
// as `dcgmi profile --pause` does, so that Nsight can use the counters.
// While paused the samples carry no profiling fields.
func (c *Collector) PauseProfiling(pause bool) error {
	if c.prof == nil {
		return fmt.Errorf("cannot pause profiling: %w (%s)", errNoDCGM, c.profReason)
	}
	if err := c.prof.pause(pause); err != nil {
		return err
	}
	v := 0.0
	if pause {
		v = 1
		c.log.Info("DCGM profiling paused")
	} else {
		c.log.Info("DCGM profiling resumed")
	}
	c.metrics.paused.Set(v)
	return nil
}
