// Package httpjson is what the aggregator's JSON endpoints (the API and the
// web UI's views) share: query parameters checked so that every bad one gets
// a 400 that names it and says what is allowed, and answers and errors
// written as JSON ({"error": "..."}).
package httpjson

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

	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// BadRequest is a bad request parameter; Answer turns it into a 400.
type BadRequest struct{ Msg string }

// Error is the message the client gets.
func (e BadRequest) Error() string { return e.Msg }

// Bad returns a BadRequest with a formatted message.
func Bad(format string, args ...any) error { return BadRequest{fmt.Sprintf(format, args...)} }

// Query parses r's query string, allowing only the named parameters, each at
// most once.
func Query(r *http.Request, allowed ...string) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, Bad("query string: %v", err)
	}
	for k, v := range q {
		if !slices.Contains(allowed, k) {
			if len(allowed) == 0 {
				return nil, Bad("unknown parameter %q; this endpoint takes no parameters", k)
			}
			return nil, Bad("unknown parameter %q; this endpoint takes %s", k, strings.Join(allowed, ", "))
		}
		if len(v) > 1 {
			return nil, Bad("parameter %q given %d times; give it once", k, len(v))
		}
	}
	return q, nil
}

// Component reads an optional object-key component parameter (cluster, job,
// host, ...): empty, or valid as a key component.
func Component(q url.Values, name string) (string, error) {
	v := q.Get(name)
	if v == "" {
		return "", nil
	}
	if err := traces.ValidateComponent(v); err != nil {
		return "", Bad("parameter %s=%q: %v", name, v, err)
	}
	return v, nil
}

// Write answers with v as JSON.
func Write(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// Error answers with {"error": message}.
func Error(w http.ResponseWriter, code int, format string, args ...any) {
	Write(w, code, map[string]string{"error": fmt.Sprintf(format, args...)})
}

// Answer writes v, or err: 400 for a BadRequest, 404 for an object that is
// not in the store, nothing when the client went away, 500 (logged)
// otherwise.
func Answer(w http.ResponseWriter, r *http.Request, log *slog.Logger, v any, err error) {
	var bad BadRequest
	switch {
	case err == nil:
		Write(w, http.StatusOK, v)
	case errors.As(err, &bad):
		Error(w, http.StatusBadRequest, "%s", bad.Msg)
	case errors.Is(err, store.ErrNotFound):
		Error(w, http.StatusNotFound, "%v", err)
	case errors.Is(err, context.Canceled):
	default:
		log.Error("request failed", "path", r.URL.Path, "err", err)
		Error(w, http.StatusInternalServerError, "%v", err)
	}
}
