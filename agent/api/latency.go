package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"time"
)

// maxLatencyValues bounds the values of one POST /v1/latency; the body
// limit (MaxBody) allows about a thousand.
const maxLatencyValues = 2000

// LatencyRequest is the body of POST /v1/latency: request latencies of an
// inference job, as measured by the server, for warm-up verification.
//
//	{"job": "infer", "rank": 0, "values": [{"time": 1764064800.5, "seconds": 0.042}, ...]}
//
// Rank is optional; Time is Unix seconds or RFC 3339 (now when absent).
type LatencyRequest struct {
	Job    string         `json:"job"`
	Rank   int            `json:"rank"` // -1 when not given
	Values []LatencyPoint `json:"values"`
}

// LatencyPoint is one request's latency, at the time it completed.
type LatencyPoint struct {
	Time    time.Time `json:"-"`
	Seconds float64   `json:"seconds"`
}

// MarshalJSON writes Time as Unix seconds.
func (p LatencyPoint) MarshalJSON() ([]byte, error) {
	v := struct {
		Time    *float64 `json:"time,omitempty"`
		Seconds float64  `json:"seconds"`
	}{Seconds: p.Seconds}
	if !p.Time.IsZero() {
		s := float64(p.Time.UnixNano()) / 1e9
		v.Time = &s
	}
	return json.Marshal(v)
}

// LatencyBackend is implemented by a Backend that accepts latency series.
type LatencyBackend interface {
	Latency(ctx context.Context, req LatencyRequest) error
}

// DecodeLatency decodes and checks a POST /v1/latency body.
func DecodeLatency(r io.Reader) (LatencyRequest, error) {
	var raw struct {
		Job    *string `json:"job"`
		Rank   *int    `json:"rank"`
		Values []struct {
			Time    json.RawMessage `json:"time"`
			Seconds *float64        `json:"seconds"`
		} `json:"values"`
	}
	const what = "latency series"
	if err := decode(r, what, &raw); err != nil {
		return LatencyRequest{}, err
	}
	if raw.Job == nil {
		return LatencyRequest{}, fmt.Errorf("%s: job is missing", what)
	}
	req := LatencyRequest{Job: *raw.Job, Rank: -1}
	if err := checkName(what, "job", req.Job); err != nil {
		return LatencyRequest{}, err
	}
	if raw.Rank != nil {
		if *raw.Rank < 0 || *raw.Rank >= maxRank {
			return LatencyRequest{}, fmt.Errorf("%s: rank %d is out of range 0..%d", what, *raw.Rank, maxRank-1)
		}
		req.Rank = *raw.Rank
	}
	switch {
	case len(raw.Values) == 0:
		return LatencyRequest{}, fmt.Errorf("%s: values is empty; send [{\"time\": UNIX_SECONDS, \"seconds\": LATENCY}, ...]", what)
	case len(raw.Values) > maxLatencyValues:
		return LatencyRequest{}, fmt.Errorf("%s: %d values, at most %d per request", what, len(raw.Values), maxLatencyValues)
	}
	for i, v := range raw.Values {
		if v.Seconds == nil || math.IsNaN(*v.Seconds) || math.IsInf(*v.Seconds, 0) || *v.Seconds < 0 || *v.Seconds > 86400 {
			return LatencyRequest{}, fmt.Errorf("%s: values[%d].seconds is missing or not a latency in seconds (0 to 86400)", what, i)
		}
		t, err := parseTime(v.Time)
		if err != nil {
			return LatencyRequest{}, fmt.Errorf("%s: values[%d]: %w", what, i, err)
		}
		req.Values = append(req.Values, LatencyPoint{Time: t, Seconds: *v.Seconds})
	}
	return req, nil
}

func (s *server) postLatency(w http.ResponseWriter, r *http.Request) {
	lb, ok := s.b.(LatencyBackend)
	if !ok {
		writeError(w, Errorf(http.StatusNotImplemented, "this agent does not accept latency series"))
		return
	}
	req, err := DecodeLatency(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		writeError(w, Errorf(http.StatusBadRequest, "%v", err))
		return
	}
	if err := lb.Latency(r.Context(), req); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// Latency posts a latency series.
func (c *Client) Latency(ctx context.Context, req LatencyRequest) error {
	body := struct {
		Job    string         `json:"job"`
		Rank   *int           `json:"rank,omitempty"`
		Values []LatencyPoint `json:"values"`
	}{Job: req.Job, Values: req.Values}
	if req.Rank >= 0 {
		body.Rank = &req.Rank
	}
	return c.do(ctx, http.MethodPost, "/v1/latency", body, nil)
}
