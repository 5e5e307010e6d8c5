package api

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestDecodeLatency(t *testing.T) {
	tests := []struct {
		body string
		want string // error substring, "" for success
		n    int
		rank int
	}{
		{`{"job":"infer","values":[{"time":1795600800.5,"seconds":0.04},{"seconds":0.05}]}`, "", 2, -1},
		{`{"job":"infer","rank":3,"values":[{"time":"2026-11-25T10:00:00Z","seconds":0}]}`, "", 1, 3},
		{`{"values":[{"seconds":1}]}`, "job is missing", 0, 0},
		{`{"job":"infer","values":[]}`, "values is empty", 0, 0},
		{`{"job":"infer","values":[{"seconds":-1}]}`, "values[0].seconds", 0, 0},
		{`{"job":"infer","values":[{"time":12,"seconds":1}]}`, "values[0]", 0, 0},
		{`{"job":"a/b","values":[{"seconds":1}]}`, "job", 0, 0},
		{`{"job":"infer","rank":-2,"values":[{"seconds":1}]}`, "rank -2", 0, 0},
		{`{"job":"infer","values":[{"seconds":1}],"extra":1}`, "unknown field", 0, 0},
		{`{"job":"infer","values":[` + strings.Repeat(`{"seconds":1},`, maxLatencyValues) + `{"seconds":1}]}`, "at most", 0, 0},
	}
	for _, tt := range tests {
		req, err := DecodeLatency(strings.NewReader(tt.body))
		if tt.want != "" {
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%.60s: err %v, want %q", tt.body, err, tt.want)
			}
			continue
		}
		if err != nil || len(req.Values) != tt.n || req.Rank != tt.rank {
			t.Errorf("%.60s: %+v, %v", tt.body, req, err)
		}
	}
}

// latencyBackend is fakeBackend that also takes latency series.
type latencyBackend struct {
	fakeBackend
	got []LatencyRequest
}

func (b *latencyBackend) Latency(_ context.Context, r LatencyRequest) error {
	b.got = append(b.got, r)
	return nil
}

func TestLatencyOverHTTP(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	b := &latencyBackend{}
	srv := httptest.NewServer(Handler(b, "", logger))
	defer srv.Close()
	c := &Client{Addr: strings.TrimPrefix(srv.URL, "http://")}
	at := time.Date(2026, 11, 25, 10, 0, 0, 500e6, time.UTC)
	err := c.Latency(context.Background(), LatencyRequest{Job: "infer", Rank: 2, Values: []LatencyPoint{{Time: at, Seconds: 0.25}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.got) != 1 || b.got[0].Rank != 2 || !b.got[0].Values[0].Time.Equal(at) || b.got[0].Values[0].Seconds != 0.25 {
		t.Fatalf("backend got %+v", b.got)
	}
	// A backend without latency support answers 501.
	plain := httptest.NewServer(Handler(&fakeBackend{}, "", logger))
	defer plain.Close()
	c = &Client{Addr: strings.TrimPrefix(plain.URL, "http://")}
	if err := c.Latency(context.Background(), LatencyRequest{Job: "infer", Rank: -1, Values: []LatencyPoint{{Seconds: 1}}}); err == nil || !strings.Contains(err.Error(), "latency") {
		t.Fatalf("plain backend: %v", err)
	}
}

func FuzzDecodeLatency(f *testing.F) {
	f.Add(`{"job":"infer","rank":1,"values":[{"time":1795600800.5,"seconds":0.04}]}`)
	f.Add(`{"job":"infer","values":[{"time":"2026-11-25T10:00:00Z","seconds":1e308}]}`)
	f.Add(`{"job":"","values":null}`)
	f.Fuzz(func(t *testing.T, body string) {
		req, err := DecodeLatency(strings.NewReader(body))
		if err != nil {
			return
		}
		if req.Job == "" || len(req.Values) == 0 || len(req.Values) > maxLatencyValues || req.Rank < -1 {
			t.Fatalf("accepted bad request %+v", req)
		}
		for _, v := range req.Values {
			if v.Seconds < 0 || v.Seconds > 86400 {
				t.Fatalf("accepted latency %v", v.Seconds)
			}
		}
	})
}
