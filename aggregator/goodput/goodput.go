// Package goodput keeps each job run's goodput (package analyzers/goodput)
// beside the findings in the store and answers the goodput queries of the
// API: one run, one job across its runs, and the fleet's jobs ranked by
// the GPU-hours they lose.
//
// After each committed analysis (runner.Runner.OnCommit) the capture's run
// is computed again from the step history the capture carries and the
// windows of every analyzed capture of the run (their findings, from the
// index), and stored as .../<capture>/_findings/goodput.json. A run's
// goodput is that of its newest capture with a step history. Records are
// read back through a small cache, kept while the capture's findings record
// is unchanged; a capture whose record is missing (the replica that
// committed it stopped first) or was computed by another version is
// computed when asked for, so a restart loses nothing and every replica
// answers the same.
package goodput

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	gp "github.com/loupe-dev/loupe/analyzers/goodput"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// Bounds.
const (
	maxRecord  = 16 << 20 // a goodput.json read back
	queueLen   = 256      // analyses waiting for their goodput; beyond, it is computed when asked for
	maxCached  = 8192     // captures whose goodput is cached
	runTries   = 4        // newest captures of a run tried for a step history
	maxWindows = 2000     // capture windows of a run used, newest first
)

// Key is the object holding the goodput of a capture's run as of it.
func Key(id capture.ID) string { return id.Prefix() + traces.FindingsDir + "/" + traces.GoodputName }

// Config configures a Manager.
type Config struct {
	Store store.Store
	// Index lists the captures and holds their findings.
	Index *findings.Index
	// FLOPsPerStep maps a job to its model FLOPs per iteration, all ranks
	// together, for MFU; jobs not named use their Kineto traces' flops.
	FLOPsPerStep map[string]float64
	// PeakFLOPS is one GPU's peak for MFU; 0: from the GPU model.
	PeakFLOPS float64
	// PricePerGPUHour prices GPU-hours in Currency; 0: no price.
	PricePerGPUHour float64
	Currency        string
	// MaxPartSize bounds a part read (0: the traces default).
	MaxPartSize int64
	Logger      *slog.Logger
	// Metrics receives loupe_aggregator_goodput_computed_total and
	// loupe_aggregator_goodput_errors_total; a private set when nil.
	Metrics *metrics.Set
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Manager computes, stores and serves goodput.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	queue chan capture.ID

	mu    sync.Mutex
	cache map[capture.ID]cached

	computed, failed *metrics.Counter
}

// cached is a capture's goodput as read for one findings record; g is nil
// for a capture without a step history.
type cached struct {
	etag string
	g    *traces.Goodput
}

// New returns a Manager; Run works its queue.
func New(cfg Config) *Manager {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Currency == "" {
		cfg.Currency = "USD"
	}
	return &Manager{
		cfg: cfg, log: cfg.Logger.With("component", "goodput"),
		queue: make(chan capture.ID, queueLen), cache: map[capture.ID]cached{},
		computed: cfg.Metrics.GetOrCreateCounter(`loupe_aggregator_goodput_computed_total`),
		failed:   cfg.Metrics.GetOrCreateCounter(`loupe_aggregator_goodput_errors_total`),
	}
}

// OnCommit is the runner hook: it queues the capture's run for a new
// goodput. When the queue is full the capture is left to be computed when
// asked for.
func (m *Manager) OnCommit(_ context.Context, rec *findings.Record) {
	select {
	case m.queue <- rec.Capture:
	default:
		m.log.Warn("goodput queue full; the run's goodput is computed when asked for", "capture", rec.Capture.String())
	}
}

// Run works the queue until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case id := <-m.queue:
			if _, err := m.Compute(ctx, id); err != nil && !errors.Is(err, gp.ErrNoHistory) && ctx.Err() == nil {
				m.log.Error("goodput not computed", "capture", id.String(), "err", err)
			}
		}
	}
}

