package analyzers

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// Outcomes of one analyzer in a run.
const (
	StatusOK      = "ok"
	StatusSkipped = "skipped"
	StatusFailed  = "failed"
)

// Report is what Execute did: every finding, and how each analyzer fared.
type Report struct {
	Findings []traces.Finding
	Runs     []AnalyzerRun
}

// AnalyzerRun is the outcome of one analyzer.
type AnalyzerRun struct {
	Name     string
	Version  string
	Status   string // StatusOK, StatusSkipped or StatusFailed
	Reason   string // why it was skipped or how it failed
	Findings int
	Duration time.Duration
}

// Run executes the analyzers of list over in, in parallel (at most
// GOMAXPROCS at once), and returns their findings, most severe and costly
// first. Analyzers whose required parts are absent from every host are
// skipped, and logged. An analyzer that fails or panics does not stop the
// others: the findings of the rest are returned together with an error that
// names each failed analyzer. Run fails without findings only when ctx ends.
func Run(ctx context.Context, in *Input, list []*Analyzer) ([]traces.Finding, error) {
	rep := Execute(ctx, in, list)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var errs []error
	for _, r := range rep.Runs {
		if r.Status == StatusFailed {
			errs = append(errs, fmt.Errorf("analyzer %s %s: %s", r.Name, r.Version, r.Reason))
		}
	}
	return rep.Findings, errors.Join(errs...)
}

// Execute is Run with the outcome of every analyzer. The correlation step
// (RootCause) runs last, over all their findings, and is reported as one
// more run.
func Execute(ctx context.Context, in *Input, list []*Analyzer) *Report {
	versions := make(map[string]string, len(list))
	for _, a := range list {
		versions[a.Name] = a.Version
	}
	base := captureScope(in)
	simulated := slices.ContainsFunc(in.Hosts, func(h Host) bool { return h.Manifest.Simulated })
	now := time.Now().UTC()

	runs := make([]AnalyzerRun, len(list))
	found := make([][]traces.Finding, len(list))
	// slots bound the analyzers running at once; one waiting for a table
	// another is decoding gives its slot up meanwhile (Pass.wait).
	slots := make(chan struct{}, runtime.GOMAXPROCS(0))
	cache := newTableCache(DefaultCacheBudget)
	passes := make([]*Pass, len(list))
	for i, a := range list {
		runs[i] = AnalyzerRun{Name: a.Name, Version: a.Version}
		if missing := absent(in, a.Requires); missing != "" {
			runs[i].Status, runs[i].Reason = StatusSkipped, missing
			slog.InfoContext(ctx, "analyzer skipped", "analyzer", a.Name, "capture", base.Capture, "reason", missing)
			continue
		}
		// Every reader is registered before any analyzer starts, so that
		// tables decoded by the first analyzers wait in the cache for the
		// later ones.
		passes[i] = &Pass{Context: ctx, Analyzer: a, Input: in, cache: cache, slots: slots}
		for _, part := range a.Requires {
			cache.join(passes[i], part)
		}
	}
	var wg sync.WaitGroup
	for i, pass := range passes {
		if pass == nil {
			continue
		}
		a := pass.Analyzer
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cache.leaveAll(pass)
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				runs[i].Status, runs[i].Reason = StatusFailed, ctx.Err().Error()
				return
			}
			defer func() { <-slots }()
			start := time.Now()
			fs, err := runOne(pass)
			runs[i].Duration = time.Since(start)
			if err != nil {
				runs[i].Status, runs[i].Reason = StatusFailed, err.Error()
				slog.ErrorContext(ctx, "analyzer failed", "analyzer", a.Name, "capture", base.Capture, "err", err)
				return
			}
			for j := range fs {
				complete(&fs[j], a, base, versions, in, simulated, now)
			}
			runs[i].Status, runs[i].Findings = StatusOK, len(fs)
			found[i] = fs
		}()
	}
	wg.Wait()
	start := time.Now()
	rep := &Report{Runs: runs, Findings: Correlate(in, slices.Concat(found...))}
	joined := 0
	for _, f := range rep.Findings {
		if f.Analyzer == RootCause.Name {
			joined++
		}
	}
	rep.Runs = append(rep.Runs, AnalyzerRun{Name: RootCause.Name, Version: RootCause.Version, Status: StatusOK,
		Findings: joined, Duration: time.Since(start)})
	return rep
}

