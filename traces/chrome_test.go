package traces_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/loupe-dev/loupe/traces"
)

type chromeFile struct {
	OtherData   map[string]any `json:"otherData"`
	TraceEvents []struct {
		Name string         `json:"name"`
		Ph   string         `json:"ph"`
		TS   float64        `json:"ts"`
		Dur  float64        `json:"dur"`
		PID  int            `json:"pid"`
		TID  int            `json:"tid"`
		Args map[string]any `json:"args"`
	} `json:"traceEvents"`
}

func TestExportChrome(t *testing.T) {
	m := testManifest()
	m.Simulated = true
	gpu, nccl, steps, events := testTables()
	var buf bytes.Buffer
	if err := traces.ExportChrome(&buf, traces.Timeline{Manifest: &m, Steps: steps, NCCL: nccl, GPU: gpu, Events: events}); err != nil {
		t.Fatal(err)
	}
	validateChrome(t, buf.Bytes())
	var cf chromeFile
	if err := json.Unmarshal(buf.Bytes(), &cf); err != nil {
		t.Fatalf("export is not valid JSON: %v", err)
	}
	if cf.OtherData["capture_id"] != "cap-1" {
		t.Errorf("otherData = %v", cf.OtherData)
	}
	counts := map[string]int{}
	procNames := map[int]string{}
	type track struct{ pid, tid int }
	slices := map[track][][2]float64{}
	for _, e := range cf.TraceEvents {
		counts[e.Ph]++
		if e.Ph == "M" && e.Name == "process_name" {
			procNames[e.PID] = e.Args["name"].(string)
		}
		if e.Ph == "X" {
			if e.TS < 0 {
				t.Errorf("slice %s starts before the origin: %v", e.Name, e.TS)
			}
			slices[track{e.PID, e.TID}] = append(slices[track{e.PID, e.TID}], [2]float64{e.TS, e.TS + e.Dur})
		}
	}
	if counts["X"] != len(steps)+len(nccl) {
		t.Errorf("%d slices, want %d steps + %d nccl calls", counts["X"], len(steps), len(nccl))
	}
	if counts["C"] != 4*len(gpu) {
		t.Errorf("%d counter events, want 4 per GPU sample (%d)", counts["C"], 4*len(gpu))
	}
	if counts["i"] != 1 {
		t.Errorf("%d instant events, want 1 (the XID)", counts["i"])
	}
	var names []string
	for _, n := range procNames {
		names = append(names, n)
	}
	sort.Strings(names)
	want := []string{"gpu-node-3 GPU 0 (simulated)", "gpu-node-3 GPU 1 (simulated)", "gpu-node-3 rank 8", "gpu-node-3 rank 9"}
	if len(names) != len(want) {
		t.Fatalf("process names = %v, want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Errorf("process names = %v, want %v", names, want)
		}
	}
	// Perfetto requires slices on one track to nest; ours must not overlap.
	for tr, ss := range slices {
		sort.Slice(ss, func(i, j int) bool { return ss[i][0] < ss[j][0] })
		for i := 1; i < len(ss); i++ {
			if ss[i][0] < ss[i-1][1] {
				t.Errorf("track %v: slices %v and %v overlap", tr, ss[i-1], ss[i])
			}
		}
	}
}

// traceEvent is one event of a Chrome trace as the Trace Event Format
// defines it, with the fields the validator checks.
type traceEvent struct {
	Name string         `json:"name"`
	Cat  string         `json:"cat"`
	Ph   string         `json:"ph"`
	TS   *float64       `json:"ts"`
	Dur  *float64       `json:"dur"`
	PID  *int           `json:"pid"`
	TID  *int           `json:"tid"`
	ID   *int           `json:"id"`
	BP   string         `json:"bp"`
	S    string         `json:"s"`
	Args map[string]any `json:"args"`
}

