package goodput_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/aggregator/api"
	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/aggregator/goodput"
	"github.com/loupe-dev/loupe/aggregator/internal/aggtest"
	"github.com/loupe-dev/loupe/aggregator/lease"
	"github.com/loupe-dev/loupe/aggregator/runner"
	"github.com/loupe-dev/loupe/analyzers"
	gp "github.com/loupe-dev/loupe/analyzers/goodput"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

var t0 = time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)

const (
	imageA = "nvcr.io/nvidia/pytorch:24.05-py3"
	imageB = "nvcr.io/nvidia/pytorch:24.09-py3"
	price  = 2.5
)

// fleet is a store with three jobs, analyzed by every analyzer: llm's run
// r1 (4 ranks, rank 3 makes the others wait 3 % of each window, two
// captures), its run r2 a day later on a new image with 15 % slower steps,
// vit (2 ranks, no straggler), and old, whose agent wrote no step history.
type fleet struct {
	st    store.Store
	ix    *findings.Index
	run   *runner.Runner
	ids   map[string][]capture.ID
	plans map[string]aggtest.RunPlan
}

func newFleet(t *testing.T) *fleet {
	t.Helper()
	st, err := store.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{st: st, ix: findings.NewIndex(runner.Versions(analyzers.All)), ids: map[string][]capture.ID{}, plans: map[string]aggtest.RunPlan{}}
	f.run = runner.New(runner.Config{Store: st, Analyzers: analyzers.All, Index: f.ix,
		Leases: &lease.Manager{Store: st, Owner: "test", TTL: time.Minute}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	// 100 collectives in a 20 s window of 4 GPUs (80 GPU-s): 8 ms late,
	// rank 3 makes 3 ranks wait 2.4 GPU-s, 3 %.
	llm := aggtest.RunPlan{Cluster: "c1", Job: "llm", Run: "r1", Hosts: [][]int{{0, 1}, {2, 3}}, Start: t0, Startup: 2 * time.Minute,
		Step: time.Second, Steps: 3000, Image: imageA, Straggler: 3, Late: 8 * time.Millisecond, Captures: []time.Duration{10 * time.Minute, 50 * time.Minute}}
	f.plans["llm/r1"] = llm
	llm2 := llm
	llm2.Run, llm2.Start, llm2.Step, llm2.Image, llm2.Captures = "r2", t0.Add(24*time.Hour), 1150*time.Millisecond, imageB, []time.Duration{55 * time.Minute}
	f.plans["llm/r2"] = llm2
	f.plans["vit/r1"] = aggtest.RunPlan{Cluster: "c1", Job: "vit", Run: "r1", Hosts: [][]int{{0, 1}}, Start: t0, Startup: 30 * time.Second,
		Step: 500 * time.Millisecond, Steps: 2000, Image: imageA, Straggler: -1, Captures: []time.Duration{10 * time.Minute}}
	f.plans["old/r1"] = aggtest.RunPlan{Cluster: "c1", Job: "old", Run: "r1", Hosts: [][]int{{0}}, Start: t0, Startup: time.Minute,
		Step: time.Second, Steps: 1000, Straggler: -1, Captures: []time.Duration{5 * time.Minute}, NoHistory: true}
	for name, p := range f.plans {
		f.ids[name] = aggtest.PutRun(t, st, p)
	}
	return f
}

// analyze runs the analyzers over every capture, oldest run first.
func (f *fleet) analyze(t *testing.T) {
	t.Helper()
	for _, name := range []string{"llm/r1", "llm/r2", "vit/r1", "old/r1"} {
		for _, id := range f.ids[name] {
			if out, err := f.run.Process(context.Background(), id); err != nil || out.Action != runner.ActionAnalyzed {
				t.Fatalf("analyze %s: %+v, %v", id, out, err)
			}
		}
	}
}

func (f *fleet) manager(set *metrics.Set) *goodput.Manager {
	return goodput.New(goodput.Config{Store: f.st, Index: f.ix, PricePerGPUHour: price, Metrics: set,
		FLOPsPerStep: map[string]float64{"llm": 0.35 * 989e12 * 4}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

func counter(set *metrics.Set, name string) float64 {
	var b bytes.Buffer
	set.WritePrometheus(&b)
	for _, line := range strings.Split(b.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var x float64
			json.Unmarshal([]byte(v), &x)
			return x
		}
	}
	return 0
}

func TestRunJobAndFleet(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	f.analyze(t)
	set := metrics.NewSet()
	m := f.manager(set)

	// A run's goodput comes from its newest capture and is stored beside it.
	g, err := m.RunGoodput(ctx, "c1", "llm", "r1")
	if err != nil {
		t.Fatal(err)
	}
	newest := f.ids["llm/r1"][1]
	if g.Capture != newest.Capture || g.Ranks != 4 || g.Windows != 2 || g.Software.Image != imageA || g.Software.NCCL != "2.21.5" || g.Software.Driver != "550.54.15" {
		t.Errorf("goodput of %s, %d ranks, %d windows, software %+v", g.Capture, g.Ranks, g.Windows, g.Software)
	}
	if _, err := f.st.Stat(ctx, goodput.Key(newest)); err != nil {
		t.Errorf("goodput not stored beside the findings: %v", err)
	}
	p := f.plans["llm/r1"]
	wall := g.End.Sub(g.Start).Seconds()
	startup := p.Startup.Seconds() / wall
	if !g.Start.Equal(t0) || math.Abs(g.Cause(traces.CauseStartup).Share-startup) > 0.1*startup {
		t.Errorf("start %v, start-up share %.4f; want %v, %.4f", g.Start, g.Cause(traces.CauseStartup).Share, t0, startup)
	}
	// The straggler's 3 % of each window applies to the run's steady steps.
	straggler := 0.03 * (1 - startup)
	if b := g.Cause(traces.CauseStraggler); !b.Measured || math.Abs(b.Share-straggler) > 0.15*straggler {
		t.Errorf("straggler wait %+v, want %.4f measured", b, straggler)
	}
	if b := g.Cause(traces.CauseComm); b.Measured {
		t.Errorf("exposed communication measured without a Kineto trace: %+v", b)
	}
	if math.Abs(g.MFU-0.35) > 0.02 || g.MFUSource == "" {
		t.Errorf("MFU %v (%s), want 0.35 from the configured FLOPs", g.MFU, g.MFUSource)
	}

	// The job: r2 is 15 % slower after the image changed.
	j, err := m.JobGoodput(ctx, "c1", "llm")
	if err != nil {
		t.Fatal(err)
	}
	if len(j.Comparison.Runs) != 2 || j.Latest.Run != "r2" || len(j.Comparison.Changes) != 1 || j.Price.PerGPUHour != price {
		t.Fatalf("job %+v", j)
	}
	ch := j.Comparison.Changes[0]
	if !ch.Regression || math.Abs(ch.StepTimeChange-0.15) > 0.01 || !strings.Contains(ch.Summary, "after the image changed from "+imageA+" to "+imageB) {
		t.Errorf("change %+v: want the 15%% regression, naming the image", ch)
	}
	if c := j.LostCost["r2"]; math.Abs(c-j.Latest.LostGPUHours()*price) > 1e-9 || c <= 0 {
		t.Errorf("r2 lost cost %v, want %v", c, j.Latest.LostGPUHours()*price)
	}

	// The fleet: jobs by GPU-hours lost, with their cost; old has no history.
	fl, err := m.Fleet(ctx, goodput.FleetQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if fl.Total != 2 || fl.Jobs[0].Job != "llm" || fl.Jobs[1].Job != "vit" || fl.Jobs[0].Runs != 2 || fl.Jobs[0].LostGPUHours <= fl.Jobs[1].LostGPUHours {
		t.Fatalf("fleet %+v", fl)
	}
	top := fl.Jobs[0]
	if math.Abs(top.LostCost-top.LostGPUHours*price) > 1e-9 || math.Abs(fl.LostCost-fl.LostGPUHours*price) > 1e-9 || fl.Price.Currency != "USD" {
		t.Errorf("costs %v of %v h, fleet %v of %v h", top.LostCost, top.LostGPUHours, fl.LostCost, fl.LostGPUHours)
	}
	if top.Regression == nil || top.Regression.To != "r2" || top.TopCause == "" || top.LatestRun != "r2" {
		t.Errorf("llm row %+v: want r2's regression and a top cause", top)
	}
	sum := 0.0
	for _, h := range top.BadputGPUHours {
		sum += h
	}
	if math.Abs(sum-top.LostGPUHours) > 1e-6 {
		t.Errorf("badput by cause %v sums to %v h, lost %v h", top.BadputGPUHours, sum, top.LostGPUHours)
	}
	if fl, _ := m.Fleet(ctx, goodput.FleetQuery{Limit: 1}); len(fl.Jobs) != 1 || fl.Total != 2 {
		t.Errorf("limit 1: %d jobs of %d", len(fl.Jobs), fl.Total)
	}
	if _, err := m.RunGoodput(ctx, "c1", "old", "r1"); !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), "step history") {
		t.Errorf("run without a step history: %v", err)
	}

	// Another replica (or a restart) reads the stored records, computing
	// only what is missing or from another version.
	computed := counter(set, "loupe_aggregator_goodput_computed_total")
	if computed != 3 {
		t.Errorf("computed %v goodputs, want 3 (one per run with a history)", computed)
	}
	set2 := metrics.NewSet()
	m2 := f.manager(set2)
	if g2, err := m2.RunGoodput(ctx, "c1", "llm", "r1"); err != nil || g2.ProductiveGPUSeconds != g.ProductiveGPUSeconds {
		t.Errorf("stored goodput read back: %v, %v", g2, err)
	}
	stale := *g
	stale.Version = "0"
	data, _ := json.Marshal(&stale)
	if _, err := f.st.Put(ctx, goodput.Key(newest), bytes.NewReader(data), int64(len(data)), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	m3 := f.manager(set2)
	if g3, err := m3.RunGoodput(ctx, "c1", "llm", "r1"); err != nil || g3.Version != gp.Version {
		t.Errorf("a record of another version is computed again: %+v, %v", g3, err)
	}
	if n := counter(set2, "loupe_aggregator_goodput_computed_total"); n != 1 {
		t.Errorf("second replica computed %v, want only the stale record", n)
	}
}

// The runner's commit hook computes goodput in the background.
func TestComputedOnCommit(t *testing.T) {
	f := newFleet(t)
	m := f.manager(nil)
	f.run.OnCommit(m.OnCommit)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	f.analyze(t)
	want := f.ids["vit/r1"][0]
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := f.st.Stat(ctx, goodput.Key(want)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no goodput for %s 30 s after its analysis", want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := f.st.Stat(ctx, goodput.Key(f.ids["old/r1"][0])); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a capture without step history got a goodput record: %v", err)
	}
}

func TestAPI(t *testing.T) {
	f := newFleet(t)
	f.analyze(t)
	srv := httptest.NewServer(api.New(api.Config{Index: f.ix, Store: f.st, Goodput: f.manager(nil)}))
	defer srv.Close()
	get := func(path string, v any) int {
		t.Helper()
		res, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		if v != nil {
			if err := json.NewDecoder(res.Body).Decode(v); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
		}
		return res.StatusCode
	}
	var fl goodput.Fleet
	if code := get("/api/v1/goodput?cluster=c1&limit=10", &fl); code != 200 || fl.Total != 2 || fl.Jobs[0].Job != "llm" {
		t.Errorf("fleet: %d %+v", code, fl)
	}
	var j goodput.Job
	if code := get("/api/v1/goodput/c1/llm", &j); code != 200 || len(j.Comparison.Changes) != 1 || !j.Comparison.Changes[0].Regression {
		t.Errorf("job: %d %+v", code, j)
	}
	var g traces.Goodput
	if code := get("/api/v1/goodput/c1/vit/r1", &g); code != 200 || g.Ranks != 2 || len(g.Timeline.Productive) == 0 || len(g.Badput) != len(traces.Causes) {
		t.Errorf("run: %d %+v", code, g)
	}
	var e struct{ Error string }
	for path, want := range map[string]int{
		"/api/v1/goodput/c1/nosuch":        404,
		"/api/v1/goodput/c1/old/r1":        404,
		"/api/v1/goodput/c1/_bad/r1":       400,
		"/api/v1/goodput?limit=0":          400,
		"/api/v1/goodput?cluster=..&job=x": 400,
	} {
		e.Error = ""
		if code := get(path, &e); code != want || e.Error == "" {
			t.Errorf("%s: %d %q, want %d with a message", path, code, e.Error, want)
		}
	}
}
