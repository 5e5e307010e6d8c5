package incidents

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/aggregator/internal/aggtest"
	"github.com/loupe-dev/loupe/aggregator/lease"
	"github.com/loupe-dev/loupe/analyzers/triage"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

func eventsJSONL(evs ...traces.Event) []byte {
	var b bytes.Buffer
	for _, e := range evs {
		json.NewEncoder(&b).Encode(e)
	}
	return b.Bytes()
}

// putCapture commits one host with the given events and returns its
// findings record, committed at the given offset.
func putCapture(t *testing.T, st store.Store, name string, at time.Duration, fs []traces.Finding, evs ...traces.Event) *findings.Record {
	m := aggtest.Manifest("llm-train", name, "node-1", 2, 0, 1)
	stored := aggtest.Put(t, st, m, map[string][]byte{traces.PartEvents: eventsJSONL(evs...)})
	id := capture.ID{Cluster: "c1", Job: "llm-train", Run: "r1", Capture: name}
	key := traces.KeyOf(stored).Object(traces.ManifestName)
	return &findings.Record{
		Capture: id, Analyzed: time.Now(), Manifests: []string{key}, WorldSize: 2,
		Hosts:    []findings.HostSummary{{Host: "node-1", Ranks: []int{0, 1}, Manifest: key, Committed: m.Start.Add(at)}},
		Findings: fs,
	}
}

func crash(frame string) traces.Event {
	return traces.Event{Kind: traces.EventCrash, GPU: -1, Rank: 1, Message: "ValueError: bad", Attrs: map[string]string{"stack": frame}}
}

func TestProcessAndQuery(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, "file://"+filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	// An Ollama stand-in speaking /api/generate.
	var prompts int
	ollama := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Model  string `json:"model"`
			Stream bool   `json:"stream"`
		}
		json.NewDecoder(r.Body).Decode(&req)
		if r.URL.Path != "/api/generate" || req.Model != "tiny" || req.Stream {
			http.Error(w, "bad request", 400)
			return
		}
		prompts++
		json.NewEncoder(w).Encode(map[string]any{"model": "tiny", "response": "Rank 1 crashed.", "done": true})
	}))
	defer ollama.Close()
	ix := findings.NewIndex(nil)
	m := New(Config{Store: st, Index: ix, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Triage: triage.Config{Summarizer: &triage.Ollama{URL: ollama.URL, Model: "tiny", Timeout: 5 * time.Second}}})

	throttle := traces.Finding{ID: "f1", Analyzer: "throttle", Title: "GPU throttled", Severity: traces.SeverityWarning,
		Scope: traces.Scope{Host: "node-1", GPU: 0, Rank: 0}, Impact: traces.Impact{GPUSeconds: 30, WindowShare: 0.5}}
	old := putCapture(t, st, "cap-1", 0, []traces.Finding{throttle}, crash("step (/app/a.py:3)"))
	recent := putCapture(t, st, "cap-2", time.Hour, nil, crash("step (/app/a.py:3)"),
		traces.Event{Kind: traces.EventOOM, GPU: 1, Rank: 1, Message: "CUDA out of memory"})
	for _, rec := range []*findings.Record{old, recent} {
		incs, err := m.Process(ctx, rec)
		if err != nil {
			t.Fatal(err)
		}
		for _, inc := range incs {
			if inc.Generated == nil || inc.Generated.Text != "Rank 1 crashed." || inc.Generated.Note != triage.GeneratedNote {
				t.Errorf("incident %s lacks the marked LLM summary: %+v", inc.ID, inc.Generated)
			}
		}
		ix.SetRecord(rec, "etag-"+rec.Capture.Capture)
	}
	// A third capture's incidents file is unreadable: left out, no error.
	bad := putCapture(t, st, "cap-3", 2*time.Hour, nil)
	st.Put(ctx, Key(bad.Capture), bytes.NewReader([]byte("{not json")), 9, store.PutOptions{})
	ix.SetRecord(bad, "etag-3")

	all, total, err := m.Incidents(ctx, Query{Job: "llm-train"})
	if err != nil {
		t.Fatal(err)
	}
	if total != 3 || len(all) != 3 {
		t.Fatalf("incidents %d (total %d), want crash, oom and throttling once each: %+v", len(all), total, all)
	}
	byCat := map[string]traces.Incident{}
	for _, inc := range all {
		byCat[inc.Category] = inc
	}
	if c := byCat["crash"]; c.Scope.Capture != "cap-2" {
		t.Errorf("the crash in both captures comes from %s, want the newest, cap-2", c.Scope.Capture)
	}
	if all[0].Severity != traces.SeverityCritical {
		t.Errorf("most severe first: %+v", all[0])
	}
	crit, total, _ := m.Incidents(ctx, Query{Severities: []string{traces.SeverityCritical}, Limit: 1})
	// Both the crash (rule F2) and the throttling (half the window: R2) are
	// critical; the crash costs more.
	if len(crit) != 1 || total != 2 || crit[0].Category != "crash" {
		t.Errorf("critical: %+v (total %d)", crit, total)
	}
	none, _, _ := m.Incidents(ctx, Query{Cluster: "other"})
	if len(none) != 0 {
		t.Errorf("other cluster: %+v", none)
	}

	// Processing again rewrites the file; the cache follows.
	recent.Findings = []traces.Finding{{ID: "f9", Analyzer: "hw-faults", Title: "XID 79", Severity: traces.SeverityCritical,
		Scope: traces.Scope{Host: "node-1", GPU: 1, Rank: 1}, Impact: traces.Impact{GPUSeconds: 10}}}
	if _, err := m.Process(ctx, recent); err != nil {
		t.Fatal(err)
	}
	all, total, _ = m.Incidents(ctx, Query{})
	if total != 4 {
		t.Errorf("after re-processing: %d incidents, want 4 (the hardware one added): %+v", total, all)
	}
	if prompts < 5 {
		t.Errorf("the summarizer was asked %d times", prompts)
	}
}

