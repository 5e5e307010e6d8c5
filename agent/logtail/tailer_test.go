package logtail

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/logparse"
)

const cudaLine = "RuntimeError: CUDA error: an illegal memory access was encountered\n"

func appendFile(t testing.TB, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func all(tl *Tailer) []traces.Event {
	return tl.Events(time.Unix(0, 0), time.Now().Add(time.Hour))
}

func TestTailerFollowsFiles(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, "app.log")
	appendFile(t, old, strings.Repeat(cudaLine, 3)) // history: not read
	set := metrics.NewSet()
	tl := New(Config{Files: []string{filepath.Join(dir, "*.log")}, MaxLineBytes: 128}, nil, set)
	tl.poll(true)
	if n := len(all(tl)); n != 0 {
		t.Fatalf("history was read: %d events", n)
	}

	appendFile(t, old, "RuntimeError: CUDA err") // half a line
	tl.poll(false)
	appendFile(t, old, "or: first\n")
	tl.poll(false)
	if ev := all(tl); len(ev) != 1 || ev[0].Attrs["error"] != "first" || ev[0].Attrs[logparse.AttrSource] != old {
		t.Fatalf("after append: %+v", ev)
	}

	// A file appearing later is read from its start.
	later := filepath.Join(dir, "later.log")
	appendFile(t, later, "RuntimeError: CUDA error: later\n")
	tl.poll(false)
	if n := len(all(tl)); n != 2 {
		t.Fatalf("new file: %d events, want 2", n)
	}

	// Rotation by rename: the rest of the old file, then the new one.
	appendFile(t, old, "RuntimeError: CUDA error: before rotation\n")
	if err := os.Rename(old, old+".1"); err != nil {
		t.Fatal(err)
	}
	appendFile(t, old, "RuntimeError: CUDA error: after rotation\n")
	tl.poll(false)
	var msgs []string
	for _, e := range all(tl) {
		msgs = append(msgs, e.Attrs["error"])
	}
	if got := strings.Join(msgs, ","); !strings.Contains(got, "before rotation") || !strings.Contains(got, "after rotation") {
		t.Fatalf("rotation lost lines: %s", got)
	}

	// Truncation (copytruncate): start over at 0.
	if err := os.Truncate(later, 0); err != nil {
		t.Fatal(err)
	}
	appendFile(t, later, "CUDA error: truncated\n") // shorter than before
	tl.poll(false)
	ev := all(tl)
	if last := ev[len(ev)-1]; last.Attrs["error"] != "truncated" {
		t.Fatalf("after truncation: %+v", last)
	}

	// An over-long line is cut at MaxLineBytes and the next line is intact.
	appendFile(t, later, "RuntimeError: CUDA error: "+strings.Repeat("x", 1000)+"\n"+cudaLine)
	tl.poll(false)
	ev = all(tl)
	if long := ev[len(ev)-2]; len(long.Message) > 128 || ev[len(ev)-1].Attrs["error"] != "an illegal memory access was encountered" {
		t.Fatalf("long line: %q then %+v", long.Message, ev[len(ev)-1])
	}
	if c := set.GetOrCreateCounter(`loupe_logtail_lines_truncated_total`).Get(); c != 1 {
		t.Errorf("truncated lines counter = %d, want 1", c)
	}
	if c := set.GetOrCreateCounter(`loupe_logtail_rotations_total`).Get(); c != 2 {
		t.Errorf("rotations counter = %d, want 2", c)
	}
}

func TestTailerPodAttribution(t *testing.T) {
	dir := t.TempDir()
	pod := filepath.Join(dir, "log", "pods", "ml_infer-0_0b1e", "consumer")
	if err := os.MkdirAll(pod, 0o755); err != nil {
		t.Fatal(err)
	}
	tl := New(Config{Files: []string{filepath.Join(dir, "log/pods/*/*/*.log")}}, nil, nil)
	tl.poll(true)
	appendFile(t, filepath.Join(pod, "0.log"), time.Now().UTC().Format(time.RFC3339Nano)+" stderr F "+cudaLine)
	tl.poll(false)
	ev := all(tl)
	if len(ev) != 1 || ev[0].Attrs["pod"] != "infer-0" || ev[0].Attrs["namespace"] != "ml" || ev[0].Attrs["container"] != "consumer" {
		t.Fatalf("pod attribution: %+v", ev)
	}
}

