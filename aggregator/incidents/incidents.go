// Package incidents is where the aggregator turns analyses into what people
// act on: after each committed analysis (runner.Runner.OnCommit) it reads
// the capture's fault events (events.jsonl of every host), runs triage over
// them and the findings, stores the incidents beside the findings as
// .../<capture>/_findings/incidents.json, and hands them to the alert
// notifier. The work runs on a queue of its own, so that a slow webhook or
// language model never holds up an analysis worker. A capture is triaged
// under a lease (.../_findings/triage.lease), so replicas do not alert on it
// at once, and a periodic sweep triages analyses whose incidents file is
// missing a minute after they were committed (the replica that committed
// them stopped before its queue got to them), so a restart loses nothing.
// Incidents are served
// from the store through a small cache (Manager.Incidents), so every
// replica answers the same.
package incidents

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

	"github.com/loupe-dev/loupe/aggregator/alerts"
	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/aggregator/lease"
	"github.com/loupe-dev/loupe/analyzers/triage"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// Bounds on what one capture contributes.
const (
	// maxEvents bounds the fault events read per capture.
	maxEvents = 100000
	// maxIncidentsFile bounds an incidents.json read back.
	maxIncidentsFile = 16 << 20
	// queueLen is how many analyses may wait for triage; beyond it the
	// committing worker does the work itself (backpressure, not loss).
	queueLen = 64
	// scanCaptures bounds the captures a query reads, newest first.
	scanCaptures = 500
	// DefaultSweepInterval is how often analyses without incidents are
	// looked for; sweepGrace is how long after its commit an analysis is
	// left to the replica that committed it; sweepMaxAge bounds how far
	// back the sweep looks.
	DefaultSweepInterval = time.Minute
	sweepGrace           = time.Minute
	sweepMaxAge          = 24 * time.Hour
)

// ErrBusy is returned by Process when another replica is triaging the
// capture.
var ErrBusy = errors.New("another replica is triaging this capture")

// LeaseKey is the object whose lease a replica holds while it triages.
func LeaseKey(id capture.ID) string { return id.Prefix() + traces.FindingsDir + "/triage.lease" }

// Key is the object holding a capture's incidents.
func Key(id capture.ID) string { return id.Prefix() + traces.FindingsDir + "/" + traces.IncidentsName }

// Config configures a Manager.
type Config struct {
	Store store.Store
	// Index lists the captures for queries.
	Index *findings.Index
	// Triage holds the owners and the optional summarizer.
	Triage triage.Config
	// Notifier delivers the incidents; nil sends nothing.
	Notifier *alerts.Notifier
	// Leases, when set, make replicas triage a capture one at a time.
	Leases *lease.Manager
	// SweepInterval is how often Run looks for analyses without incidents
	// (DefaultSweepInterval when zero; negative: never).
	SweepInterval time.Duration
	// MaxPartSize bounds an events.jsonl read (0: the traces default).
	MaxPartSize int64
	Logger      *slog.Logger
	Metrics     *metrics.Set
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Manager triages analyses and answers incident queries.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	queue chan *findings.Record

	mu    sync.Mutex
	cache map[capture.ID]cached

	made, failed *metrics.Counter
}

// cached is a capture's incidents as read for one findings record.
type cached struct {
	etag      string
	incidents []traces.Incident
}

// New returns a Manager; Run starts its queue.
func New(cfg Config) *Manager {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	if cfg.Triage.Logger == nil {
		cfg.Triage.Logger = cfg.Logger
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Manager{
		cfg: cfg, log: cfg.Logger.With("component", "incidents"),
		queue: make(chan *findings.Record, queueLen), cache: map[capture.ID]cached{},
		made:   cfg.Metrics.GetOrCreateCounter(`loupe_aggregator_incidents_total`),
		failed: cfg.Metrics.GetOrCreateCounter(`loupe_aggregator_triage_errors_total`),
	}
}

// OnCommit is the runner hook: it queues the analysis for triage, or does
// the work at once when the queue is full.
func (m *Manager) OnCommit(ctx context.Context, rec *findings.Record) {
	select {
	case m.queue <- rec:
	default:
		m.handle(ctx, rec)
	}
}

// Run works the queue, and sweeps for analyses left without incidents,
// until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	var sweep <-chan time.Time
	if m.cfg.SweepInterval > 0 {
		t := time.NewTicker(m.cfg.SweepInterval)
		defer t.Stop()
		sweep = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case rec := <-m.queue:
			m.handle(ctx, rec)
		case <-sweep:
			m.Sweep(ctx)
		}
	}
}