// A capture whose events cannot be read is an error, and nothing is stored.
func TestProcessBadEvents(t *testing.T) {
	ctx := context.Background()
	st, _ := store.Open(ctx, "file://"+filepath.Join(t.TempDir(), "store"))
	m := aggtest.Manifest("llm-train", "cap-bad", "node-1", 1, 0)
	stored := aggtest.Put(t, st, m, map[string][]byte{traces.PartEvents: []byte("{\"kind\":\n")})
	key := traces.KeyOf(stored).Object(traces.ManifestName)
	rec := &findings.Record{Capture: capture.ID{Cluster: "c1", Job: "llm-train", Run: "r1", Capture: "cap-bad"}, Manifests: []string{key}}
	mgr := New(Config{Store: st, Index: findings.NewIndex(nil), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if _, err := mgr.Process(ctx, rec); err == nil {
		t.Fatal("malformed events.jsonl accepted")
	}
	if _, err := st.Stat(ctx, Key(rec.Capture)); err == nil {
		t.Error("incidents stored for a capture whose events could not be read")
	}
}

// OnCommit hands work to Run; with the queue full it works at once.
func TestOnCommitQueue(t *testing.T) {
	ctx := context.Background()
	st, _ := store.Open(ctx, "file://"+filepath.Join(t.TempDir(), "store"))
	mgr := New(Config{Store: st, Index: findings.NewIndex(nil), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	rec := putCapture(t, st, "cap-q", 0, nil, crash("f (a.py:1)"))
	for range queueLen {
		mgr.OnCommit(ctx, rec)
	}
	if _, err := st.Stat(ctx, Key(rec.Capture)); err == nil {
		t.Fatal("queued work ran without Run")
	}
	mgr.OnCommit(ctx, rec) // queue full: done here
	if _, err := st.Stat(ctx, Key(rec.Capture)); err != nil {
		t.Fatalf("a full queue did not push back: %v", err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { mgr.Run(rctx); close(done) }()
	for deadline := time.Now().Add(10 * time.Second); len(mgr.queue) > 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if len(mgr.queue) != 0 {
		t.Errorf("Run left %d queued", len(mgr.queue))
	}
}

// An analysis whose replica stopped before triaging it is triaged by the
// sweep of any replica, once its grace has passed.
func TestSweepTriagesLostAnalyses(t *testing.T) {
	ctx := context.Background()
	st, _ := store.Open(ctx, "file://"+filepath.Join(t.TempDir(), "store"))
	now := time.Date(2026, 11, 25, 13, 0, 0, 0, time.UTC)
	ix := findings.NewIndex(nil)
	mgr := New(Config{Store: st, Index: ix, Now: func() time.Time { return now }, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	lost := putCapture(t, st, "cap-lost", 0, nil, crash("f (a.py:1)"))
	fresh := putCapture(t, st, "cap-fresh", 0, nil, crash("g (b.py:2)"))
	lost.Analyzed, fresh.Analyzed = now.Add(-2*time.Minute), now.Add(-10*time.Second)
	for _, rec := range []*findings.Record{lost, fresh} {
		etag, err := findings.Write(ctx, st, rec, "")
		if err != nil {
			t.Fatal(err)
		}
		ix.SetRecord(rec, etag)
	}
	mgr.Sweep(ctx)
	if _, err := st.Stat(ctx, Key(lost.Capture)); err != nil {
		t.Errorf("the lost analysis was not triaged: %v", err)
	}
	if _, err := st.Stat(ctx, Key(fresh.Capture)); err == nil {
		t.Error("an analysis inside its grace was taken from the replica that committed it")
	}
}

// While another replica holds a capture's triage lease, Process leaves it.
func TestTriageLease(t *testing.T) {
	ctx := context.Background()
	st, _ := store.Open(ctx, "file://"+filepath.Join(t.TempDir(), "store"))
	rec := putCapture(t, st, "cap-l", 0, nil, crash("f (a.py:1)"))
	other := &lease.Manager{Store: st, Owner: "replica-b", TTL: time.Minute}
	held, err := other.Acquire(ctx, LeaseKey(rec.Capture))
	if err != nil {
		t.Fatal(err)
	}
	mgr := New(Config{Store: st, Index: findings.NewIndex(nil), Leases: &lease.Manager{Store: st, Owner: "replica-a", TTL: time.Minute},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if _, err := mgr.Process(ctx, rec); !errors.Is(err, ErrBusy) {
		t.Fatalf("Process under another replica's lease: %v, want ErrBusy", err)
	}
	if _, err := st.Stat(ctx, Key(rec.Capture)); err == nil {
		t.Fatal("triaged under another replica's lease")
	}
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if incs, err := mgr.Process(ctx, rec); err != nil || len(incs) != 1 {
		t.Fatalf("after release: %v, %+v", err, incs)
	}
}