func TestTailerRunStops(t *testing.T) {
	dir := t.TempDir()
	appendFile(t, filepath.Join(dir, "a.log"), "history\n")
	set := metrics.NewSet()
	tl := New(Config{Files: []string{filepath.Join(dir, "*.log")}, PollInterval: 5 * time.Millisecond}, nil, set)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tl.Run(ctx); close(done) }()
	// Files present at the first poll are read from their end: wait for it.
	deadline := time.Now().Add(10 * time.Second)
	for set.GetOrCreateGauge(`loupe_logtail_files`, nil).Get() != 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	appendFile(t, filepath.Join(dir, "a.log"), cudaLine)
	for len(all(tl)) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if len(all(tl)) != 1 {
		t.Fatal("Run did not pick up the new file")
	}
}

func TestRingBounded(t *testing.T) {
	dropped := metrics.NewSet().GetOrCreateCounter("d")
	r := NewRing(3, dropped)
	for i := range 5 {
		r.Add(traces.Event{TimeNs: int64(10 - i), Kind: "k"})
	}
	ev := r.Events(time.Unix(0, 0), time.Unix(0, 100))
	if len(ev) != 3 || ev[0].TimeNs != 6 || ev[2].TimeNs != 8 || dropped.Get() != 2 {
		t.Fatalf("ring: %+v dropped %d", ev, dropped.Get())
	}
	if ev := r.Events(time.Unix(0, 7), time.Unix(0, 8)); len(ev) != 1 || ev[0].TimeNs != 7 {
		t.Fatalf("window: %+v", ev)
	}
}

func TestConfigValidate(t *testing.T) {
	c := Config{Files: []string{"/var/log/[.log"}}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "/var/log/[.log") {
		t.Fatalf("bad glob accepted: %v", err)
	}
}

// BenchmarkTailer measures a whole poll: read, split, unwrap, parse.
func BenchmarkTailer(b *testing.B) {
	dir := b.TempDir()
	path := filepath.Join(dir, "0.log")
	line := "2026-11-25T10:00:07.000000001Z stdout F INFO step 10 loss 2.31 lr 0.0001 tokens/s 12345\n"
	chunk := strings.Repeat(line, 10000)
	tl := New(Config{Files: []string{path}}, nil, nil)
	appendFile(b, path, "")
	tl.poll(true)
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		appendFile(b, path, chunk)
		b.StartTimer()
		tl.poll(false)
	}
	b.ReportMetric(float64(b.N)*10000/b.Elapsed().Seconds(), "lines/s")
}

// A file found after start-up is read from its start: the events of lines
// older than the moment it was found go to History, once the whole of what
// it held then has been read (a poll reads at most readChunk), and the
// fresh ones to the ring.
func TestTailerHistory(t *testing.T) {
	dir := t.TempDir()
	tl := New(Config{Files: []string{filepath.Join(dir, "*.log")}}, nil, nil)
	tl.poll(true)
	old := "2026-11-24T10:00:00Z stderr F RuntimeError: CUDA error: old\n"
	filler := strings.Repeat("2026-11-24T10:00:01Z stdout F INFO step 10 loss 2.31 lr 0.0001 tokens/s 12345\n", readChunk/64)
	fresh := time.Now().UTC().Format(time.RFC3339Nano) + " stderr F RuntimeError: CUDA error: fresh\n"
	appendFile(t, filepath.Join(dir, "found.log"), old+filler+fresh)
	tl.poll(false)
	if h := tl.History(); h != nil {
		t.Fatalf("history handed out before the file was read to its end: %d events", len(h))
	}
	tl.poll(false)
	h := tl.History()
	if len(h) != 1 || h[0].Attrs["error"] != "old" || h[0].TimeNs != time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC).UnixNano() {
		t.Fatalf("history %+v", h)
	}
	if ev := all(tl); len(ev) != 1 || ev[0].Attrs["error"] != "fresh" {
		t.Fatalf("ring %+v", ev)
	}
	if tl.History() != nil {
		t.Fatal("history handed out twice")
	}
}