// Sweep triages the analyses of the last day, committed more than a
// minute ago, that have no incidents file.
func (m *Manager) Sweep(ctx context.Context) {
	now := m.cfg.Now()
	entries, _ := m.cfg.Index.Captures(findings.CaptureQuery{})
	for _, e := range entries {
		if ctx.Err() != nil {
			return
		}
		if e.Analyzed.IsZero() || now.Sub(e.Analyzed) < sweepGrace || now.Sub(e.Analyzed) > sweepMaxAge {
			continue
		}
		if _, err := m.cfg.Store.Stat(ctx, Key(e.ID)); !errors.Is(err, store.ErrNotFound) {
			continue
		}
		rec, _, err := findings.Read(ctx, m.cfg.Store, e.ID)
		if err != nil {
			m.log.Warn("sweep: findings record unreadable", "capture", e.ID.String(), "err", err)
			continue
		}
		m.log.Info("sweep: triaging an analysis left without incidents", "capture", e.ID.String())
		m.handle(ctx, rec)
	}
}

func (m *Manager) handle(ctx context.Context, rec *findings.Record) {
	incs, err := m.Process(ctx, rec)
	if errors.Is(err, ErrBusy) {
		return
	}
	if err != nil {
		m.failed.Inc()
		m.log.Error("triage failed; the capture's incidents are not stored or alerted", "capture", rec.Capture.String(), "err", err)
		return
	}
	m.log.Info("capture triaged", "capture", rec.Capture.String(), "incidents", len(incs))
}

// Process triages one analysis: it reads the fault events, makes the
// incidents, stores them and notifies. Alerts are deduplicated by the
// notifier's state in the store, so processing an analysis again sends
// nothing twice.
func (m *Manager) Process(ctx context.Context, rec *findings.Record) ([]traces.Incident, error) {
	if m.cfg.Leases == nil {
		return m.process(ctx, rec)
	}
	l, err := m.cfg.Leases.Acquire(ctx, LeaseKey(rec.Capture))
	if errors.Is(err, lease.ErrHeld) {
		return nil, ErrBusy
	}
	if err != nil {
		return nil, err
	}
	var incs []traces.Incident
	err = l.Hold(ctx, func(ctx context.Context) error {
		incs, err = m.process(ctx, rec)
		return err
	})
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if rerr := l.Release(rctx); rerr != nil {
		m.log.Warn("release triage lease", "capture", rec.Capture.String(), "err", rerr)
	}
	return incs, err
}

func (m *Manager) process(ctx context.Context, rec *findings.Record) ([]traces.Incident, error) {
	c, err := capture.Load(ctx, m.cfg.Store, rec.Capture, nil)
	if err != nil {
		return nil, err
	}
	events, err := m.faults(ctx, c)
	if err != nil {
		return nil, err
	}
	tcfg := m.cfg.Triage
	tcfg.WorldSize = max(rec.WorldSize, c.WorldSize(), 1)
	scope := traces.Scope{Cluster: rec.Capture.Cluster, Job: rec.Capture.Job, Run: rec.Capture.Run, Capture: rec.Capture.Capture, GPU: -1, Rank: -1}
	incs := triage.Triage(ctx, scope, rec.Findings, events, tcfg)
	if incs == nil {
		incs = []traces.Incident{}
	}
	data, err := json.MarshalIndent(incs, "", " ")
	if err != nil {
		return nil, err
	}
	key := Key(rec.Capture)
	if _, err := m.cfg.Store.Put(ctx, key, bytes.NewReader(data), int64(len(data)), store.PutOptions{ContentType: traces.MediaJSON}); err != nil {
		return nil, fmt.Errorf("store incidents %s: %w", key, err)
	}
	m.mu.Lock()
	delete(m.cache, rec.Capture)
	m.mu.Unlock()
	m.made.Add(len(incs))
	if m.cfg.Notifier != nil {
		if err := m.cfg.Notifier.Notify(ctx, incs); err != nil {
			return incs, fmt.Errorf("alerts: %w", err)
		}
	}
	return incs, nil
}

