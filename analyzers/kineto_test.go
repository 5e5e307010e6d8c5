package analyzers

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// kev is one Kineto trace event as a test writes it.
type kev struct {
	Ph   string         `json:"ph"`
	Cat  string         `json:"cat,omitempty"`
	Name string         `json:"name"`
	Pid  int            `json:"pid"`
	Tid  int            `json:"tid"`
	Ts   float64        `json:"ts"`
	Dur  *float64       `json:"dur,omitempty"`
	Args map[string]any `json:"args,omitempty"`
}

func dur(d float64) *float64 { return &d }

// launch is a host launch call (cat cuda_runtime, or cuda_driver for cu*).
func launch(api string, ts, d float64, corr int) kev {
	cat := "cuda_runtime"
	if strings.HasPrefix(api, "cu") && !strings.HasPrefix(api, "cuda") {
		cat = "cuda_driver"
	}
	return kev{Ph: "X", Cat: cat, Name: api, Pid: 100, Tid: 100, Ts: ts, Dur: dur(d),
		Args: map[string]any{"correlation": corr, "External id": corr + 1000, "cbid": 211}}
}

// gpu is a GPU event on a stream.
func gpu(cat, name string, stream int, ts, d float64, corr int) kev {
	args := map[string]any{"stream": stream, "device": 0, "context": 1, "queued": 0}
	if corr >= 0 {
		args["correlation"] = corr
	}
	return kev{Ph: "X", Cat: cat, Name: name, Pid: 0, Tid: stream, Ts: ts, Dur: dur(d), Args: args}
}

