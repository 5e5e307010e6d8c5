// Package daemon assembles loupe-agent: it opens the store, the spool and
// the uploader, starts every collector it can (GPU, CPU profiler, NCCL
// tracer, Kineto endpoint, attribution), wires step tracking into the
// stable-iteration trigger and the capturer, and serves /metrics, /healthz
// and the local control API.
//
// A collector that cannot start (no GPU, no eBPF privilege, dynolog already
// running) is logged once, reported by loupe_collector_up{collector} 0 and
// in every capture's notes; the agent keeps serving without it.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/agent/api"
	"github.com/loupe-dev/loupe/agent/attribution"
	"github.com/loupe-dev/loupe/agent/capture"
	"github.com/loupe-dev/loupe/agent/cpuprof"
	"github.com/loupe-dev/loupe/agent/gpu"
	"github.com/loupe-dev/loupe/agent/hang"
	"github.com/loupe-dev/loupe/agent/kineto"
	"github.com/loupe-dev/loupe/agent/logtail"
	"github.com/loupe-dev/loupe/agent/nccl"
	"github.com/loupe-dev/loupe/agent/spool"
	"github.com/loupe-dev/loupe/agent/steps"
	"github.com/loupe-dev/loupe/agent/trigger"
	"github.com/loupe-dev/loupe/agent/upload"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/promtext"
	"github.com/loupe-dev/loupe/traces/store"
)

// Version is the agent's version, set at link time with
// -ldflags "-X github.com/loupe-dev/loupe/agent/daemon.Version=v1.2.3".
var Version = "dev"

// Collector names in loupe_collector_up and the status reply.
const (
	collGPU         = "gpu"
	collCPU         = "cpu"
	collNCCL        = "nccl"
	collKineto      = "kineto"
	collAttribution = "attribution"
	collLogs        = "logs"
	collHang        = "hang"
)

// maxLatencyPoints bounds the latency values kept for captures.
const maxLatencyPoints = 100000

// Daemon is one running agent. New opens everything; Run serves until its
// context ends.
type Daemon struct {
	cfg     Config
	log     *slog.Logger
	token   string
	started time.Time

	sets []*metrics.Set // written at every scrape, after the default set

	store    store.Store
	spool    *spool.Spool
	uploader *upload.Uploader
	attr     *attribution.Resolver
	gpu      *gpu.Collector
	cpu      *cpuprof.Profiler
	nccl     *nccl.Tracer
	hang     *hang.Detector
	kineto   *kineto.Server
	logs     *logtail.Tailer
	latency  *logtail.Ring // POST /v1/latency values, as events
	tracker  *steps.Tracker
	trigger  *trigger.Trigger
	capturer *capture.Capturer

	mu         sync.Mutex
	collectors []api.Collector
	running    atomic.Bool // Run has started the collectors (/readyz)

	metricsLn, apiLn net.Listener
	closers          []func() error // for a New that fails half-way, and after Run
}

