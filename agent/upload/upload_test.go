package upload_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/agent/spool"
	"github.com/loupe-dev/loupe/agent/spool/spooltest"
	"github.com/loupe-dev/loupe/agent/upload"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
	"github.com/loupe-dev/loupe/traces/store/miniotest"
)

var ctx = context.Background()

// rig is a spool, a store and an uploader between them, with private
// metrics and a captured log.
type rig struct {
	dir string
	sp  *spool.Spool
	st  *hookStore
	up  *upload.Uploader
	set *metrics.Set
	log *syncBuffer
}

func newRig(t *testing.T, st store.Store) *rig {
	t.Helper()
	r := &rig{dir: t.TempDir(), set: metrics.NewSet(), log: &syncBuffer{}, st: &hookStore{Store: st}}
	logger := slog.New(slog.NewTextHandler(r.log, nil))
	sp, err := spool.Open(r.dir, spool.Options{Metrics: r.set, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	r.sp = sp
	r.up = upload.New(sp, r.st, upload.Options{
		BackoffBase: 10 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		Interval: time.Hour, Metrics: r.set, Logger: logger,
	})
	return r
}

func (r *rig) counter(name string) uint64 { return r.set.GetOrCreateCounter(name).Get() }

// write queues n captures of parts parts each and returns every object the
// store must end up holding, by key.
func (r *rig) write(t *testing.T, prefix string, n, parts, size int) map[string][]byte {
	t.Helper()
	for i := range n {
		m := spooltest.Manifest(fmt.Sprintf("%s%d", prefix, i), "host-a")
		spooltest.Write(t, r.sp, m, spooltest.Parts(uint64(i+1), parts, size))
	}
	return expected(t, r.dir)
}

// expected reads the queued entries of the spool in dir straight from disk:
// key -> bytes for every part and manifest.
func expected(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	want := map[string][]byte{}
	ents, _ := os.ReadDir(filepath.Join(dir, "ready"))
	for _, e := range ents {
		d := filepath.Join(dir, "ready", e.Name())
		raw, err := os.ReadFile(filepath.Join(d, traces.ManifestName))
		if err != nil {
			t.Fatal(err)
		}
		m, err := traces.DecodeManifest(bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		key := traces.KeyOf(m)
		want[key.Object(traces.ManifestName)] = raw
		for _, p := range m.Parts {
			b, err := os.ReadFile(filepath.Join(d, filepath.FromSlash(p.Name)))
			if err != nil {
				t.Fatal(err)
			}
			want[key.Object(p.Name)] = b
		}
	}
	return want
}

// checkStore asserts the store holds exactly want under v1/, byte for byte.
func checkStore(t *testing.T, st store.Store, want map[string][]byte) {
	t.Helper()
	got := map[string]bool{}
	cursor := ""
	for {
		objs, next, err := st.List(ctx, "v1/", cursor, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			if got[o.Key] {
				t.Errorf("%s listed twice", o.Key)
			}
			got[o.Key] = true
			w, ok := want[o.Key]
			if !ok {
				t.Errorf("unexpected object %s", o.Key)
				continue
			}
			rc, _, err := st.Get(ctx, o.Key)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || !bytes.Equal(b, w) {
				t.Errorf("%s: %d bytes differ from the %d spooled (%v)", o.Key, len(b), len(w), err)
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	for k := range want {
		if !got[k] {
			t.Errorf("missing object %s", k)
		}
	}
}

func readyCount(t *testing.T, sp *spool.Spool) int {
	t.Helper()
	ready, err := sp.Ready()
	if err != nil {
		t.Fatal(err)
	}
	return len(ready)
}

// stores runs f against a directory store and a MinIO store.
func stores(t *testing.T, f func(t *testing.T, st store.Store)) {
	t.Run("dir", func(t *testing.T) {
		st, err := store.NewDir(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		f(t, st)
	})
	t.Run("minio", func(t *testing.T) { f(t, miniotest.Start(t).Store(t)) })
}

func TestDrainRoundTrip(t *testing.T) {
	stores(t, func(t *testing.T, st store.Store) {
		r := newRig(t, st)
		want := r.write(t, "cap", 3, 4, 100<<10)
		if err := r.up.Drain(ctx); err != nil {
			t.Fatal(err)
		}
		checkStore(t, st, want)
		if n := readyCount(t, r.sp); n != 0 {
			t.Errorf("%d entries left in the spool", n)
		}
		var bytesWant uint64
		for k, b := range want {
			if !strings.HasSuffix(k, traces.ManifestName) {
				bytesWant += uint64(len(b))
			}
		}
		for name, v := range map[string]uint64{
			"loupe_upload_captures_total": 3, "loupe_upload_parts_total": 12,
			"loupe_upload_bytes_total": bytesWant, "loupe_upload_errors_total": 0,
		} {
			if got := r.counter(name); got != v {
				t.Errorf("%s = %d, want %d", name, got, v)
			}
		}
		// The manifest is the last object written under each host folder.
		last := map[string]string{}
		for _, k := range r.st.puts() {
			key, name, _ := traces.ParseKey(k)
			last[key.Prefix()] = name
		}
		for prefix, name := range last {
			if name != traces.ManifestName {
				t.Errorf("last object written under %s is %s, not the manifest", prefix, name)
			}
		}
		if len(last) != 3 {
			t.Errorf("puts went to %d host folders, want 3", len(last))
		}
		// Nothing left to do: a second Drain writes nothing.
		n := len(r.st.puts())
		if err := r.up.Drain(ctx); err != nil || len(r.st.puts()) != n {
			t.Errorf("second Drain: %v, %d new puts", err, len(r.st.puts())-n)
		}
	})
}

func TestRunWakesOnNotify(t *testing.T) {
	st, err := store.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, st)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.up.Run(rctx) }()
	want := r.write(t, "n", 1, 2, 1000)
	r.up.Notify() // Interval is an hour: only Notify can wake Run
	waitFor(t, 10*time.Second, func() bool { return r.counter("loupe_upload_captures_total") == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run returned %v after cancel, want nil", err)
	}
	checkStore(t, st, want)
}

func TestMinIOOutageMidUpload(t *testing.T) {
	srv := miniotest.Start(t)
	r := newRig(t, srv.Store(t))
	want := r.write(t, "out", 3, 4, 256<<10)
	stopped := make(chan struct{})
	var once sync.Once
	r.st.beforePut = func(key string, n int) {
		if n == 7 { // puts 1-5 are the first capture; 7 is mid-second
			once.Do(func() { srv.Stop(); close(stopped) })
		}
	}
	done := make(chan error, 1)
	go func() { done <- r.up.Drain(ctx) }()
	<-stopped
	// Let the uploader fail and back off a few times against the dead server.
	waitFor(t, 60*time.Second, func() bool { return r.counter("loupe_upload_retries_total") >= 3 })
	if got := r.counter("loupe_upload_captures_total"); got != 1 {
		t.Errorf("%d captures stored before the outage ended, want 1", got)
	}
	srv.Restart()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Drain did not finish after MinIO came back")
	}
	checkStore(t, r.st, want)
	if r.counter("loupe_upload_captures_total") != 3 || r.counter("loupe_upload_errors_total") == 0 {
		t.Errorf("captures %d errors %d", r.counter("loupe_upload_captures_total"), r.counter("loupe_upload_errors_total"))
	}
	if n := readyCount(t, r.sp); n != 0 {
		t.Errorf("%d entries left in the spool", n)
	}
	if !strings.Contains(r.log.String(), "retrying") {
		t.Errorf("retries not logged:\n%s", r.log)
	}
}

func TestCorruptEntryQuarantinedOthersUpload(t *testing.T) {
	srv := miniotest.Start(t)
	r := newRig(t, srv.Store(t))
	r.write(t, "q", 3, 3, 10<<10)
	ready, _ := r.sp.Ready()
	bad := ready[1]
	if err := os.WriteFile(filepath.Join(bad.Dir, "part01.bin"), []byte("tampered"), 0o644); err != nil {
		t.Fatal(err)
	}
	want := expected(t, r.dir)
	for k := range want {
		if strings.Contains(k, "/"+bad.CaptureID+"/") {
			delete(want, k)
		}
	}
	if err := r.up.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	checkStore(t, r.st, want) // the good two, and nothing of the bad one
	if _, err := os.Stat(filepath.Join(r.dir, "quarantine", bad.Name, "part01.bin")); err != nil {
		t.Errorf("corrupted entry not in quarantine: %v", err)
	}
	if !strings.Contains(r.log.String(), "capture="+bad.CaptureID) || !strings.Contains(r.log.String(), "quarantine") ||
		!strings.Contains(r.log.String(), "checksum") {
		t.Errorf("quarantine log line missing or unclear:\n%s", r.log)
	}
	if r.counter("loupe_upload_captures_total") != 2 || r.counter("loupe_spool_quarantined_total") != 1 {
		t.Errorf("captures %d quarantined %d", r.counter("loupe_upload_captures_total"), r.counter("loupe_spool_quarantined_total"))
	}
}

func TestManifestConflictQuarantined(t *testing.T) {
	st, err := store.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, st)
	want := r.write(t, "dup", 1, 2, 100)
	var mkey string
	for k := range want {
		if strings.HasSuffix(k, traces.ManifestName) {
			mkey = k
		}
	}
	other := []byte(`{"schema_version":1,"note":"another capture"}`)
	if _, err := st.Put(ctx, mkey, bytes.NewReader(other), int64(len(other)), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := r.up.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	checkStore(t, st, map[string][]byte{mkey: other}) // untouched: no part written over it
	if readyCount(t, r.sp) != 0 || !strings.Contains(r.log.String(), "different manifest.json") {
		t.Errorf("conflicting capture not quarantined with a clear message:\n%s", r.log)
	}
}

func TestAlreadyStoredIsNotResent(t *testing.T) {
	st, err := store.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, st)
	want := r.write(t, "again", 1, 3, 100)
	for k, b := range want { // as if a run stored everything, then died before removing the entry
		if _, err := st.Put(ctx, k, bytes.NewReader(b), int64(len(b)), store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	n := len(r.st.puts())
	if err := r.up.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if len(r.st.puts()) != n || readyCount(t, r.sp) != 0 || r.counter("loupe_upload_captures_total") != 1 {
		t.Errorf("a capture already in the store was sent again (%d puts) or not cleared", len(r.st.puts())-n)
	}
	checkStore(t, st, want)
}

// hookStore wraps a store, recording each Put's key and calling beforePut
// (with the 1-based count of puts) first.
type hookStore struct {
	store.Store
	beforePut func(key string, n int)
	mu        sync.Mutex
	keys      []string
}

func (h *hookStore) Put(ctx context.Context, key string, r io.Reader, size int64, opts store.PutOptions) (store.ObjectInfo, error) {
	h.mu.Lock()
	h.keys = append(h.keys, key)
	n := len(h.keys)
	h.mu.Unlock()
	if h.beforePut != nil {
		h.beforePut(key, n)
	}
	return h.Store.Put(ctx, key, r, size, opts)
}

func (h *hookStore) puts() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.keys...)
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