func step(n int, ts, d float64) kev {
	return kev{Ph: "X", Cat: "user_annotation", Name: "ProfilerStep#" + itoa(n), Pid: 100, Tid: 100, Ts: ts, Dur: dur(d),
		Args: map[string]any{"External id": n}}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// writeKineto writes a trace in torch.profiler's layout: header,
// distributedInfo, traceEvents, trailing metadata.
func writeKineto(t testing.TB, path string, rank int, events []kev) {
	t.Helper()
	evs, err := json.MarshalIndent(events, "  ", "  ")
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	b.WriteString(`{"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "NVIDIA H100 80GB HBM3"}],`)
	if rank >= 0 {
		b.WriteString(`"distributedInfo": {"backend": "nccl", "rank": ` + itoa(rank) + `, "world_size": 3},`)
	}
	b.WriteString("\n\"traceEvents\": ")
	b.Write(evs)
	b.WriteString(`, "traceName": "x", "displayTimeUnit": "ms", "baseTimeNanoseconds": 1700000000000000000}`)
	data := b.Bytes()
	if strings.HasSuffix(path, ".gz") {
		var z bytes.Buffer
		w := gzip.NewWriter(&z)
		w.Write(data)
		w.Close()
		data = z.Bytes()
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// rank0Events is a trace whose every number is computed by hand in
// TestKinetoRank0 (times in microseconds). Events are deliberately out of
// time order, and one kernel comes before its launch call.
func rank0Events() []kev {
	const gemm, relu, tiny = "void gemm_a<float>(Params)", "void relu_kernel()", "void tiny()"
	return []kev{
		{Ph: "M", Name: "process_name", Pid: 0, Args: map[string]any{"name": "python"}},
		step(1, 0, 1000),
		step(2, 1000, 1000), // the last step: what it launches is left out
		{Ph: "X", Cat: "cpu_op", Name: "aten::mm", Pid: 100, Tid: 100, Ts: 9, Dur: dur(10), Args: map[string]any{"External id": 5, "Input Dims": [][]int{{64, 64}, {64, 64}}, "flops": 2 * 64 * 64 * 64}},
		// with_flops=True writes a float now and then; a user annotation's flops do not count.
		{Ph: "X", Cat: "cpu_op", Name: "aten::addmm", Pid: 100, Tid: 100, Ts: 1005, Dur: dur(3), Args: map[string]any{"flops": json.Number("1.5e6")}},
		{Ph: "X", Cat: "user_annotation", Name: "fwd", Pid: 100, Tid: 100, Ts: 1004, Dur: dur(9), Args: map[string]any{"flops": 7}},
		launch("cudaLaunchKernel", 10, 5, 1),
		launch("cudaLaunchKernel", 12, 5, 2),
		launch("cudaLaunchKernel", 14, 3, 7),
		launch("cudaLaunchKernelExC", 150, 4, 3),
		launch("cudaGraphLaunch", 180, 20, 5),
		launch("cuLaunchKernelEx", 190, 6, 8),
		launch("cudaMemcpyAsync", 360, 10, 6),
		launch("cudaStreamSynchronize", 415, 30, 10),
		launch("cudaLaunchKernel", 1100, 5, 9),
		{Ph: "s", Cat: "ac2g", Name: "ac2g", Pid: 100, Tid: 100, Ts: 10, Args: map[string]any{"id": 1}},
		// GPU side, out of order.
		gpu("kernel", tiny, 7, 352, 4, 5),
		gpu("kernel", gemm, 7, 300, 40, 4), // before its launch call, below
		gpu("kernel", gemm, 7, 19.6, 30.2, 1),
		gpu("kernel", "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)", 20, 250, 70, 8),
		gpu("kernel", gemm, 7, 60, 40, 2),
		gpu("kernel", "ncclKernel_AllReduce_RING_LL_Sum_float(ncclWorkElem)", 20, 30, 60, 7),
		gpu("kernel", relu, 7, 160, 40, 3),
		gpu("kernel", tiny, 7, 345, 5, 5),
		gpu("gpu_memcpy", "Memcpy HtoD (Pageable -> Device)", 7, 400, 20, 6),
		gpu("cuda_sync", "Stream Sync", 7, 420, 20, 10),
		gpu("kernel", gemm, 7, 1110, 90, 9), // launched in the last step
		gpu("kernel", relu, 7, 500, 10, 99), // no launch call in the trace
		launch("cuLaunchKernel", 170, 5, 4),
	}
}

func us(v float64) time.Duration { return time.Duration(v * float64(time.Microsecond)) }

func TestKinetoRank0(t *testing.T) {
	dir := t.TempDir()
	writeKineto(t, filepath.Join(dir, "host_1234.1700000000000.pt.trace.json"), 0, rank0Events())
	in, err := KinetoFolderInput(dir)
	if err != nil {
		t.Fatal(err)
	}
	ranks, err := KinetoSummaries(context.Background(), in, DefaultKinetoOptions())
	if err != nil || len(ranks) != 1 {
		t.Fatalf("summaries: %v, %d ranks", err, len(ranks))
	}
	r := ranks[0]
	if r.Rank != 0 || r.WorldSize != 3 || r.Steps != 2 || r.DroppedLastStep != 2 || r.GPUEvents != 10 {
		t.Errorf("rank %d world %d steps %d dropped %d gpu events %d", r.Rank, r.WorldSize, r.Steps, r.DroppedLastStep, r.GPUEvents)
	}
	if want := (524288 + 1.5e6) / 2; r.FLOPs != 524288+1.5e6 || r.FLOPsPerStep() != want {
		t.Errorf("flops %v, %v per step; want the two operators' over 2 steps, %v", r.FLOPs, r.FLOPsPerStep(), want)
	}
	fs := run(t, KinetoTemporal, in)
	if len(fs) != 1 || evidence(fs[0])[FLOPsPerStepMetric] != (524288+1.5e6)/2 {
		t.Errorf("temporal breakdown findings %+v: want flops_per_step in the evidence", fs)
	}
	wantT := RankBreakdown{Rank: 0, Span: us(420), Idle: us(161), Compute: us(158), NonCompute: us(101),
		Communication: us(61), Memory: us(20), Other: us(20)}
	if r.Temporal != wantT {
		t.Errorf("temporal\n got %+v\nwant %+v", r.Temporal, wantT)
	}
	if got := r.Temporal.Pct(r.Temporal.Idle); got != 38.33 {
		t.Errorf("idle pctg %v, want 38.33", got)
	}
	wantS := []StreamIdle{
		{Stream: 7, Kernels: 7, HostWait: us(104), KernelWait: us(18), Other: us(100), Gaps: [3]int64{2, 3, 1}},
		{Stream: 20, Kernels: 2, HostWait: us(160), Gaps: [3]int64{1, 0, 0}},
	}
	if len(r.Streams) != 2 || r.Streams[0] != wantS[0] || r.Streams[1] != wantS[1] {
		t.Errorf("streams\n got %+v\nwant %+v", r.Streams, wantS)
	}
	if r.Overlap.Communication != us(130) || r.Overlap.Overlapped != us(69) || RoundPct(r.Overlap.Ratio()) != 53.08 {
		t.Errorf("overlap %+v ratio %v", r.Overlap, r.Overlap.Ratio())
	}
	// By default the launches HTA counts: cudaLaunchKernel, ExC and the
	// memory call.
	if l := r.Launch; l.Launches != 5 || len(l.ByAPI) != 3 || l.ByAPI["cudaLaunchKernel"] != 3 || l.ByAPI["cudaLaunchKernelExC"] != 1 || l.ByAPI["cudaMemcpyAsync"] != 1 {
		t.Errorf("HTA's launch set: %+v", l)
	}
	ext := DefaultKinetoOptions()
	ext.ExtendedLaunchAPIs = true
	extended, err := KinetoSummaries(context.Background(), in, ext)
	if err != nil {
		t.Fatal(err)
	}
	l := extended[0].Launch
	wantAPI := map[string]int64{"cudaLaunchKernel": 3, "cudaLaunchKernelExC": 1, "cuLaunchKernel": 1,
		"cuLaunchKernelEx": 1, "cudaGraphLaunch": 2, "cudaMemcpyAsync": 1}
	if l.Launches != 9 || l.ShortKernels != 2 || l.DelayOutliers != 3 || l.RuntimeOutliers != 0 ||
		l.MaxDelay != us(152) || l.TotalDelay != us(573) || l.OutlierDelay != us(422) ||
		l.ShortCPUTime != us(40) || l.ShortGPUTime != us(9) {
		t.Errorf("launch stats %+v", l)
	}
	for api, n := range wantAPI {
		if l.ByAPI[api] != n {
			t.Errorf("launches by %s = %d, want %d", api, l.ByAPI[api], n)
		}
	}
	top := TopKernels(r.Kernels, ClassComputation, 10, 0.8)
	if len(top) != 3 || top[0].Name != "void gemm_a<float>(Params)" || top[0].Count != 3 || top[0].Total != us(109) ||
		top[0].Min != us(29) || top[0].Max != us(40) || math.Abs(top[0].Std-6350.853) > 0.01 ||
		top[1].Total != us(40) || top[2].Name != "void tiny()" || top[2].Count != 2 {
		t.Errorf("top compute kernels %+v", top)
	}
	comm := TopKernels(r.Kernels, ClassCommunication, 10, 0.8)
	if len(comm) != 2 || !strings.HasPrefix(comm[0].Name, "ncclDevKernel_") || !strings.HasPrefix(comm[1].Name, "ncclKernel_") {
		t.Errorf("communication kernels %+v", comm)
	}

	// With the last step kept, both left-out kernels count.
	opts := DefaultKinetoOptions()
	opts.IncludeLastStep = true
	all, err := KinetoSummaries(context.Background(), in, opts)
	if err != nil || all[0].GPUEvents != 12 || all[0].DroppedLastStep != 0 || all[0].Temporal.Span != us(1200-20) {
		t.Errorf("include last step: %v %+v", err, all[0].Temporal)
	}
	// Without HTA's rounding, the first kernel keeps its 0.4 us and 0.8 us.
	opts = DefaultKinetoOptions()
	opts.HTARounding = false
	exact, err := KinetoSummaries(context.Background(), in, opts)
	if err != nil || exact[0].Temporal.Span != us(440-19.6) {
		t.Errorf("exact times: %v span %v", err, exact[0].Temporal.Span)
	}
}

// TestKinetoSpill forces the external sort with a chunk of a few events and
// checks that the results do not change.
func TestKinetoSpill(t *testing.T) {
	dir := t.TempDir()
	writeKineto(t, filepath.Join(dir, "rank0.json.gz"), 0, rank0Events())
	in, err := KinetoFolderInput(dir)
	if err != nil {
		t.Fatal(err)
	}
	want, err := KinetoSummaries(context.Background(), in, DefaultKinetoOptions())
	if err != nil {
		t.Fatal(err)
	}
	opts := DefaultKinetoOptions()
	opts.SortChunk = 1 // clamped to the minimum chunk; use many events instead
	opts.PendingLimit = 1
	got, err := KinetoSummaries(context.Background(), in, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Temporal != want[0].Temporal {
		t.Errorf("temporal with tiny limits %+v, want %+v", got[0].Temporal, want[0].Temporal)
	}

	// Many events, spilled in runs of 1024.
	big := filepath.Join(t.TempDir(), "rank1.json")
	writeKineto(t, big, 1, manyKernels(5000))
	in, err = KinetoFolderInput(filepath.Dir(big))
	if err != nil {
		t.Fatal(err)
	}
	mem, err := KinetoSummaries(context.Background(), in, DefaultKinetoOptions())
	if err != nil {
		t.Fatal(err)
	}
	opts = DefaultKinetoOptions()
	opts.SortChunk = 1024
	opts.TempDir = t.TempDir()
	disk, err := KinetoSummaries(context.Background(), in, opts)
	if err != nil {
		t.Fatal(err)
	}
	if disk[0].Temporal != mem[0].Temporal || disk[0].Launch.Launches != mem[0].Launch.Launches ||
		disk[0].Streams[0] != mem[0].Streams[0] || mem[0].GPUEvents != 10000 {
		t.Errorf("spilled %+v\n in memory %+v", disk[0].Temporal, mem[0].Temporal)
	}
	if left, _ := os.ReadDir(opts.TempDir); len(left) != 0 {
		t.Errorf("spill files left behind: %v", left)
	}
}

// manyKernels is n kernels on each of two streams, in reverse time order.
func manyKernels(n int) []kev {
	var evs []kev
	for i := n - 1; i >= 0; i-- {
		ts := float64(i) * 10
		evs = append(evs, launch("cudaLaunchKernel", ts, 2, 2*i), gpu("kernel", "void k()", 7, ts+3, 5, 2*i),
			launch("cudaLaunchKernel", ts+1, 2, 2*i+1), gpu("kernel", "ncclKernel_x", 9, ts+4, 4, 2*i+1))
	}
	return evs
}

// pathologicalEvents: 20 short kernels, each launched after the previous
// ended (host wait), then an NCCL collective with nothing to overlap it.
func pathologicalEvents() []kev {
	var evs []kev
	for i := range 20 {
		ts := float64(i) * 100
		evs = append(evs, launch("cudaLaunchKernel", ts, 20, i), gpu("kernel", "void tiny()", 7, ts+25, 5, i))
	}
	evs = append(evs, launch("cudaLaunchKernel", 2000, 10, 50),
		gpu("kernel", "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)", 20, 2100, 500, 50))
	return evs
}

// healthyEvents: 50 back-to-back kernels launched just in time, and a
// collective fully hidden under them.
func healthyEvents() []kev {
	var evs []kev
	for i := range 50 {
		ts := 1000 + float64(i)*101
		evs = append(evs, launch("cudaLaunchKernel", ts-20, 5, i), gpu("kernel", "void big_gemm()", 7, ts, 100, i))
	}
	evs = append(evs, launch("cudaLaunchKernel", 1500, 5, 100),
		gpu("kernel", "ncclKernel_AllReduce_RING_LL_Sum_float(ncclWorkElem)", 20, 2000, 500, 100))
	return evs
}

func TestKinetoAnalyzers(t *testing.T) {
	dir := t.TempDir()
	writeKineto(t, filepath.Join(dir, "rank0.json"), 0, rank0Events())
	writeKineto(t, filepath.Join(dir, "healthy.json.gz"), 1, healthyEvents())
	writeKineto(t, filepath.Join(dir, "worker_rank2.json"), -1, pathologicalEvents()) // rank from the name
	in, err := KinetoFolderInput(dir)
	if err != nil {
		t.Fatal(err)
	}
	list := []*Analyzer{KinetoTemporal, KinetoKernels, KinetoIdle, KinetoLaunch, KinetoOverlap}
	fs, err := Run(context.Background(), in, list)
	if err != nil {
		t.Fatal(err)
	}
	type key struct {
		analyzer string
		rank     int
	}
	got := map[key]traces.Finding{}
	for _, f := range fs {
		k := key{f.Analyzer, f.Scope.Rank}
		if _, dup := got[k]; dup {
			t.Errorf("two findings for %v", k)
		}
		got[k] = f
		if len(f.Lineage.Inputs) != 3 {
			t.Errorf("%s: lineage %v, want the 3 trace files", f.Analyzer, f.Lineage.Inputs)
		}
	}
	ev := func(f traces.Finding, name string) float64 {
		for _, m := range f.Evidence {
			if m.Name == name {
				return m.Value
			}
		}
		t.Errorf("%s rank %d: no evidence %q in %v", f.Analyzer, f.Scope.Rank, name, f.Evidence)
		return math.NaN()
	}
	for _, tc := range []struct {
		analyzer string
		rank     int
		severity string // "" for no finding
		evidence map[string]float64
	}{
		{"kineto-temporal-breakdown", 0, traces.SeverityInfo, map[string]float64{"kernel_time": 420, "idle_time": 161,
			"compute_time": 158, "non_compute_time": 101, "communication_time": 61, "idle_time_pctg": 38.33, "compute_time_pctg": 37.62}},
		// 49 gaps of 1 us, 5 of them under the hidden collective.
		{"kineto-temporal-breakdown", 1, traces.SeverityInfo, map[string]float64{"kernel_time": 5049, "idle_time": 44}},
		{"kineto-temporal-breakdown", 2, traces.SeverityInfo, map[string]float64{"kernel_time": 2575, "idle_time": 1975}},
		{"kineto-kernel-breakdown", 0, traces.SeverityInfo, map[string]float64{"computation: void gemm_a<float>(Params)": 109,
			"communication: ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)": 70, "memory_kernel_time": 20}},
		{"kineto-idle-time", 0, traces.SeverityCritical, map[string]float64{"idle_time": 161, "stream 7 host_wait": 104,
			"stream 7 kernel_wait": 18, "stream 7 other": 100, "stream 20 host_wait": 160}},
		{"kineto-idle-time", 1, "", nil},
		{"kineto-idle-time", 2, traces.SeverityCritical, map[string]float64{"idle_time": 1975, "streams host_wait": 19 * 95}},
		{"kineto-launch-overhead", 0, "", nil}, // 9 launches: too few to judge
		{"kineto-launch-overhead", 1, "", nil},
		{"kineto-launch-overhead", 2, traces.SeverityCritical, map[string]float64{"launches": 21, "short_kernels": 20,
			"launches cudaLaunchKernel": 21, "launch_delay_outliers": 0}},
		{"kineto-comm-overlap", 0, "", nil}, // 53% overlap
		{"kineto-comm-overlap", 1, "", nil},
		{"kineto-comm-overlap", 2, traces.SeverityCritical, map[string]float64{"comp_comm_overlap_pctg": 0,
			"communication_time": 500, "exposed_communication_time": 500, "communication_kernels": 1}},
	} {
		f, ok := got[key{tc.analyzer, tc.rank}]
		if tc.severity == "" {
			if ok {
				t.Errorf("%s rank %d: unexpected finding %q", tc.analyzer, tc.rank, f.Title)
			}
			continue
		}
		if !ok {
			t.Errorf("%s rank %d: no finding", tc.analyzer, tc.rank)
			continue
		}
		if f.Severity != tc.severity {
			t.Errorf("%s rank %d: severity %s, want %s (%s)", tc.analyzer, tc.rank, f.Severity, tc.severity, f.Title)
		}
		for name, want := range tc.evidence {
			if v := ev(f, name); math.Abs(v-want) > 1e-6 {
				t.Errorf("%s rank %d: %s = %v, want %v", tc.analyzer, tc.rank, name, v, want)
			}
		}
		if f.Scope.Host != "local" || f.Recommendation == "" {
			t.Errorf("%s rank %d: scope %+v, recommendation %q", tc.analyzer, tc.rank, f.Scope, f.Recommendation)
		}
	}
	if f := got[key{"kineto-launch-overhead", 2}]; f.Impact.GPUSeconds <= 0 || f.Impact.WindowShare <= 0 {
		t.Errorf("launch impact %+v", f.Impact)
	}
	if f := got[key{"kineto-comm-overlap", 2}]; math.Abs(f.Impact.GPUSeconds-500e-6) > 1e-12 || math.Abs(f.Impact.WindowShare-500.0/2575) > 1e-9 {
		t.Errorf("overlap impact %+v", f.Impact)
	}
}

func TestKinetoBadInput(t *testing.T) {
	dir := t.TempDir()
	if _, err := KinetoFolderInput(dir); err == nil || !strings.Contains(err.Error(), "no trace files") {
		t.Errorf("empty folder: %v", err)
	}
	if _, err := KinetoFolderInput(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing folder: no error")
	}
	writeKineto(t, filepath.Join(dir, "rank0.json"), 0, rank0Events())
	os.WriteFile(filepath.Join(dir, "rank1.json"), []byte(`{"traceEvents": [{"ph": "X", "ts": 1`), 0o644)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not a trace"), 0o644)
	in, err := KinetoFolderInput(dir)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(in.Hosts[0].Manifest.Parts); n != 2 {
		t.Errorf("%d parts, want the 2 .json files", n)
	}
	ranks, err := KinetoSummaries(context.Background(), in, DefaultKinetoOptions())
	if len(ranks) != 1 || err == nil || !strings.Contains(err.Error(), "rank1.json") || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("got %d ranks, error %v", len(ranks), err)
	}
	fs, err := Run(context.Background(), in, []*Analyzer{KinetoTemporal})
	if err != nil {
		t.Fatal(err)
	}
	var warned bool
	for _, f := range fs {
		if f.Severity == traces.SeverityWarning && strings.Contains(f.Recommendation, "rank1.json") {
			warned = true
		}
	}
	if !warned {
		t.Errorf("no warning names the unreadable trace: %+v", fs)
	}
}

func TestClassifyKernel(t *testing.T) {
	for name, want := range map[string]KernelClass{
		"ncclKernel_AllReduce_RING_LL_Sum_float(ncclWorkElem)":                      ClassCommunication,
		"ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)": ClassCommunication,
		"void at::native::ncclKernel_wrapper()":                                     ClassCommunication,
		"Memcpy DtoH (Device -> Pinned)":                                            ClassMemory,
		"Memset (Device)":                                                           ClassMemory,
		"Stream Sync":                                                               ClassOther,
		"Stream Wait Event":                                                         ClassOther,
		"cudaLaunchKernel":                                                          ClassOther,
		"void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm>(Params)":              ClassComputation,
		"sm90_xmma_gemm_f16f16_f16f32":                                              ClassComputation,
	} {
		if got := ClassifyKernel(name); got != want {
			t.Errorf("ClassifyKernel(%q) = %v, want %v", name, got, want)
		}
	}
	for cat, want := range map[string]bool{"kernel": true, "gpu_memcpy": true, "gpu_memset": true,
		"cuda_sync": false, "gpu_user_annotation": false, "cuda_runtime": false} {
		if got := isGPUCategory([]byte(cat)); got != want {
			t.Errorf("isGPUCategory(%q) = %v", cat, got)
		}
	}
	for name, want := range map[string]LaunchAPI{
		"cudaLaunchKernel": APICudaLaunchKernel, "cudaLaunchKernelExC_v11060": APICudaLaunchKernelExC,
		"cuLaunchKernel": APICuLaunchKernel, "cuLaunchKernelEx": APICuLaunchKernelEx,
		"cudaGraphLaunch_v10000": APICudaGraphLaunch, "cudaMemcpyAsync": APICudaMemcpyAsync,
		"cudaStreamSynchronize": APINone, "cudaLaunchKernel_ptsz": APICudaLaunchKernel,
	} {
		if got := launchAPI([]byte(name)); got != want {
			t.Errorf("launchAPI(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestKinetoKernelMix(t *testing.T) {
	dir := t.TempDir()
	const simt, tc = "volta_sgemm_128x64_nn", "sm80_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x32"
	var evs []kev
	for i := range 10 {
		ts := float64(i) * 100
		name := simt
		if i >= 7 {
			name = tc
		}
		evs = append(evs, launch("cudaLaunchKernel", ts, 5, i), gpu("kernel", name, 7, ts+10, 50, i))
	}
	evs = append(evs, launch("cudaLaunchKernel", 2000, 5, 20), gpu("kernel", "void elementwise()", 7, 2010, 100, 20))
	writeKineto(t, filepath.Join(dir, "rank4.json"), 4, evs)
	in, err := KinetoFolderInput(dir)
	if err != nil {
		t.Fatal(err)
	}
	mix, err := kinetoKernelMix(&Pass{Context: context.Background(), Input: in})
	if err != nil || len(mix) != 1 {
		t.Fatalf("%v %v", mix, err)
	}
	m := mix[0]
	if m.Rank != 4 || math.Abs(m.Total-600e-6) > 1e-12 || math.Abs(m.Matmul-500e-6) > 1e-12 || math.Abs(m.MatmulTensorCore-150e-6) > 1e-12 {
		t.Errorf("kernel mix %+v", m)
	}

	// The whole registry runs on a plain folder, and TensorUnderuse uses the mix.
	rep := Execute(context.Background(), in, All)
	for _, r := range rep.Runs {
		if r.Status == StatusFailed {
			t.Errorf("%s failed on a Kineto folder: %s", r.Name, r.Reason)
		}
	}
	var tensor bool
	for _, f := range rep.Findings {
		tensor = tensor || f.Analyzer == TensorUnderuse.Name && f.Scope.Rank == 4
	}
	if !tensor {
		t.Errorf("no tensor-underuse finding for a rank with 70%% of its GEMM time in SIMT kernels")
	}
}

// FuzzKinetoAnalyze feeds arbitrary traces to the whole Kineto pass: it must
// never panic, and what it measures must add up.
func FuzzKinetoAnalyze(f *testing.F) {
	for _, evs := range [][]kev{rank0Events(), pathologicalEvents(), healthyEvents()[:20], manyKernels(3)} {
		var b bytes.Buffer
		data, _ := json.Marshal(map[string]any{"traceEvents": evs, "distributedInfo": map[string]any{"rank": 1}})
		b.Write(data)
		f.Add(b.Bytes())
	}
	f.Add([]byte(`{"traceEvents":[{"cat":"kernel","name":"k","ts":5,"dur":-3,"args":{"stream":1,"correlation":1}},{"cat":"cuda_runtime","name":"cudaGraphLaunch","ts":9,"dur":1,"args":{"correlation":1}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		opts := DefaultKinetoOptions()
		opts.Limits.MaxBytes = 1 << 20
		opts.SortChunk, opts.PendingLimit = 1024, 16
		r, err := analyzeKineto(context.Background(), bytes.NewReader(data), opts)
		if err != nil {
			return
		}
		b := r.Temporal
		if b.Idle < 0 || b.Compute < 0 || b.Communication < 0 || b.Memory < 0 || b.Other < 0 ||
			b.Idle+b.Compute+b.NonCompute != b.Span || b.Communication+b.Memory+b.Other != b.NonCompute {
			t.Fatalf("temporal breakdown does not add up: %+v", b)
		}
		if r.Overlap.Overlapped > r.Overlap.Communication || r.Overlap.Communication > b.Span {
			t.Fatalf("overlap %+v over span %v", r.Overlap, b.Span)
		}
		l := r.Launch
		if l.ShortKernels > l.Launches || l.DelayOutliers > l.Launches || l.MaxDelay < 0 {
			t.Fatalf("launch stats %+v", l)
		}
		var kernels int64
		for _, k := range r.Kernels {
			kernels += k.Count
		}
		if kernels != r.GPUEvents {
			t.Fatalf("%d kernels in the breakdown, %d GPU events", kernels, r.GPUEvents)
		}
	})
}

// TestKinetoMatchesHTA checks Loupe against numbers HolisticTraceAnalysis
// (facebookresearch/HolisticTraceAnalysis at f4d0062, pandas 1.5.3) printed
// for these exact files, one folder per rank: get_temporal_breakdown,
// get_comm_comp_overlap, get_idle_time_breakdown, get_cuda_kernel_launch_stats
// and get_gpu_kernel_breakdown. HTA's launch statistics ignore
// cuLaunchKernel, cuLaunchKernelEx and cudaGraphLaunch, which Loupe counts
// unless told HTALaunchAPIsOnly, as here.
func TestKinetoMatchesHTA(t *testing.T) {
	type hta struct {
		idle, compute, nonCompute, span float64 // us
		overlapPctg                     float64
		stream7                         [3]float64 // host wait, kernel wait, other
		launches, short, delayOutliers  int64
		maxDelay                        float64
	}
	for _, tc := range []struct {
		rank   int
		events []kev
		want   hta
	}{
		{0, rank0Events(), hta{161, 158, 101, 420, 53.08, [3]float64{104, 18, 100}, 5, 0, 0, 43}},
		{1, healthyEvents(), hta{44, 5000, 5, 5049, 99.0, [3]float64{0, 49, 0}, 51, 0, 1, 495}},
		{2, pathologicalEvents(), hta{1975, 100, 500, 2575, 0, [3]float64{1805, 0, 0}, 21, 20, 0, 90}},
	} {
		dir := t.TempDir()
		writeKineto(t, filepath.Join(dir, "trace.json"), tc.rank, tc.events)
		in, err := KinetoFolderInput(dir)
		if err != nil {
			t.Fatal(err)
		}
		opts := DefaultKinetoOptions()
		opts.ExtendedLaunchAPIs = false
		rs, err := KinetoSummaries(context.Background(), in, opts)
		if err != nil {
			t.Fatal(err)
		}
		r := rs[0]
		b := r.Temporal
		got := hta{micros(b.Idle), micros(b.Compute), micros(b.NonCompute), micros(b.Span), RoundPct(r.Overlap.Ratio()),
			[3]float64{micros(r.Streams[0].HostWait), micros(r.Streams[0].KernelWait), micros(r.Streams[0].Other)},
			r.Launch.Launches, r.Launch.ShortKernels, r.Launch.DelayOutliers, micros(r.Launch.MaxDelay)}
		if got != tc.want {
			t.Errorf("rank %d:\n got %+v\nHTA %+v", tc.rank, got, tc.want)
		}
	}
}

// TestKinetoReadOnce checks that the five Kineto analyzers of a run share
// one reading of each trace, and that a cancelled reading is not kept.
func TestKinetoReadOnce(t *testing.T) {
	dir := t.TempDir()
	writeKineto(t, filepath.Join(dir, "rank0.json"), 0, rank0Events())
	writeKineto(t, filepath.Join(dir, "rank1.json.gz"), 1, healthyEvents())
	in, err := KinetoFolderInput(dir)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	opens := map[string]int{}
	var cancelOnOpen context.CancelFunc
	open := in.Hosts[0].Open
	in.Hosts[0].Open = func(ctx context.Context, name string) (io.ReadCloser, error) {
		mu.Lock()
		opens[name]++
		if cancelOnOpen != nil {
			cancelOnOpen() // the run is cancelled while it reads
		}
		mu.Unlock()
		return open(ctx, name)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancelOnOpen = cancel
	if _, err := Run(ctx, in, []*Analyzer{KinetoTemporal, KinetoIdle}); err == nil {
		t.Error("cancelled run: no error")
	}
	mu.Lock()
	cancelOnOpen, opens = nil, map[string]int{}
	mu.Unlock()
	fs, err := Run(context.Background(), in, []*Analyzer{KinetoTemporal, KinetoKernels, KinetoIdle, KinetoLaunch, KinetoOverlap})
	if err != nil || len(fs) < 4 {
		t.Fatalf("after a cancelled run: %d findings, %v", len(fs), err)
	}
	for name, n := range opens {
		if n != 1 {
			t.Errorf("%s opened %d times, want once", name, n)
		}
	}
	if len(opens) != 2 {
		t.Errorf("opened %v, want both traces", opens)
	}
}

// TestKinetoBoundedTables feeds a trace built to grow the name table and a
// correlation's waiting list without end: both stay bounded, and every
// event is still counted.
func TestKinetoBoundedTables(t *testing.T) {
	var b bytes.Buffer
	b.WriteString(`{"traceEvents":[`)
	n := kinetoMaxNames + 100
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		// Every kernel a new name, all on one correlation id no host call has.
		fmt.Fprintf(&b, `{"ph":"X","cat":"kernel","name":"k%d","ts":%d,"dur":1,"args":{"stream":7,"correlation":42}}`, i, 2*i)
	}
	b.WriteString(`]}`)
	r, err := analyzeKineto(context.Background(), &b, DefaultKinetoOptions())
	if err != nil {
		t.Fatal(err)
	}
	if r.GPUEvents != int64(n) || len(r.Kernels) != kinetoMaxNames+1 {
		t.Fatalf("%d GPU events, %d names; want %d, %d", r.GPUEvents, len(r.Kernels), n, kinetoMaxNames+1)
	}
	var pooled *KernelStat
	for i := range r.Kernels {
		if r.Kernels[i].Name == otherNames {
			pooled = &r.Kernels[i]
		}
	}
	if pooled == nil || pooled.Count != 100 {
		t.Errorf("pooled names %+v, want 100 events", pooled)
	}
	if r.Temporal.Span != us(float64(2*n-1)) || r.Temporal.Idle != us(float64(n-1)) {
		t.Errorf("temporal %+v", r.Temporal)
	}
}

// analyze on a folder holding a JSON file that is not a Kineto trace
// refuses it by name instead of reporting 0 % of everything.
func TestKinetoFolderRefusesForeignJSON(t *testing.T) {
	for name, body := range map[string]string{
		"config.json":   `{"lr": 0.001, "layers": [1, 2, 3]}`,
		"perfetto.json": `{"traceEvents": [{"ph": "X", "cat": "app", "name": "work", "ts": 1, "dur": 2, "pid": 1, "tid": 1}]}`,
	} {
		dir := t.TempDir()
		writeKineto(t, filepath.Join(dir, "rank0.json"), 0, rank0Events())
		os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644)
		_, err := KinetoFolderInput(dir)
		if err == nil || !strings.Contains(err.Error(), name+" is not a Kineto trace") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// Nanosecond-resolution traces: HTA reads ts and dur as doubles, and at
// 1.7e15 us doubles are 0.25 us apart, so "…456.001" is …456.0 to it: the
// kernel starts at 456 (ceil) and ends at floor(456.0 + 10.0) = 466, 10 us;
// exact decimal rounding would start it at 457 and give 9 us. The second
// kernel, "…500.700" for 3.3 us, is …500.75 as a double: 501 .. floor(504.05)
// = 504, 3 us (exactly 501 .. 504 too). Span 456 .. 504 = 48 us, busy 13,
// idle 35.
func TestKinetoRoundsAsHTA(t *testing.T) {
	trace := `{"schemaVersion": 1, "traceEvents": [
{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": 1712191898123450.000, "dur": 4.000, "args": {"correlation": 1}},
{"ph": "X", "cat": "kernel", "name": "k1", "pid": 0, "tid": 7, "ts": 1712191898123456.001, "dur": 10.000, "args": {"correlation": 1, "stream": 7}},
{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": 1712191898123470.000, "dur": 4.000, "args": {"correlation": 2}},
{"ph": "X", "cat": "kernel", "name": "k2", "pid": 0, "tid": 7, "ts": 1712191898123500.700, "dur": 3.300, "args": {"correlation": 2, "stream": 7}}
]}`
	r, err := analyzeKineto(context.Background(), strings.NewReader(trace), DefaultKinetoOptions())
	if err != nil {
		t.Fatal(err)
	}
	if b := r.Temporal; b.Span != us(48) || b.Compute != us(13) || b.Idle != us(35) {
		t.Errorf("HTA rounding: %+v", b)
	}
	opts := DefaultKinetoOptions()
	opts.HTARounding = false
	r, err = analyzeKineto(context.Background(), strings.NewReader(trace), opts)
	if err != nil {
		t.Fatal(err)
	}
	if b := r.Temporal; b.Span != 47999*time.Nanosecond || b.Compute != 13300*time.Nanosecond {
		t.Errorf("exact nanoseconds: %+v", b)
	}
}