// New opens the daemon's parts and binds its listeners. It fails only on
// what the agent cannot run without (a bad store URL, an unusable spool, an
// API address without a token); collectors that cannot start are left out.
func New(ctx context.Context, cfg Config, logger *slog.Logger) (_ *Daemon, err error) {
	if logger == nil {
		logger = slog.Default()
	}
	d := &Daemon{cfg: cfg, log: logger, started: time.Now()}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	if err := d.prepareConfig(); err != nil {
		return nil, err
	}
	if err := api.CheckAddr(d.cfg.APIAddr, d.token); err != nil {
		return nil, err
	}
	cfg = d.cfg
	// Bind first: a busy port should fail before any eBPF is loaded.
	if d.metricsLn, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
		return nil, fmt.Errorf("metrics address: %w (dcgm-exporter uses the same port: stop it, or set --metrics-addr)", err)
	}
	if d.apiLn, err = net.Listen("tcp", cfg.APIAddr); err != nil {
		return nil, fmt.Errorf("api address: %w (is another loupe-agent running? set --api-addr)", err)
	}

	own := d.newSet()
	own.NewGauge(fmt.Sprintf(`loupe_agent_info{version=%q,host=%q,cluster=%q}`, Version, cfg.Host, cfg.Cluster), func() float64 { return 1 })
	own.NewGauge("loupe_agent_start_time_seconds", func() float64 { return float64(d.started.Unix()) })

	if d.store, err = store.Open(ctx, cfg.Store); err != nil {
		return nil, fmt.Errorf("store %q: %w", cfg.Store, err)
	}
	if d.spool, err = spool.Open(cfg.SpoolDir, spool.Options{MaxBytes: cfg.SpoolMaxBytes, Logger: logger.With("component", "spool"), Metrics: d.newSet()}); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	d.closers = append(d.closers, d.spool.Close)
	d.uploader = upload.New(d.spool, d.store, upload.Options{
		Interval: cfg.Upload.Interval, BackoffBase: cfg.Upload.BackoffBase, BackoffMax: cfg.Upload.BackoffMax,
		Logger: logger.With("component", "upload"), Metrics: d.newSet(),
	})

	d.attr = attribution.New(cfg.Attribution, logger)
	d.setCollector(collAttribution, nil)
	d.startCollectors(own)

	d.trigger = trigger.New(cfg.Trigger)
	scfg := cfg.Steps
	scfg.Window = d.trigger.Config().Window
	d.tracker = steps.New(scfg)
	d.tracker.Register(own)
	d.tracker.Observe(d.observeStep)
	d.capturer = capture.New(capture.Config{
		Cluster: cfg.Cluster, Host: cfg.Host, AgentVersion: Version,
		MaxConcurrent: cfg.Capture.MaxConcurrent, MaxDuration: cfg.Capture.MaxDuration, StartTimeout: cfg.Capture.StartTimeout,
	}, d.sources(), d.spool, d.uploader, logger.With("component", "capture"))
	own.NewGauge("loupe_captures_in_progress", func() float64 {
		n := 0
		for _, s := range d.capturer.List() {
			if s.State != capture.StateCommitted && s.State != capture.StateFailed {
				n++
			}
		}
		return float64(n)
	})

	return d, nil
}

// prepareConfig fills what defaults cannot know and checks the rest.
func (d *Daemon) prepareConfig() error {
	c := &d.cfg
	if c.Host == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("host name: %w; set --host", err)
		}
		c.Host = keyComponent(h, "host")
	}
	for _, f := range []struct{ name, v string }{
		{"cluster", c.Cluster}, {"host", c.Host}, {"default_job", c.DefaultJob}, {"default_run", c.DefaultRun},
	} {
		if err := traces.ValidateComponent(f.v); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	d.token = c.APIToken
	if c.APITokenFile != "" {
		data, err := os.ReadFile(c.APITokenFile)
		if err != nil {
			return fmt.Errorf("api token file: %w", err)
		}
		d.token = strings.TrimSpace(string(data))
		if d.token == "" {
			return fmt.Errorf("api token file %s is empty", c.APITokenFile)
		}
	}
	if c.SimulateGPUs > 0 {
		c.GPU.Simulate = c.SimulateGPUs
	}
	c.GPU.Hostname = c.Host
	if err := c.GPU.Validate(); err != nil {
		return err
	}
	if c.Hang.Enabled {
		if err := c.Hang.Validate(); err != nil {
			return err
		}
	}
	if c.Capture.DefaultDuration <= 0 || c.Capture.DefaultDuration > c.Capture.MaxDuration {
		return fmt.Errorf("capture.default_duration %v must be positive and at most capture.max_duration %v", c.Capture.DefaultDuration, c.Capture.MaxDuration)
	}
	// A window's GPU samples come from the rings, which keep ring_seconds:
	// a longer window would silently lose its start.
	if ring := time.Duration(c.GPU.RingSeconds) * time.Second; c.Capture.MaxDuration > ring {
		return fmt.Errorf("capture.max_duration %v is longer than the GPU sample history gpu.ring_seconds (%v): raise gpu.ring_seconds or lower capture.max_duration", c.Capture.MaxDuration, ring)
	}
	return nil
}

