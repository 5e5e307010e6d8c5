// Package views turns store data into the view models the web UI draws:
// the fleet heatmap (every GPU over time), the job page (step-time
// heatmap, histograms, NCCL arrival skew, findings, trace downloads) and
// CPU flame graphs. It is mounted under /api/v1/views/ beside the API:
//
//	GET /api/v1/views/fleet?from=&to=&bucket=&metric=&cluster=&job=
//	GET /api/v1/views/jobs/{cluster}/{job}/{run}?capture=
//	GET /api/v1/views/flamegraph/{cluster}/{job}/{run}/{capture}?host=&rank=
//
// Views are computed column-wise from the Parquet parts and cached per host
// bundle (fleet) and per capture (job, flame graph), keyed by the manifest
// keys and commit times, so that a rewritten capture is recomputed and a
// repeated page load costs a walk over cached arrays. Bad parameters get a
// 400 with a JSON {"error": "..."} that names the parameter and what is
// allowed, like the rest of /api/v1/.
package views

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/traces"
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
			h.answer(w, r, nil, err)
			return
		}
		h.writeFleet(w, r, q)
	})
	h.route("jobs/{cluster}/{job}/{run}", func(w http.ResponseWriter, r *http.Request) {
		v, err := h.job(r)
		h.answer(w, r, v, err)
	})
	h.route("flamegraph/{cluster}/{job}/{run}/{capture}", func(w http.ResponseWriter, r *http.Request) {
		v, err := h.flamegraph(r)
		h.answer(w, r, v, err)
	})
	h.mux.HandleFunc(Prefix, func(w http.ResponseWriter, r *http.Request) {
		httpError(w, http.StatusNotFound, "no view %s %s; views are GET %sfleet, %sjobs/{cluster}/{job}/{run} and %sflamegraph/{cluster}/{job}/{run}/{capture}",
			r.Method, r.URL.Path, Prefix, Prefix, Prefix)
	})
	return h
}

// route serves GET Prefix+path and times it by view (the first path
// component).
func (h *Handler) route(path string, fn http.HandlerFunc) {
	name, _, _ := strings.Cut(path, "/")
	hist := h.cfg.Metrics.NewHistogram(fmt.Sprintf(`loupe_aggregator_view_duration_seconds{view=%q}`, name))
	h.mux.HandleFunc("GET "+Prefix+path, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		fn(w, r)
		hist.UpdateDuration(start)
	})
}

// ServeHTTP serves a request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// errParam is a bad request parameter: the handler answers 400.
type errParam struct{ msg string }

// Error is the message the client gets.
func (e errParam) Error() string { return e.msg }

func badParam(format string, args ...any) error { return errParam{fmt.Sprintf(format, args...)} }

// query parses r's query string, allowing only the named parameters, each
// at most once.
func query(r *http.Request, allowed ...string) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, badParam("query string: %v", err)
	}
	for k, v := range q {
		if !slices.Contains(allowed, k) {
			if len(allowed) == 0 {
				return nil, badParam("unknown parameter %q; this view takes no parameters", k)
			}
			return nil, badParam("unknown parameter %q; this view takes %s", k, strings.Join(allowed, ", "))
		}
		if len(v) > 1 {
			return nil, badParam("parameter %q given %d times; give it once", k, len(v))
		}
	}
	return q, nil
}

// component reads an optional key component parameter (cluster, host, ...).
func component(q url.Values, name string) (string, error) {
	v := q.Get(name)
	if v == "" {
		return "", nil
	}
	if err := traces.ValidateComponent(v); err != nil {
		return "", badParam("parameter %s=%q: %v", name, v, err)
	}
	return v, nil
}

// pathCapture reads cluster, job, run (and capture, when the pattern has
// it) from the path.
func pathCapture(r *http.Request) (capture.ID, error) {
	id := capture.ID{Cluster: r.PathValue("cluster"), Job: r.PathValue("job"), Run: r.PathValue("run"), Capture: r.PathValue("capture")}
	check := id
	if check.Capture == "" {
		check.Capture = "c"
	}
	if err := check.Validate(); err != nil {
		return capture.ID{}, badParam("path %s: %v", r.URL.Path, err)
	}
	return id, nil
}

// answer writes v, or the error: 400 for bad parameters, 404 for data
// that is not there, 500 otherwise.
func (h *Handler) answer(w http.ResponseWriter, r *http.Request, v any, err error) {
	var bad errParam
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, v)
	case errors.As(err, &bad):
		httpError(w, http.StatusBadRequest, "%s", bad.msg)
	case errors.Is(err, store.ErrNotFound):
		httpError(w, http.StatusNotFound, "%v", err)
	case errors.Is(err, context.Canceled):
		// The client went away.
	default:
		h.log.Error("view failed", "path", r.URL.Path, "err", err)
		httpError(w, http.StatusInternalServerError, "%v", err)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func httpError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, map[string]string{"error": fmt.Sprintf(format, args...)})
}
