// Package aggtest helps the aggregator's tests: it commits host bundles to
// a store the way an agent does (parts first, manifest last) and provides
// an analyzer that counts its invocations per capture.
package aggtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// Manifest returns a manifest for one host of a job capture.
func Manifest(job, capture, host string, worldSize int, ranks ...int) traces.Manifest {
	start := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	return traces.Manifest{
		SchemaVersion: traces.SchemaVersion, CaptureID: capture, Cluster: "c1", Job: job, Run: "r1",
		Host: host, Ranks: ranks, WorldSize: worldSize, Start: start, End: start.Add(30 * time.Second),
		Trigger: traces.Trigger{Kind: traces.TriggerOnDemand, Reason: "test"}, AgentVersion: "test",
	}
}

// Put commits a host bundle: every part, then the manifest listing them.
// It returns the manifest as stored.
func Put(t testing.TB, st store.Store, m traces.Manifest, parts map[string][]byte) *traces.Manifest {
	t.Helper()
	ctx := context.Background()
	key := traces.KeyOf(&m)
	m.Parts = nil
	for name, data := range parts {
		sum := sha256.Sum256(data)
		m.Parts = append(m.Parts, traces.Part{Name: name, MediaType: "application/octet-stream", Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])})
		if _, err := st.Put(ctx, key.Object(name), bytes.NewReader(data), int64(len(data)), store.PutOptions{}); err != nil {
			t.Fatalf("put part %s: %v", name, err)
		}
	}
	data, err := json.Marshal(&m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(ctx, key.Object(traces.ManifestName), bytes.NewReader(data), int64(len(data)), store.PutOptions{}); err != nil {
		t.Fatalf("put manifest: %v", err)
	}
	return &m
}

// PartName is the part the Counter analyzer requires and reads.
const PartName = "steps.parquet"

// Counter is an analyzer that reads PartName of every host (so that the
// store path and checksums are exercised) and reports one finding per host
// with the number of bytes read as evidence. It counts its runs.
type Counter struct {
	Analyzer *analyzers.Analyzer
	mu       sync.Mutex
	runs     map[string]int
	// Block, when set, is received from before the analyzer returns, so a
	// test can hold an analysis in flight.
	Block chan struct{}
	// Started receives a value when a run starts, if set.
	Started chan string
}

// NewCounter returns a Counter analyzer named name at version.
func NewCounter(name, version string) *Counter {
	c := &Counter{runs: map[string]int{}}
	c.Analyzer = &analyzers.Analyzer{
		Name: name, Version: version, Doc: "counts its runs (test)", Requires: []string{PartName},
		Run: c.run,
	}
	return c
}

func (c *Counter) run(p *analyzers.Pass) error {
	id := ""
	if len(p.Input.Hosts) > 0 {
		m := p.Input.Hosts[0].Manifest
		id = m.Cluster + "/" + m.Job + "/" + m.Run + "/" + m.CaptureID
	}
	c.mu.Lock()
	c.runs[id]++
	c.mu.Unlock()
	if c.Started != nil {
		c.Started <- id
	}
	if c.Block != nil {
		select {
		case <-c.Block:
		case <-p.Context.Done():
			return p.Context.Err()
		}
	}
	for i := range p.Input.Hosts {
		h := &p.Input.Hosts[i]
		if !h.Has(PartName) {
			continue
		}
		rc, err := h.Open(p.Context, PartName)
		if err != nil {
			return err
		}
		n, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
		p.Used(h, PartName)
		p.Report(traces.Finding{
			Title:    fmt.Sprintf("host %s seen", h.Manifest.Host),
			Severity: traces.SeverityInfo,
			Scope:    traces.Scope{Host: h.Manifest.Host, GPU: -1, Rank: -1},
			Evidence: []traces.Metric{{Name: "bytes", Value: float64(n), Unit: "B"}},
			Impact:   traces.Impact{GPUSeconds: float64(len(h.Manifest.Ranks))},
		})
	}
	return nil
}

// Runs returns how often the analyzer ran on the capture
// (cluster/job/run/capture).
func (c *Counter) Runs(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runs[id]
}

// All returns the run count of every capture.
func (c *Counter) All() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string]int, len(c.runs))
	for k, v := range c.runs {
		m[k] = v
	}
	return m
}

// Clock is a settable clock for tests.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock at t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock on.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// PutDir uploads a bundle folder written by traces.BundleWriter, parts
// first and the manifest last, as the agent's uploader does.
func PutDir(t testing.TB, st store.Store, dir string) *traces.Manifest {
	t.Helper()
	m, err := traces.ReadDir(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	key := traces.KeyOf(m)
	for _, name := range append(partNames(m), traces.ManifestName) {
		data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(name)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Put(context.Background(), key.Object(name), bytes.NewReader(data), int64(len(data)), store.PutOptions{}); err != nil {
			t.Fatalf("put %s: %v", name, err)
		}
	}
	return m
}

func partNames(m *traces.Manifest) []string {
	names := make([]string, len(m.Parts))
	for i, p := range m.Parts {
		names[i] = p.Name
	}
	return names
}

// StepsBundle writes a committed bundle for m into a new folder under
// t.TempDir(), with a steps.parquet of iterations 0..9 for each rank
// (rank r's steps take 100+10r ms), and returns the folder.
func StepsBundle(t testing.TB, m traces.Manifest) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), m.Host)
	WriteSteps(t, dir, m)
	return dir
}

// WriteSteps writes StepsBundle's bundle into dir.
func WriteSteps(t testing.TB, dir string, m traces.Manifest) {
	t.Helper()
	w, err := traces.NewBundleWriter(dir, m)
	if err != nil {
		t.Fatal(err)
	}
	var rows []traces.Step
	for _, r := range m.Ranks {
		start := m.Start.UnixNano()
		for it := range int64(10) {
			d := int64(100+10*r) * int64(time.Millisecond)
			rows = append(rows, traces.Step{Rank: int32(r), PID: int32(1000 + r), Iteration: it, StartNs: start, EndNs: start + d, Source: traces.StepSourceNCCL})
			start += d
		}
	}
	if err := traces.WriteTable(w, traces.PartSteps, rows); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
}
