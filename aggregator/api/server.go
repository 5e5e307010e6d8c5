// Package api is the aggregator's HTTP interface: the JSON API under
// /api/v1/, the S3 event webhook endpoint, /metrics and /healthz. The web
// UI is mounted beside it with Server.Handle; /api/v1/ stays this
// package's.
//
//	POST /api/v1/s3-events                        S3 event notifications (bearer token)
//	GET  /api/v1/findings?cluster=&job=&run=&capture=&host=&analyzer=&severity=&limit=
//	GET  /api/v1/findings/{id}                    one finding
//	GET  /api/v1/analyzers                        the analyzers this build runs
//	GET  /api/v1/incidents?cluster=&job=&severity=&limit=   incidents (triage), most severe first
//	GET  /api/v1/goodput?cluster=&limit=          jobs ranked by GPU-hours lost
//	GET  /api/v1/goodput/{cluster}/{job}          a job's runs compared
//	GET  /api/v1/goodput/{cluster}/{job}/{run}    one run's goodput and badput over time
//	GET  /api/v1/captures?cluster=&job=&run=&status=&limit=
//	GET  /api/v1/captures/{cluster}/{job}/{run}/{capture}           manifests and findings
//	GET  /api/v1/captures/{cluster}/{job}/{run}/{capture}/trace?host=  Chrome/Perfetto trace
//	GET  /metrics, /healthz (liveness), /readyz (readiness: the index is built)
//
// Errors are JSON objects {"error": "..."}; bad parameters get a 400 that
// says which parameter and what is allowed.
package api

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/aggregator/httpjson"
	"github.com/loupe-dev/loupe/aggregator/watcher"
	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces/promtext"
	"github.com/loupe-dev/loupe/traces/store"
)

// Prefix is the path prefix this package owns.
const Prefix = "/api/v1/"

// ViewsPrefix is the part of Prefix left to the web UI's view models
// (package aggregator/views), mounted with Handle.
const ViewsPrefix = Prefix + "views/"

// EventSink takes decoded S3 notifications; *watcher.Watcher is one.
type EventSink interface {
	Accept([]watcher.Event) int
}

// Config configures a Server.
type Config struct {
	Index *findings.Index
	Store store.Store
	// Analyzers are the analyzers this build runs, for /api/v1/analyzers.
	Analyzers []*analyzers.Analyzer
	// Events receives webhook notifications; without it the endpoint
	// answers 503.
	Events EventSink
	// EventToken is the bearer token the webhook endpoint requires (MinIO:
	// MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_<ID>). Empty accepts any request:
	// only for a store on a trusted network.
	EventToken string
	// Ready reports whether the index is complete (the start-up listing
	// finished); /healthz says so. Nil means always.
	Ready func() bool
	// Queued reports the captures waiting for analysis, for /healthz.
	Queued func() int
	// Incidents answers GET /api/v1/incidents; without it the endpoint is
	// not served.
	Incidents IncidentSource
	// Goodput answers GET /api/v1/goodput...; without it those endpoints
	// are not served.
	Goodput GoodputSource
	// MaxPartSize bounds a part read for a trace export (0: traces default).
	MaxPartSize int64
	Logger      *slog.Logger
	// Metrics is served on /metrics with the process metrics; a private
	// set when nil.
	Metrics *metrics.Set
}

// Server serves the API. It is an http.Handler.
type Server struct {
	cfg Config
	mux *http.ServeMux
	log *slog.Logger
}

