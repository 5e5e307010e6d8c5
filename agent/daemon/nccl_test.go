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

// ncclTraining is the call stream of a data-parallel loop: three
// collectives per iteration, then a quiet spell (forward and backward).
func ncclTraining(pid, rank int32, start time.Time, iterations int) []traces.NCCLEvent {
	var out []traces.NCCLEvent
	at := start
	var seq int64
	for range iterations {
		for j, op := range []string{"AllReduce", "AllReduce", "AllGather"} {
			out = append(out, traces.NCCLEvent{TimeNs: at.Add(time.Duration(j) * time.Millisecond).UnixNano(), PID: pid, TID: pid,
				Rank: rank, NRanks: 4, CommID: 7, Op: op, Seq: seq, Count: 1000, Datatype: "float32", Bytes: 4000, Peer: -1})
			seq++
		}
		at = at.Add(50 * time.Millisecond)
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
	d.fileNCCLSteps(append(ncclTraining(me, 2, start, 20), ncclTraining(gone, 3, start, 20)...))

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