func (d *Daemon) newSet() *metrics.Set {
	s := metrics.NewSet()
	d.sets = append(d.sets, s)
	return s
}

// startCollectors creates each collector; one that fails is logged once
// and left out.
func (d *Daemon) startCollectors(own *metrics.Set) {
	cfg := d.cfg
	gcfg := cfg.GPU
	gcfg.Pods = d.attr
	if g, err := gpu.New(gcfg, d.log, d.newSet()); err != nil {
		d.down(collGPU, "gpu collector off", err)
		own.NewGauge("loupe_gpu_devices", func() float64 { return 0 })
	} else {
		d.gpu = g
		d.setCollector(collGPU, nil)
		if len(g.Devices()) == 0 {
			d.setCollector(collGPU, errors.New("no NVIDIA GPU found (see loupe_gpu_unavailable)"))
		}
	}

	if !cfg.CPU.Enabled {
		d.setCollector(collCPU, errors.New("disabled by configuration (cpu.enabled)"))
	} else {
		ccfg := cfg.CPU.Config
		ccfg.Labeler = d.labels
		ccfg.Continuous.Sink = d.writeContinuous
		if p, err := cpuprof.New(ccfg, d.log, d.newSet()); err != nil {
			d.down(collCPU, "cpu profiler off", err)
		} else {
			d.cpu = p
			d.setCollector(collCPU, nil)
			d.closers = append(d.closers, p.Close)
		}
	}

	ncfg := cfg.NCCL.Config
	ncfg.Ranks = func(pid int) (int, int) {
		info := d.processInfo(pid)
		return info.Rank, info.WorldSize
	}
	if !cfg.NCCL.Enabled {
		d.setCollector(collNCCL, errors.New("disabled by configuration (nccl.enabled)"))
	} else if t, err := nccl.New(ncfg, d.log, d.newSet()); err != nil {
		d.down(collNCCL, "nccl tracer off", err)
	} else {
		d.nccl = t
		d.setCollector(collNCCL, nil)
		d.closers = append(d.closers, t.Close)
	}
	switch {
	case !cfg.Hang.Enabled:
		d.setCollector(collHang, errors.New("disabled by configuration (hang.enabled)"))
	case d.nccl == nil:
		d.setCollector(collHang, errors.New("needs the NCCL tracer, which is off"))
	default:
		d.hang = hang.New(cfg.Hang, d.nccl, d.jobOf, d.onHang, d.log, d.newSet())
		d.setCollector(collHang, nil)
	}

	if !cfg.Kineto.Enabled {
		d.setCollector(collKineto, errors.New("disabled by configuration (kineto.enabled)"))
	} else {
		kcfg := cfg.Kineto
		kcfg.JobOf = d.jobOf
		var dcgm kineto.DCGMControl
		if d.gpu != nil {
			dcgm = d.gpu
		}
		if k, err := kineto.New(kcfg, d.log, d.newSet(), dcgm); err != nil {
			d.down(collKineto, "kineto endpoint off", err)
		} else {
			d.kineto = k
			d.setCollector(collKineto, nil)
		}
	}

	d.latency = logtail.NewRing(maxLatencyPoints, own.NewCounter(`loupe_latency_points_dropped_total`))
	if len(cfg.Logs.Files) == 0 {
		d.setCollector(collLogs, errors.New("no log files configured (logs.files)"))
	} else if err := cfg.Logs.Validate(); err != nil {
		d.down(collLogs, "log tailer off", err)
	} else {
		d.logs = logtail.New(cfg.Logs, d.log.With("component", "logs"), d.newSet())
		d.setCollector(collLogs, nil)
	}

	up := d.newSet()
	for _, c := range []string{collGPU, collCPU, collNCCL, collHang, collKineto, collAttribution, collLogs} {
		up.NewGauge(fmt.Sprintf(`loupe_collector_up{collector=%q}`, c), func() float64 {
			if d.collector(c).Up {
				return 1
			}
			return 0
		})
	}
}

