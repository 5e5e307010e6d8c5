// Package views turns store data into the view models the web UI draws:
// the fleet heatmap (every GPU over time), the job page (step-time
// heatmap, histograms, NCCL arrival skew, findings, trace downloads) and
// CPU flame graphs. It is mounted under /api/v1/views/ beside the API:
//
//	GET /api/v1/views/fleet?from=&to=&bucket=&metric=&cluster=&job=
//	GET /api/v1/views/jobs/{cluster}/{job}/{run}?capture=
//	GET /api/v1/views/flamegraph/{cluster}/{job}/{run}/{capture}?host=&rank=
//	GET /api/v1/views/profile?cluster=&job=&host=&rank=&from=&to=
//
// The profile view merges the agents' continuous CPU profiles (found
// through the index's profile catalog) into one flame graph per job, host
// or fleet over a time range.
//
// Views are computed column-wise from the Parquet parts and cached per host
// bundle (fleet) and per capture (job, flame graph), keyed by the manifest
// keys and commit times, so that a rewritten capture is recomputed and a
// repeated page load costs a walk over cached arrays. Bad parameters get a
// 400 with a JSON {"error": "..."} that names the parameter and what is
// allowed, like the rest of /api/v1/.
package views

import (
	"fmt"
	"github.com/loupe-dev/loupe/aggregator/httpjson"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/traces/store"
)

// Prefix is the path prefix the views are served under.
const Prefix = "/api/v1/views/"

// DefaultCacheBytes bounds the decoded data the views keep in memory.
const DefaultCacheBytes = 256 << 20

// Config configures a Handler.
type Config struct {
	Store store.Store
	// Index lists captures and findings (the aggregator's index).
	Index *findings.Index
	// MaxPartSize bounds one part read (0: the traces default).
	MaxPartSize int64
	// CacheBytes bounds the cached view data (0: DefaultCacheBytes).
	CacheBytes int64
	Logger     *slog.Logger
	// Metrics receives loupe_aggregator_view_duration_seconds{view} and
	// loupe_aggregator_view_cache_bytes; a private set when nil.
	Metrics *metrics.Set
}

// Handler serves the views. It is an http.Handler for Prefix.
type Handler struct {
	cfg   Config
	mux   *http.ServeMux
	log   *slog.Logger
	cache *cache
	hosts *hostTable
}

// New returns a Handler for cfg.
func New(cfg Config) *Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.CacheBytes <= 0 {
		cfg.CacheBytes = DefaultCacheBytes
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	h := &Handler{cfg: cfg, mux: http.NewServeMux(), log: cfg.Logger, cache: newCache(cfg.CacheBytes)}
	h.hosts = &hostTable{h: h, entries: map[string]*hostEntry{}}
	cfg.Metrics.NewGauge("loupe_aggregator_view_cache_bytes", func() float64 { return float64(h.cache.bytes()) })
	h.route("fleet", func(w http.ResponseWriter, r *http.Request) {
		q, err := parseFleetQuery(r)
		if err != nil {
			httpjson.Answer(w, r, h.log, nil, err)
			return
		}
		h.writeFleet(w, r, q)
	})
	h.route("jobs/{cluster}/{job}/{run}", func(w http.ResponseWriter, r *http.Request) {
		v, err := h.job(r)
		httpjson.Answer(w, r, h.log, v, err)
	})
	h.route("flamegraph/{cluster}/{job}/{run}/{capture}", func(w http.ResponseWriter, r *http.Request) {
		v, err := h.flamegraph(r)
		httpjson.Answer(w, r, h.log, v, err)
	})
	h.route("profile", func(w http.ResponseWriter, r *http.Request) {
		if h.cfg.Index == nil {
			httpjson.Error(w, http.StatusServiceUnavailable, "continuous profiles need the aggregator's index")
			return
		}
		v, err := h.profileFlame(r)
		httpjson.Answer(w, r, h.log, v, err)
	})
	h.mux.HandleFunc(Prefix, func(w http.ResponseWriter, r *http.Request) {
		httpjson.Error(w, http.StatusNotFound, "no view %s %s; views are GET %sfleet, %sjobs/{cluster}/{job}/{run}, %sflamegraph/{cluster}/{job}/{run}/{capture} and %sprofile",
			r.Method, r.URL.Path, Prefix, Prefix, Prefix, Prefix)
	})
	return h
}

// route serves GET Prefix+path and times it by view (the first path
// component).
func (h *Handler) route(path string, fn http.HandlerFunc) {
	name, _, _ := strings.Cut(path, "/")
	hist := h.cfg.Metrics.NewPrometheusHistogram(fmt.Sprintf(`loupe_aggregator_view_duration_seconds{view=%q}`, name))
	h.mux.HandleFunc("GET "+Prefix+path, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		fn(w, r)
		hist.UpdateDuration(start)
	})
}

// ServeHTTP serves a request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// pathCapture reads cluster, job, run (and capture, when the pattern has
// it) from the path.
func pathCapture(r *http.Request) (capture.ID, error) {
	id := capture.ID{Cluster: r.PathValue("cluster"), Job: r.PathValue("job"), Run: r.PathValue("run"), Capture: r.PathValue("capture")}
	check := id
	if check.Capture == "" {
		check.Capture = "c"
	}
	if err := check.Validate(); err != nil {
		return capture.ID{}, httpjson.Bad("path %s: %v", r.URL.Path, err)
	}
	return id, nil
}
