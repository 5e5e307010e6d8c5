package traces_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// The step history round-trips through its Parquet part with every column,
// restart rows included, and its mean step time follows from the span.
func TestStepHistoryRoundTrip(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC).UnixNano()
	rows := []traces.StepSpan{
		{Rank: 3, PID: 10, FirstIteration: 0, Steps: 1, StartNs: t0, EndNs: t0 + 900e6, MinNs: 900e6, MaxNs: 900e6, Source: traces.StepSourceMarker},
		{Rank: 3, PID: 10, FirstIteration: 2000, Steps: 8, StartNs: t0 + 1e12, EndNs: t0 + 1e12 + 8*250e6, MinNs: 240e6, MaxNs: 262e6, Source: traces.StepSourceMarker},
		{Rank: 3, PID: 11, FirstIteration: 0, Steps: 1, StartNs: t0 + 2e12, EndNs: t0 + 2e12 + 1e9, MinNs: 1e9, MaxNs: 1e9, Source: traces.StepSourceNCCL},
	}
	dir := t.TempDir()
	w, err := traces.NewBundleWriter(dir, testManifest())
	must(t, err)
	must(t, traces.WriteTable(w, traces.PartStepHistory, rows))
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := readPart[traces.StepSpan](t, dir, traces.PartStepHistory); !reflect.DeepEqual(got, rows) {
		t.Errorf("step history differs after round trip:\n got %+v\nwant %+v", got, rows)
	}
	if got := rows[1].MeanNs(); got != 250e6 {
		t.Errorf("MeanNs of 8 steps over 2 s = %d, want 250 ms", got)
	}
	if got := (traces.StepSpan{}).MeanNs(); got != 0 {
		t.Errorf("MeanNs of an empty span = %d, want 0", got)
	}
}
