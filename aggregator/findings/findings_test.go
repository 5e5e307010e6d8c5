package findings_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

var capA = capture.ID{Cluster: "c1", Job: "train", Run: "r1", Capture: "a"}

func finding(id, analyzer, sev, host string, gpuSeconds float64) traces.Finding {
	return traces.Finding{ID: id, Analyzer: analyzer, Severity: sev, Scope: traces.Scope{Cluster: "c1", Job: "train", Run: "r1", Capture: "a", Host: host},
		Impact: traces.Impact{GPUSeconds: gpuSeconds}}
}

func TestWriteReadConditional(t *testing.T) {
	ctx := context.Background()
	st, err := store.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rec := &findings.Record{Capture: capA, Manifests: []string{"m"}, AnalyzerVersions: map[string]string{"x": "1"}}
	tag, err := findings.Write(ctx, st, rec, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := findings.Write(ctx, st, rec, ""); !errors.Is(err, store.ErrPrecondition) {
		t.Fatalf("second create: %v, want ErrPrecondition", err)
	}
	rec.Findings = []traces.Finding{finding("f1", "x", traces.SeverityInfo, "h", 1)}
	if _, err := findings.Write(ctx, st, rec, tag); err != nil {
		t.Fatalf("replace: %v", err)
	}
	if _, err := findings.Write(ctx, st, rec, tag); !errors.Is(err, store.ErrPrecondition) {
		t.Fatalf("replace with a stale ETag: %v, want ErrPrecondition", err)
	}
	got, _, err := findings.Read(ctx, st, capA)
	if err != nil || len(got.Findings) != 1 || got.Version != findings.RecordVersion {
		t.Fatalf("read back %+v, %v", got, err)
	}
	if stale := got.Stale(map[string]string{"x": "2", "y": "1"}); !slices.Equal(sorted(stale), []string{"x", "y"}) {
		t.Fatalf("stale %v", stale)
	}
}

func sorted(s []string) []string { slices.Sort(s); return s }

func TestIndexOrderAndFilters(t *testing.T) {
	ix := findings.NewIndex(map[string]string{"x": "1"})
	ix.SetRecord(&findings.Record{
		Capture: capA, Manifests: []string{"v1/c1/train/r1/a/h1/manifest.json"}, AnalyzerVersions: map[string]string{"x": "1"},
		Hosts: []findings.HostSummary{{Host: "h1", Ranks: []int{0}, Committed: time.Unix(100, 0)}},
		Findings: []traces.Finding{
			finding("1", "x", traces.SeverityInfo, "h1", 5),
			finding("2", "x", traces.SeverityCritical, "h1", 5),
			finding("3", "y", traces.SeverityWarning, "h2", 50),
			finding("4", "x", "odd", "h2", 5),
		},
	}, "etag1")
	got, total := ix.Findings(findings.Query{})
	var ids []string
	for _, f := range got {
		ids = append(ids, f.ID)
	}
	// None is projected: most GPU-seconds first, then severity (unknown last), then ID.
	if total != 4 || !slices.Equal(ids, []string{"3", "2", "1", "4"}) {
		t.Fatalf("order %v (total %d)", ids, total)
	}
	if got, total := ix.Findings(findings.Query{Host: "h2", Severities: []string{traces.SeverityWarning}, Limit: 1}); total != 1 || got[0].ID != "3" {
		t.Fatalf("filtered %v %d", got, total)
	}
	if !ix.Done(capA) || !ix.KnowsManifest("v1/c1/train/r1/a/h1/manifest.json", "anything") || ix.RecordETag(capA) != "etag1" {
		t.Fatal("index built from a record alone does not know its manifests")
	}
	if ix.KnowsManifest("v1/c1/train/r1/a/h2/manifest.json", "") {
		t.Fatal("unknown manifest reported known")
	}
	e, _ := ix.Capture(capA)
	if e.Status != findings.StatusAnalyzed || e.Findings != 4 || len(e.StaleAnalyzers) != 0 || !e.FirstCommitted.Equal(time.Unix(100, 0)) {
		t.Fatalf("entry %+v", e)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"version":1,"capture":{"cluster":"c","job":"j","run":"r","capture":"x"},"findings":[{"id":"a"}]}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`{"version":1,"capture":{"cluster":"..","job":"j","run":"r","capture":"x"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, err := findings.Decode(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, findings.ErrRecord) {
				t.Fatalf("error not ErrRecord: %v", err)
			}
			return
		}
		if rec.Capture.Validate() != nil || rec.Version != findings.RecordVersion {
			t.Fatalf("accepted an invalid record %+v", rec)
		}
	})
}

// BenchmarkIndexFindings queries an index of 10,000 captures with 10
// findings each (100,000 findings): one job's warnings and criticals.
func BenchmarkIndexFindings(b *testing.B) {
	ix := findings.NewIndex(map[string]string{"x": "1"})
	sevs := []string{traces.SeverityInfo, traces.SeverityWarning, traces.SeverityCritical}
	for c := range 10000 {
		id := capture.ID{Cluster: "c1", Job: "job" + strconv.Itoa(c%100), Run: "r1", Capture: "cap" + strconv.Itoa(c)}
		rec := &findings.Record{Capture: id, Manifests: []string{id.Prefix() + "h/manifest.json"}, AnalyzerVersions: map[string]string{"x": "1"}}
		for f := range 10 {
			rec.Findings = append(rec.Findings, traces.Finding{ID: strconv.Itoa(c*10 + f), Analyzer: "x", Severity: sevs[f%3],
				Scope: traces.Scope{Cluster: "c1", Job: id.Job, Run: "r1", Capture: id.Capture, Host: "h" + strconv.Itoa(f)}, Impact: traces.Impact{GPUSeconds: float64(f)}})
		}
		ix.SetRecord(rec, "e")
	}
	b.ReportAllocs()
	for b.Loop() {
		got, total := ix.Findings(findings.Query{Job: "job7", Severities: []string{traces.SeverityWarning, traces.SeverityCritical}, Limit: 100})
		if total != 600 || len(got) != 100 {
			b.Fatalf("total %d", total)
		}
	}
	b.ReportMetric(100000, "findings/index")
}

// Fleet-wide, findings rank by their projected cost per day over their
// job's life, not by what they cost in their capture window: a small share
// of a big job outranks a big share of a small one.
func TestIndexRanksFleetWideByProjection(t *testing.T) {
	ix := findings.NewIndex(map[string]string{"x": "1"})
	projected := func(f traces.Finding, perDay float64) traces.Finding {
		f.Impact.Projected = &traces.Projection{GPUHoursPerDay: perDay, Basis: "projection: test"}
		return f
	}
	small := capture.ID{Cluster: "c1", Job: "small", Run: "r1", Capture: "a"}
	big := capture.ID{Cluster: "c2", Job: "big", Run: "r1", Capture: "b"}
	ix.SetRecord(&findings.Record{Capture: small, AnalyzerVersions: map[string]string{"x": "1"}, Findings: []traces.Finding{
		projected(finding("small-job", "x", traces.SeverityCritical, "h1", 500), 12), // 50 % of 1 GPU
	}}, "e1")
	ix.SetRecord(&findings.Record{Capture: big, AnalyzerVersions: map[string]string{"x": "1"}, Findings: []traces.Finding{
		projected(finding("big-job", "x", traces.SeverityWarning, "h9", 100), 1024*0.05*24), // 5 % of 1024 GPUs
		finding("old", "x", traces.SeverityCritical, "h9", 10000),                           // stored before projections
	}}, "e2")
	got, _ := ix.Findings(findings.Query{})
	var ids []string
	for _, f := range got {
		ids = append(ids, f.ID)
	}
	if !slices.Equal(ids, []string{"big-job", "small-job", "old"}) {
		t.Fatalf("fleet-wide order %v, want the largest projected GPU-hours per day first, unprojected last", ids)
	}
}
