package analyzers

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"github.com/loupe-dev/loupe/traces"
)

// t0 is the start of every synthetic capture window.
var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// samplePeriod is the synthetic GPU sampling period (10 Hz).
const samplePeriod = 100 * time.Millisecond

// hostBundle is one synthetic host of a capture; empty parts are not written.
type hostBundle struct {
	name      string
	ranks     []int // one per GPU: GPU i runs ranks[i]
	seconds   float64
	start     time.Time // the window's start; t0 when zero
	simulated bool
	samples   []traces.GPUSample
	nccl      []traces.NCCLEvent
	steps     []traces.Step
	history   []traces.StepSpan
	events    []traces.Event
	profile   *profile.Profile
	hang      string // nccl_hang.json
}

// pid is the synthetic process id of a rank.
func pid(rank int) int { return 1000 + rank }

// writeCapture writes the hosts as committed bundles under dir (t.TempDir()
// when empty) and returns the Input that reads them back.
func writeCapture(tb testing.TB, dir string, hosts ...hostBundle) *Input {
	tb.Helper()
	if dir == "" {
		dir = tb.TempDir()
	}
	world := 0
	for _, h := range hosts {
		for _, r := range h.ranks {
			world = max(world, r+1)
		}
	}
	in := &Input{}
	for _, hb := range hosts {
		secs := hb.seconds
		if secs == 0 {
			secs = 10
		}
		start := hb.start
		if start.IsZero() {
			start = t0
		}
		m := traces.Manifest{
			CaptureID: "cap1", Cluster: "c1", Job: "train", Run: "r1", Host: hb.name,
			Ranks: hb.ranks, WorldSize: world, Simulated: hb.simulated,
			Start: start, End: start.Add(time.Duration(secs * float64(time.Second))),
			Trigger:      traces.Trigger{Kind: traces.TriggerOnDemand, Reason: "test"},
			AgentVersion: "test",
		}
		for gpu, r := range hb.ranks {
			m.GPUs = append(m.GPUs, traces.GPUInfo{Index: gpu, UUID: fmt.Sprintf("GPU-%s-%d", hb.name, gpu), Name: "NVIDIA H100 80GB HBM3", Ranks: []int{r}})
			m.Processes = append(m.Processes, traces.Process{PID: pid(r), Rank: r, LocalRank: gpu, GPU: gpu, Comm: "python"})
		}
		hd := filepath.Join(dir, hb.name)
		w, err := traces.NewBundleWriter(hd, m)
		if err != nil {
			tb.Fatal(err)
		}
		must := func(err error) {
			if err != nil {
				tb.Fatal(err)
			}
		}
		if hb.samples != nil {
			must(traces.WriteTable(w, traces.PartGPUSamples, hb.samples))
		}
		if hb.nccl != nil {
			must(traces.WriteTable(w, traces.PartNCCLEvents, hb.nccl))
		}
		if hb.steps != nil {
			must(traces.WriteTable(w, traces.PartSteps, hb.steps))
		}
		if hb.history != nil {
			must(traces.WriteTable(w, traces.PartStepHistory, hb.history))
		}
		if hb.events != nil {
			must(w.WriteEvents(hb.events))
		}
		if hb.profile != nil {
			must(w.WriteProfile(hb.profile))
		}
		if hb.hang != "" {
			must(w.WritePart(traces.PartNCCLHang, traces.MediaJSON, strings.NewReader(hb.hang)))
		}
		_, err = w.Commit()
		must(err)
		h, err := HostFromDir(hd)
		must(err)
		in.Hosts = append(in.Hosts, h)
	}
	return in
}

// healthy is a busy, well-behaved GPU sample.
func healthy(gpu int, t time.Time) traces.GPUSample {
	return traces.GPUSample{
		TimeNs: t.UnixNano(), GPU: int32(gpu), UUID: fmt.Sprintf("GPU-%d", gpu),
		GPUUtil: 97, FBUsedMiB: 60000, FBFreeMiB: 21000, FBTotalMiB: 81559, PowerW: 550, GPUTempC: 62, MemTempC: 70,
		SMClockMHz: 1980, MemClockMHz: 2619,
		ProfValid: true, GrEngineActive: 0.9, SMActive: 0.8, SMOccupancy: 0.4, TensorActive: 0.45,
		DRAMActive: 0.3, FP16Active: 0.1, FP32Active: 0.05,
	}
}

// series makes n samples at 10 Hz for each of gpus GPUs, healthy unless
// edit changes them; edit gets the sample index.
func series(gpus, n int, edit func(i int, s *traces.GPUSample)) []traces.GPUSample {
	out := make([]traces.GPUSample, 0, gpus*n)
	for i := range n {
		for g := range gpus {
			s := healthy(g, t0.Add(time.Duration(i)*samplePeriod))
			if edit != nil {
				edit(i, &s)
			}
			out = append(out, s)
		}
	}
	return out
}

// run runs one analyzer over in and fails the test on error.
func run(t *testing.T, a *Analyzer, in *Input) []traces.Finding {
	t.Helper()
	fs, err := Run(t.Context(), in, []*Analyzer{a})
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

// evidence returns a finding's evidence by name.
func evidence(f traces.Finding) map[string]float64 {
	m := map[string]float64{}
	for _, e := range f.Evidence {
		m[e.Name] = e.Value
	}
	return m
}

// near reports whether a and b agree to 1e-6 relative.
func near(a, b float64) bool {
	d := a - b
	if d < 0 {
		d = -d
	}
	return d <= 1e-6*max(1, a, -a, b, -b)
}

// check compares named evidence values with want.
func check(t *testing.T, f traces.Finding, want map[string]float64) {
	t.Helper()
	got := evidence(f)
	for k, v := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("%s: evidence %q missing; have %v", f.Title, k, got)
			continue
		}
		if !near(g, v) {
			t.Errorf("%s: evidence %q = %v, want %v", f.Title, k, g, v)
		}
	}
}