// faults reads the fault events of every host of the capture.
func (m *Manager) faults(ctx context.Context, c *capture.Capture) ([]triage.HostEvent, error) {
	in := c.Input(m.cfg.Store, m.cfg.MaxPartSize)
	var out []triage.HostEvent
	for i := range in.Hosts {
		h := &in.Hosts[i]
		if !h.Has(traces.PartEvents) {
			continue
		}
		rc, err := h.Open(ctx, traces.PartEvents)
		if err != nil {
			return nil, fmt.Errorf("host %s: %w", h.Manifest.Host, err)
		}
		err = traces.ReadEvents(rc, func(e traces.Event) error {
			if len(out) < maxEvents && slices.Contains(triage.FaultKinds, e.Kind) {
				out = append(out, triage.HostEvent{Host: h.Manifest.Host, Event: e})
			}
			return nil
		})
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("host %s: %w", h.Key(traces.PartEvents), err)
		}
	}
	return out, nil
}

// Query filters Incidents; empty fields match everything.
type Query struct {
	Cluster, Job string
	// Severities matches any of the listed severities.
	Severities []string
	Limit      int
}

// Incidents returns the incidents of the most recent analyzed captures
// (at most 500) that match q: one per incident ID, from the newest capture
// that has it, most severe and costly first, and how many matched.
func (m *Manager) Incidents(ctx context.Context, q Query) ([]traces.Incident, int, error) {
	entries, _ := m.cfg.Index.Captures(findings.CaptureQuery{Cluster: q.Cluster, Job: q.Job})
	seen := map[string]bool{}
	var out []traces.Incident
	scanned := 0
	for _, e := range entries {
		if e.Analyzed.IsZero() {
			continue
		}
		if scanned++; scanned > scanCaptures {
			break
		}
		incs, err := m.load(ctx, e.ID)
		if err != nil {
			return nil, 0, err
		}
		for _, inc := range incs {
			if seen[inc.ID] || len(q.Severities) > 0 && !slices.Contains(q.Severities, inc.Severity) {
				continue
			}
			seen[inc.ID] = true
			out = append(out, inc)
		}
	}
	slices.SortStableFunc(out, func(a, b traces.Incident) int {
		return cmp.Or(traces.SeverityRank(b.Severity)-traces.SeverityRank(a.Severity), cmp.Compare(b.ImpactGPUHours, a.ImpactGPUHours))
	})
	total := len(out)
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[:q.Limit]
	}
	return out, total, nil
}

// load reads a capture's incidents, cached while its findings record is
// unchanged. A capture not triaged yet has none.
func (m *Manager) load(ctx context.Context, id capture.ID) ([]traces.Incident, error) {
	etag := m.cfg.Index.RecordETag(id)
	m.mu.Lock()
	c, ok := m.cache[id]
	m.mu.Unlock()
	if ok && c.etag == etag {
		return c.incidents, nil
	}
	rc, _, err := m.cfg.Store.Get(ctx, Key(id))
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read incidents of %s: %w", id, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxIncidentsFile+1))
	if err != nil {
		return nil, fmt.Errorf("read incidents of %s: %w", id, err)
	}
	var incs []traces.Incident
	if len(data) > maxIncidentsFile {
		err = fmt.Errorf("larger than %d bytes", maxIncidentsFile)
	} else {
		err = json.Unmarshal(data, &incs)
	}
	if err != nil {
		m.log.Warn("unreadable incidents file left out", "key", Key(id), "err", err)
		return nil, nil
	}
	m.mu.Lock()
	if len(m.cache) > 4*scanCaptures {
		clear(m.cache)
	}
	m.cache[id] = cached{etag: etag, incidents: incs}
	m.mu.Unlock()
	return incs, nil
}
