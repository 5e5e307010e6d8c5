package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/agent/api"
	"github.com/loupe-dev/loupe/traces"
)

// Log lines and latency values that arrive during a capture's window are in
// its events.jsonl; older log history is not.
func TestLogsAndLatencyInCapture(t *testing.T) {
	cfg := testConfig(t)
	logs := t.TempDir()
	app := filepath.Join(logs, "consumer.log")
	if err := os.WriteFile(app, []byte("RuntimeError: CUDA error: old history\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Logs.Files = []string{filepath.Join(logs, "*.log")}
	cfg.Logs.PollInterval = 10 * time.Millisecond
	d := start(t, cfg)
	c := &api.Client{Addr: d.APIAddr()}
	// The tailer reads files present at its first poll from their end.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(get(t, "http://"+d.MetricsAddr()+"/metrics"), "loupe_logtail_files 1"); {
		if time.Now().After(deadline) {
			t.Fatal("the log tailer never found the file")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx := context.Background()
	if err := c.Step(ctx, api.StepRequest{Job: "infer", Rank: 0, PID: os.Getpid(), Iteration: 1}); err != nil {
		t.Fatal(err)
	}
	rep, err := c.Capture(ctx, api.CaptureRequest{Job: "infer", Duration: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	f, err := os.OpenFile(app, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("[Consumer clientId=c1, groupId=infer] (Re-)joining group\nRuntimeError: CUDA error: in the window\n")
	f.Close()
	now := time.Now()
	err = c.Latency(ctx, api.LatencyRequest{Job: "infer", Rank: 0, Values: []api.LatencyPoint{
		{Time: now, Seconds: 0.5}, {Time: now.Add(time.Millisecond), Seconds: 0.25},
	}})
	if err != nil {
		t.Fatal(err)
	}

	m, dir := waitBundle(t, cfg, "infer", "default", rep.ID)
	if _, ok := m.Part(traces.PartEvents); !ok {
		t.Fatalf("no %s in %+v (notes %q)", traces.PartEvents, m.Parts, m.Notes)
	}
	ef, err := os.Open(filepath.Join(dir, traces.PartEvents))
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	kinds := map[string]int{}
	var last int64
	err = traces.ReadEvents(ef, func(e traces.Event) error {
		kinds[e.Kind]++
		if e.Kind == traces.EventCUDAError && e.Attrs["error"] != "in the window" {
			t.Errorf("unexpected CUDA event %+v", e)
		}
		if e.Kind == traces.EventLatency && (e.Rank != 0 || e.Attrs["job"] != "infer" || e.Attrs["value_seconds"] == "") {
			t.Errorf("latency event %+v", e)
		}
		if e.TimeNs < last {
			t.Errorf("events out of time order at %+v", e)
		}
		last = e.TimeNs
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if kinds[traces.EventCUDAError] != 1 || kinds[traces.EventRebalance] != 1 || kinds[traces.EventLatency] != 2 {
		t.Errorf("event kinds %v, want 1 cuda_error, 1 rebalance, 2 latency", kinds)
	}
}

// A log file copied in after start-up (yesterday's consumer log) is read
// from its start with the lines' own timestamps; its events, older than any
// capture window, arrive in the store as a log-only bundle that the
// analyzers read like a capture.
func TestLogHistoryBundle(t *testing.T) {
	cfg := testConfig(t)
	logs := t.TempDir()
	cfg.Logs.Files = []string{filepath.Join(logs, "*.log")}
	cfg.Logs.PollInterval = 10 * time.Millisecond
	if err := os.WriteFile(filepath.Join(logs, "app.log"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	d := start(t, cfg)
	// Files present at the first poll are read from their end: wait for it.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(get(t, "http://"+d.MetricsAddr()+"/metrics"), "loupe_logtail_files 1"); {
		if time.Now().After(deadline) {
			t.Fatal("the log tailer never found the file")
		}
		time.Sleep(10 * time.Millisecond)
	}
	p := "INFO [Consumer clientId=consumer-infer-1, groupId=infer] "
	yesterday := "2026-11-24T10:00:0"
	history := strings.Join([]string{
		yesterday + "0.000Z " + p + "Request joining group due to: group is already rebalancing",
		yesterday + "3.000Z " + p + "Successfully joined group with generation Generation{generationId=4, memberId='consumer-infer-1-x', protocol='range'}",
		yesterday + "3.500Z " + p + "Adding newly assigned partitions: requests-0",
		"RuntimeError: CUDA error: an illegal memory access was encountered", // undated: takes 10:00:03.500
	}, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(logs, "copied.log"), []byte(history), 0o644); err != nil {
		t.Fatal(err)
	}
	first := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	id := "lh-" + first.Format("20060102T150405.000Z")
	m, dir := waitBundle(t, cfg, cfg.Logs.HistoryJob, cfg.DefaultRun, id)
	if m.Trigger.Kind != traces.TriggerLogHistory || !m.Start.Equal(first) || !m.End.Equal(first.Add(3500*time.Millisecond+1)) {
		t.Fatalf("manifest %+v", m)
	}
	ef, err := os.Open(filepath.Join(dir, traces.PartEvents))
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	var kinds []string
	err = traces.ReadEvents(ef, func(e traces.Event) error {
		kinds = append(kinds, e.Kind)
		if e.Kind == traces.EventCUDAError && e.TimeNs != first.Add(3500*time.Millisecond).UnixNano() {
			t.Errorf("undated line stamped %v, want its neighbour's time", time.Unix(0, e.TimeNs).UTC())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(kinds, ",") != "rebalance,rebalance,rebalance,cuda_error" {
		t.Fatalf("events %v", kinds)
	}
}
