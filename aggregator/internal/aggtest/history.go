package aggtest

import (
	"fmt"
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// RunPlan is a synthetic training run for goodput tests: every rank's
// process starts at Start, takes its first step Startup later and then one
// every Step (a little jitter), iterations 0 to Steps-1; Captures are the
// offsets from Start of 20 s capture windows.
type RunPlan struct {
	Cluster, Job, Run string
	Hosts             [][]int // ranks per host, one GPU each
	Start             time.Time
	Startup, Step     time.Duration
	Steps             int
	Image             string
	// Straggler arrives Late at every collective of the windows (-1: none).
	Straggler int
	Late      time.Duration
	Captures  []time.Duration
	// NoHistory leaves the step history out, as agents before it did.
	NoHistory bool
	Simulated bool
}

// Window is the length of a RunPlan capture window.
const Window = 20 * time.Second

// history is rank's step history up to until: the first 2000 steps one
// row each, then rows of 100. Steps follow each other, each a little
// longer or shorter than Step.
func (p *RunPlan) history(rank int, until int64) []traces.StepSpan {
	var out []traces.StepSpan
	at := p.Start.Add(p.Startup).UnixNano()
	for it := 0; it < p.Steps; {
		n := 1
		if it >= 2000 {
			n = min(100, p.Steps-it)
		}
		s := traces.StepSpan{Rank: int32(rank), PID: int32(1000 + rank), FirstIteration: int64(it), Steps: int32(n),
			StartNs: at, MinNs: math.MaxInt64, Source: traces.StepSourceMarker}
		for k := it; k < it+n; k++ {
			d := int64(float64(p.Step) * (1 + 0.02*math.Sin(float64(k*(rank+1)))))
			at += d
			s.MinNs, s.MaxNs = min(s.MinNs, d), max(s.MaxNs, d)
		}
		s.EndNs = at
		if s.EndNs > until {
			break
		}
		out = append(out, s)
		it += n
	}
	return out
}

// PutRun commits the plan's captures to st, each host bundle with the step
// history from the first step to the window's end, the window's NCCL
// collectives (one every 200 ms) and a manifest naming its processes
// (start time, image), the driver and CUDA, and returns the captures.
func PutRun(t testing.TB, st store.Store, p RunPlan) []capture.ID {
	t.Helper()
	world := 0
	for _, ranks := range p.Hosts {
		world += len(ranks)
	}
	var ids []capture.ID
	for ci, off := range p.Captures {
		capID := fmt.Sprintf("cap-%d", ci+1)
		ids = append(ids, capture.ID{Cluster: p.Cluster, Job: p.Job, Run: p.Run, Capture: capID})
		start := p.Start.Add(off)
		end := start.Add(Window)
		for hi, ranks := range p.Hosts {
			m := traces.Manifest{
				CaptureID: capID, Cluster: p.Cluster, Job: p.Job, Run: p.Run, Host: fmt.Sprintf("node-%d", hi+1),
				Ranks: ranks, WorldSize: world, Start: start, End: end, AgentVersion: "test", Simulated: p.Simulated,
				Trigger:       traces.Trigger{Kind: traces.TriggerOnDemand, Reason: "test"},
				DriverVersion: "550.54.15", CUDAVersion: "12.4",
			}
			for gpu, r := range ranks {
				m.GPUs = append(m.GPUs, traces.GPUInfo{Index: gpu, UUID: fmt.Sprintf("GPU-%d-%d", hi, gpu), Name: "NVIDIA H100 80GB HBM3", Ranks: []int{r}})
				m.Processes = append(m.Processes, traces.Process{PID: 1000 + r, Rank: r, LocalRank: gpu, GPU: gpu, Comm: "python",
					Image: p.Image, NCCLVersion: "2.21.5", Started: p.Start})
			}
			dir := filepath.Join(t.TempDir(), m.Host)
			w, err := traces.NewBundleWriter(dir, m)
			if err != nil {
				t.Fatal(err)
			}
			var hist []traces.StepSpan
			var nccl []traces.NCCLEvent
			for _, r := range ranks {
				hist = append(hist, p.history(r, end.UnixNano())...)
				for seq := 0; time.Duration(seq)*200*time.Millisecond < Window; seq++ {
					at := start.Add(time.Duration(seq) * 200 * time.Millisecond)
					if r == p.Straggler {
						at = at.Add(p.Late)
					}
					nccl = append(nccl, traces.NCCLEvent{TimeNs: at.UnixNano(), DurationNs: 1e6, PID: int32(1000 + r), TID: int32(1000 + r),
						Rank: int32(r), NRanks: int32(world), CommID: 0xabc, Op: "AllReduce", Seq: int64(seq), Count: 1 << 20, Datatype: "bfloat16", Bytes: 2 << 20, Peer: -1})
				}
			}
			if !p.NoHistory {
				if err := traces.WriteTable(w, traces.PartStepHistory, hist); err != nil {
					t.Fatal(err)
				}
			}
			if err := traces.WriteTable(w, traces.PartNCCLEvents, nccl); err != nil {
				t.Fatal(err)
			}
			if _, err := w.Commit(); err != nil {
				t.Fatal(err)
			}
			PutDir(t, st, dir)
		}
	}
	return ids
}
