package views_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// The fixture: a training job whose rank 5 is a straggler, and a
// simulated inference job, committed to a directory store the way agents
// commit them (traces.BundleWriter: parts first, manifest last).
var (
	t0           = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	window       = 60 * time.Second
	trainJob     = "train-llm"
	inferJob     = "infer-svc"
	straggler    = 5
	trainHosts   = 2
	gpusPerHost  = 8
	iterations   = 50
	stepMs       = 100.0
	stragglerMs  = 160.0
	idleHost     = "node-2" // host 1 (node-2) GPU 7 sits idle: a dead zone
	idleGPU      = 7
	busySM       = 0.8
	idleSM       = 0.02
	commID       = uint64(0xfeedbeef)
	profileFuncs = []string{"main", "train_step", "forward", "all_reduce_wait", "data_loader"}
)

// hostName is the name of host h (0-based).
func hostName(h int) string { return fmt.Sprintf("node-%d", h+1) }

// gpuSamples returns 10 Hz samples of gpus devices over [start, start+d).
func gpuSamples(start time.Time, d time.Duration, gpus int, sm func(gpu int, t time.Duration) float32) []traces.GPUSample {
	var rows []traces.GPUSample
	for t := time.Duration(0); t < d; t += 100 * time.Millisecond {
		for g := range gpus {
			v := sm(g, t)
			rows = append(rows, traces.GPUSample{
				TimeNs: start.Add(t).UnixNano(), GPU: int32(g), UUID: fmt.Sprintf("GPU-%04d", g),
				GPUUtil: min(100, v*100+10), PowerW: 100 + 500*v, ProfValid: true,
				SMActive: v, TensorActive: v / 2, DRAMActive: v / 3,
			})
		}
	}
	return rows
}