// New returns a Server for cfg.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), log: cfg.Logger}
	s.route("POST /api/v1/s3-events", "s3-events", s.events)
	s.route("GET /api/v1/findings", "findings", s.findings)
	s.route("GET /api/v1/findings/{id}", "finding", s.finding)
	s.route("GET /api/v1/analyzers", "analyzers", s.analyzers)
	s.route("GET /api/v1/captures", "captures", s.captures)
	s.route("GET /api/v1/captures/{cluster}/{job}/{run}/{capture}", "capture", s.capture)
	s.route("GET /api/v1/captures/{cluster}/{job}/{run}/{capture}/trace", "trace", s.trace)
	if cfg.Incidents != nil {
		s.route("GET /api/v1/incidents", "incidents", s.incidents)
	}
	if cfg.Goodput != nil {
		s.route("GET /api/v1/goodput", "goodput", s.goodputFleet)
		s.route("GET /api/v1/goodput/{cluster}/{job}", "goodput-job", s.goodputJob)
		s.route("GET /api/v1/goodput/{cluster}/{job}/{run}", "goodput-run", s.goodputRun)
	}
	s.route("/api/v1/", "unknown", func(w http.ResponseWriter, r *http.Request) {
		httpjson.Error(w, http.StatusNotFound, "no API endpoint %s %s; see the aggregator's README for /api/v1/ endpoints", r.Method, r.URL.Path)
	})
	s.route("GET /metrics", "metrics", promtext.Handler(func(w io.Writer) {
		s.cfg.Metrics.WritePrometheus(w)
		metrics.WriteProcessMetrics(w)
	}, MetricsHelp, promtext.RuntimeHelp))
	s.route("GET /healthz", "healthz", s.healthz)
	s.route("GET /readyz", "readyz", s.readyz)
	return s
}

// Handle mounts h at pattern (http.ServeMux syntax) beside the API, for
// the web UI. Patterns under /api/v1/ (except ViewsPrefix), /metrics and
// /healthz belong to the API and panic, as conflicting ServeMux patterns do.
func (s *Server) Handle(pattern string, h http.Handler) {
	_, path, _ := strings.Cut(pattern, " ")
	if path == "" {
		path = pattern
	}
	if strings.HasPrefix(path, Prefix) && !strings.HasPrefix(path, ViewsPrefix) || path == "/metrics" || path == "/healthz" || path == "/readyz" {
		panic(fmt.Sprintf("api: pattern %q is reserved for the aggregator API", pattern))
	}
	s.mux.Handle(pattern, h)
}

// ServeHTTP serves a request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// route registers a handler that counts requests by route and status.
func (s *Server) route(pattern, name string, h http.HandlerFunc) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h(sw, r)
		s.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`loupe_aggregator_http_requests_total{route=%q,code="%d"}`, name, sw.code)).Inc()
		s.cfg.Metrics.GetOrCreatePrometheusHistogram(fmt.Sprintf(`loupe_aggregator_http_request_duration_seconds{route=%q}`, name)).UpdateDuration(start)
	})
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

// WriteHeader records the status code for the request metrics.
func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	ready, queued := true, 0
	if s.cfg.Ready != nil {
		ready = s.cfg.Ready()
	}
	if s.cfg.Queued != nil {
		queued = s.cfg.Queued()
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"status": "ok", "index_ready": ready, "queued_captures": queued})
}

// readyz answers 200 once the index is complete (the start-up listing
// finished) and 503 before: a replica that does not know the store's
// captures yet should get no API or UI traffic. /healthz is the liveness
// check: it answers whenever the process serves at all.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Ready != nil && !s.cfg.Ready() {
		httpjson.Error(w, http.StatusServiceUnavailable, "the index is being built from the store's listing")
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"status": "ready"})
}

// events receives S3 event notifications. Store notifications are retried
// by the sender on a non-2xx answer, so only a request that can never
// succeed gets a 4xx.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Events == nil {
		httpjson.Error(w, http.StatusServiceUnavailable, "this aggregator does not take S3 events")
		return
	}
	if tok := s.cfg.EventToken; tok != "" {
		got := r.Header.Get("Authorization")
		got = strings.TrimSpace(strings.TrimPrefix(got, "Bearer "))
		if subtle.ConstantTimeCompare([]byte(got), []byte(tok)) != 1 {
			httpjson.Error(w, http.StatusUnauthorized, "missing or wrong bearer token; set the store's webhook auth token to the aggregator's webhook_token")
			return
		}
	}
	evs, err := watcher.DecodeEvents(http.MaxBytesReader(w, r.Body, watcher.MaxEventBody+1))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			httpjson.Error(w, http.StatusRequestEntityTooLarge, "%v", err)
			return
		}
		s.log.Warn("bad S3 event notification", "remote", r.RemoteAddr, "err", err)
		httpjson.Error(w, http.StatusBadRequest, "%v", err)
		return
	}
	n := s.cfg.Events.Accept(evs)
	httpjson.Write(w, http.StatusOK, map[string]int{"events": len(evs), "accepted": n})
}