// runOne runs pass's analyzer, turning a panic into an error.
func runOne(pass *Pass) (fs []traces.Finding, err error) {
	var mu sync.Mutex
	pass.Report = func(f traces.Finding) {
		mu.Lock()
		fs = append(fs, f)
		mu.Unlock()
	}
	defer func() {
		if r := recover(); r != nil {
			fs, err = nil, fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	if err := pass.Analyzer.Run(pass); err != nil {
		return nil, err
	}
	inputs := make([]string, 0, len(pass.inputs))
	for k := range pass.inputs {
		inputs = append(inputs, k)
	}
	slices.Sort(inputs)
	mu.Lock()
	defer mu.Unlock()
	for i := range fs {
		fs[i].Lineage.Inputs = inputs
	}
	return fs, nil
}

// absent returns why no host has any of the required parts, or "".
func absent(in *Input, requires []string) string {
	if len(requires) == 0 {
		return ""
	}
	for _, name := range requires {
		for i := range in.Hosts {
			if in.Hosts[i].Has(name) {
				return ""
			}
		}
	}
	return fmt.Sprintf("no host bundle has any of %v", requires)
}

// captureScope is the job-wide scope of the capture in.
func captureScope(in *Input) traces.Scope {
	s := traces.Scope{GPU: -1, Rank: -1}
	if len(in.Hosts) > 0 {
		m := in.Hosts[0].Manifest
		s.Cluster, s.Job, s.Run, s.Capture = m.Cluster, m.Job, m.Run, m.CaptureID
	}
	return s
}

// complete fills in what the runner owns in a finding.
func complete(f *traces.Finding, a *Analyzer, base traces.Scope, versions map[string]string, in *Input, simulated bool, now time.Time) {
	f.Analyzer, f.AnalyzerVersion = a.Name, a.Version
	f.Scope.Cluster, f.Scope.Job, f.Scope.Run, f.Scope.Capture = base.Cluster, base.Job, base.Run, base.Capture
	f.Lineage.AnalyzerVersions = versions
	f.Partial = in.Partial
	f.MissingRanks = slices.Clone(in.MissingRanks)
	f.Simulated = simulated
	f.Created = now
	if f.Evidence == nil {
		f.Evidence = []traces.Metric{}
	}
	f.ID = FindingID(f)
}

// FindingID is the stable identity of a finding: a digest of its analyzer
// and version, capture, scope and title. The same analyzer version run again
// on the same capture gives the same IDs, so re-runs deduplicate.
func FindingID(f *traces.Finding) string {
	h := sha256.New()
	s := f.Scope
	for _, part := range []string{
		f.Analyzer, f.AnalyzerVersion,
		s.Cluster, s.Job, s.Run, s.Capture, s.Host, strconv.Itoa(s.GPU), strconv.Itoa(s.Rank), s.Stream,
		f.Title,
	} {
		// Length-prefixed, so that no two different tuples hash alike.
		h.Write([]byte(strconv.Itoa(len(part)) + ":" + part))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

var severityRank = map[string]int{traces.SeverityCritical: 0, traces.SeverityWarning: 1, traces.SeverityInfo: 2}

// compareFindings orders findings most severe first, then by impact.
func compareFindings(a, b traces.Finding) int {
	return cmp.Or(
		cmp.Compare(severityRank[a.Severity], severityRank[b.Severity]),
		cmp.Compare(b.Impact.GPUSeconds, a.Impact.GPUSeconds),
		cmp.Compare(a.Analyzer, b.Analyzer),
		cmp.Compare(a.ID, b.ID),
	)
}
