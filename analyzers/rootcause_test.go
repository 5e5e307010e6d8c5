package analyzers

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/pprof/profile"
	"github.com/loupe-dev/loupe/traces"
)

// plantedCapture is two hosts of two ranks (h1: ranks 0, 1; h2: ranks 2, 3)
// with NCCL calls, GPU samples and CPU profiles; lateMs delays one rank's
// arrival at every collective, gpu edits the samples of host h2 and events
// are h2's fault events.
func plantedCapture(t *testing.T, late int, lateMs float64, gpu func(i int, s *traces.GPUSample), prof *profile.Profile, events []traces.Event) *Input {
	t.Helper()
	arrive := func(r, seq int) float64 {
		if r == late {
			return lateMs
		}
		return float64((r+seq)%4) * 0.1 // no one else is always last
	}
	if prof == nil {
		prof = cpuProfile(map[int][2]int{2: {5, 95}, 3: {5, 95}})
	}
	return writeCapture(t, "",
		hostBundle{name: "h1", ranks: []int{0, 1}, nccl: collectives([]int{0, 1}, 40, 4, arrive), samples: series(2, 100, nil),
			profile: cpuProfile(map[int][2]int{0: {5, 95}, 1: {5, 95}}), events: []traces.Event{}},
		hostBundle{name: "h2", ranks: []int{2, 3}, nccl: collectives([]int{2, 3}, 40, 4, arrive), samples: series(2, 100, gpu),
			profile: prof, events: events})
}

// onGPU1 applies edit to GPU 1's samples (rank 3's GPU on h2) for which
// pick(i) holds.
func onGPU1(pick func(i int) bool, edit func(s *traces.GPUSample)) func(i int, s *traces.GPUSample) {
	return func(i int, s *traces.GPUSample) {
		if s.GPU == 1 && pick(i) {
			edit(s)
		}
	}
}

func byAnalyzer(fs []traces.Finding, name string) []traces.Finding {
	var out []traces.Finding
	for _, f := range fs {
		if f.Analyzer == name {
			out = append(out, f)
		}
	}
	return out
}

func TestRootCauses(t *testing.T) {
	idle := onGPU1(func(i int) bool { return i%10 < 6 }, func(s *traces.GPUSample) { s.SMActive, s.GPUUtil = 0.02, 3 })
	hot := onGPU1(func(i int) bool { return i%2 == 0 }, func(s *traces.GPUSample) {
		s.ClockEventReasons, s.SMClockMHz, s.GPUTempC = traces.ClockEventSWThermalSlowdown, 1400, 88
	})
	xid := []traces.Event{{TimeNs: t0.Add(2e9).UnixNano(), Kind: traces.EventXID, GPU: 1, Rank: -1, Code: 79, Message: "GPU has fallen off the bus"}}
	// Rank 3 arrives 50 ms late at 40 collectives; the others arrive
	// (r+seq)%4 tenths of a millisecond late, 0.3, 0.6, 0.5 and 0.4 ms
	// together as seq goes round, so they wait 3 x 50 ms less that.
	wait := 40*0.150 - 10*(0.0003+0.0006+0.0005+0.0004)
	tests := []struct {
		name     string
		in       func(t *testing.T) *Input
		title    string
		explains []string // analyzers of the joined findings
		evidence map[string]float64
		words    []string // in the recommendation
	}{
		{
			name: "input-bound straggler",
			in: func(t *testing.T) *Input {
				return plantedCapture(t, 3, 50, idle, cpuProfile(map[int][2]int{2: {5, 95}, 3: {70, 30}}), []traces.Event{})
			},
			title:    "Input-bound straggler",
			explains: []string{nameInputBound, nameNCCLStraggler},
			evidence: map[string]float64{
				"nccl-straggler: arrived_last_share": 1, "nccl-straggler: others_waiting": wait,
				"input-bound: gpu_idle_share": 0.6, "input-bound: cpu_data_loading_share": 0.7,
			},
			words: []string{"Rank 3 on h2", "arrived last at 100% of its collectives", "idled 60%", "70% of its CPU samples", "num_workers"},
		},
		{
			name:     "thermal straggler",
			in:       func(t *testing.T) *Input { return plantedCapture(t, 3, 50, hot, nil, []traces.Event{}) },
			title:    "Thermal straggler",
			explains: []string{nameNCCLStraggler, nameThrottle},
			evidence: map[string]float64{
				"nccl-straggler: arrived_last_share": 1, "throttle: thermal_time_share": 0.5,
				"throttle: sm_clock_mean_throttled": 1400, "throttle: sm_clock_reference": 1980,
			},
			words: []string{"thermally throttled 50%", "1400 MHz against 1980 MHz", "75 C on average", "cooling"},
		},
		{
			name: "failing GPU beats the throttling it causes",
			in:   func(t *testing.T) *Input { return plantedCapture(t, 3, 50, hot, nil, xid) },
			// hw-faults and throttle both speak of GPU 1; the fault is the cause.
			title:    "Failing GPU",
			explains: []string{nameHWFaults, nameNCCLStraggler},
			evidence: map[string]float64{"nccl-straggler: others_waiting": wait, "hw-faults: events": 1},
			words:    []string{"XID 79: GPU has fallen off the bus", "dcgmi diag"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in(t)
			fs, err := Run(t.Context(), in, All)
			if err != nil {
				t.Fatal(err)
			}
			rcs := byAnalyzer(fs, RootCause.Name)
			if len(rcs) != 1 {
				t.Fatalf("want one root cause, got %d: %+v", len(rcs), rcs)
			}
			rc := rcs[0]
			if !strings.HasPrefix(rc.Title, tt.title) || rc.Scope.Host != "h2" || rc.Scope.Rank != 3 || rc.Scope.GPU != 1 {
				t.Errorf("root cause %q at %+v, want %q at h2 rank 3 gpu 1", rc.Title, rc.Scope, tt.title)
			}
			check(t, rc, tt.evidence)
			if !near(rc.Impact.GPUSeconds, wait) || !near(rc.Impact.WindowShare, wait/40) {
				t.Errorf("impact %+v, want the straggler's %v GPU-s of the 40 GPU-s window", rc.Impact, wait)
			}
			for _, w := range tt.words {
				if !strings.Contains(rc.Recommendation, w) {
					t.Errorf("recommendation lacks %q: %s", w, rc.Recommendation)
				}
			}
			// Linked both ways; the joined findings stay.
			var joined []string
			for _, f := range fs {
				if slices.Contains(rc.Explains, f.ID) {
					joined = append(joined, f.Analyzer)
					if !slices.Equal(f.RootCauses, []string{rc.ID}) {
						t.Errorf("%s finding links %v, want [%s]", f.Analyzer, f.RootCauses, rc.ID)
					}
				} else if len(f.RootCauses) > 0 {
					t.Errorf("%s finding %q links %v but is not explained", f.Analyzer, f.Title, f.RootCauses)
				}
			}
			slices.Sort(joined)
			if !slices.Equal(slices.Compact(joined), tt.explains) || len(rc.Explains) != len(joined) {
				t.Errorf("joined %v (explains %d IDs), want %v", joined, len(rc.Explains), tt.explains)
			}
			if rc.Lineage.Inputs == nil || rc.ID != FindingID(&rc) || rc.Lineage.AnalyzerVersions[nameNCCLStraggler] != NCCLStraggler.Version {
				t.Errorf("root cause lacks lineage or a stable ID: %+v", rc)
			}
			// Correlating again (the runner does, after a backfill) changes nothing.
			if again := Correlate(in, fs); !slices.EqualFunc(again, fs, func(a, b traces.Finding) bool {
				return a.ID == b.ID && slices.Equal(a.RootCauses, b.RootCauses) && slices.Equal(a.Explains, b.Explains)
			}) {
				t.Errorf("Correlate is not idempotent:\n%v\n%v", again, fs)
			}
		})
	}
}

