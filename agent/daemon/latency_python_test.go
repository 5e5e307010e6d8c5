package daemon

import (
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// The README's Python latency helper (agent/api/testdata/loupe_latency.py)
// posts batches that the agent keeps as latency events.
func TestPythonLatencySnippet(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("python3 is needed to check the latency snippet: apt-get install python3")
		}
		t.Skip("no python3:", err)
	}
	snippet, err := os.ReadFile("../api/testdata/loupe_latency.py")
	if err != nil {
		t.Fatal(err)
	}
	d := start(t, testConfig(t))
	before := time.Now()
	cmd := exec.Command(py, "-c", string(snippet)+"\nlat = LoupeLatency('infer', batch=100)\nfor i in range(250):\n    lat.observe(0.5 if i < 50 else 0.05)\nlat.flush()\n")
	cmd.Env = append(os.Environ(), "LOUPE_LATENCY_URL=http://"+d.APIAddr()+"/v1/latency")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	evs := d.latency.Events(before.Add(-time.Second), time.Now().Add(time.Second))
	if len(evs) != 250 {
		t.Fatalf("%d latency events, want 250", len(evs))
	}
	slow := 0
	for _, e := range evs {
		v, err := strconv.ParseFloat(e.Attrs["value_seconds"], 64)
		if e.Kind != traces.EventLatency || e.Attrs["job"] != "infer" || e.Rank != -1 || err != nil {
			t.Fatalf("event %+v", e)
		}
		if v == 0.5 {
			slow++
		}
	}
	if slow != 50 {
		t.Errorf("%d slow values, want 50", slow)
	}
}
