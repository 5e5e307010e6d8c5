package daemon

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/agent/steps"
	"github.com/loupe-dev/loupe/traces"
)

// ncclTraining is the call stream of a data-parallel loop from iteration
// first to last: three collectives per iteration, then a quiet spell
// (forward and backward). Sequence numbers count from iteration 0, as the
// communicator saw them since it was created.
func ncclTraining(pid, rank int32, start time.Time, first, last int) []traces.NCCLEvent {
	var out []traces.NCCLEvent
	for i := first; i <= last; i++ {
		at := start.Add(time.Duration(i) * 50 * time.Millisecond)
		for j, op := range []string{"AllReduce", "AllReduce", "AllGather"} {
			out = append(out, traces.NCCLEvent{TimeNs: at.Add(time.Duration(j) * time.Millisecond).UnixNano(), PID: pid, TID: pid,
				Rank: rank, NRanks: 4, CommID: 7, Op: op, Seq: int64(3*i + j), Count: 1000, Datatype: "float32", Bytes: 4000, Peer: -1})
		}
	}
	return out
}

func TestNCCLStepsJoinTheMarkerJob(t *testing.T) {
	cfg := testConfig(t)
	d, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	me := int32(os.Getpid())
	const gone = 4194001 // no such process: no environment to read
	// This process posts markers as rank 5 of job "train".
	start := time.Now().Add(-10 * time.Second)
	if err := d.tracker.Mark(steps.Marker{Job: "train", Rank: 5, PID: int(me), Iteration: 0, Time: start}); err != nil {
		t.Fatal(err)
	}
	d.fileNCCLSteps(append(ncclTraining(me, 2, start, 0, 19), ncclTraining(gone, 3, start, 0, 19)...))

	st := d.tracker.Stats("")
	if len(st) != 2 {
		t.Fatalf("stats %+v, want train/5 and adhoc/3 only", st)
	}
	// Filed beside the markers, not as a job of their own; the markers,
	// which spoke last, stay the preferred lane.
	if st[1].Job != "train" || st[1].Rank != 5 || st[1].Source != traces.StepSourceMarker {
		t.Errorf("marker process: %+v", st[1])
	}
	if st[0].Job != cfg.DefaultJob || st[0].Rank != 3 || st[0].Source != traces.StepSourceNCCL || st[0].Steps < 10 || st[0].Mean != 50*time.Millisecond {
		t.Errorf("unattributed process: %+v", st[0])
	}
}

// Two ranks whose calls the agent saw from different iterations number
// their steps alike, from the collectives' sequence numbers.
func TestNCCLStepNumbersAgreeAcrossRanks(t *testing.T) {
	cfg := testConfig(t)
	d, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	start := time.Now().Add(-time.Minute)
	// Rank 1's calls are seen only from iteration 12 (its agent started late).
	d.fileNCCLSteps(append(ncclTraining(4194001, 0, start, 0, 30), ncclTraining(4194002, 1, start, 12, 30)...))
	iter := map[int32]map[int64]int64{0: {}, 1: {}}
	for _, s := range d.tracker.Steps(cfg.DefaultJob, start, start.Add(time.Hour)) {
		iter[s.Rank][s.StartNs] = s.Iteration
	}
	if len(iter[0]) < 20 || len(iter[1]) < 10 {
		t.Fatalf("steps per rank: %d and %d", len(iter[0]), len(iter[1]))
	}
	for ns, it := range iter[1] {
		if want := int64(time.Duration(ns-start.UnixNano()) / (50 * time.Millisecond)); it != want || iter[0][ns] != it {
			t.Errorf("step at +%v: rank 1 says iteration %d, rank 0 %d, want %d", time.Duration(ns-start.UnixNano()), it, iter[0][ns], want)
		}
	}
}
