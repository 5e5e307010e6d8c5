package aggregator_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/aggregator"
	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/aggregator/internal/aggtest"
	"github.com/loupe-dev/loupe/aggregator/runner"
	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces/store"
)

// childEnv names the store a re-executed test binary serves as the replica
// that gets SIGKILLed mid-analysis.
const childEnv = "LOUPE_AGGREGATOR_CRASH_CHILD"

func service(t testing.TB, dir, replica string, count *aggtest.Counter) *aggregator.Service {
	cfg := aggregator.DefaultConfig()
	cfg.Store = "file://" + dir
	cfg.Replica = replica
	cfg.LeaseTTL = 3 * time.Second
	cfg.SweepInterval = -1
	svc, err := aggregator.New(context.Background(), cfg, []*analyzers.Analyzer{count.Analyzer}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// TestRestartMidRun kills a replica (SIGKILL, no cleanup) while it analyzes
// a capture and starts another on the same store: the new replica takes
// the capture over once the dead one's lease expires, and the findings are
// committed once, without duplicates.
func TestRestartMidRun(t *testing.T) {
	if dir := os.Getenv(childEnv); dir != "" {
		count := aggtest.NewCounter("count", "1")
		count.Block = make(chan struct{}) // never released: dies mid-run
		count.Started = make(chan string, 1)
		svc := service(t, dir, "doomed", count)
		go svc.Watcher.Run(context.Background())
		fmt.Println("started", <-count.Started)
		select {}
	}
	dir := t.TempDir()
	st, err := store.NewDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i, host := range []string{"node-a", "node-b"} {
		aggtest.PutDir(t, st, aggtest.StepsBundle(t, aggtest.Manifest("train", "cap1", host, 4, 2*i, 2*i+1)))
	}
	id := capture.ID{Cluster: "c1", Job: "train", Run: "r1", Capture: "cap1"}

	child := exec.Command(os.Args[0], "-test.run=^TestRestartMidRun$")
	child.Env = append(os.Environ(), childEnv+"="+dir)
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "started") {
		child.Process.Kill()
		t.Fatalf("child replica: %q, %v", line, err)
	}
	child.Process.Kill()
	child.Wait()
	if _, _, err := findings.Read(context.Background(), st, id); err == nil {
		t.Fatal("the killed replica committed findings")
	}

	count := aggtest.NewCounter("count", "1")
	svc := service(t, dir, "survivor", count)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { svc.Watcher.Run(ctx) })
	defer wg.Wait()
	defer cancel()
	waitFor(t, "the survivor to take the capture over", func() bool { return svc.Index.Done(id) })
	rec, _, err := findings.Read(context.Background(), st, id)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, f := range rec.Findings {
		ids[f.ID] = true
	}
	if rec.Analyst != "survivor" || len(rec.Findings) != 2 || len(ids) != 2 || count.Runs(id.String()) != 1 {
		t.Fatalf("record by %s with %d findings (%d distinct), survivor ran %d times; want 2 distinct findings by survivor, once",
			rec.Analyst, len(rec.Findings), len(ids), count.Runs(id.String()))
	}
	// Restarting once more changes nothing.
	svc2 := service(t, dir, "third", count)
	if out, err := svc2.Runner.Process(ctx, id); err != nil || out.Action != runner.ActionCurrent {
		t.Fatalf("after a second restart: %+v, %v", out, err)
	}
}