// down records a collector that could not start, with one log line.
func (d *Daemon) down(name, msg string, err error) {
	d.log.Warn(msg+"; the agent keeps running without it", "collector", name, "err", err)
	d.setCollector(name, err)
}

func (d *Daemon) setCollector(name string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := api.Collector{Name: name, Up: err == nil}
	if err != nil {
		c.Reason = err.Error()
	}
	for i := range d.collectors {
		if d.collectors[i].Name == name {
			d.collectors[i] = c
			return
		}
	}
	d.collectors = append(d.collectors, c)
}

func (d *Daemon) collector(name string) api.Collector {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.collectors {
		if c.Name == name {
			return c
		}
	}
	return api.Collector{Name: name}
}

// sources hands the running collectors to the capturer, with a note for
// each one that is missing.
func (d *Daemon) sources() capture.Sources {
	src := capture.Sources{Steps: d.tracker, Events: []capture.EventSource{d.latency}}
	if d.logs != nil {
		src.Events = append(src.Events, d.logs)
	}
	if d.gpu != nil && len(d.gpu.Devices()) > 0 {
		src.GPU = d.gpu
	}
	if d.cpu != nil {
		src.CPU = cpuSource{d.cpu}
	}
	if d.nccl != nil {
		src.NCCL = d.nccl
	}
	if d.kineto != nil {
		src.Addons = append(src.Addons, &kinetoAddon{srv: d.kineto, dir: d.cfg.Kineto.TraceDir, roundup: d.trigger.Config().Roundup, log: d.log})
	}
	label := map[string]string{collGPU: "gpu samples", collCPU: "cpu profile", collNCCL: "nccl events", collKineto: "kineto traces"}
	for _, name := range []string{collGPU, collCPU, collNCCL, collKineto} {
		if c := d.collector(name); !c.Up {
			src.Missing = append(src.Missing, fmt.Sprintf("%s: %s", label[name], c.Reason))
		}
	}
	return src
}

// cpuSource adapts the profiler, whose windows are a concrete type.
type cpuSource struct{ p *cpuprof.Profiler }

func (c cpuSource) StartWindow(pids []int) capture.CPUWindow { return c.p.StartWindow(pids) }

// labels are the pprof labels of a process: job, rank, container and pod.
func (d *Daemon) labels(pid int) map[string]string {
	info := d.processInfo(pid)
	out := map[string]string{}
	if info.Job != "" {
		out["job"] = info.Job
	}
	if info.Rank >= 0 {
		out["rank"] = fmt.Sprint(info.Rank)
	}
	if info.Container != "" {
		out["container"] = info.Container
	}
	if info.Pod != "" {
		out["pod"] = info.Pod
	}
	return out
}

// MetricsAddr and APIAddr are the bound addresses (useful with port 0).
func (d *Daemon) MetricsAddr() string { return d.metricsLn.Addr().String() }

// APIAddr is the bound address of the control API.
func (d *Daemon) APIAddr() string { return d.apiLn.Addr().String() }

