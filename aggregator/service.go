// Package aggregator is Loupe's fleet service: it watches the store for
// committed captures, waits until every rank of a job has reported (or a
// timeout passed), runs the analyzers once per capture and analyzer version
// across any number of replicas, stores the findings beside the capture and
// serves them over HTTP. It keeps no state of its own: the store is the
// truth, and a restarted or added replica picks up where the others are.
//
// The parts, one package each: capture (loading and the partition check),
// lease (exclusive claims through conditional puts), runner (analyze one
// capture exactly once), findings (the stored record and the in-memory
// index), goodput (each run's goodput beside its findings), watcher (S3
// notifications and store listing) and api (HTTP).
package aggregator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/aggregator/alerts"
	"github.com/loupe-dev/loupe/aggregator/api"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/aggregator/goodput"
	"github.com/loupe-dev/loupe/aggregator/incidents"
	"github.com/loupe-dev/loupe/aggregator/lease"
	"github.com/loupe-dev/loupe/aggregator/runner"
	"github.com/loupe-dev/loupe/aggregator/views"
	"github.com/loupe-dev/loupe/aggregator/watcher"
	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/analyzers/triage"
	"github.com/loupe-dev/loupe/dashboards"
	"github.com/loupe-dev/loupe/traces/store"
)

// Service is one aggregator replica.
type Service struct {
	Store   store.Store
	Index   *findings.Index
	Runner  *runner.Runner
	Watcher *watcher.Watcher
	// Incidents triages every analysis, stores and alerts its incidents.
	Incidents *incidents.Manager
	// Goodput computes and serves each run's goodput.
	Goodput *goodput.Manager
	// API is the HTTP handler: the API, the web UI (package dashboards) at /
	// and its view models (package views) under /api/v1/views/.
	API     *api.Server
	Metrics *metrics.Set
	cfg     Config
	log     *slog.Logger
}

// New builds a replica from cfg that runs list (analyzers.All in the
// binary). It opens the store but does not contact it.
func New(ctx context.Context, cfg Config, list []*analyzers.Analyzer, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	st, err := store.Open(ctx, cfg.Store)
	if err != nil {
		return nil, err
	}
	var bucket, prefix string
	if loc, err := store.ParseURL(cfg.Store); err == nil && loc.S3 != nil {
		bucket, prefix = loc.S3.Bucket, loc.S3.Prefix
	}
	token, err := cfg.Token()
	if err != nil {
		return nil, err
	}
	if token == "" {
		log.Warn("no webhook_token: POST /api/v1/s3-events accepts unauthenticated notifications")
	}
	replica := cfg.Replica
	if replica == "" {
		host, _ := os.Hostname()
		replica = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	set := metrics.NewSet()
	ix := findings.NewIndex(runner.Versions(list))
	run := runner.New(runner.Config{
		Store: st, Analyzers: list, Index: ix, Logger: log, Metrics: set,
		Leases:           &lease.Manager{Store: st, Owner: replica, TTL: cfg.LeaseTTL},
		PartitionTimeout: cfg.PartitionTimeout, MaxPartSize: cfg.MaxPartSize,
	})
	w := watcher.New(watcher.Config{
		Store: st, Processor: run, Index: ix, Bucket: bucket, Prefix: prefix,
		SweepInterval: cfg.SweepInterval, SweepPages: cfg.SweepPages, IndexRefresh: cfg.IndexRefresh, Workers: cfg.Workers,
		Logger: log, Metrics: set,
	})
	inc, err := newIncidents(cfg, st, ix, &lease.Manager{Store: st, Owner: replica, TTL: cfg.LeaseTTL}, log, set)
	if err != nil {
		return nil, err
	}
	run.OnCommit(inc.OnCommit)
	gm := goodput.New(goodput.Config{
		Store: st, Index: ix, FLOPsPerStep: cfg.FLOPsPerStep, PeakFLOPS: cfg.PeakFLOPS,
		PricePerGPUHour: cfg.GPUHourPrice, Currency: cfg.Currency, MaxPartSize: cfg.MaxPartSize, Logger: log, Metrics: set,
	})
	run.OnCommit(gm.OnCommit)
	srv := api.New(api.Config{
		Index: ix, Store: st, Analyzers: list, Events: w, EventToken: token, Ready: w.Ready, Queued: w.Queued,
		Incidents: inc, Goodput: gm, MaxPartSize: cfg.MaxPartSize, Logger: log, Metrics: set,
	})
	srv.Handle(api.ViewsPrefix, views.New(views.Config{Store: st, Index: ix, MaxPartSize: cfg.MaxPartSize, Logger: log, Metrics: set}))
	srv.Handle("/", dashboards.Handler())
	return &Service{Store: st, Index: ix, Runner: run, Watcher: w, Incidents: inc, Goodput: gm, API: srv, Metrics: set, cfg: cfg, log: log}, nil
}

// newIncidents builds triage (owners file, optional Ollama summaries) and
// alert delivery from cfg.
func newIncidents(cfg Config, st store.Store, ix *findings.Index, leases *lease.Manager, log *slog.Logger, set *metrics.Set) (*incidents.Manager, error) {
	tcfg := triage.DefaultConfig()
	if cfg.OwnersFile != "" {
		owners, err := triage.LoadOwners(cfg.OwnersFile)
		if err != nil {
			return nil, fmt.Errorf("owners_file: %w", err)
		}
		tcfg.Owners = owners
	}
	if cfg.OllamaURL != "" {
		tcfg.Summarizer = &triage.Ollama{URL: cfg.OllamaURL, Model: cfg.OllamaModel, Timeout: cfg.OllamaTimeout}
	}
	notifier, err := alerts.New(cfg.Alerts(), st, log, set)
	if err != nil {
		return nil, fmt.Errorf("webhooks: %w", err)
	}
	return incidents.New(incidents.Config{
		Store: st, Index: ix, Triage: tcfg, Notifier: notifier, Leases: leases, MaxPartSize: cfg.MaxPartSize, Logger: log, Metrics: set,
	}), nil
}

// Run listens on the configured address and serves until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (set --addr to a free address)", s.cfg.Addr, err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves HTTP on ln and runs the watcher until ctx ends, then shuts
// down gracefully: in-flight analyses stop without committing (their
// captures are picked up again from the store), requests get 10 s.
func (s *Service) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{Handler: s.API, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	s.log.Info("aggregator serving", "addr", ln.Addr().String(), "store", s.cfg.Store)
	var wg sync.WaitGroup
	wg.Go(func() { s.Watcher.Run(ctx) })
	wg.Go(func() { s.Incidents.Run(ctx) })
	wg.Go(func() { s.Goodput.Run(ctx) })
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	hs.Shutdown(sctx)
	wg.Wait()
	s.log.Info("aggregator stopped")
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// parseLevel reads a log level name.
func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(s))); err != nil {
		return 0, fmt.Errorf("log_level: %q, want debug, info, warn or error", s)
	}
	return l, nil
}

// Logger returns a JSON logger at the configured level on stderr.
func (c *Config) Logger() *slog.Logger {
	l, _ := parseLevel(c.LogLevel)
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}
