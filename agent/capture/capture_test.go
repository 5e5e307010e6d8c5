package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/loupe-dev/loupe/agent/steps"
	"github.com/loupe-dev/loupe/traces"
)

// fakeGPU yields one sample per device every 10ms of any window asked for,
// and counts how often the capture rate was raised.
type fakeGPU struct {
	mu         sync.Mutex
	begun, end int
	notes      []string // what BeginCapture says about the window
}

func (g *fakeGPU) Devices() []traces.GPUInfo {
	return []traces.GPUInfo{{Index: 0, UUID: "GPU-a", Name: "sim"}, {Index: 1, UUID: "GPU-b", Name: "sim"}}
}
func (g *fakeGPU) Simulated() bool                 { return true }
func (g *fakeGPU) Versions() (driver, cuda string) { return "550.54.15", "12.4" }
func (g *fakeGPU) BeginCapture() (func(), []string) {
	g.mu.Lock()
	g.begun++
	g.mu.Unlock()
	return func() { g.mu.Lock(); g.end++; g.mu.Unlock() }, g.notes
}
func (g *fakeGPU) Samples(from, to time.Time) []traces.GPUSample {
	var out []traces.GPUSample
	for t := from; !t.After(to); t = t.Add(10 * time.Millisecond) {
		for i := range 2 {
			out = append(out, traces.GPUSample{TimeNs: t.UnixNano(), GPU: int32(i), GPUUtil: 90})
		}
	}
	return out
}
func (g *fakeGPU) Events(from, to time.Time) []traces.Event {
	return []traces.Event{{TimeNs: from.UnixNano(), Kind: traces.EventXID, GPU: 1, Code: 79, Rank: -1}}
}

type fakeCPU struct{ pids []int }

type fakeWindow struct{ pids []int }

func (c *fakeCPU) StartWindow(pids []int) CPUWindow { c.pids = pids; return fakeWindow{pids} }
func (w fakeWindow) Stop() (*profile.Profile, error) {
	fn := &profile.Function{ID: 1, Name: "train_step"}
	loc := &profile.Location{ID: 1, Line: []profile.Line{{Function: fn}}}
	return &profile.Profile{
		SampleType: []*profile.ValueType{{Type: "cpu", Unit: "nanoseconds"}},
		Sample:     []*profile.Sample{{Location: []*profile.Location{loc}, Value: []int64{1e7}}},
		Location:   []*profile.Location{loc}, Function: []*profile.Function{fn},
	}, nil
}

type fakeNCCL struct{}

func (fakeNCCL) Events(from, to time.Time) []traces.NCCLEvent {
	return []traces.NCCLEvent{
		{TimeNs: from.UnixNano(), PID: 10, Op: "AllReduce", Peer: -1},
		{TimeNs: from.UnixNano(), PID: 99, Op: "AllReduce", Peer: -1}, // not a captured process
	}
}

// dirSpool is a minimal spool: one folder per capture, committed by rename.
type dirSpool struct {
	root      string
	committed []string
}

func (s *dirSpool) Begin(id, host string) (string, error) {
	if err := os.MkdirAll(filepath.Join(s.root, "tmp"), 0o755); err != nil {
		return "", err
	}
	return os.MkdirTemp(filepath.Join(s.root, "tmp"), id+"_"+host+"_")
}
func (s *dirSpool) Commit(dir string) error {
	dst := filepath.Join(s.root, "ready", filepath.Base(dir))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	s.committed = append(s.committed, dst)
	return os.Rename(dir, dst)
}
func (s *dirSpool) Abort(dir string) error { return os.RemoveAll(dir) }

type countNotify struct{ n atomic.Int32 }

func (c *countNotify) Notify() { c.n.Add(1) }

type harness struct {
	c      *Capturer
	spool  *dirSpool
	notify *countNotify
	steps  *steps.Tracker
	gpu    *fakeGPU
	cpu    *fakeCPU
	cancel context.CancelFunc
	done   chan error
}

