package steps

import (
	"testing"
	"time"
	"unsafe"

	"github.com/loupe-dev/loupe/traces"
)

// markRun posts markers iteration from..to-1 of (job, rank) from process
// pid, one step of dur each, and returns when the last began.
func markRun(t *testing.T, tr *Tracker, job, run string, rank, pid int, from, to int64, at time.Time, dur func(i int64) time.Duration) time.Time {
	t.Helper()
	for i := from; i < to; i++ {
		if err := tr.Mark(Marker{Job: job, Run: run, Rank: rank, PID: pid, Iteration: i, Time: at}); err != nil {
			t.Fatal(err)
		}
		at = at.Add(dur(i))
	}
	return at
}

func constant(d time.Duration) func(int64) time.Duration {
	return func(int64) time.Duration { return d }
}

// checkCovers asserts that spans cover iterations from..to-1 of one process
// exactly once, in order, with consistent times.
func checkCovers(t *testing.T, spans []traces.StepSpan, from, to int64) {
	t.Helper()
	next := from
	for i, s := range spans {
		if s.FirstIteration != next || s.Steps < 1 || s.EndNs <= s.StartNs || s.MinNs > s.MaxNs || s.MinNs <= 0 {
			t.Fatalf("span %d = %+v: want it to begin at iteration %d with sane times", i, s, next)
		}
		if i > 0 && s.StartNs < spans[i-1].EndNs {
			t.Fatalf("span %d starts before span %d ends", i, i-1)
		}
		next += int64(s.Steps)
	}
	if next != to {
		t.Fatalf("spans end at iteration %d, want %d", next, to)
	}
}

func TestHistoryKeepsTheHeadAndBoundsTheTail(t *testing.T) {
	tr, _ := newTracker(Config{HistoryHead: 200, HistorySpans: 50})
	// Warm-up: step time falls from 1 s to 100 ms over the first 100 steps.
	dur := func(i int64) time.Duration {
		if i < 100 {
			return time.Second - time.Duration(i)*9*time.Millisecond
		}
		return 100*time.Millisecond + time.Duration(i%7)*time.Millisecond
	}
	markRun(t, tr, "j", "r1", 2, 42, 0, 20001, t0, dur)
	spans, dropped := tr.History("j")
	if dropped != 0 {
		t.Errorf("dropped %d steps of a run without restarts", dropped)
	}
	checkCovers(t, spans, 0, 20000)
	for i, s := range spans[:200] {
		want := dur(int64(i)).Nanoseconds()
		if s.Steps != 1 || s.MinNs != want || s.MaxNs != want || s.EndNs-s.StartNs != want {
			t.Fatalf("head row %d = %+v, want one step of %d ns", i, s, want)
		}
	}
	tail := spans[200:]
	if len(tail) > 50 || len(tail) < 10 {
		t.Errorf("tail has %d rows, want at most 50 and not collapsed below 10", len(tail))
	}
	for _, s := range tail {
		if s.Rank != 2 || s.PID != 42 || s.Source != traces.StepSourceMarker {
			t.Fatalf("tail row %+v: want rank 2, pid 42, marker", s)
		}
		if s.MinNs != 100e6 || s.MaxNs != 106e6 && s.Steps >= 7 {
			t.Fatalf("tail row %+v: want min 100 ms and max 106 ms over a week of steps", s)
		}
		if m := s.MeanNs(); m < 100e6 || m > 106e6 {
			t.Fatalf("tail row %+v: mean %d outside the steps' range", s, m)
		}
	}
}

func TestHistoryShowsRestarts(t *testing.T) {
	tr, _ := newTracker(Config{HistoryHead: 10, HistorySpans: 8})
	at := markRun(t, tr, "j", "r1", 0, 100, 0, 50, t0, constant(100*time.Millisecond))
	// The process crashed and was restarted: a new PID, iterations from 0.
	at = markRun(t, tr, "j", "r1", 0, 200, 0, 30, at.Add(time.Minute), constant(120*time.Millisecond))
	// And again, resuming from a checkpoint at the next iteration.
	markRun(t, tr, "j", "r1", 0, 300, 30, 60, at.Add(time.Minute), constant(110*time.Millisecond))
	spans, _ := tr.History("j")
	var byPID = map[int32][]traces.StepSpan{}
	for _, s := range spans {
		byPID[s.PID] = append(byPID[s.PID], s)
	}
	// Each process's last marker begins a step that never ends.
	checkCovers(t, byPID[100], 0, 49)
	checkCovers(t, byPID[200], 0, 29)
	checkCovers(t, byPID[300], 30, 59)
	for _, s := range spans {
		if s.EndNs-s.StartNs > int64(s.Steps)*int64(120*time.Millisecond) {
			t.Errorf("span %+v covers the restart's downtime", s)
		}
	}
	// Stats forget what came before the iteration went back, but not the
	// steps before a resume.
	if st := tr.Stats("j")[0]; st.Steps != 29+29 {
		t.Errorf("stats count %d steps, want the 58 since the iteration went back", st.Steps)
	}
}

