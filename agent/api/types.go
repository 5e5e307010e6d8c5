// Package api is the agent's local control API: the wire types, their
// strict decoders, the HTTP handler the daemon serves, and the client the
// CLI uses.
//
//	POST /v1/steps        {"job","rank","iteration","time"?,"pid"?,"run"?}  an iteration began
//	GET  /v1/steps?job=J  step-time statistics per rank
//	POST /v1/captures     {"job"?,"pids"?,"duration"|"iterations","id"?}   capture now
//	GET  /v1/captures     captures taken or in progress; /v1/captures/{id} one of them
//	POST /v1/dcgm/pause   pause DCGM profiling (so Nsight can use the counters); /v1/dcgm/resume
//	GET  /v1/status       agent, collectors, jobs
//	POST /v1/latency      {"job","rank"?,"values":[{"time"?,"seconds"}]}   request latencies (inference warm-up)
//
// Every request carries "Authorization: Bearer TOKEN" when the agent has a
// token; an agent listening on anything but loopback refuses to start
// without one. Errors come back as {"error": "..."} with a 4xx status for
// bad requests.
package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"time"

	"github.com/loupe-dev/loupe/agent/capture"
	"github.com/loupe-dev/loupe/agent/steps"
	"github.com/loupe-dev/loupe/traces"
)

// MaxBody bounds a request body.
const MaxBody = 64 << 10

// Limits on request fields.
const (
	maxRank       = 1 << 20
	maxPID        = 1 << 22 // the kernel's largest pid_max
	maxPIDs       = 1024
	maxIterations = 100000
)

// StepRequest is the body of POST /v1/steps: iteration Iteration of rank
// Rank of job Job began at Time (now when absent).
type StepRequest struct {
	Job       string `json:"job"`
	Run       string `json:"run,omitempty"`
	Rank      int    `json:"rank"`
	PID       int    `json:"pid,omitempty"`
	Iteration int64  `json:"iteration"`
	// Time is Unix seconds (a number, as Python's time.time() gives) or an
	// RFC 3339 string; zero means when the agent received the marker.
	Time time.Time `json:"-"`
}

// MarshalJSON writes Time as Unix seconds when set.
func (r StepRequest) MarshalJSON() ([]byte, error) {
	type plain StepRequest
	v := struct {
		plain
		Time *float64 `json:"time,omitempty"`
	}{plain: plain(r)}
	if !r.Time.IsZero() {
		s := float64(r.Time.UnixNano()) / 1e9
		v.Time = &s
	}
	return json.Marshal(v)
}

// CaptureRequest is the body of POST /v1/captures. Job and PIDs select the
// processes (the union of both; every GPU process when neither is given);
// Duration or Iterations bound the window.
type CaptureRequest struct {
	// ID names the capture; give the same one on every host to group them.
	ID         string        `json:"id,omitempty"`
	Job        string        `json:"job,omitempty"`
	PIDs       []int         `json:"pids,omitempty"`
	Duration   time.Duration `json:"-"`
	Iterations int64         `json:"iterations,omitempty"`
}

// MarshalJSON writes Duration as a Go duration string.
func (r CaptureRequest) MarshalJSON() ([]byte, error) {
	type plain CaptureRequest
	v := struct {
		plain
		Duration string `json:"duration,omitempty"`
	}{plain: plain(r)}
	if r.Duration > 0 {
		v.Duration = r.Duration.String()
	}
	return json.Marshal(v)
}

// CaptureReply answers POST /v1/captures: the capture as accepted.
type CaptureReply struct {
	capture.Status
	// Message says in words what was matched and what will happen.
	Message string `json:"message"`
}

// StepsReply answers GET /v1/steps.
type StepsReply struct {
	Ranks []steps.Stats `json:"ranks"`
}

// Collector is one collector's state in the status reply.
type Collector struct {
	Name string `json:"name"`
	Up   bool   `json:"up"`
	// Reason says why a collector is down, and what to do about it.
	Reason string `json:"reason,omitempty"`
}

// StatusReply answers GET /v1/status.
type StatusReply struct {
	Version    string           `json:"version"`
	Host       string           `json:"host"`
	Cluster    string           `json:"cluster"`
	Started    time.Time        `json:"started"`
	Simulated  bool             `json:"simulated,omitempty"`
	GPUs       []traces.GPUInfo `json:"gpus"`
	Collectors []Collector      `json:"collectors"`
	Jobs       []steps.Stats    `json:"jobs"`
	Captures   []capture.Status `json:"captures"`
	Processes  []traces.Process `json:"processes,omitempty"`
}

// Error is an API error: an HTTP status and a message for the user.
type Error struct {
	Code    int    `json:"-"`
	Message string `json:"error"`
}

// Error returns the message and the HTTP status it came with.
func (e *Error) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Code) }