func newHarness(t *testing.T, src Sources, cfg Config) *harness {
	t.Helper()
	h := &harness{spool: &dirSpool{root: t.TempDir()}, notify: &countNotify{}}
	if src.Steps == nil {
		h.steps = steps.New(steps.Config{})
		src.Steps = h.steps
	}
	h.steps = src.Steps
	if g, ok := src.GPU.(*fakeGPU); ok {
		h.gpu = g
	}
	if c, ok := src.CPU.(*fakeCPU); ok {
		h.cpu = c
	}
	cfg.Cluster, cfg.Host, cfg.AgentVersion = "c1", "host-a", "test"
	h.c = New(cfg, src, h.spool, h.notify, slog.New(slog.NewTextHandler(io.Discard, nil)))
	select {
	case <-h.c.Started():
		t.Fatal("Started is closed before Run")
	default:
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- h.c.Run(ctx) }()
	t.Cleanup(h.stop)
	// Submit fails until Run has started.
	<-h.c.Started()
	return h
}

func (h *harness) stop() {
	if h.cancel != nil {
		h.cancel()
		<-h.done
		h.cancel = nil
	}
}

func (h *harness) waitState(t *testing.T, id string) Status {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if s, ok := h.c.Status(id); ok && (s.State == StateCommitted || s.State == StateFailed) {
			return s
		}
		time.Sleep(2 * time.Millisecond)
	}
	s, _ := h.c.Status(id)
	t.Fatalf("capture %s did not finish: %+v", id, s)
	return Status{}
}

