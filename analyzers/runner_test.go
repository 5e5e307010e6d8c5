package analyzers

import (
	"context"
	"errors"
	"io"
	"maps"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// reporter is a test analyzer that reads the GPU samples and reports one
// finding per host.
func reporter(name string) *Analyzer {
	return &Analyzer{Name: name, Version: "7", Doc: "test", Requires: []string{traces.PartGPUSamples}, Run: func(pass *Pass) error {
		seen := map[string]bool{}
		err := EachGPUSample(pass, func(h *Host, s *traces.GPUSample) error {
			seen[h.Manifest.Host] = true
			return nil
		})
		for _, h := range slices.Sorted(maps.Keys(seen)) {
			pass.Report(traces.Finding{Title: "seen " + h, Severity: traces.SeverityInfo, Scope: traces.Scope{Host: h, GPU: -1, Rank: -1}})
		}
		return err
	}}
}

func twoHosts(t *testing.T) *Input {
	return writeCapture(t, "",
		hostBundle{name: "h1", ranks: []int{0, 1}, samples: series(2, 10, nil)},
		hostBundle{name: "h2", ranks: []int{2, 3}, samples: series(2, 10, nil), simulated: true})
}

func TestRunFillsFindings(t *testing.T) {
	in := twoHosts(t)
	in.Partial, in.MissingRanks = true, []int{4, 5}
	a, b := reporter("a"), reporter("b")
	before := time.Now().UTC()
	fs, err := Run(t.Context(), in, []*Analyzer{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if len(fs) != 4 {
		t.Fatalf("want 4 findings, got %d", len(fs))
	}
	ids := map[string]bool{}
	for _, f := range fs {
		if f.AnalyzerVersion != "7" || (f.Analyzer != "a" && f.Analyzer != "b") {
			t.Errorf("analyzer %q %q", f.Analyzer, f.AnalyzerVersion)
		}
		if f.Scope.Cluster != "c1" || f.Scope.Job != "train" || f.Scope.Run != "r1" || f.Scope.Capture != "cap1" {
			t.Errorf("scope %+v lacks the capture", f.Scope)
		}
		if !f.Partial || !slices.Equal(f.MissingRanks, []int{4, 5}) {
			t.Errorf("partial %v missing %v, want true [4 5]", f.Partial, f.MissingRanks)
		}
		if !f.Simulated {
			t.Error("a simulated host's data must mark the finding simulated")
		}
		if f.Created.Before(before) || f.Created.After(time.Now()) {
			t.Errorf("created %v", f.Created)
		}
		want := []string{in.Hosts[0].Key(traces.PartGPUSamples), in.Hosts[1].Key(traces.PartGPUSamples)}
		if !slices.Equal(f.Lineage.Inputs, want) {
			t.Errorf("lineage inputs %v, want %v", f.Lineage.Inputs, want)
		}
		if f.Lineage.AnalyzerVersions["a"] != "7" || f.Lineage.AnalyzerVersions["b"] != "7" {
			t.Errorf("analyzer versions %v", f.Lineage.AnalyzerVersions)
		}
		if len(f.ID) != 32 || ids[f.ID] {
			t.Errorf("id %q empty or duplicate", f.ID)
		}
		ids[f.ID] = true
	}

	// The same analyzers on the same capture give the same IDs.
	again, err := Run(t.Context(), in, []*Analyzer{b, a})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range again {
		if !ids[f.ID] {
			t.Errorf("re-run gave new id %s for %s %q", f.ID, f.Analyzer, f.Title)
		}
	}
}

func TestFindingIDChangesWithIdentity(t *testing.T) {
	base := traces.Finding{Analyzer: "a", AnalyzerVersion: "1", Title: "t", Scope: traces.Scope{Cluster: "c", Job: "j", Run: "r", Capture: "x", GPU: -1, Rank: -1}}
	id := FindingID(&base)
	for name, edit := range map[string]func(*traces.Finding){
		"version": func(f *traces.Finding) { f.AnalyzerVersion = "2" },
		"capture": func(f *traces.Finding) { f.Scope.Capture = "y" },
		"gpu":     func(f *traces.Finding) { f.Scope.GPU = 0 },
		"rank":    func(f *traces.Finding) { f.Scope.Rank = 3 },
		"title":   func(f *traces.Finding) { f.Title = "u" },
		// Length prefixes keep shifted boundaries apart.
		"shift": func(f *traces.Finding) { f.Analyzer, f.AnalyzerVersion = "a1", "" },
	} {
		f := base
		edit(&f)
		if FindingID(&f) == id {
			t.Errorf("changing %s kept the id", name)
		}
	}
	f := base
	f.Evidence = []traces.Metric{{Name: "x", Value: 1}}
	f.Created = time.Now()
	if FindingID(&f) != id {
		t.Error("evidence and creation time must not change the id")
	}
}

func TestRunIsolatesFailures(t *testing.T) {
	in := twoHosts(t)
	panics := &Analyzer{Name: "panics", Version: "1", Run: func(pass *Pass) error {
		var m map[string]int
		m["boom"]++
		return nil
	}}
	fails := &Analyzer{Name: "fails", Version: "1", Run: func(pass *Pass) error { return errors.New("no luck") }}
	skipped := &Analyzer{Name: "needs-nccl", Version: "1", Requires: []string{traces.PartNCCLEvents}, Run: func(pass *Pass) error {
		t.Error("an analyzer whose parts are absent must not run")
		return nil
	}}
	rep := Execute(t.Context(), in, []*Analyzer{panics, reporter("ok"), fails, skipped})
	status := map[string]AnalyzerRun{}
	for _, r := range rep.Runs {
		status[r.Name] = r
	}
	if r := status["panics"]; r.Status != StatusFailed || !strings.Contains(r.Reason, "panic: assignment to entry in nil map") {
		t.Errorf("panics: %+v", r)
	}
	if r := status["fails"]; r.Status != StatusFailed || r.Reason != "no luck" {
		t.Errorf("fails: %+v", r)
	}
	if r := status["needs-nccl"]; r.Status != StatusSkipped || !strings.Contains(r.Reason, traces.PartNCCLEvents) {
		t.Errorf("needs-nccl: %+v", r)
	}
	if r := status["ok"]; r.Status != StatusOK || r.Findings != 2 || len(rep.Findings) != 2 {
		t.Errorf("ok: %+v with %d findings", r, len(rep.Findings))
	}

	fs, err := Run(t.Context(), in, []*Analyzer{panics, reporter("ok"), fails, skipped})
	if len(fs) != 2 || err == nil || !strings.Contains(err.Error(), "analyzer panics 1: panic") || !strings.Contains(err.Error(), "analyzer fails 1: no luck") {
		t.Errorf("Run: %d findings, err %v", len(fs), err)
	}
}

func TestRunRunsInParallelWithinGOMAXPROCS(t *testing.T) {
	prev := runtime.GOMAXPROCS(2)
	defer runtime.GOMAXPROCS(prev)
	in := twoHosts(t)
	var running, peak atomic.Int32
	both := make(chan struct{})
	var met atomic.Int32
	slow := func(name string) *Analyzer {
		return &Analyzer{Name: name, Version: "1", Run: func(pass *Pass) error {
			n := running.Add(1)
			defer running.Add(-1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			// The first two must be running at the same time to get past here.
			if met.Add(1) == 2 {
				close(both)
			}
			select {
			case <-both:
			case <-time.After(10 * time.Second):
				return errors.New("the analyzers did not run in parallel")
			}
			time.Sleep(5 * time.Millisecond)
			return nil
		}}
	}
	var list []*Analyzer
	for _, n := range []string{"s1", "s2", "s3", "s4", "s5", "s6"} {
		list = append(list, slow(n))
	}
	if _, err := Run(t.Context(), in, list); err != nil {
		t.Fatal(err)
	}
	if p := peak.Load(); p != 2 {
		t.Errorf("peak concurrency %d, want GOMAXPROCS = 2", p)
	}
}

// A part whose bytes do not match its manifest fails only the analyzers
// that read it, with an error that names the part.
func TestRunCorruptPart(t *testing.T) {
	in := writeCapture(t, "", hostBundle{name: "h1", ranks: []int{0, 1}, samples: series(2, 10, nil),
		steps: []traces.Step{{Rank: 0, StartNs: 1, EndNs: 2}}})
	path := in.Hosts[0].Key(traces.PartGPUSamples)
	corruptPart(t, in, traces.PartGPUSamples)
	rep := Execute(t.Context(), in, []*Analyzer{SMUnderuse, StepImbalance})
	if r := rep.Runs[0]; r.Status != StatusFailed || !strings.Contains(r.Reason, filepath.Base(path)) || !strings.Contains(r.Reason, "checksum") {
		t.Errorf("sm-underuse on a corrupt part: %+v", r)
	}
	if r := rep.Runs[1]; r.Status != StatusOK {
		t.Errorf("step-imbalance reads no corrupt part: %+v", r)
	}
}

func TestRunStopsWithContext(t *testing.T) {
	in := twoHosts(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Run(ctx, in, []*Analyzer{reporter("a")}); !errors.Is(err, context.Canceled) {
		t.Errorf("err %v, want context.Canceled", err)
	}
}

func TestRegistry(t *testing.T) {
	names := map[string]bool{}
	for _, a := range All {
		if a.Name == "" || a.Version == "" || a.Run == nil || len(a.Requires) == 0 {
			t.Errorf("analyzer %q is incomplete", a.Name)
		}
		if first, _, _ := strings.Cut(a.Doc, "\n"); first == "" || strings.HasSuffix(first, ".") {
			t.Errorf("analyzer %s: the doc's first line is a summary without a period, got %q", a.Name, first)
		}
		if names[a.Name] {
			t.Errorf("analyzer %s registered twice", a.Name)
		}
		names[a.Name] = true
	}
}

// countOpens wraps every host's Open to count how often each part is opened.
func countOpens(in *Input) *atomic.Int32 {
	var n atomic.Int32
	for i := range in.Hosts {
		h := &in.Hosts[i]
		open := h.Open
		h.Open = func(ctx context.Context, name string) (io.ReadCloser, error) {
			if name == traces.PartGPUSamples {
				n.Add(1)
			}
			return open(ctx, name)
		}
	}
	return &n
}

// Analyzers that read the same table share one decode of it.
func TestRunDecodesSharedTablesOnce(t *testing.T) {
	in := twoHosts(t)
	opens := countOpens(in)
	list := []*Analyzer{SMUnderuse, TensorUnderuse, MemoryBound, Throttle, reporter("a"), reporter("b")}
	fs, err := Run(t.Context(), in, list)
	if err != nil {
		t.Fatal(err)
	}
	if n := opens.Load(); n != 2 {
		t.Errorf("%d analyzers opened gpu_samples %d times over 2 hosts, want 2", len(list), n)
	}
	if len(fs) != 4 {
		t.Errorf("got %d findings, want 4", len(fs))
	}
}

// A table too large for the cache's budget is streamed by each reader, with
// the same rows as the cache would give.
func TestCacheBudget(t *testing.T) {
	in := twoHosts(t)
	for _, c := range []struct {
		budget int64
		opens  int32
	}{
		// The first reader learns the table is too big only once it has
		// opened it, then streams it; the second streams it directly.
		{1, 2*2 + 2},
		{DefaultCacheBudget, 2},
	} {
		opens := countOpens(in)
		cache := newTableCache(c.budget)
		passes := []*Pass{{Context: t.Context(), Input: in, cache: cache}, {Context: t.Context(), Input: in, cache: cache}}
		for _, p := range passes {
			cache.join(p, traces.PartGPUSamples)
		}
		rows := 0
		for _, pass := range passes {
			err := EachGPUSample(pass, func(h *Host, s *traces.GPUSample) error {
				rows++
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		if rows != 2*40 || opens.Load() != c.opens {
			t.Errorf("budget %d: two passes saw %d rows with %d opens; want 80 rows, %d opens", c.budget, rows, opens.Load(), c.opens)
		}
		// Once every registered reader has read a table, it is dropped.
		if len(cache.entries) != 0 || cache.used != 0 {
			t.Errorf("budget %d: %d tables (%d bytes) left in the cache after every reader is done", c.budget, len(cache.entries), cache.used)
		}
	}
}

// Every registered analyzer over one capture with several planted
// problems: each problem is found once, by its analyzer, and nothing else.
func TestAllOnPlantedCapture(t *testing.T) {
	late := func(r, seq int) float64 {
		if r == 3 {
			return 40
		}
		return 0
	}
	stepRows := func(rank int, d time.Duration) []traces.Step {
		var out []traces.Step
		for i := range 10 {
			s := t0.Add(time.Duration(i) * d)
			out = append(out, traces.Step{Rank: int32(rank), PID: int32(pid(rank)), Iteration: int64(i), StartNs: s.UnixNano(), EndNs: s.Add(d).UnixNano(), Source: traces.StepSourceMarker})
		}
		return out
	}
	in := writeCapture(t, "",
		hostBundle{name: "h1", ranks: []int{0, 1},
			samples: series(2, 100, func(i int, s *traces.GPUSample) {
				if s.GPU == 1 && i%2 == 0 {
					s.ClockEventReasons, s.SMClockMHz = traces.ClockEventSWThermalSlowdown, 1600
				}
			}),
			nccl:  collectives([]int{0, 1}, 20, 4, late),
			steps: append(stepRows(0, 500*time.Millisecond), stepRows(1, 500*time.Millisecond)...)},
		hostBundle{name: "h2", ranks: []int{2, 3},
			samples: series(2, 100, nil),
			nccl:    collectives([]int{2, 3}, 20, 4, late),
			steps:   append(stepRows(2, 500*time.Millisecond), stepRows(3, 700*time.Millisecond)...),
			events:  []traces.Event{{TimeNs: t0.Add(2 * time.Second).UnixNano(), Kind: traces.EventXID, GPU: 0, Rank: 2, Code: 79}}},
	)
	rep := Execute(t.Context(), in, All)
	got := map[string]traces.Scope{}
	for _, f := range rep.Findings {
		if _, dup := got[f.Analyzer]; dup {
			t.Errorf("%s reported twice", f.Analyzer)
		}
		got[f.Analyzer] = f.Scope
	}
	want := map[string]struct {
		host string
		gpu  int
	}{
		"throttle":       {"h1", 1},
		"nccl-straggler": {"h2", 1},
		"step-imbalance": {"h2", 1},
		"hw-faults":      {"h2", 0},
	}
	for name, w := range want {
		s, ok := got[name]
		if !ok {
			t.Errorf("%s found nothing", name)
			continue
		}
		if s.Host != w.host || s.GPU != w.gpu {
			t.Errorf("%s: scope %+v, want %s GPU %d", name, s, w.host, w.gpu)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok && !strings.HasPrefix(name, "kineto") {
			t.Errorf("%s reported a problem that was not planted: %+v", name, rep.Findings)
		}
	}
	for _, r := range rep.Runs {
		if r.Status == StatusFailed {
			t.Errorf("%s failed: %s", r.Name, r.Reason)
		}
	}
}