func TestHistoryStartsOverForANewRun(t *testing.T) {
	tr, _ := newTracker(Config{})
	at := markRun(t, tr, "j", "r1", 0, 100, 0, 30, t0, constant(100*time.Millisecond))
	markRun(t, tr, "j", "r2", 0, 101, 0, 11, at.Add(time.Minute), constant(100*time.Millisecond))
	spans, _ := tr.History("j")
	checkCovers(t, spans, 0, 10)
	if spans[0].PID != 101 {
		t.Errorf("history holds %+v, want only run r2's steps", spans[0])
	}
}

func TestHistoryFromLateAttach(t *testing.T) {
	tr, _ := newTracker(Config{})
	markRun(t, tr, "j", "", 1, 7, 5000, 5021, t0, constant(100*time.Millisecond))
	spans, _ := tr.History("j")
	checkCovers(t, spans, 5000, 5020)
}

// Restarts on every few steps leave nothing to merge: the tail stays
// bounded by giving up its oldest rows, and says how many steps went.
func TestHistoryBoundedUnderRestartStorm(t *testing.T) {
	tr, _ := newTracker(Config{HistoryHead: 20, HistorySpans: 40})
	at := t0
	for pid := 1; pid <= 500; pid++ {
		at = markRun(t, tr, "j", "r", 0, pid, 0, 4, at, constant(10*time.Millisecond))
	}
	spans, dropped := tr.History("j")
	if len(spans) > 20+40 {
		t.Errorf("history grew to %d rows under a restart storm, bound 60", len(spans))
	}
	var kept int64
	for _, s := range spans {
		kept += int64(s.Steps)
	}
	if kept+dropped != 500*3 {
		t.Errorf("kept %d + dropped %d steps, want the 1500 completed", kept, dropped)
	}
	if dropped == 0 {
		t.Error("no steps dropped: the bound was not enforced")
	}
}

func TestHistoryFollowsThePreferredLane(t *testing.T) {
	tr, _ := newTracker(Config{})
	var ss []traces.Step
	for i := range 10 {
		s := t0.Add(time.Duration(i) * 100 * time.Millisecond).UnixNano()
		ss = append(ss, traces.Step{Rank: 0, PID: 9, Iteration: int64(i), StartNs: s, EndNs: s + 100e6, Source: traces.StepSourceNCCL})
	}
	if err := tr.AddSteps("j", "r", ss); err != nil {
		t.Fatal(err)
	}
	spans, _ := tr.History("j")
	if len(spans) != 10 || spans[0].Source != traces.StepSourceNCCL {
		t.Fatalf("history from NCCL steps = %d rows %+v, want 10 nccl rows", len(spans), spans)
	}
	markRun(t, tr, "j", "r", 0, 9, 100, 106, t0.Add(2*time.Second), constant(100*time.Millisecond))
	spans, _ = tr.History("j")
	if len(spans) != 5 || spans[0].Source != traces.StepSourceMarker {
		t.Fatalf("history once markers speak = %+v, want their 5 steps", spans)
	}
}

// BenchmarkHistoryAdd measures recording one step into a long run's
// history, compactions included.
func BenchmarkHistoryAdd(b *testing.B) {
	var h history
	b.ReportAllocs()
	for i := range b.N {
		s := int64(i) * 100e6
		h.add(traces.Step{PID: 1, Iteration: int64(i), StartNs: s, EndNs: s + 100e6 + int64(i%5)}, 2000, 1000)
	}
	b.ReportMetric(float64(cap(h.rows))*float64(sizeofHistRow), "history-bytes")
}

const sizeofHistRow = int(unsafe.Sizeof(histRow{}))
