package traces_test

import (
	"bytes"
	"encoding/json"
	"sort"
	"testing"

	"github.com/loupe-dev/loupe/traces"
)

type chromeFile struct {
	OtherData   map[string]any `json:"otherData"`
	TraceEvents []struct {
		Name string         `json:"name"`
		Ph   string         `json:"ph"`
		TS   float64        `json:"ts"`
		Dur  float64        `json:"dur"`
		PID  int            `json:"pid"`
		TID  int            `json:"tid"`
		Args map[string]any `json:"args"`
	} `json:"traceEvents"`
}

func TestExportChrome(t *testing.T) {
	m := testManifest()
	m.Simulated = true
	gpu, nccl, steps, events := testTables()
	var buf bytes.Buffer
	if err := traces.ExportChrome(&buf, traces.Timeline{Manifest: &m, Steps: steps, NCCL: nccl, GPU: gpu, Events: events}); err != nil {
		t.Fatal(err)
	}
	var cf chromeFile
	if err := json.Unmarshal(buf.Bytes(), &cf); err != nil {
		t.Fatalf("export is not valid JSON: %v", err)
	}
	if cf.OtherData["capture_id"] != "cap-1" {
		t.Errorf("otherData = %v", cf.OtherData)
	}
	counts := map[string]int{}
	procNames := map[int]string{}
	type track struct{ pid, tid int }
	slices := map[track][][2]float64{}
	for _, e := range cf.TraceEvents {
		counts[e.Ph]++
		if e.Ph == "M" && e.Name == "process_name" {
			procNames[e.PID] = e.Args["name"].(string)
		}
		if e.Ph == "X" {
			if e.TS < 0 {
				t.Errorf("slice %s starts before the origin: %v", e.Name, e.TS)
			}
			slices[track{e.PID, e.TID}] = append(slices[track{e.PID, e.TID}], [2]float64{e.TS, e.TS + e.Dur})
		}
	}
	if counts["X"] != len(steps)+len(nccl) {
		t.Errorf("%d slices, want %d steps + %d nccl calls", counts["X"], len(steps), len(nccl))
	}
	if counts["C"] != 4*len(gpu) {
		t.Errorf("%d counter events, want 4 per GPU sample (%d)", counts["C"], 4*len(gpu))
	}
	if counts["i"] != 1 {
		t.Errorf("%d instant events, want 1 (the XID)", counts["i"])
	}
	var names []string
	for _, n := range procNames {
		names = append(names, n)
	}
	sort.Strings(names)
	want := []string{"gpu-node-3 GPU 0 (simulated)", "gpu-node-3 GPU 1 (simulated)", "gpu-node-3 rank 8", "gpu-node-3 rank 9"}
	if len(names) != len(want) {
		t.Fatalf("process names = %v, want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Errorf("process names = %v, want %v", names, want)
		}
	}
	// Perfetto requires slices on one track to nest; ours must not overlap.
	for tr, ss := range slices {
		sort.Slice(ss, func(i, j int) bool { return ss[i][0] < ss[j][0] })
		for i := 1; i < len(ss); i++ {
			if ss[i][0] < ss[i-1][1] {
				t.Errorf("track %v: slices %v and %v overlap", tr, ss[i-1], ss[i])
			}
		}
	}
}
