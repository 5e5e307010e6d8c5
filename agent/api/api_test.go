package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/agent/capture"
	"github.com/loupe-dev/loupe/agent/steps"
)

func TestDecodeStep(t *testing.T) {
	for _, tc := range []struct {
		body string
		want StepRequest
		err  string
	}{
		{`{"job":"train","rank":3,"iteration":17}`, StepRequest{Job: "train", Rank: 3, Iteration: 17}, ""},
		{`{"job":"train","rank":0,"iteration":1,"pid":42,"run":"r-1","time":1764072000.25}`,
			StepRequest{Job: "train", Run: "r-1", PID: 42, Iteration: 1, Time: time.Unix(1764072000, 250000000)}, ""},
		{`{"job":"t","rank":0,"iteration":1,"time":"2026-11-25T12:00:00Z"}`,
			StepRequest{Job: "t", Iteration: 1, Time: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}, ""},
		{`{"job":"t","rank":0,"iteration":1,"time":null}`, StepRequest{Job: "t", Iteration: 1}, ""},
		{``, StepRequest{}, "empty body"},
		{`[]`, StepRequest{}, "cannot unmarshal array"},
		{`{"rank":0,"iteration":1}`, StepRequest{}, "job is missing"},
		{`{"job":"t","iteration":1}`, StepRequest{}, "rank is missing"},
		{`{"job":"t","rank":0}`, StepRequest{}, "iteration is missing"},
		{`{"job":"t","rank":0,"iteration":1,"step":2}`, StepRequest{}, `unknown field "step"`},
		{`{"job":"my job","rank":0,"iteration":1}`, StepRequest{}, "job:"},
		{`{"job":"t","rank":-1,"iteration":1}`, StepRequest{}, "rank -1 is out of range"},
		{`{"job":"t","rank":0,"iteration":-5}`, StepRequest{}, "iteration -5 is negative"},
		{`{"job":"t","rank":0.5,"iteration":1}`, StepRequest{}, "cannot unmarshal number 0.5"},
		{`{"job":"t","rank":0,"iteration":1,"time":1764072000250}`, StepRequest{}, "not milliseconds"},
		{`{"job":"t","rank":0,"iteration":1,"time":"yesterday"}`, StepRequest{}, "not RFC 3339"},
		{`{"job":"t","rank":0,"iteration":1,"pid":-3}`, StepRequest{}, "pid -3"},
		{`{"job":"t","rank":0,"iteration":1} {}`, StepRequest{}, "more than one JSON value"},
		{`{"job":"t","rank":0,"iteration":1,"job":"` + strings.Repeat("x", MaxBody) + `"}`, StepRequest{}, "larger than"},
	} {
		got, err := DecodeStep(strings.NewReader(tc.body))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.HasPrefix(err.Error(), "step marker: ") {
				t.Errorf("DecodeStep(%.60s) error %v, want one containing %q", tc.body, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("DecodeStep(%s) = %+v, %v; want %+v", tc.body, got, err, tc.want)
		}
	}
}

func TestDecodeCapture(t *testing.T) {
	for _, tc := range []struct {
		body string
		want CaptureRequest
		err  string
	}{
		{`{"job":"train","duration":"30s"}`, CaptureRequest{Job: "train", Duration: 30 * time.Second}, ""},
		{`{"pids":[10,11],"duration":2.5}`, CaptureRequest{PIDs: []int{10, 11}, Duration: 2500 * time.Millisecond}, ""},
		{`{"job":"train","iterations":20,"id":"all-hosts-1"}`, CaptureRequest{ID: "all-hosts-1", Job: "train", Iterations: 20}, ""},
		{`{}`, CaptureRequest{}, ""},
		{`{"job":"t","duration":"30s","iterations":5}`, CaptureRequest{}, "either duration or iterations, not both"},
		{`{"duration":"soon"}`, CaptureRequest{}, `duration "soon"`},
		{`{"duration":"-1s"}`, CaptureRequest{}, "must be positive"},
		{`{"duration":1e9}`, CaptureRequest{}, "between 0 and 86400"},
		{`{"pids":[0]}`, CaptureRequest{}, "pid 0 is not a process id"},
		{`{"pids":"10"}`, CaptureRequest{}, "cannot unmarshal string"},
		{`{"iterations":-1}`, CaptureRequest{}, "iterations -1 is out of range"},
		{`{"id":"../x"}`, CaptureRequest{}, "id:"},
		{`{"jobs":"t"}`, CaptureRequest{}, `unknown field "jobs"`},
	} {
		got, err := DecodeCapture(strings.NewReader(tc.body))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("DecodeCapture(%s) error %v, want one containing %q", tc.body, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("DecodeCapture(%s) = %+v, %v; want %+v", tc.body, got, err, tc.want)
		}
	}
}

// Encoding a request and decoding it again gives it back: the client and
// the server agree on the wire format.
func TestRoundTrip(t *testing.T) {
	s := StepRequest{Job: "j", Run: "r", Rank: 2, PID: 9, Iteration: 40, Time: time.Unix(1764072000, 500000000)}
	data, _ := json.Marshal(s)
	got, err := DecodeStep(bytes.NewReader(data))
	if err != nil || !got.Time.Equal(s.Time) || got.Job != s.Job || got.Rank != s.Rank || got.Iteration != s.Iteration || got.PID != s.PID || got.Run != s.Run {
		t.Errorf("step round trip %s -> %+v, %v", data, got, err)
	}
	c := CaptureRequest{ID: "x", Job: "j", PIDs: []int{4}, Duration: 1500 * time.Millisecond}
	data, _ = json.Marshal(c)
	if gotc, err := DecodeCapture(bytes.NewReader(data)); err != nil || !reflect.DeepEqual(gotc, c) {
		t.Errorf("capture round trip %s -> %+v, %v", data, gotc, err)
	}
}

func FuzzDecodeStep(f *testing.F) {
	for _, s := range []string{
		`{"job":"train","rank":3,"iteration":17}`,
		`{"job":"t","rank":0,"iteration":1,"time":"2026-11-25T12:00:00Z","pid":3,"run":"r"}`,
		`{"job":"t","rank":0,"iteration":1,"time":1764072000.25}`,
		`{"job":"t","rank":1e3,"iteration":1}`, `{"time":"`, `null`, `{"job":"t","rank":0,"iteration":1,"time":-1e400}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := DecodeStep(bytes.NewReader(data))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "step marker: ") {
				t.Fatalf("error without context: %v", err)
			}
			return
		}
		if req.Job == "" || req.Rank < 0 || req.Iteration < 0 || req.PID < 0 {
			t.Fatalf("accepted invalid marker %+v", req)
		}
		if !req.Time.IsZero() && (req.Time.Before(minTime) || req.Time.After(maxTime)) {
			t.Fatalf("accepted time %v", req.Time)
		}
	})
}

func FuzzDecodeCapture(f *testing.F) {
	for _, s := range []string{
		`{"job":"train","duration":"30s"}`, `{"pids":[10,11],"duration":2.5}`, `{"iterations":20,"id":"a"}`,
		`{"duration":"9223372036s"}`, `{"duration":1e308}`, `{"pids":[1,2,3`, `{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := DecodeCapture(bytes.NewReader(data))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "capture request: ") {
				t.Fatalf("error without context: %v", err)
			}
			return
		}
		if req.Duration < 0 || req.Iterations < 0 || (req.Duration > 0 && req.Iterations > 0) || len(req.PIDs) > maxPIDs {
			t.Fatalf("accepted invalid request %+v", req)
		}
		for _, p := range req.PIDs {
			if p <= 0 {
				t.Fatalf("accepted pid %d", p)
			}
		}
	})
}

// fakeBackend records calls and answers with canned errors.
type fakeBackend struct {
	marks    []StepRequest
	captures []CaptureRequest
	err      error
	paused   []bool
}

func (b *fakeBackend) Mark(_ context.Context, r StepRequest) error {
	b.marks = append(b.marks, r)
	return b.err
}
func (b *fakeBackend) Steps(job string) []steps.Stats { return []steps.Stats{{Job: job}} }
func (b *fakeBackend) Capture(_ context.Context, r CaptureRequest) (CaptureReply, error) {
	b.captures = append(b.captures, r)
	if b.err != nil {
		return CaptureReply{}, b.err
	}
	return CaptureReply{Status: capture.Status{ID: "c1", Job: r.Job}, Message: "ok"}, nil
}
func (b *fakeBackend) Captures() []capture.Status { return nil }
func (b *fakeBackend) CaptureStatus(id string) (capture.Status, bool) {
	return capture.Status{ID: id}, id == "c1"
}
func (b *fakeBackend) PauseProfiling(p bool) error { b.paused = append(b.paused, p); return b.err }
func (b *fakeBackend) Status() StatusReply         { return StatusReply{Host: "h"} }

func TestHandler(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		name        string
		token, auth string
		method      string
		path, body  string
		backendErr  error
		code        int
		want        string
	}{
		{"step", "", "", "POST", "/v1/steps", `{"job":"j","rank":0,"iteration":1}`, nil, 204, ""},
		{"bad step", "", "", "POST", "/v1/steps", `{"job":"j"}`, nil, 400, "rank is missing"},
		{"capture", "", "", "POST", "/v1/captures", `{"job":"j","duration":"1s"}`, nil, 202, `"id": "c1"`},
		{"capture bad json", "", "", "POST", "/v1/captures", `{"job":`, nil, 400, "unexpected EOF"},
		{"capture nothing matched", "", "", "POST", "/v1/captures", `{"job":"j"}`, Errorf(404, "no process of job j"), 404, "no process of job j"},
		{"capture invalid", "", "", "POST", "/v1/captures", `{"job":"j"}`, fmt.Errorf("x: %w", capture.ErrInvalid), 400, "invalid capture request"},
		{"capture busy", "", "", "POST", "/v1/captures", `{"job":"j"}`, capture.ErrBusy, 503, "too many"},
		{"capture duplicate", "", "", "POST", "/v1/captures", `{"job":"j","id":"x"}`, capture.ErrDuplicate, 409, "already used"},
		{"capture status", "", "", "GET", "/v1/captures/c1", ``, nil, 200, `"id": "c1"`},
		{"capture unknown", "", "", "GET", "/v1/captures/zz", ``, nil, 404, `no capture \"zz\"`},
		{"pause", "", "", "POST", "/v1/dcgm/pause", ``, nil, 200, `"paused": true`},
		{"pause without dcgm", "", "", "POST", "/v1/dcgm/pause", ``, Errorf(409, "DCGM is not running"), 409, "DCGM is not running"},
		{"status", "", "", "GET", "/v1/status", ``, nil, 200, `"host": "h"`},
		{"unknown path", "", "", "GET", "/v2/x", ``, nil, 404, "no such endpoint"},
		{"wrong method", "", "", "GET", "/v1/dcgm/pause", ``, nil, 405, "use POST"},
		{"token missing", "s3cret", "", "GET", "/v1/status", ``, nil, 401, "missing bearer token"},
		{"token wrong", "s3cret", "Bearer nope", "GET", "/v1/status", ``, nil, 401, "wrong bearer token"},
		{"token right", "s3cret", "Bearer s3cret", "GET", "/v1/status", ``, nil, 200, `"host": "h"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &fakeBackend{err: tc.backendErr}
			req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			Handler(b, tc.token, logger).ServeHTTP(rec, req)
			if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.want) {
				t.Fatalf("%s %s: %d %s; want %d containing %q", tc.method, tc.path, rec.Code, rec.Body, tc.code, tc.want)
			}
			if tc.code >= 400 {
				var e Error
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Message == "" {
					t.Errorf("error body %q is not {\"error\": ...}", rec.Body)
				}
			}
		})
	}
}

func TestCheckAddr(t *testing.T) {
	for _, tc := range []struct {
		addr, token string
		ok          bool
	}{
		{"127.0.0.1:9401", "", true},
		{"localhost:9401", "", true},
		{"[::1]:9401", "", true},
		{"127.3.4.5:1", "", true},
		{":9401", "", false},
		{"0.0.0.0:9401", "", false},
		{"10.0.0.5:9401", "", false},
		{"[::]:9401", "", false},
		{"0.0.0.0:9401", "tok", true},
		{"nonsense", "", false},
	} {
		if err := CheckAddr(tc.addr, tc.token); (err == nil) != tc.ok {
			t.Errorf("CheckAddr(%q, %q) = %v, want ok=%v", tc.addr, tc.token, err, tc.ok)
		}
	}
}

func TestClient(t *testing.T) {
	b := &fakeBackend{}
	srv := httptest.NewServer(Handler(b, "tok", slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer srv.Close()
	c := &Client{Addr: strings.TrimPrefix(srv.URL, "http://"), Token: "tok"}
	ctx := context.Background()
	when := time.Unix(1764072000, 0)
	if err := c.Step(ctx, StepRequest{Job: "j", Rank: 1, Iteration: 5, Time: when}); err != nil {
		t.Fatal(err)
	}
	if len(b.marks) != 1 || !b.marks[0].Time.Equal(when) || b.marks[0].Rank != 1 {
		t.Fatalf("marks %+v", b.marks)
	}
	rep, err := c.Capture(ctx, CaptureRequest{Job: "j", Iterations: 3})
	if err != nil || rep.ID != "c1" || b.captures[0].Iterations != 3 {
		t.Fatalf("capture %+v %v %+v", rep, err, b.captures)
	}
	if err := c.PauseProfiling(ctx, false); err != nil || len(b.paused) != 1 || b.paused[0] {
		t.Fatalf("resume: %v %v", err, b.paused)
	}
	_, err = c.CaptureStatus(ctx, "nope")
	var e *Error
	if !errors.As(err, &e) || e.Code != 404 {
		t.Fatalf("missing capture: %v", err)
	}
	bad := &Client{Addr: c.Addr}
	if _, err := bad.Status(ctx); !errors.As(err, &e) || e.Code != 401 || !strings.Contains(e.Message, "missing bearer token") {
		t.Fatalf("no token: %v", err)
	}
	if _, err := (&Client{Addr: "127.0.0.1:1"}).Status(ctx); err == nil || !strings.Contains(err.Error(), "is the agent running") {
		t.Fatalf("no agent: %v", err)
	}
}

func BenchmarkDecodeStep(b *testing.B) {
	body := []byte(`{"job":"train","rank":3,"iteration":17,"pid":4242,"time":1764072000.25}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeStep(bytes.NewReader(body)); err != nil {
			b.Fatal(err)
		}
	}
}
