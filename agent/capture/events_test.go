package capture

import (
	"testing"

	"github.com/loupe-dev/loupe/traces"
)

func TestAttributeEvents(t *testing.T) {
	procs := []traces.Process{
		{PID: 10, Rank: 0, Pod: "w-0", Namespace: "ml"},
		{PID: 11, Rank: 1, Pod: "w-1", Namespace: "ml"},
		{PID: 12, Rank: 1, Pod: "w-1", Namespace: "ml"},
	}
	ev := func(pod string, rank int) traces.Event {
		e := traces.Event{Kind: traces.EventCrash, Rank: rank, Attrs: map[string]string{}}
		if pod != "" {
			e.Attrs["pod"], e.Attrs["namespace"] = pod, "ml"
		}
		return e
	}
	otherJob := ev("w-0", -1)
	otherJob.Attrs["job"] = "serve"
	sameJob := ev("", -1)
	sameJob.Attrs["job"] = "train"
	got := attributeEvents([]traces.Event{ev("w-0", -1), ev("w-1", -1), ev("other", -1), ev("", -1), ev("w-0", 5), otherJob, sameJob}, "train", procs)
	want := []struct{ rank, pid int }{{0, 10}, {1, 0}, {-1, 0}, {5, 10}, {-1, 0}}
	if len(got) != len(want) {
		t.Fatalf("kept %d events, want %d (the other pod's and the other job's left out): %+v", len(got), len(want), got)
	}
	for i, w := range want {
		if got[i].Rank != w.rank || got[i].PID != w.pid {
			t.Errorf("event %d: rank %d pid %d, want rank %d pid %d", i, got[i].Rank, got[i].PID, w.rank, w.pid)
		}
	}
	// Processes outside pods keep every event.
	if got := attributeEvents([]traces.Event{ev("w-9", -1)}, "train", []traces.Process{{PID: 1}}); len(got) != 1 || got[0].Rank != -1 {
		t.Errorf("bare-metal capture: %+v", got)
	}
}
