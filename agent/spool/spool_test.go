package spool_test

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/agent/spool"
	"github.com/loupe-dev/loupe/agent/spool/spooltest"
	"github.com/loupe-dev/loupe/traces"
)

// open opens a spool in dir with a private metrics set and a log buffer.
func open(t *testing.T, dir string, maxBytes int64) (*spool.Spool, *metrics.Set, *bytes.Buffer) {
	t.Helper()
	set := metrics.NewSet()
	var log bytes.Buffer
	sp, err := spool.Open(dir, spool.Options{MaxBytes: maxBytes, Metrics: set, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	return sp, set, &log
}

func gauge(set *metrics.Set, name string) float64 { return set.GetOrCreateGauge(name, nil).Get() }

func counter(set *metrics.Set, name string) uint64 { return set.GetOrCreateCounter(name).Get() }

func TestQueueOrderAndReopen(t *testing.T) {
	dir := t.TempDir()
	sp, set, _ := open(t, dir, 0)
	for _, id := range []string{"c3", "c1", "c2"} {
		spooltest.Write(t, sp, spooltest.Manifest(id, "h1"), spooltest.Parts(1, 2, 100))
	}
	// An unfinished capture: begun, never committed.
	unfinished, err := sp.Begin("c9", "h1")
	if err != nil {
		t.Fatal(err)
	}
	ready, _ := sp.Ready()
	if got := ids(ready); got != "c3 c1 c2" {
		t.Errorf("ready = %s, want commit order c3 c1 c2", got)
	}
	if gauge(set, "loupe_spool_entries") != 3 || gauge(set, "loupe_spool_bytes") < 600 {
		t.Errorf("gauges: entries %v bytes %v", gauge(set, "loupe_spool_entries"), gauge(set, "loupe_spool_bytes"))
	}
	if _, err := spool.Open(dir, spool.Options{Metrics: metrics.NewSet()}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("a second Open of the same directory: %v, want an 'in use' error", err)
	}
	sp.Close()

	sp2, set2, log := open(t, dir, 0)
	ready, _ = sp2.Ready()
	if got := ids(ready); got != "c3 c1 c2" {
		t.Errorf("after reopen, ready = %s", got)
	}
	if gauge(set2, "loupe_spool_entries") != 3 {
		t.Errorf("after reopen, entries gauge %v", gauge(set2, "loupe_spool_entries"))
	}
	if _, err := os.Stat(unfinished); !os.IsNotExist(err) || !strings.Contains(log.String(), "never committed") {
		t.Errorf("the unfinished capture was not discarded with a log line: %v\n%s", err, log)
	}
	// New commits sort after the old ones even across a reopen.
	spooltest.Write(t, sp2, spooltest.Manifest("c0", "h1"), spooltest.Parts(1, 1, 10))
	ready, _ = sp2.Ready()
	if got := ids(ready); got != "c3 c1 c2 c0" {
		t.Errorf("ready = %s", got)
	}
	m, raw, err := sp2.Load(ready[0])
	if err != nil || m.CaptureID != "c3" || len(m.Parts) != 2 || !bytes.Contains(raw, []byte(`"c3"`)) {
		t.Errorf("Load = %+v, %v", m, err)
	}
	if err := sp2.Remove(ready[0]); err != nil {
		t.Fatal(err)
	}
	if ready, _ = sp2.Ready(); ids(ready) != "c1 c2 c0" || gauge(set2, "loupe_spool_entries") != 3 {
		t.Errorf("after Remove, ready = %s", ids(ready))
	}
}

func TestBeginCommitErrors(t *testing.T) {
	sp, _, _ := open(t, t.TempDir(), 0)
	for _, tc := range []struct{ id, host, want string }{
		{"", "h", "capture id"},
		{"../x", "h", "capture id"},
		{"c", "h/2", "host"},
		{"c@d", "h", "capture id"},
	} {
		if _, err := sp.Begin(tc.id, tc.host); err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, traces.ErrBadKey) {
			t.Errorf("Begin(%q, %q) = %v, want a %s error", tc.id, tc.host, err, tc.want)
		}
	}
	first, err := sp.Begin("c", "h")
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.Commit(first); err == nil || !strings.Contains(err.Error(), "manifest.json") {
		t.Errorf("Commit without a manifest: %v", err)
	}
	if err := sp.Abort(first); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(first); !os.IsNotExist(err) {
		t.Errorf("Abort left %s: %v", first, err)
	}
	for _, dir := range []string{"", t.TempDir(), filepath.Join(filepath.Dir(first), "c@h")} {
		if err := sp.Commit(dir); err == nil || !strings.Contains(err.Error(), "not a folder Begin returned") {
			t.Errorf("Commit(%q) = %v, want a 'not a folder Begin returned' error", dir, err)
		}
	}
	if ready, _ := sp.Ready(); len(ready) != 0 {
		t.Errorf("ready = %v", ready)
	}
}

// Two jobs on one host captured in the same millisecond share a capture ID;
// both bundles are written at once and both are queued.
func TestSameCaptureTwiceAtOnce(t *testing.T) {
	sp, _, _ := open(t, t.TempDir(), 0)
	a, b := spooltest.Manifest("od-1", "h1"), spooltest.Manifest("od-1", "h1")
	a.Job, b.Job = "gpu-job", "cpu-job"
	dirA, err := sp.Begin(a.CaptureID, a.Host)
	if err != nil {
		t.Fatal(err)
	}
	dirB, err := sp.Begin(b.CaptureID, b.Host)
	if err != nil {
		t.Fatalf("a second Begin of the same capture while the first is open: %v", err)
	}
	if dirA == dirB {
		t.Fatalf("both writers got folder %s", dirA)
	}
	for _, w := range []struct {
		dir string
		m   traces.Manifest
	}{{dirA, a}, {dirB, b}} {
		bw, err := traces.NewBundleWriter(w.dir, w.m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := bw.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	for _, dir := range []string{dirB, dirA} {
		if err := sp.Commit(dir); err != nil {
			t.Fatal(err)
		}
	}
	ready, _ := sp.Ready()
	var jobs []string
	for _, e := range ready {
		m, _, err := sp.Load(e)
		if err != nil {
			t.Fatal(err)
		}
		jobs = append(jobs, m.Job)
	}
	if strings.Join(jobs, " ") != "cpu-job gpu-job" {
		t.Errorf("queued jobs = %v, want both, in commit order cpu-job gpu-job", jobs)
	}
}

func TestDiskCapEvictsOldest(t *testing.T) {
	sp, set, log := open(t, t.TempDir(), 25000)
	for _, id := range []string{"old", "mid", "new"} {
		spooltest.Write(t, sp, spooltest.Manifest(id, "h1"), spooltest.Parts(2, 1, 10000))
	}
	// Each entry is 10000 bytes of part plus a manifest under 1000: the third commit
	// goes over 25000 and evicts the oldest.
	ready, _ := sp.Ready()
	if got := ids(ready); got != "mid new" {
		t.Errorf("after the cap, ready = %s, want mid new", got)
	}
	if n := counter(set, "loupe_spool_evicted_total"); n != 1 {
		t.Errorf("loupe_spool_evicted_total = %d, want 1", n)
	}
	if !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), "capture=old") {
		t.Errorf("eviction not logged at warn with the capture id:\n%s", log)
	}
	// An entry the uploader holds is never evicted; the next oldest goes.
	if !sp.Acquire(ready[0]) {
		t.Fatal("Acquire failed")
	}
	spooltest.Write(t, sp, spooltest.Manifest("newer", "h1"), spooltest.Parts(2, 1, 10000))
	ready, _ = sp.Ready()
	if got := ids(ready); got != "mid newer" {
		t.Errorf("with mid held, ready = %s, want mid newer", got)
	}
	if n := counter(set, "loupe_spool_evicted_total"); n != 2 {
		t.Errorf("loupe_spool_evicted_total = %d, want 2", n)
	}
	if gauge(set, "loupe_spool_bytes") > 25000 {
		t.Errorf("loupe_spool_bytes = %v over the cap", gauge(set, "loupe_spool_bytes"))
	}
}

func TestLoadQuarantinesCorruption(t *testing.T) {
	for _, tc := range []struct {
		name    string
		damage  func(dir string) error
		wantErr error
	}{
		{"flipped byte", func(d string) error { return flip(filepath.Join(d, "part00.bin")) }, traces.ErrChecksum},
		{"truncated part", func(d string) error { return os.Truncate(filepath.Join(d, "part01.bin"), 10) }, traces.ErrChecksum},
		{"missing part", func(d string) error { return os.Remove(filepath.Join(d, "kineto", "rank0.json.gz")) }, traces.ErrMissingPart},
		{"garbage manifest", func(d string) error {
			return os.WriteFile(filepath.Join(d, "manifest.json"), []byte("{not json"), 0o644)
		}, traces.ErrInvalid},
		{"missing manifest", func(d string) error { return os.Remove(filepath.Join(d, "manifest.json")) }, traces.ErrInvalid},
		{"future schema", func(d string) error {
			return edit(filepath.Join(d, "manifest.json"), `"schema_version": 1`, `"schema_version": 9`)
		}, traces.ErrSchemaVersion},
		{"other capture", func(d string) error {
			return edit(filepath.Join(d, "manifest.json"), `"capture_id": "bad"`, `"capture_id": "other"`)
		}, traces.ErrInvalid},
		{"escaping part name", func(d string) error {
			return edit(filepath.Join(d, "manifest.json"), `"name": "part00.bin"`, `"name": "../../x"`)
		}, traces.ErrUnsafeName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sp, set, log := open(t, dir, 0)
			spooltest.Write(t, sp, spooltest.Manifest("good1", "h1"), spooltest.Parts(3, 3, 100))
			spooltest.Write(t, sp, spooltest.Manifest("bad", "h1"), spooltest.Parts(3, 3, 100))
			spooltest.Write(t, sp, spooltest.Manifest("good2", "h1"), spooltest.Parts(3, 3, 100))
			ready, _ := sp.Ready()
			if err := tc.damage(ready[1].Dir); err != nil {
				t.Fatal(err)
			}
			for _, e := range ready {
				_, _, err := sp.Load(e)
				if e.CaptureID != "bad" {
					if err != nil {
						t.Errorf("Load(%s): %v", e.CaptureID, err)
					}
					continue
				}
				if !errors.Is(err, spool.ErrCorrupt) || !errors.Is(err, tc.wantErr) {
					t.Fatalf("Load(bad) = %v, want ErrCorrupt and %v", err, tc.wantErr)
				}
				if err := sp.Quarantine(e, err); err != nil {
					t.Fatal(err)
				}
			}
			if ready, _ := sp.Ready(); ids(ready) != "good1 good2" {
				t.Errorf("ready = %s", ids(ready))
			}
			q, _ := os.ReadDir(filepath.Join(dir, "quarantine"))
			if len(q) != 1 || !strings.Contains(q[0].Name(), "@bad@h1") {
				t.Errorf("quarantine holds %v", q)
			}
			if counter(set, "loupe_spool_quarantined_total") != 1 || !strings.Contains(log.String(), "capture=bad") || !strings.Contains(log.String(), "quarantine") {
				t.Errorf("quarantine not counted or logged:\n%s", log)
			}
		})
	}
}

func ids(es []spool.Entry) string {
	var s []string
	for _, e := range es {
		s = append(s, e.CaptureID)
	}
	return strings.Join(s, " ")
}

func flip(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	b[len(b)/2] ^= 0xff
	return os.WriteFile(path, b, 0o644)
}

func edit(path, old, new string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !bytes.Contains(b, []byte(old)) {
		return errors.New("edit: " + old + " not in " + path)
	}
	return os.WriteFile(path, bytes.Replace(b, []byte(old), []byte(new), 1), 0o644)
}
