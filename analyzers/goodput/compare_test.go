package goodput

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// steadyRun is a run of 4 ranks stepping every step seconds for n steps
// from start, on the given image, driver and NCCL.
func steadyRun(t *testing.T, run string, start time.Time, step float64, n int, image, driver, nccl string) *traces.Goodput {
	t.Helper()
	r := &Run{Cluster: "c1", Job: "llm", Run: run, Capture: "cap-" + run}
	m := &traces.Manifest{Host: "n1", DriverVersion: driver, CUDAVersion: "12.4"}
	for rank := range 4 {
		steps := make([]float64, n)
		for i := range steps {
			steps[i] = step * (1 + 0.02*math.Sin(float64(i*rank+i)))
		}
		p := process{pid: int32(10 + rank), start: start.Add(time.Minute), steps: steps}
		for _, s := range p.spans(int32(rank), 2000, 100) {
			r.Add(&s)
		}
		m.Processes = append(m.Processes, traces.Process{PID: 10 + rank, Rank: rank, Image: image, NCCLVersion: nccl, Started: start})
	}
	r.Manifests = []*traces.Manifest{m}
	g := Compute(r, Options{Now: start})
	if g == nil {
		t.Fatal("no goodput")
	}
	return g
}

func TestCompareRuns(t *testing.T) {
	day := 24 * time.Hour
	r1 := steadyRun(t, "r1", t0, 1.0, 5000, "nvcr.io/nvidia/pytorch:24.05-py3", "550.54.15", "2.21.5")
	r2 := steadyRun(t, "r2", t0.Add(day), 1.0, 5000, "nvcr.io/nvidia/pytorch:24.05-py3", "550.90.07", "2.21.5")
	r3 := steadyRun(t, "r3", t0.Add(2*day), 1.15, 5000, "nvcr.io/nvidia/pytorch:24.09-py3", "550.90.07", "2.22.3")
	r4 := steadyRun(t, "r4", t0.Add(3*day), 1.33, 5000, "nvcr.io/nvidia/pytorch:24.09-py3", "550.90.07", "2.22.3")
	c := Compare([]*traces.Goodput{r3, r1, r4, r2}) // any order
	if c.Job != "llm" || len(c.Runs) != 4 || c.Runs[0].Run != "r1" || c.Runs[3].Run != "r4" || len(c.Changes) != 3 {
		t.Fatalf("comparison %+v", c)
	}
	// r1 -> r2: a driver update with no effect is listed, not flagged.
	d := c.Changes[0]
	if d.Regression || len(d.Software) != 1 || d.Software[0] != (SoftwareChange{"driver", "550.54.15", "550.90.07"}) ||
		!strings.Contains(d.Summary, "the driver changed from 550.54.15 to 550.90.07") {
		t.Errorf("r1 -> r2: %+v", d)
	}
	// r2 -> r3: 15 % slower steps after the image (and NCCL) changed.
	d = c.Changes[1]
	if !d.Regression || math.Abs(d.StepTimeChange-0.15) > 0.01 || !d.At.Equal(r3.Start) {
		t.Errorf("r2 -> r3: %+v, want a 15%% regression at %v", d, r3.Start)
	}
	for _, want := range []string{"Run r3", "step time rose 15% (1.00 s to 1.15 s)",
		"after the image changed from nvcr.io/nvidia/pytorch:24.05-py3 to nvcr.io/nvidia/pytorch:24.09-py3", "the nccl changed from 2.21.5 to 2.22.3"} {
		if !strings.Contains(d.Summary, want) {
			t.Errorf("r2 -> r3 summary %q lacks %q", d.Summary, want)
		}
	}
	// r3 -> r4: slower again with nothing changed.
	d = c.Changes[2]
	if !d.Regression || len(d.Software) != 0 || !strings.Contains(d.Summary, "did not change") {
		t.Errorf("r3 -> r4: %+v", d)
	}
	if r := c.Runs[2]; r.Software.Image != "nvcr.io/nvidia/pytorch:24.09-py3" || math.Abs(r.StepSeconds-1.15) > 0.01 || r.LostGPUHours <= 0 {
		t.Errorf("run summary %+v", r)
	}
	// A steady job compares clean.
	c = Compare([]*traces.Goodput{r1, steadyRun(t, "r1b", t0.Add(day), 1.01, 5000, "nvcr.io/nvidia/pytorch:24.05-py3", "550.54.15", "2.21.5")})
	if d := c.Changes[0]; d.Regression || len(d.Causes) != 0 || len(d.Software) != 0 || !strings.Contains(d.Summary, "no change") {
		t.Errorf("steady job: %+v", d)
	}
	if c := Compare(nil); len(c.Runs) != 0 || len(c.Changes) != 0 {
		t.Errorf("no runs: %+v", c)
	}
}
