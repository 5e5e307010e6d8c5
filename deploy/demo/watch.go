package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/loupe-dev/loupe/aggregator/api"
	"github.com/loupe-dev/loupe/traces"
)

// problem is one planted problem and the findings that count as finding it.
type problem struct {
	name    string
	planted string
	// analyzers that can report it, and the scope they must name.
	analyzers []string
	rank, gpu int // -1: any
	// needs says what must run for it to be found, when that is not running.
	needs string
}

// matches reports whether f is a finding of p: by one of its analyzers,
// naming its rank or GPU (alone in the scope, or among the targets a
// finding about several lists in its evidence).
func (p problem) matches(f traces.Finding) bool {
	if !slices.Contains(p.analyzers, f.Analyzer) {
		return false
	}
	if (p.rank < 0 || f.Scope.Rank == p.rank) && (p.gpu < 0 || f.Scope.GPU == p.gpu) {
		return true
	}
	if f.Scope.Rank >= 0 || f.Scope.GPU >= 0 {
		return false
	}
	// Targets are named "HOST[ gpu G][ rank R]: metric".
	want := []string{fmt.Sprintf(" rank %d: ", p.rank)}
	if p.rank < 0 {
		want = []string{fmt.Sprintf(" gpu %d: ", p.gpu), fmt.Sprintf(" gpu %d rank ", p.gpu)}
	}
	return slices.ContainsFunc(f.Evidence, func(m traces.Metric) bool {
		return slices.ContainsFunc(want, func(w string) bool { return strings.Contains(m.Name, w) })
	})
}

// plantedProblems are the problems of a run with these settings; with eBPF
// the straggler is found by its NCCL arrivals (ranks wait for each other),
// without it by its step time (ranks run unsynchronised).
func plantedProblems(o options) []problem {
	straggler := problem{name: "straggler", rank: o.stragglerRank, gpu: -1,
		planted:   fmt.Sprintf("rank %d sleeps %v more than the others before its collectives, every iteration", o.stragglerRank, o.stragglerDelay),
		analyzers: []string{"nccl-straggler", "step-imbalance"}}
	loader := problem{name: "data-loader stall", rank: o.loaderRank, gpu: -1,
		planted: fmt.Sprintf("rank %d decodes and collates its batches on the CPU (decode_jpeg, collate_batch) while its simulated GPU %d waits",
			o.loaderRank, o.loaderRank),
		analyzers: []string{"input-bound"}}
	if !o.ebpf {
		loader.needs = "the eBPF CPU profiler (run the demo as root): input-bound reads the rank's CPU profile"
	}
	return []problem{
		straggler,
		{name: "throttled GPU", rank: -1, gpu: o.throttledGPU, analyzers: []string{"throttle"},
			planted: fmt.Sprintf("simulated GPU %d runs hot (a failed fan) and thermal-throttles", o.throttledGPU)},
		loader,
	}
}

// watcher polls the aggregator's findings of the job and reports each new
// one, and the planted problems as they are found.
type watcher struct {
	base, job string
	problems  []problem
	print     func(format string, args ...any)

	seen  map[string]bool
	found map[string]traces.Finding // by problem name
}

func newWatcher(base, job string, problems []problem, print func(string, ...any)) *watcher {
	return &watcher{base: base, job: job, problems: problems, print: print, seen: map[string]bool{}, found: map[string]traces.Finding{}}
}

// poll reads the findings once and reports what is new.
func (w *watcher) poll(ctx context.Context) error {
	q := url.Values{"job": {w.job}, "limit": {"200"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.base+"/api/v1/findings?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /api/v1/findings: HTTP %d", resp.StatusCode)
	}
	var fr api.FindingsResponse
	if err := json.NewDecoder(resp.Body).Decode(&fr); err != nil {
		return fmt.Errorf("GET /api/v1/findings: %w", err)
	}
	for _, f := range fr.Findings {
		if w.seen[f.ID] {
			continue
		}
		w.seen[f.ID] = true
		label := "finding"
		for _, p := range w.problems {
			if _, done := w.found[p.name]; !done && p.matches(f) {
				w.found[p.name] = f
				label = "FOUND " + p.name
			}
		}
		w.print("%s: [%s] %s: %s (%s)%s", label, f.Severity, f.Analyzer, f.Title, f.Scope.String()+", capture "+f.Scope.Capture, simulated(f.Simulated))
		if strings.HasPrefix(label, "FOUND") {
			w.print("    what to do: %s", firstSentence(f.Recommendation))
		}
	}
	return nil
}

// done reports whether every findable planted problem was found.
func (w *watcher) done() bool {
	for _, p := range w.problems {
		if _, ok := w.found[p.name]; !ok && p.needs == "" {
			return false
		}
	}
	return true
}

// missing names the findable planted problems not found yet.
func (w *watcher) missing() []string {
	var out []string
	for _, p := range w.problems {
		if _, ok := w.found[p.name]; !ok && p.needs == "" {
			out = append(out, p.name)
		}
	}
	return out
}

// run polls every interval until ctx ends.
func (w *watcher) run(ctx context.Context, interval time.Duration, allFound func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	reported, errs := false, 0
	for {
		if err := w.poll(ctx); err != nil && ctx.Err() == nil {
			if errs++; errs == 5 {
				w.print("cannot read findings from the aggregator (still trying): %v", err)
			}
		}
		if !reported && w.done() {
			reported = true
			allFound()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func simulated(b bool) string {
	if b {
		return " [simulated]"
	}
	return ""
}

// firstSentence keeps a recommendation's first sentence.
func firstSentence(s string) string {
	if i := strings.Index(s, ". "); i >= 0 {
		return s[:i+1]
	}
	return s
}
