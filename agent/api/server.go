package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"

	"github.com/loupe-dev/loupe/agent/capture"
	"github.com/loupe-dev/loupe/agent/steps"
)

// Backend is what the API drives; the daemon implements it. Methods return
// an *Error for conditions the caller can fix.
type Backend interface {
	Mark(ctx context.Context, req StepRequest) error
	Steps(job string) []steps.Stats
	Capture(ctx context.Context, req CaptureRequest) (CaptureReply, error)
	Captures() []capture.Status
	CaptureStatus(id string) (capture.Status, bool)
	// PauseProfiling pauses (true) or resumes (false) DCGM profiling.
	PauseProfiling(pause bool) error
	Status() StatusReply
}

// Handler serves the API over b. A non-empty token is required as a bearer
// token on every request.
func Handler(b Backend, token string, logger *slog.Logger) http.Handler {
	s := &server{b: b, log: logger}
	mux := http.NewServeMux()
	routes := []struct {
		method, path string
		h            http.HandlerFunc
	}{
		{"POST", "/v1/steps", s.postStep},
		{"GET", "/v1/steps", s.getSteps},
		{"POST", "/v1/captures", s.postCapture},
		{"GET", "/v1/captures", s.getCaptures},
		{"GET", "/v1/captures/{id}", s.getCapture},
		{"POST", "/v1/dcgm/pause", s.dcgm(true)},
		{"POST", "/v1/dcgm/resume", s.dcgm(false)},
		{"GET", "/v1/status", s.status},
		{"POST", "/v1/latency", s.postLatency},
	}
	allowed := map[string][]string{}
	for _, r := range routes {
		mux.HandleFunc(r.method+" "+r.path, r.h)
		allowed[r.path] = append(allowed[r.path], r.method)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Path
		if strings.HasPrefix(path, "/v1/captures/") {
			path = "/v1/captures/{id}"
		}
		if m := allowed[path]; m != nil {
			w.Header().Set("Allow", strings.Join(m, ", "))
			writeError(w, Errorf(http.StatusMethodNotAllowed, "%s %s: use %s", r.Method, r.URL.Path, strings.Join(m, " or ")))
			return
		}
		writeError(w, Errorf(http.StatusNotFound, "no such endpoint %s %s; see the README for the API", r.Method, r.URL.Path))
	})
	if token == "" {
		return mux
	}
	return requireToken(token, mux)
}

func requireToken(token string, next http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="loupe-agent"`)
			msg := "missing bearer token: send Authorization: Bearer TOKEN (loupe-agent capture --token, or LOUPE_API_TOKEN)"
			if len(got) > 0 {
				msg = "wrong bearer token"
			}
			writeError(w, Errorf(http.StatusUnauthorized, "%s", msg))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// CheckAddr refuses to serve the API on a non-loopback address without a
// token: anyone who can reach it could otherwise trigger captures.
func CheckAddr(addr, token string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("api address %q: %w (want HOST:PORT, e.g. 127.0.0.1:9401)", addr, err)
	}
	if IsLoopback(host) || token != "" {
		return nil
	}
	return fmt.Errorf("api address %q is reachable from other hosts: set api_token_file (--api-token-file) or api_token, or listen on 127.0.0.1", addr)
}

// IsLoopback says whether host names only the loopback interface. An empty
// host (all interfaces) is not loopback.
func IsLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

type server struct {
	b   Backend
	log *slog.Logger
}

func (s *server) postStep(w http.ResponseWriter, r *http.Request) {
	req, err := DecodeStep(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		writeError(w, Errorf(http.StatusBadRequest, "%v", err))
		return
	}
	if err := s.b.Mark(r.Context(), req); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *server) getSteps(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, StepsReply{Ranks: nonNil(s.b.Steps(r.URL.Query().Get("job")))})
}

func (s *server) postCapture(w http.ResponseWriter, r *http.Request) {
	req, err := DecodeCapture(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		writeError(w, Errorf(http.StatusBadRequest, "%v", err))
		return
	}
	reply, err := s.b.Capture(r.Context(), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, reply)
}

func (s *server) getCaptures(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, nonNil(s.b.Captures()))
}

func (s *server) getCapture(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	st, ok := s.b.CaptureStatus(id)
	if !ok {
		writeError(w, Errorf(http.StatusNotFound, "no capture %q on this agent (it keeps the most recent ones)", id))
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *server) dcgm(pause bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := s.b.PauseProfiling(pause); err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]bool{"paused": pause})
	}
}

func (s *server) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.b.Status())
}

func nonNil[T any](v []T) []T {
	if v == nil {
		return []T{}
	}
	return v
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away; nothing to do
}

// writeError maps err to a status: an *Error keeps its own, capture's
// sentinel errors map to 400/409/503, anything else is a 500.
func writeError(w http.ResponseWriter, err error) {
	var e *Error
	switch {
	case errors.As(err, &e):
	case errors.Is(err, capture.ErrInvalid):
		e = Errorf(http.StatusBadRequest, "%v", err)
	case errors.Is(err, capture.ErrDuplicate):
		e = Errorf(http.StatusConflict, "%v", err)
	case errors.Is(err, capture.ErrBusy), errors.Is(err, capture.ErrStopped):
		w.Header().Set("Retry-After", "10")
		e = Errorf(http.StatusServiceUnavailable, "%v", err)
	default:
		e = Errorf(http.StatusInternalServerError, "%v", err)
	}
	writeJSON(w, e.Code, e)
}