// bundle commits one host bundle under root.
func bundle(t testing.TB, root string, m traces.Manifest, gpu []traces.GPUSample, steps []traces.Step, nccl []traces.NCCLEvent, prof *profile.Profile) {
	t.Helper()
	k := traces.KeyOf(&m)
	w, err := traces.NewBundleWriter(filepath.Join(root, filepath.FromSlash(k.Prefix())), m)
	if err != nil {
		t.Fatal(err)
	}
	if gpu != nil {
		if err := traces.WriteTable(w, traces.PartGPUSamples, gpu); err != nil {
			t.Fatal(err)
		}
	}
	if steps != nil {
		if err := traces.WriteTable(w, traces.PartSteps, steps); err != nil {
			t.Fatal(err)
		}
	}
	if nccl != nil {
		if err := traces.WriteTable(w, traces.PartNCCLEvents, nccl); err != nil {
			t.Fatal(err)
		}
	}
	if prof != nil {
		if err := w.WriteProfile(prof); err != nil {
			t.Fatal(err)
		}
	}
	if slices.Contains(m.Ranks, 0) {
		if err := w.WritePart("kineto/rank0-1000.json.gz", traces.MediaKineto, bytes.NewReader(kinetoTrace(t))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
}

func manifest(job, host string, world int, ranks []int, sim bool) traces.Manifest {
	m := traces.Manifest{
		CaptureID: "cap-1", Cluster: "c1", Job: job, Run: "r1", Host: host, Ranks: ranks, WorldSize: world,
		Start: t0, End: t0.Add(window), Trigger: traces.Trigger{Kind: traces.TriggerStableIteration, Reason: "test"},
		AgentVersion: "test", Simulated: sim,
	}
	for g := range gpusPerHost {
		gi := traces.GPUInfo{Index: g, UUID: fmt.Sprintf("GPU-%04d", g), Name: "NVIDIA H100 80GB HBM3"}
		if ranks != nil {
			gi.Ranks = []int{ranks[g]}
			m.Processes = append(m.Processes, traces.Process{PID: 1000 + ranks[g], Rank: ranks[g], LocalRank: g, GPU: g})
		}
		m.GPUs = append(m.GPUs, gi)
	}
	return m
}

// Kernels of rank 0's Kineto trace: per profiler step, four GEMMs of
// 100 us and one ReLU of 10 us.
const (
	gemmKernel = "void gemm_kernel<float>(Params)"
	reluKernel = "void relu_kernel()"
)

// kinetoTrace is a gzipped torch.profiler trace of rank 0 with three
// profiler steps (HTA, and so Loupe, leaves the last step's kernels out).
func kinetoTrace(t testing.TB) []byte {
	var evs []map[string]any
	for n := 1; n <= 3; n++ {
		base := float64((n - 1) * 1000)
		evs = append(evs, map[string]any{"ph": "X", "cat": "user_annotation", "name": fmt.Sprintf("ProfilerStep#%d", n), "pid": 100, "tid": 100, "ts": base, "dur": 1000})
		for k := range 5 {
			corr := n*100 + k
			ts := base + 10 + float64(k*150)
			name, d := gemmKernel, 100.0
			if k == 4 {
				name, d = reluKernel, 10
			}
			evs = append(evs,
				map[string]any{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 100, "tid": 100, "ts": ts, "dur": 5, "args": map[string]any{"correlation": corr}},
				map[string]any{"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": 7, "ts": ts + 20, "dur": d, "args": map[string]any{"stream": 7, "device": 0, "correlation": corr}})
		}
	}
	data, err := json.Marshal(map[string]any{"schemaVersion": 1, "distributedInfo": map[string]any{"backend": "nccl", "rank": 0, "world_size": 16}, "traceEvents": evs})
	if err != nil {
		t.Fatal(err)
	}
	var z bytes.Buffer
	gz := gzip.NewWriter(&z)
	gz.Write(data)
	gz.Close()
	return z.Bytes()
}

// stepMsOf is rank r's step time at iteration i: rank 5 is slow.
func stepMsOf(r, i int) float64 {
	base := stepMs
	if r == straggler {
		base = stragglerMs
	}
	return base + float64((r*7+i*3)%5) // a little deterministic noise
}

// cpuProfile is a pprof CPU profile of the ranks, labelled as the agent
// labels samples; rank slow spends its time in data_loader.
func cpuProfile(ranks []int, slow int) *profile.Profile {
	p := &profile.Profile{
		SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		PeriodType: &profile.ValueType{Type: "cpu", Unit: "nanoseconds"}, Period: int64(time.Second) / 19,
		TimeNanos: t0.UnixNano(), DurationNanos: int64(window),
	}
	locs := map[string]*profile.Location{}
	for i, name := range profileFuncs {
		fn := &profile.Function{ID: uint64(i + 1), Name: name, SystemName: name, Filename: "train.py"}
		p.Function = append(p.Function, fn)
		loc := &profile.Location{ID: uint64(i + 1), Address: uint64(0x1000 * (i + 1)), Line: []profile.Line{{Function: fn, Line: int64(10 * (i + 1))}}}
		p.Location = append(p.Location, loc)
		locs[name] = loc
	}
	for _, r := range ranks {
		leaf := "forward"
		if r == slow {
			leaf = "data_loader"
		}
		for _, stack := range []struct {
			leaf  string
			count int64
		}{{leaf, 80}, {"all_reduce_wait", 20}} {
			p.Sample = append(p.Sample, &profile.Sample{
				// Leaf first, as pprof orders locations.
				Location: []*profile.Location{locs[stack.leaf], locs["train_step"], locs["main"]},
				Value:    []int64{stack.count, stack.count * int64(time.Second) / 19},
				Label:    map[string][]string{"pid": {fmt.Sprint(1000 + r)}, "comm": {"python3"}, "rank": {fmt.Sprint(r)}},
			})
		}
	}
	return p
}

// seed commits the fixture to a new directory store and returns it.
func seed(t testing.TB) (store.Store, string) {
	t.Helper()
	root := t.TempDir()
	world := trainHosts * gpusPerHost
	for h := range trainHosts {
		var ranks []int
		for g := range gpusPerHost {
			ranks = append(ranks, h*gpusPerHost+g)
		}
		host := hostName(h)
		gpu := gpuSamples(t0, window, gpusPerHost, func(g int, _ time.Duration) float32 {
			if host == idleHost && g == idleGPU {
				return float32(idleSM)
			}
			return float32(busySM)
		})
		var steps []traces.Step
		var nccl []traces.NCCLEvent
		for _, r := range ranks {
			start := t0.Add(time.Second)
			for i := range iterations {
				d := time.Duration(stepMsOf(r, i) * float64(time.Millisecond))
				steps = append(steps, traces.Step{Rank: int32(r), PID: int32(1000 + r), Iteration: int64(100 + i),
					StartNs: start.UnixNano(), EndNs: start.Add(d).UnixNano(), Source: traces.StepSourceMarker})
				// The collective at the end of each iteration: a rank calls
				// it when its compute is done, so the straggler is late.
				arrive := t0.Add(time.Second + time.Duration(i)*200*time.Millisecond + time.Duration(stepMsOf(r, 0)*float64(time.Millisecond)))
				nccl = append(nccl, traces.NCCLEvent{TimeNs: arrive.UnixNano(), DurationNs: int64(time.Millisecond), PID: int32(1000 + r),
					Rank: int32(r), NRanks: int32(world), CommID: commID, Op: "AllReduce", Seq: int64(i), Count: 1 << 20,
					Datatype: "float32", Bytes: 4 << 20, Peer: -1})
				start = start.Add(d)
			}
		}
		bundle(t, root, manifest(trainJob, host, world, ranks, false), gpu, steps, nccl, cpuProfile(ranks, straggler))
	}
	// The simulated inference job: one host, no ranks, a sine load.
	gpu := gpuSamples(t0, window, gpusPerHost, func(g int, d time.Duration) float32 {
		return float32(0.5 + 0.4*math.Sin(d.Seconds()/10+float64(g)))
	})
	infer := manifest(inferJob, "infer-1", 0, nil, true)
	for g := range gpusPerHost { // one server process per GPU, no ranks
		infer.Processes = append(infer.Processes, traces.Process{PID: 2000 + g, Rank: -1, LocalRank: -1, GPU: g})
	}
	bundle(t, root, infer, gpu, nil, nil, nil)
	st, err := store.NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	return st, root
}

// indexOf loads every capture of the store into a findings index, as the
// aggregator's watcher does.
func indexOf(t testing.TB, st store.Store, jobs ...string) *findings.Index {
	t.Helper()
	ix := findings.NewIndex(nil)
	for _, job := range jobs {
		c, err := capture.Load(context.Background(), st, capture.ID{Cluster: "c1", Job: job, Run: "r1", Capture: "cap-1"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ix.SetCapture(c, true)
	}
	return ix
}