func readBundle(t *testing.T, dir string) *traces.Manifest {
	t.Helper()
	m, err := traces.ReadDir(dir, traces.DefaultMaxPartSize)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func readTable[T any](t *testing.T, dir, name string) []T {
	t.Helper()
	rows, err := traces.ReadTableFile[T](filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

var procs = []traces.Process{
	{PID: 10, Rank: 0, LocalRank: 0, GPU: 0, Comm: "python"},
	{PID: 11, Rank: 1, LocalRank: 1, GPU: 1, Comm: "python"},
}

func TestTimedCapture(t *testing.T) {
	h := newHarness(t, Sources{GPU: &fakeGPU{}, CPU: &fakeCPU{}, NCCL: fakeNCCL{}}, Config{})
	if err := h.steps.Mark(steps.Marker{Job: "train", Rank: 0, PID: 10, Iteration: 0}); err != nil {
		t.Fatal(err)
	}
	st, err := h.c.Submit(Request{Job: "train", Run: "r1", Processes: procs, WorldSize: 4, Duration: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(st.ID, "od-") || st.Key != "v1/c1/train/r1/"+st.ID+"/host-a/" || st.Trigger.Kind != traces.TriggerOnDemand {
		t.Fatalf("accepted status %+v", st)
	}
	// Mark iteration 1 mid-window, so one step falls inside it.
	time.Sleep(20 * time.Millisecond)
	if err := h.steps.Mark(steps.Marker{Job: "train", Rank: 0, PID: 10, Iteration: 1}); err != nil {
		t.Fatal(err)
	}
	st = h.waitState(t, st.ID)
	if st.State != StateCommitted || h.notify.n.Load() != 1 || len(h.spool.committed) != 1 {
		t.Fatalf("status %+v, notified %d, committed %v", st, h.notify.n.Load(), h.spool.committed)
	}
	dir := h.spool.committed[0]
	m := readBundle(t, dir)
	if m.Job != "train" || m.Run != "r1" || m.Host != "host-a" || m.Cluster != "c1" || m.WorldSize != 4 || !m.Simulated || m.AgentVersion != "test" ||
		m.DriverVersion != "550.54.15" || m.CUDAVersion != "12.4" {
		t.Errorf("manifest %+v", m)
	}
	if !slices.Equal(m.Ranks, []int{0, 1}) || len(m.Processes) != 2 || len(m.GPUs) != 2 || !slices.Equal(m.GPUs[1].Ranks, []int{1}) {
		t.Errorf("ranks %v processes %v gpus %+v", m.Ranks, m.Processes, m.GPUs)
	}
	if d := m.End.Sub(m.Start); d < 50*time.Millisecond || d > 5*time.Second {
		t.Errorf("window %v, want about 50ms", d)
	}
	for _, p := range []string{traces.PartGPUSamples, traces.PartNCCLEvents, traces.PartSteps, traces.PartCPUProfile, traces.PartEvents} {
		if _, ok := m.Part(p); !ok {
			t.Errorf("bundle lacks %s: %+v", p, m.Parts)
		}
	}
	if g := readTable[traces.GPUSample](t, dir, traces.PartGPUSamples); len(g) < 10 {
		t.Errorf("%d GPU samples, want at least 10", len(g))
	}
	if n := readTable[traces.NCCLEvent](t, dir, traces.PartNCCLEvents); len(n) != 1 || n[0].PID != 10 {
		t.Errorf("nccl events %+v, want only pid 10's", n)
	}
	if s := readTable[traces.Step](t, dir, traces.PartSteps); len(s) != 1 || s[0].Iteration != 0 || s[0].PID != 10 {
		t.Errorf("steps %+v", s)
	}
	if !slices.Equal(h.cpu.pids, []int{10, 11}) || h.gpu.begun != 1 || h.gpu.end != 1 {
		t.Errorf("cpu window pids %v, gpu begin/end %d/%d", h.cpu.pids, h.gpu.begun, h.gpu.end)
	}
}

func TestIterationCapture(t *testing.T) {
	h := newHarness(t, Sources{GPU: &fakeGPU{}}, Config{})
	st, err := h.c.Submit(Request{ID: "iter10-n5", Job: "train", Run: "r1", Processes: procs[:1], StartIteration: 10, Iterations: 5,
		Trigger: traces.Trigger{Kind: traces.TriggerStableIteration, Reason: "settled"}})
	if err != nil {
		t.Fatal(err)
	}
	if st.State != StateWaiting {
		t.Fatalf("state %s, want waiting", st.State)
	}
	at := time.Now()
	for i := range 20 {
		if err := h.steps.Mark(steps.Marker{Job: "train", Rank: 0, PID: 10, Iteration: int64(i), Time: at}); err != nil {
			t.Fatal(err)
		}
		at = at.Add(5 * time.Millisecond)
		time.Sleep(5 * time.Millisecond)
	}
	st = h.waitState(t, "iter10-n5")
	if st.State != StateCommitted {
		t.Fatalf("%+v", st)
	}
	m := readBundle(t, h.spool.committed[0])
	if m.Trigger.Kind != traces.TriggerStableIteration || m.Trigger.StartIteration != 10 || m.Trigger.Iterations != 5 || m.Trigger.Reason != "settled" {
		t.Errorf("trigger %+v", m.Trigger)
	}
	// The step history reaches back to the run's first step, before the window.
	hist := readTable[traces.StepSpan](t, h.spool.committed[0], traces.PartStepHistory)
	if len(hist) < 15 || hist[0].FirstIteration != 0 || hist[0].PID != 10 || hist[0].Steps != 1 || hist[0].MinNs != int64(5*time.Millisecond) {
		t.Errorf("step history %+v, want every step from iteration 0", hist)
	}
	var iters []int64
	for _, s := range readTable[traces.Step](t, h.spool.committed[0], traces.PartSteps) {
		iters = append(iters, s.Iteration)
	}
	// The window runs from iteration 10 beginning to iteration 15 beginning;
	// steps overlapping it at its edges may be included.
	for _, want := range []int64{10, 11, 12, 13, 14} {
		if !slices.Contains(iters, want) {
			t.Errorf("steps %v lack iteration %d", iters, want)
		}
	}
	if slices.Contains(iters, 5) || slices.Contains(iters, 17) {
		t.Errorf("steps %v reach far outside the window", iters)
	}
}

// What the GPU collector says about a window (a DCGM that refused the
// capture rate) reaches the manifest.
func TestGPUNotesReachTheManifest(t *testing.T) {
	gpu := &fakeGPU{notes: []string{"dcgm: DCGM refused a 10ms update interval"}}
	h := newHarness(t, Sources{GPU: gpu}, Config{})
	st, err := h.c.Submit(Request{Job: "j", Run: "r", Duration: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	h.waitState(t, st.ID)
	if m := readBundle(t, h.spool.committed[0]); !slices.Contains(m.Notes, gpu.notes[0]) {
		t.Errorf("notes %q, want the GPU collector's %q", m.Notes, gpu.notes[0])
	}
}

func TestMissingCollectorsAreNoted(t *testing.T) {
	h := newHarness(t, Sources{Missing: []string{"cpu profile: eBPF not permitted: needs CAP_BPF, CAP_PERFMON"}}, Config{})
	st, err := h.c.Submit(Request{Job: "j", Run: "r", Duration: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	h.waitState(t, st.ID)
	m := readBundle(t, h.spool.committed[0])
	if !slices.Contains(m.Notes, "cpu profile: eBPF not permitted: needs CAP_BPF, CAP_PERFMON") {
		t.Errorf("notes %q", m.Notes)
	}
	if _, ok := m.Part(traces.PartGPUSamples); ok {
		t.Error("GPU samples written without a GPU source")
	}
	if len(m.GPUs) != 0 || m.Simulated {
		t.Errorf("manifest %+v", m)
	}
}

func TestShutdownKeepsOpenWindow(t *testing.T) {
	h := newHarness(t, Sources{GPU: &fakeGPU{}}, Config{})
	st, err := h.c.Submit(Request{Job: "j", Run: "r", Duration: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for s, _ := h.c.Status(st.ID); s.Start.IsZero(); s, _ = h.c.Status(st.ID) {
		time.Sleep(time.Millisecond)
	}
	h.stop() // Run returns only after the bundle is written
	st, _ = h.c.Status(st.ID)
	if st.State != StateCommitted || len(h.spool.committed) != 1 {
		t.Fatalf("after shutdown: %+v", st)
	}
	m := readBundle(t, h.spool.committed[0])
	if len(m.Notes) != 1 || !strings.Contains(m.Notes[0], "cut short by agent shutdown") {
		t.Errorf("notes %q", m.Notes)
	}
}

type addon struct {
	openErr error
}

func (a addon) Name() string { return "kineto" }
func (a addon) Open(ctx context.Context, w Window) (func(context.Context, *traces.BundleWriter) error, error) {
	if a.openErr != nil {
		return nil, a.openErr
	}
	return func(ctx context.Context, b *traces.BundleWriter) error {
		return b.WritePart(traces.KinetoDir+"rank0.json.gz", traces.MediaKineto, strings.NewReader(w.Job))
	}, nil
}

func TestAddons(t *testing.T) {
	h := newHarness(t, Sources{Addons: []Addon{addon{}, addon{openErr: errors.New("no process registered")}}}, Config{})
	st, err := h.c.Submit(Request{Job: "j", Run: "r", Duration: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	st = h.waitState(t, st.ID)
	m := readBundle(t, h.spool.committed[0])
	if _, ok := m.Part("kineto/rank0.json.gz"); !ok || !slices.Contains(m.Notes, "kineto: no process registered") {
		t.Errorf("parts %+v notes %q", m.Parts, m.Notes)
	}
	if !slices.Contains(st.Parts, "kineto/rank0.json.gz") {
		t.Errorf("status parts %v", st.Parts)
	}
}

func TestSubmitRejects(t *testing.T) {
	h := newHarness(t, Sources{}, Config{MaxConcurrent: 1, MaxDuration: time.Minute})
	for _, tc := range []struct {
		req  Request
		want string
	}{
		{Request{Job: "j", Run: "r"}, "give a duration or iterations"},
		{Request{Job: "j", Run: "r", Duration: time.Second, Iterations: 3}, "not both"},
		{Request{Job: "j", Run: "r", Duration: time.Hour}, "longer than the 1m0s allowed"},
		{Request{Job: "bad/job", Run: "r", Duration: time.Second}, "job:"},
		{Request{Job: "j", Run: "", Duration: time.Second}, "run:"},
		{Request{ID: "..", Job: "j", Run: "r", Duration: time.Second}, "id:"},
		{Request{ID: "continuous-20260301T120000Z-60s", Job: "j", Run: "r", Duration: time.Second}, "continuous profiles"},
		{Request{Job: "j", Run: "r", Duration: -time.Second}, "negative"},
	} {
		if _, err := h.c.Submit(tc.req); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Submit(%+v) = %v, want ErrInvalid mentioning %q", tc.req, err, tc.want)
		}
	}
	if _, err := h.c.Submit(Request{ID: "x1", Job: "j", Run: "r", Duration: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.c.Submit(Request{ID: "x1", Job: "j", Run: "r", Duration: time.Second}); !errors.Is(err, ErrDuplicate) {
		t.Errorf("duplicate id: %v", err)
	}
	if _, err := h.c.Submit(Request{ID: "x2", Job: "j", Run: "r", Duration: time.Second}); !errors.Is(err, ErrBusy) {
		t.Errorf("over MaxConcurrent: %v", err)
	}
	if got := h.c.List(); len(got) != 1 || got[0].ID != "x1" {
		t.Errorf("list %+v", got)
	}
	h.stop()
	if _, err := h.c.Submit(Request{ID: "x3", Job: "j", Run: "r", Duration: time.Second}); !errors.Is(err, ErrStopped) {
		t.Errorf("after stop: %v", err)
	}
}

func TestIterationCaptureNeverStarting(t *testing.T) {
	h := newHarness(t, Sources{}, Config{StartTimeout: 20 * time.Millisecond})
	st, err := h.c.Submit(Request{Job: "j", Run: "r", StartIteration: 100, Iterations: 5})
	if err != nil {
		t.Fatal(err)
	}
	st = h.waitState(t, st.ID)
	if st.State != StateFailed || !strings.Contains(st.Error, "iteration 100") || len(h.spool.committed) != 0 {
		t.Fatalf("%+v", st)
	}
}

// Iterations found late (NCCL periodicity reports in batches) put the
// window where the iterations were, not where the report came.
func TestIterationWindowFromLateSteps(t *testing.T) {
	h := newHarness(t, Sources{GPU: &fakeGPU{}}, Config{})
	st, err := h.c.Submit(Request{Job: "j", Run: "r", StartIteration: 10, Iterations: 5})
	if err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-30 * time.Second)
	var batch []traces.Step
	for i := range 30 {
		s := past.Add(time.Duration(i) * 100 * time.Millisecond)
		batch = append(batch, traces.Step{Rank: 0, PID: 10, Iteration: int64(i), StartNs: s.UnixNano(), EndNs: s.Add(100 * time.Millisecond).UnixNano(), Source: traces.StepSourceNCCL})
	}
	if err := h.steps.AddSteps("j", "r", batch); err != nil {
		t.Fatal(err)
	}
	h.waitState(t, st.ID)
	m := readBundle(t, h.spool.committed[0])
	wantStart, wantEnd := past.Add(time.Second), past.Add(1500*time.Millisecond)
	if !m.Start.Equal(wantStart.UTC()) || !m.End.Equal(wantEnd.UTC()) {
		t.Errorf("window %v..%v, want %v..%v", m.Start, m.End, wantStart.UTC(), wantEnd.UTC())
	}
	if !slices.ContainsFunc(m.Notes, func(n string) bool { return strings.Contains(n, "iteration 10 was reported 29s after it began") }) {
		t.Errorf("notes %q", m.Notes)
	}
	got := readTable[traces.Step](t, h.spool.committed[0], traces.PartSteps)
	if len(got) < 5 || got[0].Iteration > 10 || got[len(got)-1].Iteration < 14 {
		t.Errorf("steps %+v", got)
	}
}

// BenchmarkWriteBundle writes the bundle of a 20 s window: two GPUs at
// 100 Hz (4000 rows), steps and a CPU profile, into the spool.
func BenchmarkWriteBundle(b *testing.B) {
	sp := &dirSpool{root: b.TempDir()}
	tr := steps.New(steps.Config{})
	start := time.Now().Add(-20 * time.Second)
	for i := range 200 {
		if err := tr.Mark(steps.Marker{Job: "j", PID: 10, Iteration: int64(i), Time: start.Add(time.Duration(i) * 100 * time.Millisecond)}); err != nil {
			b.Fatal(err)
		}
	}
	c := New(Config{Cluster: "c", Host: "h"}, Sources{GPU: &fakeGPU{}, Steps: tr}, sp, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	prof, _ := fakeWindow{}.Stop()
	end := start.Add(20 * time.Second)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := c.write(context.Background(), Request{ID: fmt.Sprintf("b%d", i), Job: "j", Run: "r", Processes: procs}, start, end, prof, nil, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(4000*float64(b.N)/b.Elapsed().Seconds(), "gpu_rows/s")
}

// lateNCCL is a tracer whose two ranks' communicator was created before it
// attached: their collectives carry no id until the capture matches them.
type lateNCCL struct{}

func (lateNCCL) Events(from, to time.Time) []traces.NCCLEvent {
	var out []traces.NCCLEvent
	for k := range 12 {
		for r, pid := range []int32{10, 11} {
			op := []string{"AllReduce", "AllGather"}[k%2]
			out = append(out, traces.NCCLEvent{TimeNs: from.UnixNano() + int64(k)*int64(time.Millisecond), PID: pid, Rank: -1, NRanks: -1,
				Op: op, Seq: int64(k + 3*r), Count: 64, Datatype: "float32", GlobalRank: int32(r), CommHandle: 0x10, Source: traces.SourceUprobe,
				GPUStartNs: from.UnixNano() + int64(k+1)*int64(time.Millisecond)})
		}
	}
	return out
}

// A hang capture: a window that starts in the past (lookback), a report of
// the requester's own written with the window's CPU profile, and the job's
// NCCL calls matched across ranks with a note saying how.
func TestLookbackCaptureWithReport(t *testing.T) {
	h := newHarness(t, Sources{GPU: &fakeGPU{}, CPU: &fakeCPU{}, NCCL: lateNCCL{}}, Config{})
	var gotProf *profile.Profile
	req := Request{ID: "hang-1", Job: "train", Run: "r1", Processes: procs, Duration: 20 * time.Millisecond, Lookback: 2 * time.Second,
		Trigger: traces.Trigger{Kind: traces.TriggerNCCLHang, Reason: "rank 1 never arrived"},
		Report: func(bw *traces.BundleWriter, prof *profile.Profile) error {
			gotProf = prof
			return bw.WritePart(traces.PartNCCLHang, traces.MediaJSON, strings.NewReader(`{"state":"hung"}`))
		}}
	before := time.Now()
	if _, err := h.c.Submit(req); err != nil {
		t.Fatal(err)
	}
	if st := h.waitState(t, "hang-1"); st.State != StateCommitted {
		t.Fatalf("status %+v", st)
	}
	dir := h.spool.committed[0]
	m := readBundle(t, dir)
	if m.Start.After(before.Add(-2*time.Second+time.Millisecond)) || m.Trigger.Kind != traces.TriggerNCCLHang {
		t.Errorf("window starts %v (request at %v), trigger %+v: want 2 s of history", m.Start, before, m.Trigger)
	}
	if _, ok := m.Part(traces.PartNCCLHang); !ok || gotProf == nil || len(gotProf.Sample) != 1 {
		t.Errorf("report part %v, profile %v", m.Parts, gotProf)
	}
	notes := strings.Join(m.Notes, "\n")
	if !strings.Contains(notes, "2 of them were matched across ranks into 1 communicator") ||
		!strings.Contains(notes, "24 of 24 collectives carry GPU-side kernel times") || strings.Contains(notes, "world size unknown") {
		t.Errorf("notes %q", notes)
	}
	rows := readTable[traces.NCCLEvent](t, dir, traces.PartNCCLEvents)
	for _, e := range rows {
		if e.Matched != traces.MatchPattern || e.CommID == 0 {
			t.Fatalf("row not matched: %+v", e)
		}
	}
	for _, bad := range []Request{
		{Job: "train", Run: "r1", Duration: time.Second, Lookback: -time.Second},
		{Job: "train", Run: "r1", Iterations: 3, Lookback: time.Second},
		{Job: "train", Run: "r1", Duration: time.Second, Lookback: time.Hour},
	} {
		if _, err := h.c.Submit(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("Submit(%+v) = %v, want ErrInvalid", bad, err)
		}
	}
}

// A shared host: job "train" runs on GPU 1, job "etl" on no GPU. Each
// bundle carries only its job's GPUs: train's has GPU 1 (its samples and
// its XID), etl's none at all, and says so.
func TestSharedHostGPUOwnership(t *testing.T) {
	h := newHarness(t, Sources{GPU: &fakeGPU{}}, Config{})
	gpuJob := []traces.Process{{PID: 11, Rank: 0, LocalRank: 0, GPU: 1, Comm: "python"}}
	cpuJob := []traces.Process{{PID: 20, Rank: 0, LocalRank: 0, GPU: -1, Comm: "etl"}}
	var dirs []string
	for _, r := range []Request{
		{ID: "cap-train", Job: "train", Run: "r1", Processes: gpuJob, WorldSize: 1, Duration: 30 * time.Millisecond},
		{ID: "cap-etl", Job: "etl", Run: "r1", Processes: cpuJob, WorldSize: 1, Duration: 30 * time.Millisecond},
	} {
		if _, err := h.c.Submit(r); err != nil {
			t.Fatal(err)
		}
		if st := h.waitState(t, r.ID); st.State != StateCommitted {
			t.Fatalf("%s: %+v", r.ID, st)
		}
		dirs = append(dirs, h.spool.committed[len(h.spool.committed)-1])
	}
	train, etl := readBundle(t, dirs[0]), readBundle(t, dirs[1])
	if len(train.GPUs) != 1 || train.GPUs[0].Index != 1 || !slices.Equal(train.GPUs[0].Ranks, []int{0}) || !train.OwnsGPU(1) || train.OwnsGPU(0) {
		t.Errorf("train GPUs %+v", train.GPUs)
	}
	for _, s := range readTable[traces.GPUSample](t, dirs[0], traces.PartGPUSamples) {
		if s.GPU != 1 {
			t.Fatalf("train's bundle holds a sample of GPU %d", s.GPU)
		}
	}
	if len(etl.GPUs) != 0 || etl.OwnsGPU(0) || etl.OwnsGPU(1) {
		t.Errorf("etl GPUs %+v, want none", etl.GPUs)
	}
	if _, ok := etl.Part(traces.PartGPUSamples); ok {
		t.Error("etl's bundle has GPU samples")
	}
	if !slices.ContainsFunc(etl.Notes, func(n string) bool { return strings.Contains(n, "no process of job etl uses a GPU") }) {
		t.Errorf("etl notes %q", etl.Notes)
	}
	var xids int
	for _, dir := range dirs {
		f, err := os.Open(filepath.Join(dir, traces.PartEvents))
		if err != nil {
			continue
		}
		traces.ReadEvents(f, func(e traces.Event) error {
			if e.Kind == traces.EventXID {
				xids++
				if dir != dirs[0] {
					t.Errorf("GPU 1's XID in %s", dir)
				}
			}
			return nil
		})
		f.Close()
	}
	if xids != 1 {
		t.Errorf("%d XIDs, want GPU 1's in train's bundle only", xids)
	}
}