// Errorf returns an *Error with status code.
func Errorf(code int, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// decode reads exactly one JSON object from r into v, refusing unknown
// fields, trailing data and bodies over MaxBody.
func decode(r io.Reader, what string, v any) error {
	data, err := io.ReadAll(io.LimitReader(r, MaxBody+1))
	if err != nil {
		return fmt.Errorf("%s: reading body: %w", what, err)
	}
	if len(data) > MaxBody {
		return fmt.Errorf("%s: body larger than %d bytes", what, MaxBody)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s: empty body; send a JSON object", what)
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	if dec.More() {
		return fmt.Errorf("%s: more than one JSON value in the body", what)
	}
	return nil
}

// DecodeStep decodes and checks a POST /v1/steps body.
func DecodeStep(r io.Reader) (StepRequest, error) {
	var raw struct {
		Job       *string         `json:"job"`
		Run       string          `json:"run"`
		Rank      *int            `json:"rank"`
		PID       int             `json:"pid"`
		Iteration *int64          `json:"iteration"`
		Time      json.RawMessage `json:"time"`
	}
	const what = "step marker"
	if err := decode(r, what, &raw); err != nil {
		return StepRequest{}, err
	}
	switch {
	case raw.Job == nil:
		return StepRequest{}, fmt.Errorf("%s: job is missing", what)
	case raw.Rank == nil:
		return StepRequest{}, fmt.Errorf("%s: rank is missing (use the RANK environment variable, 0 for a single process)", what)
	case raw.Iteration == nil:
		return StepRequest{}, fmt.Errorf("%s: iteration is missing", what)
	}
	req := StepRequest{Job: *raw.Job, Run: raw.Run, Rank: *raw.Rank, PID: raw.PID, Iteration: *raw.Iteration}
	if err := checkName(what, "job", req.Job); err != nil {
		return StepRequest{}, err
	}
	if req.Run != "" {
		if err := checkName(what, "run", req.Run); err != nil {
			return StepRequest{}, err
		}
	}
	switch {
	case req.Rank < 0 || req.Rank >= maxRank:
		return StepRequest{}, fmt.Errorf("%s: rank %d is out of range 0..%d", what, req.Rank, maxRank-1)
	case req.Iteration < 0:
		return StepRequest{}, fmt.Errorf("%s: iteration %d is negative", what, req.Iteration)
	case req.PID < 0 || req.PID > maxPID:
		return StepRequest{}, fmt.Errorf("%s: pid %d is out of range", what, req.PID)
	}
	t, err := parseTime(raw.Time)
	if err != nil {
		return StepRequest{}, fmt.Errorf("%s: %w", what, err)
	}
	req.Time = t
	return req, nil
}

// DecodeCapture decodes and checks a POST /v1/captures body.
func DecodeCapture(r io.Reader) (CaptureRequest, error) {
	var raw struct {
		ID         string          `json:"id"`
		Job        string          `json:"job"`
		PIDs       []int           `json:"pids"`
		Duration   json.RawMessage `json:"duration"`
		Iterations int64           `json:"iterations"`
	}
	const what = "capture request"
	if err := decode(r, what, &raw); err != nil {
		return CaptureRequest{}, err
	}
	req := CaptureRequest{ID: raw.ID, Job: raw.Job, PIDs: raw.PIDs, Iterations: raw.Iterations}
	for _, f := range []struct{ name, v string }{{"id", req.ID}, {"job", req.Job}} {
		if f.v != "" {
			if err := checkName(what, f.name, f.v); err != nil {
				return CaptureRequest{}, err
			}
		}
	}
	if len(req.PIDs) > maxPIDs {
		return CaptureRequest{}, fmt.Errorf("%s: %d pids, at most %d", what, len(req.PIDs), maxPIDs)
	}
	for _, p := range req.PIDs {
		if p <= 0 || p > maxPID {
			return CaptureRequest{}, fmt.Errorf("%s: pid %d is not a process id", what, p)
		}
	}
	d, err := parseDuration(raw.Duration)
	if err != nil {
		return CaptureRequest{}, fmt.Errorf("%s: %w", what, err)
	}
	req.Duration = d
	switch {
	case req.Iterations < 0 || req.Iterations > maxIterations:
		return CaptureRequest{}, fmt.Errorf("%s: iterations %d is out of range 1..%d", what, req.Iterations, maxIterations)
	case req.Iterations > 0 && req.Duration > 0:
		return CaptureRequest{}, fmt.Errorf("%s: give either duration or iterations, not both", what)
	}
	return req, nil
}

func checkName(what, field, v string) error {
	if err := traces.ValidateComponent(v); err != nil {
		return fmt.Errorf("%s: %s: %w", what, field, err)
	}
	return nil
}

// Unix times outside these years are surely not marker times in seconds
// (milliseconds, or garbage).
var (
	minTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	maxTime = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
)

func parseTime(raw json.RawMessage) (time.Time, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return time.Time{}, nil
	}
	var t time.Time
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		if t, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return time.Time{}, fmt.Errorf("time %q is not RFC 3339 (2006-01-02T15:04:05.999Z07:00) nor a number of Unix seconds", s)
		}
	} else {
		f, err := strconv.ParseFloat(string(raw), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < float64(minTime.Unix()) || f > float64(maxTime.Unix()) {
			return time.Time{}, fmt.Errorf("time %.40s is not Unix seconds between %d and %d (send time.time(), not milliseconds)", raw, minTime.Unix(), maxTime.Unix())
		}
		sec, frac := math.Modf(f)
		t = time.Unix(int64(sec), int64(frac*1e9))
	}
	if t.Before(minTime) || t.After(maxTime) {
		return time.Time{}, fmt.Errorf("time %v is out of range", t)
	}
	return t, nil
}

func parseDuration(raw json.RawMessage) (time.Duration, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	var d time.Duration
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("duration %q: want a Go duration such as 30s or 2m", s)
		}
	} else {
		f, err := strconv.ParseFloat(string(raw), 64)
		if err != nil || math.IsNaN(f) || f > float64(24*time.Hour/time.Second) || f < 0 {
			return 0, fmt.Errorf("duration %.40s: want seconds between 0 and 86400, or a string such as 30s", raw)
		}
		d = time.Duration(f * float64(time.Second))
	}
	if d <= 0 {
		return 0, fmt.Errorf("duration %v must be positive", d)
	}
	return d, nil
}