// Run serves until ctx ends, then shuts every part down and waits for it.
// An open capture window is closed early and its bundle kept.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	run := func(name string, fn func(context.Context) error) {
		wg.Go(func() {
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				d.log.Error("component stopped", "component", name, "err", err)
				d.setCollector(name, err)
			}
		})
	}
	run(collAttribution, d.attr.Run)
	if d.gpu != nil {
		run(collGPU, d.gpu.Run)
	}
	if d.cpu != nil {
		run(collCPU, d.cpu.Run)
	}
	if d.nccl != nil {
		run(collNCCL, d.nccl.Run)
		run("nccl-steps", d.ncclSteps)
	}
	if d.hang != nil {
		run(collHang, d.hang.Run)
	}
	if d.kineto != nil {
		run(collKineto, d.kineto.Run)
	}
	if d.logs != nil {
		run(collLogs, func(ctx context.Context) error { d.logs.Run(ctx); return nil })
		run("log-history", d.shipLogHistory)
	}
	run("capture", d.capturer.Run)
	run("upload", d.uploader.Run)
	// Ready, and serving, once the capture service takes requests: a
	// capture asked for right after start-up would get a 503 otherwise.
	select {
	case <-d.capturer.Started():
	case <-ctx.Done():
	}
	d.running.Store(true)
	defer d.running.Store(false)

	servers := []*http.Server{
		{Handler: d.metricsHandler(), ReadHeaderTimeout: 10 * time.Second},
		{Handler: api.Handler(backend{d}, d.token, d.log), ReadHeaderTimeout: 10 * time.Second},
	}
	errc := make(chan error, len(servers))
	for i, ln := range []net.Listener{d.metricsLn, d.apiLn} {
		srv := servers[i]
		wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serving %s: %w", ln.Addr(), err)
			}
		})
	}
	d.log.Info("loupe-agent running", "version", Version, "host", d.cfg.Host, "cluster", d.cfg.Cluster,
		"metrics", d.MetricsAddr(), "api", d.APIAddr(), "store", d.cfg.Store, "spool", d.cfg.SpoolDir)

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	d.log.Info("loupe-agent shutting down")
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer scancel()
	for _, srv := range servers {
		_ = srv.Shutdown(sctx) // returns when idle or at the deadline; either way we go on
	}
	cancel()
	wg.Wait()
	d.log.Info("loupe-agent stopped")
	return err
}

// close releases what New opened; Run's collectors release their own
// kernel objects when their Run returns, and Close after that is harmless.
func (d *Daemon) close() {
	for _, ln := range []net.Listener{d.metricsLn, d.apiLn} {
		if ln != nil {
			ln.Close()
		}
	}
	for _, c := range slices.Backward(d.closers) {
		if err := c(); err != nil {
			d.log.Debug("close", "err", err)
		}
	}
	d.closers = nil
}

func (d *Daemon) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	tables := []promtext.Help{metricsHelp, promtext.RuntimeHelp}
	if d.gpu != nil {
		// A counters file's help texts win, as dcgm-exporter serves its file's.
		tables = append([]promtext.Help{d.gpu.Help()}, tables...)
	}
	mux.HandleFunc("GET /metrics", promtext.Handler(d.writeMetrics, tables...))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	// Ready once Run has started the collectors: liveness (/healthz) only
	// says the process answers.
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !d.running.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "starting\n")
			return
		}
		io.WriteString(w, "ready\n")
	})
	return mux
}

// writeMetrics writes the default set (with Go and process metrics), then
// the agent's own sets.
func (d *Daemon) writeMetrics(w io.Writer) {
	metrics.WritePrometheus(w, true)
	for _, s := range d.sets {
		s.WritePrometheus(w)
	}
}

// observeStep runs the stable-iteration trigger on every new step.
func (d *Daemon) observeStep(st steps.Stats) {
	dec, ok := d.trigger.Observe(st)
	if !ok {
		return
	}
	procs := d.jobProcesses(dec.Job)
	run := dec.Run
	if run == "" {
		run = d.runOfProcesses(procs)
	}
	status, err := d.capturer.Submit(capture.Request{
		ID: dec.CaptureID, Job: dec.Job, Run: run, Processes: procs, WorldSize: worldSize(procs, d),
		StartIteration: dec.StartIteration, Iterations: dec.Iterations,
		Trigger: traces.Trigger{Kind: traces.TriggerStableIteration, Reason: dec.Reason},
	})
	if err != nil {
		d.log.Warn("automatic capture refused", "job", dec.Job, "err", err)
		return
	}
	d.log.Info("automatic capture", "capture", status.ID, "job", dec.Job, "run", run, "reason", dec.Reason)
}
