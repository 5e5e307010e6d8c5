package upload_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/agent/spool"
	"github.com/loupe-dev/loupe/agent/upload"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
	"github.com/loupe-dev/loupe/traces/store/miniotest"
)

// The SIGKILL test re-runs this test binary as the uploading process; these
// variables select that mode and pass it the spool and the store.
const (
	envHelper = "LOUPE_UPLOAD_TEST_HELPER"
	envSpool  = "LOUPE_UPLOAD_TEST_SPOOL"
	envStore  = "LOUPE_UPLOAD_TEST_STORE"
	envDelay  = "LOUPE_UPLOAD_TEST_PUT_DELAY"
)

func TestMain(m *testing.M) {
	if os.Getenv(envHelper) == "1" {
		os.Exit(uploaderProcess())
	}
	os.Exit(m.Run())
}

// uploaderProcess drains the spool into the store like an agent would, with
// each Put slowed down (a slow link) so the parent can kill it mid-upload,
// and prints how many parts and captures it uploaded.
func uploaderProcess() int {
	ctx := context.Background()
	sp, err := spool.Open(os.Getenv(envSpool), spool.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	st, err := store.Open(ctx, os.Getenv(envStore))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	delay, _ := time.ParseDuration(os.Getenv(envDelay))
	slow := &hookStore{Store: st, beforePut: func(string, int) { time.Sleep(delay) }}
	set := metrics.NewSet()
	u := upload.New(sp, slow, upload.Options{BackoffBase: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond, Metrics: set})
	if err := u.Drain(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("parts=%d captures=%d\n", set.GetOrCreateCounter("loupe_upload_parts_total").Get(),
		set.GetOrCreateCounter("loupe_upload_captures_total").Get())
	return 0
}

func TestResumeAfterSIGKILL(t *testing.T) {
	srv := miniotest.Start(t)
	r := newRig(t, srv.Store(t))
	const captures, parts = 4, 6
	want := r.write(t, "kill", captures, parts, 128<<10)
	r.sp.Close() // the child process owns the spool now

	child := func(delay string) *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envHelper+"=1", envSpool+"="+r.dir, envStore+"="+srv.URL(""), envDelay+"="+delay)
		cmd.Stderr = os.Stderr
		return cmd
	}

	// First run: killed with SIGKILL once three parts are confirmed, that
	// is in the middle of the first capture.
	cmd := child("50ms")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, func() bool { return confirmed(t, r.dir) >= 3 })
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("uploader was not killed by SIGKILL: %v", err)
	}
	done := confirmed(t, r.dir)
	ents, _ := os.ReadDir(filepath.Join(r.dir, "ready"))
	total := len(ents) * parts // parts of the captures still queued
	if done >= total {
		t.Fatalf("the uploader finished before it was killed (%d of %d queued parts confirmed)", done, total)
	}
	first := firstEntry(t, r.dir)
	if _, err := r.st.Stat(context.Background(), manifestKey(t, first)); err == nil {
		t.Fatalf("the first capture's manifest is stored: the kill came too late to test a resume")
	}

	// Second run: resumes and finishes, sending only the unconfirmed parts.
	cmd = child("0s")
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("second uploader run: %v", err)
	}
	var sentParts, sentCaptures int
	if _, err := fmt.Sscanf(strings.TrimSpace(out.String()), "parts=%d captures=%d", &sentParts, &sentCaptures); err != nil {
		t.Fatalf("second run printed %q: %v", out.String(), err)
	}
	if sentParts != total-done {
		t.Errorf("second run sent %d parts; %d of %d were confirmed before the kill, so want %d", sentParts, done, total, total-done)
	}
	checkStore(t, r.st, want)
	if ents, _ := os.ReadDir(filepath.Join(r.dir, "ready")); len(ents) != 0 {
		t.Errorf("%d entries left in the spool", len(ents))
	}
}

// confirmed counts the parts recorded in progress files under dir/ready
// (complete lines only, as the uploader reads them) of the entries still
// queued.
func confirmed(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	ents, _ := os.ReadDir(filepath.Join(dir, "ready"))
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(dir, "ready", e.Name(), upload.ProgressFile))
		n += bytes.Count(b, []byte("\n"))
	}
	return n
}

func firstEntry(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "ready"))
	if err != nil || len(ents) == 0 {
		t.Fatalf("no spool entries: %v", err)
	}
	return filepath.Join(dir, "ready", ents[0].Name())
}

func manifestKey(t *testing.T, entry string) string {
	t.Helper()
	f, err := os.Open(filepath.Join(entry, traces.ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := traces.DecodeManifest(f)
	if err != nil {
		t.Fatal(err)
	}
	return traces.KeyOf(m).Object(traces.ManifestName)
}