func TestNoRootCause(t *testing.T) {
	idle := onGPU1(func(i int) bool { return i%10 < 6 }, func(s *traces.GPUSample) { s.SMActive, s.GPUUtil = 0.02, 3 })
	hot := onGPU1(func(i int) bool { return i%2 == 0 }, func(s *traces.GPUSample) {
		s.ClockEventReasons, s.SMClockMHz = traces.ClockEventSWThermalSlowdown, 1400
	})
	loading := cpuProfile(map[int][2]int{2: {5, 95}, 3: {70, 30}})
	tests := []struct {
		name  string
		in    func(t *testing.T) *Input
		finds []string // analyzers that must still report
	}{
		{"clean capture", func(t *testing.T) *Input { return plantedCapture(t, -1, 0, nil, nil, []traces.Event{}) }, nil},
		{"problems but no straggler", func(t *testing.T) *Input {
			return plantedCapture(t, -1, 0, func(i int, s *traces.GPUSample) { idle(i, s); hot(i, s) }, loading, []traces.Event{})
		}, []string{nameInputBound, nameThrottle}},
		// Rank 1 straggles on h1; the throttled GPU and the starved rank are rank 3's on h2.
		{"straggler elsewhere", func(t *testing.T) *Input {
			return plantedCapture(t, 1, 50, func(i int, s *traces.GPUSample) { idle(i, s); hot(i, s) }, loading, []traces.Event{})
		}, []string{nameInputBound, nameNCCLStraggler, nameThrottle}},
		{"straggler with nothing to explain it", func(t *testing.T) *Input { return plantedCapture(t, 3, 50, nil, nil, []traces.Event{}) },
			[]string{nameNCCLStraggler}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs, err := Run(t.Context(), tt.in(t), All)
			if err != nil {
				t.Fatal(err)
			}
			if rcs := byAnalyzer(fs, RootCause.Name); len(rcs) != 0 {
				t.Errorf("want no root cause, got %+v", rcs)
			}
			for _, name := range tt.finds {
				if len(byAnalyzer(fs, name)) == 0 {
					t.Errorf("the planted %s finding is missing", name)
				}
			}
			if tt.finds == nil && len(fs) != 0 {
				t.Errorf("clean capture has findings: %+v", fs)
			}
			for _, f := range fs {
				if len(f.RootCauses) > 0 {
					t.Errorf("%s finding links root causes %v", f.Analyzer, f.RootCauses)
				}
			}
		})
	}
}