// Compute computes the goodput of the capture's run as of the capture and
// stores it. It fails with goodput.ErrNoHistory when the capture has no
// step history.
func (m *Manager) Compute(ctx context.Context, id capture.ID) (*traces.Goodput, error) {
	g, err := m.compute(ctx, id)
	if errors.Is(err, gp.ErrNoHistory) {
		m.put(id, nil)
		return nil, err
	}
	if err != nil {
		m.failed.Inc()
		return nil, fmt.Errorf("goodput of %s: %w", id, err)
	}
	data, err := json.MarshalIndent(g, "", " ")
	if err != nil {
		return nil, err
	}
	if _, err := m.cfg.Store.Put(ctx, Key(id), bytes.NewReader(data), int64(len(data)), store.PutOptions{ContentType: traces.MediaJSON}); err != nil {
		m.failed.Inc()
		return nil, fmt.Errorf("store goodput %s: %w", Key(id), err)
	}
	m.computed.Inc()
	m.put(id, g)
	m.log.Info("goodput computed", "capture", id.String(), "goodput", g.Goodput, "ettr", g.ETTR, "lost_gpu_hours", g.LostGPUHours())
	return g, nil
}

func (m *Manager) compute(ctx context.Context, id capture.ID) (*traces.Goodput, error) {
	c, err := capture.Load(ctx, m.cfg.Store, id, nil)
	if err != nil {
		return nil, err
	}
	if len(c.Hosts) == 0 {
		return nil, fmt.Errorf("%w: capture %s has no committed host", store.ErrNotFound, id)
	}
	_, end := c.Window()
	recs := m.cfg.Index.Records(findings.CaptureQuery{Cluster: id.Cluster, Job: id.Job, Run: id.Run})
	var windows []gp.Window
	var earliest *findings.Record
	self := false
	for _, rec := range recs {
		if rec.Start.IsZero() || rec.Start.After(end) || len(windows) >= maxWindows {
			continue // from before windows were recorded, or after this capture
		}
		self = self || rec.Capture == id
		windows = append(windows, gp.WindowOf(rec.Start, rec.End, rec.Parts, rec.Findings))
		if rec.Capture != id && (earliest == nil || rec.Start.Before(earliest.Start)) {
			earliest = rec
		}
	}
	if !self {
		fs, _ := m.cfg.Index.Findings(findings.Query{Cluster: id.Cluster, Job: id.Job, Run: id.Run, Capture: id.Capture})
		start, end := c.Window()
		windows = append(windows, gp.WindowOf(start, end, c.Parts(), fs))
	}
	// The run's first processes are named in its first capture's manifests.
	var earlier []*traces.Manifest
	if earliest != nil {
		if ec, err := capture.Load(ctx, m.cfg.Store, earliest.Capture, nil); err == nil {
			for _, h := range ec.Hosts {
				earlier = append(earlier, h.Manifest)
			}
		} else if ctx.Err() == nil {
			m.log.Warn("earliest capture of the run unreadable; start-up may be undercounted", "capture", earliest.Capture.String(), "err", err)
		}
	}
	opt := gp.Options{FLOPsPerStep: m.cfg.FLOPsPerStep[id.Job], PeakFLOPS: m.cfg.PeakFLOPS, Now: m.cfg.Now()}
	return gp.FromCapture(ctx, c.Input(m.cfg.Store, m.cfg.MaxPartSize), earlier, windows, opt)
}

// put caches a capture's goodput for its current findings record.
func (m *Manager) put(id capture.ID, g *traces.Goodput) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.cache) >= maxCached {
		clear(m.cache)
	}
	m.cache[id] = cached{etag: m.cfg.Index.RecordETag(id), g: g}
}

// load returns a capture's goodput: cached, stored, or computed now when
// missing or from another version. It returns nil and no error for a
// capture without a step history.
func (m *Manager) load(ctx context.Context, id capture.ID) (*traces.Goodput, error) {
	etag := m.cfg.Index.RecordETag(id)
	m.mu.Lock()
	c, ok := m.cache[id]
	m.mu.Unlock()
	if ok && c.etag == etag {
		return c.g, nil
	}
	g, err := m.read(ctx, id)
	if err == nil && g.Version == gp.Version {
		m.put(id, g)
		return g, nil
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		m.log.Warn("stored goodput unreadable; computing it again", "key", Key(id), "err", err)
	}
	g, err = m.Compute(ctx, id)
	if errors.Is(err, gp.ErrNoHistory) {
		return nil, nil
	}
	return g, err
}

func (m *Manager) read(ctx context.Context, id capture.ID) (*traces.Goodput, error) {
	rc, _, err := m.cfg.Store.Get(ctx, Key(id))
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxRecord+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxRecord {
		return nil, fmt.Errorf("larger than %d bytes", maxRecord)
	}
	var g traces.Goodput
	if err := json.Unmarshal(data, &g); err != nil {
		return nil, err
	}
	return &g, nil
}

