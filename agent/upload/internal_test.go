package upload

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestBackoffFullJitter(t *testing.T) {
	u := New(nil, nil, Options{BackoffBase: 100 * time.Millisecond, BackoffMax: time.Second})
	for _, tc := range []struct {
		attempt int
		ceil    time.Duration
	}{{0, 100 * time.Millisecond}, {1, 200 * time.Millisecond}, {3, 800 * time.Millisecond}, {4, time.Second}, {40, time.Second}} {
		var lo, hi time.Duration = tc.ceil, 0
		for range 2000 {
			d := u.backoff(tc.attempt)
			if d <= 0 || d > tc.ceil {
				t.Fatalf("backoff(%d) = %v, want in (0, %v]", tc.attempt, d, tc.ceil)
			}
			lo, hi = min(lo, d), max(hi, d)
		}
		// Full jitter spreads over the whole range, not just near the top.
		if lo > tc.ceil/10 || hi < tc.ceil*9/10 {
			t.Errorf("backoff(%d) spans [%v, %v], want most of (0, %v]", tc.attempt, lo, hi, tc.ceil)
		}
	}
}

func TestProgressFile(t *testing.T) {
	dir := t.TempDir()
	if got := readProgress(dir); len(got) != 0 {
		t.Errorf("no file: %v", got)
	}
	for _, p := range []string{"a.parquet", "kineto/r0.json.gz"} {
		if err := recordProgress(dir, p); err != nil {
			t.Fatal(err)
		}
	}
	// A crash in the middle of a write leaves a torn last line.
	f, _ := os.OpenFile(filepath.Join(dir, ProgressFile), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("cpu.pb")
	f.Close()
	got := readProgress(dir)
	if len(got) != 2 || !got["a.parquet"] || !got["kineto/r0.json.gz"] || got["cpu.pb"] {
		t.Errorf("readProgress = %v, want the two complete lines", got)
	}
	// The next record starts on a line of its own.
	if err := recordProgress(dir, "steps.parquet"); err != nil {
		t.Fatal(err)
	}
	if got := readProgress(dir); len(got) != 4 || !got["steps.parquet"] {
		t.Errorf("after a torn line, readProgress = %v", got)
	}
}