// validateChrome checks data against the Trace Event Format as Perfetto
// reads it: known phases, no negative time, durations, metadata with
// names, slices that nest per track, and flows whose every step lies in a
// slice of its track, one start first and one end last. It returns the
// events.
func validateChrome(t *testing.T, data []byte) []traceEvent {
	t.Helper()
	var f struct {
		TraceEvents []traceEvent `json:"traceEvents"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	type track struct{ pid, tid int }
	slices := map[track][][2]float64{}
	flows := map[int][]traceEvent{}
	for i, e := range f.TraceEvents {
		if e.Name == "" || e.PID == nil {
			t.Fatalf("event %d has no name or pid: %+v", i, e)
		}
		if e.Ph != "M" && (e.TS == nil || *e.TS < 0) {
			t.Fatalf("event %d (%s %s) has a missing or negative ts", i, e.Ph, e.Name)
		}
		switch e.Ph {
		case "X":
			if e.Dur == nil || *e.Dur < 0 || e.TID == nil {
				t.Fatalf("slice %d (%s) needs dur >= 0 and a tid", i, e.Name)
			}
			tr := track{*e.PID, *e.TID}
			slices[tr] = append(slices[tr], [2]float64{*e.TS, *e.TS + *e.Dur})
		case "M":
			if _, ok := e.Args["name"]; !ok && e.Name != "process_sort_index" {
				t.Fatalf("metadata %d (%s) has no args.name", i, e.Name)
			}
		case "C":
			if len(e.Args) == 0 {
				t.Fatalf("counter %d (%s) has no values", i, e.Name)
			}
		case "i":
			if e.S != "g" && e.S != "p" && e.S != "t" {
				t.Fatalf("instant %d has scope %q", i, e.S)
			}
		case "s", "t", "f":
			if e.ID == nil || e.Cat == "" || e.TID == nil {
				t.Fatalf("flow event %d needs id, cat and tid: %+v", i, e)
			}
			flows[*e.ID] = append(flows[*e.ID], e)
		default:
			t.Fatalf("event %d has phase %q", i, e.Ph)
		}
	}
	for tr, ss := range slices {
		sort.Slice(ss, func(i, j int) bool { return ss[i][0] < ss[j][0] || ss[i][0] == ss[j][0] && ss[i][1] > ss[j][1] })
		var open [][2]float64
		for _, s := range ss {
			for len(open) > 0 && open[len(open)-1][1] <= s[0] {
				open = open[:len(open)-1]
			}
			if len(open) > 0 && s[1] > open[len(open)-1][1] {
				t.Fatalf("track %v: slices %v and %v overlap without nesting", tr, open[len(open)-1], s)
			}
			open = append(open, s)
		}
	}
	inSlice := func(e traceEvent) bool {
		for _, s := range slices[track{*e.PID, *e.TID}] {
			if *e.TS >= s[0] && *e.TS <= s[1] {
				return true
			}
		}
		return false
	}
	for id, evs := range flows {
		if len(evs) < 2 || evs[0].Ph != "s" || evs[len(evs)-1].Ph != "f" {
			t.Fatalf("flow %d: phases %v, want s, t..., f", id, evs)
		}
		for i, e := range evs {
			if i > 0 && (*e.TS < *evs[i-1].TS || e.Ph == "s") || i < len(evs)-1 && e.Ph == "f" {
				t.Fatalf("flow %d: steps out of order: %+v", id, evs)
			}
			if e.Cat != evs[0].Cat || !inSlice(e) {
				t.Fatalf("flow %d: step %+v is not in a slice of its track (or changes cat)", id, e)
			}
		}
	}
	return f.TraceEvents
}

// Two hosts, one rank each: every all-reduce is one flow from rank 0 to
// rank 1 (which arrives 3 ms later); rank 0's Kineto kernels and CPU
// samples lie on the same timeline; a fault logged before the capture
// start still has a non-negative time.
func TestExportChromeFlowsKernelsCPU(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	var tls []traces.Timeline
	for r := range int32(2) {
		m := testManifest()
		m.Host, m.Ranks, m.Start = fmt.Sprintf("h%d", r), []int{int(r)}, t0
		m.Processes = []traces.Process{{PID: 100 + int(r), Rank: int(r), GPU: 0}}
		tl := traces.Timeline{Manifest: &m}
		for seq := range int64(3) {
			at := t0.Add(time.Duration(seq)*100*time.Millisecond + time.Duration(r)*3*time.Millisecond).UnixNano()
			tl.NCCL = append(tl.NCCL,
				traces.NCCLEvent{TimeNs: at, DurationNs: 5000, PID: int32(100 + r), TID: 7, Rank: r, NRanks: 2, CommID: 0xabc, Op: "AllReduce", Seq: seq, Peer: -1},
				traces.NCCLEvent{TimeNs: at + 10_000, DurationNs: 1000, PID: int32(100 + r), TID: 7, Rank: r, NRanks: 2, CommID: 0xabc, Op: "Send", Seq: seq, Peer: 1 - r})
		}
		tls = append(tls, tl)
	}
	tls[0].Events = []traces.Event{{TimeNs: t0.Add(-2 * time.Second).UnixNano(), Kind: traces.EventXID, GPU: 0, Rank: -1, Code: 13}}
	k := t0.Add(50 * time.Millisecond).UnixNano()
	tls[0].Kernels = []traces.Span{
		{Rank: 0, Track: "stream 7", Name: "sm90_gemm", Cat: "kernel", StartNs: k, DurNs: 2_000_000},
		{Rank: 0, Track: "stream 7", Name: "ncclDevKernel_AllReduce", Cat: "kernel", StartNs: k + 1_999_000, DurNs: 1_000_000}, // 1 us early
		{Rank: 0, Track: "stream 13", Name: "Memcpy HtoD", Cat: "gpu_memcpy", StartNs: k, DurNs: 500_000},
	}
	fn := &profile.Function{ID: 1, Name: "decode_jpeg"}
	fn2 := &profile.Function{ID: 2, Name: "train_step"}
	loc, loc2 := &profile.Location{ID: 1, Line: []profile.Line{{Function: fn}}}, &profile.Location{ID: 2, Line: []profile.Line{{Function: fn2}}}
	sample := func(l *profile.Location, n int64, at time.Duration) *profile.Sample {
		return &profile.Sample{Location: []*profile.Location{l}, Value: []int64{n, n * 1e6},
			Label:    map[string][]string{"pid": {"100"}},
			NumLabel: map[string][]int64{traces.ProfileTimeLabel: {t0.Add(at).UnixNano()}}}
	}
	tls[0].CPU = &profile.Profile{TimeNanos: t0.UnixNano(), Sample: []*profile.Sample{
		sample(loc, 12, time.Second), sample(loc2, 3, time.Second), sample(loc2, 9, 2*time.Second),
	}}

	var buf bytes.Buffer
	if err := traces.ExportChrome(&buf, tls...); err != nil {
		t.Fatal(err)
	}
	evs := validateChrome(t, buf.Bytes())
	var flowEnds, kernels, cpu int
	threads := map[string]bool{}
	for _, e := range evs {
		switch {
		case e.Ph == "f":
			flowEnds++
			if e.Args["last_rank"] != float64(1) || math.Abs(e.Args["lag_us"].(float64)-3000) > 0.01 {
				t.Errorf("flow end %+v, want rank 1, 3000 us after rank 0", e)
			}
		case e.Ph == "X" && (e.Cat == "kernel" || e.Cat == "gpu_memcpy"):
			kernels++
		case e.Ph == "X" && e.Cat == "cpu":
			cpu++
			if e.Name == "decode_jpeg" && (e.Args["samples"] != float64(15) || *e.Dur != 1e6) {
				t.Errorf("first CPU interval %+v, want 15 samples over 1 s", e)
			}
		case e.Ph == "M" && e.Name == "thread_name":
			threads[e.Args["name"].(string)] = true
		}
	}
	if flowEnds != 3 {
		t.Errorf("%d flows, want one per all-reduce (3); sends are not collectives", flowEnds)
	}
	if kernels != 3 || cpu != 2 {
		t.Errorf("%d kernel slices (want 3), %d CPU intervals (want 2)", kernels, cpu)
	}
	for _, name := range []string{"kineto stream 7", "kineto stream 13", "cpu samples", "nccl (tid 7)"} {
		if !threads[name] {
			t.Errorf("no thread named %q in %v", name, threads)
		}
	}
}

// BenchmarkExportChrome exports one host's 20 s capture: 8 GPUs sampled at
// 100 Hz, 8 ranks of 100 steps and 2000 NCCL calls each (half all-reduces,
// linked by flows), 5000 Kineto kernels per rank. It reports the JSON's
// size and what gzip (BestSpeed, as the API sends it) makes of it.
func BenchmarkExportChrome(b *testing.B) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	m := testManifest()
	m.Start, m.End = t0, t0.Add(20*time.Second)
	tl := traces.Timeline{Manifest: &m}
	for i := range 2000 {
		for g := range int32(8) {
			tl.GPU = append(tl.GPU, traces.GPUSample{TimeNs: t0.Add(time.Duration(i) * 10 * time.Millisecond).UnixNano(), GPU: g,
				GPUUtil: 97, PowerW: 612.5, SMClockMHz: 1980, ProfValid: true, SMActive: 0.61, TensorActive: 0.32, DRAMActive: 0.4})
		}
	}
	for r := range int32(8) {
		for i := range int64(100) {
			at := t0.Add(time.Duration(i) * 200 * time.Millisecond).UnixNano()
			tl.Steps = append(tl.Steps, traces.Step{Rank: r, PID: 100 + r, Iteration: 500 + i, StartNs: at, EndNs: at + 199e6, Source: traces.StepSourceMarker})
			for k := range int64(20) {
				op := "AllReduce"
				if k%2 == 1 {
					op = "Send"
				}
				tl.NCCL = append(tl.NCCL, traces.NCCLEvent{TimeNs: at + k*9e6 + int64(r)*1e4, DurationNs: 40_000, PID: 100 + r, TID: 7, Rank: r, NRanks: 8,
					CommID: 0xabc, Op: op, Seq: i*20 + k, Count: 1 << 20, Datatype: "bfloat16", Bytes: 2 << 20, Peer: -1})
			}
			for k := range int64(50) {
				tl.Kernels = append(tl.Kernels, traces.Span{Rank: r, Track: "stream 7", Name: "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64",
					Cat: "kernel", StartNs: at + k*3_900_000, DurNs: 3_500_000})
			}
		}
	}
	var plain, zipped int
	b.ReportAllocs()
	for b.Loop() {
		var buf bytes.Buffer
		if err := traces.ExportChrome(&buf, tl); err != nil {
			b.Fatal(err)
		}
		plain = buf.Len()
		var z bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&z, gzip.BestSpeed)
		zw.Write(buf.Bytes())
		zw.Close()
		zipped = z.Len()
	}
	b.ReportMetric(float64(plain)/1e6, "MB-json")
	b.ReportMetric(float64(zipped)/1e6, "MB-gzip")
}