// RunGoodput is the goodput of one run: that of its newest analyzed
// capture with a step history. It fails with an error matching
// store.ErrNotFound when the run has none.
func (m *Manager) RunGoodput(ctx context.Context, cluster, job, run string) (*traces.Goodput, error) {
	recs := m.cfg.Index.Records(findings.CaptureQuery{Cluster: cluster, Job: job, Run: run, Limit: runTries})
	for _, rec := range recs {
		g, err := m.load(ctx, rec.Capture)
		if err != nil {
			return nil, err
		}
		if g != nil {
			return g, nil
		}
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("%w: no analyzed capture of %s/%s/%s", store.ErrNotFound, cluster, job, run)
	}
	return nil, fmt.Errorf("%w: the newest captures of %s/%s/%s carry no step history (%s); agents before the step history was added do not write one",
		store.ErrNotFound, cluster, job, run, traces.PartStepHistory)
}

// runs returns the goodput of every run of the matching jobs, skipping
// runs without a step history.
func (m *Manager) runs(ctx context.Context, cluster, job string) ([]*traces.Goodput, error) {
	entries, _ := m.cfg.Index.Captures(findings.CaptureQuery{Cluster: cluster, Job: job})
	type runKey struct{ cluster, job, run string }
	seen := map[runKey]bool{}
	var out []*traces.Goodput
	for _, e := range entries {
		k := runKey{e.ID.Cluster, e.ID.Job, e.ID.Run}
		if seen[k] || e.Analyzed.IsZero() {
			continue
		}
		seen[k] = true
		g, err := m.RunGoodput(ctx, k.cluster, k.job, k.run)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, nil
}

// Price is the configured price of a GPU-hour.
type Price struct {
	PerGPUHour float64 `json:"per_gpu_hour,omitempty"`
	Currency   string  `json:"currency,omitempty"`
}

func (m *Manager) price() Price {
	if m.cfg.PricePerGPUHour <= 0 {
		return Price{}
	}
	return Price{PerGPUHour: m.cfg.PricePerGPUHour, Currency: m.cfg.Currency}
}

// cost is what hours of GPU time cost, 0 without a price.
func (m *Manager) cost(hours float64) float64 { return hours * m.cfg.PricePerGPUHour }

// Job is one job's goodput across its runs.
type Job struct {
	Comparison *gp.Comparison `json:"comparison"`
	// Latest is the newest run's goodput, with its timeline.
	Latest *traces.Goodput `json:"latest"`
	// LostCost prices each run's lost GPU-hours, by run (with a price).
	LostCost map[string]float64 `json:"lost_cost,omitempty"`
	Price    Price              `json:"price"`
}

// JobGoodput compares the runs of one job. It fails with an error matching
// store.ErrNotFound when no run has a step history.
func (m *Manager) JobGoodput(ctx context.Context, cluster, job string) (*Job, error) {
	runs, err := m.runs(ctx, cluster, job)
	if err != nil {
		return nil, err
	}
	if len(runs) == 0 {
		return nil, fmt.Errorf("%w: no run of %s/%s has a step history (%s)", store.ErrNotFound, cluster, job, traces.PartStepHistory)
	}
	c := gp.Compare(runs)
	out := &Job{Comparison: c, Price: m.price()}
	for _, g := range runs {
		if out.Latest == nil || g.Start.After(out.Latest.Start) {
			out.Latest = g
		}
		if m.cfg.PricePerGPUHour > 0 {
			if out.LostCost == nil {
				out.LostCost = map[string]float64{}
			}
			out.LostCost[g.Run] = m.cost(g.LostGPUHours())
		}
	}
	return out, nil
}

// FleetQuery filters Fleet; empty fields match everything.
type FleetQuery struct {
	Cluster string
	Limit   int
}

// JobLoss is one job of the fleet ranking: its runs' GPU time together.
type JobLoss struct {
	Cluster      string  `json:"cluster"`
	Job          string  `json:"job"`
	Runs         int     `json:"runs"`
	LatestRun    string  `json:"latest_run"`
	GPUHours     float64 `json:"gpu_hours"`
	LostGPUHours float64 `json:"lost_gpu_hours"`
	// LostCost prices LostGPUHours (with a price).
	LostCost float64 `json:"lost_cost,omitempty"`
	// Goodput and ETTR are over all the runs' GPU time; the latest run's
	// are in LatestGoodput.
	Goodput       float64 `json:"goodput"`
	ETTR          float64 `json:"ettr"`
	LatestGoodput float64 `json:"latest_goodput"`
	// BadputGPUHours is each cause's GPU-hours; TopCause the largest.
	BadputGPUHours map[string]float64 `json:"badput_gpu_hours"`
	TopCause       string             `json:"top_cause,omitempty"`
	// Regression is the latest run's change against the run before it, when
	// it is one.
	Regression *gp.Change `json:"regression,omitempty"`
	Simulated  bool       `json:"simulated,omitempty"`
}

// Fleet is the fleet's jobs, the most GPU-hours lost first.
type Fleet struct {
	Total          int                `json:"total"`
	Jobs           []JobLoss          `json:"jobs"`
	GPUHours       float64            `json:"gpu_hours"`
	LostGPUHours   float64            `json:"lost_gpu_hours"`
	LostCost       float64            `json:"lost_cost,omitempty"`
	BadputGPUHours map[string]float64 `json:"badput_gpu_hours"`
	Price          Price              `json:"price"`
	Simulated      bool               `json:"simulated,omitempty"`
}

// Fleet ranks the fleet's jobs by the GPU-hours their runs lost.
func (m *Manager) Fleet(ctx context.Context, q FleetQuery) (*Fleet, error) {
	runs, err := m.runs(ctx, q.Cluster, "")
	if err != nil {
		return nil, err
	}
	type jobKey struct{ cluster, job string }
	byJob := map[jobKey][]*traces.Goodput{}
	for _, g := range runs {
		k := jobKey{g.Cluster, g.Job}
		byJob[k] = append(byJob[k], g)
	}
	f := &Fleet{Jobs: []JobLoss{}, BadputGPUHours: map[string]float64{}, Price: m.price()}
	for k, gs := range byJob {
		j := JobLoss{Cluster: k.cluster, Job: k.job, Runs: len(gs), BadputGPUHours: map[string]float64{}}
		var productive, runtime float64
		var newest *traces.Goodput
		for _, g := range gs {
			j.GPUHours += g.GPUSeconds / 3600
			productive += g.ProductiveGPUSeconds / 3600
			runtime += (1 - g.ETTR) * g.GPUSeconds / 3600
			for _, b := range g.Badput {
				j.BadputGPUHours[b.Cause] += b.GPUSeconds / 3600
			}
			j.Simulated = j.Simulated || g.Simulated
			if newest == nil || g.Start.After(newest.Start) {
				newest = g
			}
		}
		j.LatestRun, j.LatestGoodput = newest.Run, newest.Goodput
		j.LostGPUHours = max(0, j.GPUHours-productive)
		j.LostCost = m.cost(j.LostGPUHours)
		if j.GPUHours > 0 {
			j.Goodput, j.ETTR = productive/j.GPUHours, 1-runtime/j.GPUHours
		}
		for _, cause := range traces.Causes {
			if h := j.BadputGPUHours[cause]; h > 0 && (j.TopCause == "" || h > j.BadputGPUHours[j.TopCause]) {
				j.TopCause = cause
			}
			f.BadputGPUHours[cause] += j.BadputGPUHours[cause]
		}
		if len(gs) > 1 {
			if ch := gp.Compare(gs).Changes; len(ch) > 0 && ch[len(ch)-1].Regression {
				j.Regression = &ch[len(ch)-1]
			}
		}
		f.GPUHours += j.GPUHours
		f.LostGPUHours += j.LostGPUHours
		f.Simulated = f.Simulated || j.Simulated
		f.Jobs = append(f.Jobs, j)
	}
	f.LostCost = m.cost(f.LostGPUHours)
	slices.SortFunc(f.Jobs, func(a, b JobLoss) int {
		return cmp.Or(cmp.Compare(b.LostGPUHours, a.LostGPUHours), cmp.Compare(a.Cluster, b.Cluster), cmp.Compare(a.Job, b.Job))
	})
	f.Total = len(f.Jobs)
	if q.Limit > 0 && len(f.Jobs) > q.Limit {
		f.Jobs = f.Jobs[:q.Limit]
	}
	return f, nil
}
