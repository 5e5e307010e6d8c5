package goodput

import (
	"errors"
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces"
)

// A committed bundle is read as the aggregator reads it: the step history
// of every rank, the checkpoint events of events.jsonl, the manifest's
// processes and software; a bundle without a history has no goodput.
func TestFromCapture(t *testing.T) {
	steps := make([]float64, 3000)
	for i := range steps {
		steps[i] = 1
	}
	steps[1500] = 41 // a save, reported by rank 1 only
	m := traces.Manifest{CaptureID: "cap-1", Cluster: "c1", Job: "llm", Run: "r1", Host: "node-1", Ranks: []int{0, 1}, WorldSize: 2,
		Start: t0.Add(2990 * time.Second), End: t0.Add(3000 * time.Second), AgentVersion: "test", DriverVersion: "550.54.15"}
	var hist []traces.StepSpan
	for r := range 2 {
		m.Processes = append(m.Processes, traces.Process{PID: 10 + r, Rank: r, Image: "img:1", Started: t0.Add(-time.Minute)})
		p := process{pid: int32(10 + r), start: t0, steps: steps}
		hist = append(hist, p.spans(int32(r), math.MaxInt, 1)...)
	}
	bundle := func(name string, history bool) *analyzers.Input {
		dir := filepath.Join(t.TempDir(), name)
		w, err := traces.NewBundleWriter(dir, m)
		if err != nil {
			t.Fatal(err)
		}
		if history {
			if err := traces.WriteTable(w, traces.PartStepHistory, hist); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.WriteEvents([]traces.Event{{TimeNs: t0.Add(1510 * time.Second).UnixNano(), Kind: traces.EventCheckpoint, GPU: -1, Rank: 1},
			{TimeNs: t0.Add(1510 * time.Second).UnixNano(), Kind: traces.EventXID, GPU: 0, Rank: 0, Code: 13}}); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Commit(); err != nil {
			t.Fatal(err)
		}
		h, err := analyzers.HostFromDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		return &analyzers.Input{Hosts: []analyzers.Host{h}}
	}
	g, err := FromCapture(t.Context(), bundle("with", true), nil, nil, Options{Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	if g.Job != "llm" || g.Capture != "cap-1" || g.Ranks != 2 || g.Software.Image != "img:1" || !g.Start.Equal(t0.Add(-time.Minute)) {
		t.Errorf("goodput %+v", g)
	}
	// Rank 1's 40 s save is checkpointing; rank 0's, with no event and no
	// regular recurrence, stays in its step time.
	within(t, "checkpoint", g.Cause(traces.CauseCheckpoint).GPUSeconds, 40, 1e-6)
	within(t, "startup", g.Cause(traces.CauseStartup).GPUSeconds, 120, 1e-6)
	if _, err := FromCapture(t.Context(), bundle("without", false), nil, nil, Options{}); !errors.Is(err, ErrNoHistory) {
		t.Errorf("a bundle without a step history: %v", err)
	}
}
