package analyzers

import (
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// plantedStraggler is a 60 s window of 8 ranks on one host, one all-reduce
// per 1 s step, rank 3 arriving 540 ms after the others at every one: the
// other 7 ranks wait 540 ms of every second.
func plantedStraggler() hostBundle {
	var evs []traces.NCCLEvent
	for seq := range 60 {
		for r := range 8 {
			at := t0.Add(time.Duration(seq) * time.Second)
			if r == 3 {
				at = at.Add(540 * time.Millisecond)
			}
			evs = append(evs, traces.NCCLEvent{TimeNs: at.UnixNano(), PID: int32(pid(r)), Rank: int32(r), NRanks: 8,
				CommID: 0xabc, Op: "AllReduce", Seq: int64(seq), Count: 1 << 20, Datatype: "bfloat16", Bytes: 2 << 20, Peer: -1})
		}
	}
	return hostBundle{name: "h0", ranks: []int{0, 1, 2, 3, 4, 5, 6, 7}, seconds: 60, nccl: evs}
}

// historyFrom is a step history whose first step began at start, one row
// per rank up to the window.
func historyFrom(start time.Time, ranks int) []traces.StepSpan {
	var out []traces.StepSpan
	for r := range ranks {
		out = append(out, traces.StepSpan{Rank: int32(r), PID: int32(pid(r)), FirstIteration: 0, Steps: 1,
			StartNs: start.UnixNano(), EndNs: start.Add(time.Second).UnixNano(), MinNs: 1e9, MaxNs: 1e9, Source: traces.StepSourceMarker})
	}
	return out
}

func TestProjectedImpactOfAStraggler(t *testing.T) {
	const gpus = 8
	// The straggler's share of the job's GPU time: 7 of 8 GPUs wait 0.54 s a second.
	wantShare := 7 * 0.540 / gpus
	end := t0.Add(time.Minute)
	for _, tc := range []struct {
		name  string
		edit  func(h *hostBundle)
		start time.Time
		from  string
	}{
		{"run start from the step history", func(h *hostBundle) { h.history = historyFrom(t0.Add(-10*time.Hour), gpus) },
			t0.Add(-10 * time.Hour), traces.RunStartStepHistory},
		{"run start from the processes", nil, t0.Add(-5 * time.Hour), traces.RunStartProcessStart},
		{"run start unknown", nil, t0, traces.RunStartCapture},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hb := plantedStraggler()
			if tc.edit != nil {
				tc.edit(&hb)
			}
			in := writeCapture(t, "", hb)
			if tc.from == traces.RunStartProcessStart {
				for i := range in.Hosts[0].Manifest.Processes {
					in.Hosts[0].Manifest.Processes[i].Started = t0.Add(-5*time.Hour + time.Duration(i)*time.Second)
				}
			}
			fs := run(t, NCCLStraggler, in)
			if len(fs) != 1 || fs[0].Scope.Rank != 3 {
				t.Fatalf("findings %+v, want rank 3's straggler", fs)
			}
			p := fs[0].Impact.Projected
			if p == nil {
				t.Fatal("no projected impact")
			}
			hours := end.Sub(tc.start).Hours()
			want := wantShare * gpus * hours
			if math.Abs(p.GPUHoursRun-want) > 0.05*want {
				t.Errorf("projected %v GPU-hours over the run, want share %.4f x %d GPUs x %.2f h = %v within 5 %%", p.GPUHoursRun, wantShare, gpus, hours, want)
			}
			if math.Abs(p.GPUHoursPerDay-wantShare*gpus*24) > 0.05*wantShare*gpus*24 {
				t.Errorf("projected %v GPU-hours per day, want %v", p.GPUHoursPerDay, wantShare*gpus*24)
			}
			if p.GPUs != gpus || p.RunStartFrom != tc.from || !p.RunStart.Equal(tc.start) || math.Abs(p.RunHours-hours) > 1e-6 || p.OneOff {
				t.Errorf("projection %+v, want %d GPUs, run start %v from %s", p, gpus, tc.start, tc.from)
			}
			if !strings.HasPrefix(p.Basis, "projection: ") || !strings.Contains(p.Basis, "8 GPUs") {
				t.Errorf("basis %q does not state the projection", p.Basis)
			}
			if tc.from == traces.RunStartStepHistory && !strings.Contains(strings.Join(fs[0].Lineage.Inputs, " "), traces.PartStepHistory) {
				t.Errorf("lineage %v lacks the step history the run start came from", fs[0].Lineage.Inputs)
			}
			// The window impact is what it was: 60 s of 3.78 GPU-s lost a second.
			if !near(fs[0].Impact.GPUSeconds, 60*7*0.54) {
				t.Errorf("window impact %v GPU-s, want %v", fs[0].Impact.GPUSeconds, 60*7*0.54)
			}
		})
	}
}

// A partial capture (half the ranks) projects over the whole job's GPUs.
func TestProjectionOfAPartialCapture(t *testing.T) {
	in := writeCapture(t, "", plantedStraggler())
	in.Partial, in.MissingRanks = true, []int{8, 9, 10, 11, 12, 13, 14, 15}
	in.Hosts[0].Manifest.WorldSize = 16
	l := lifeOf(t.Context(), in)
	if l.gpus != 16 {
		t.Errorf("job GPUs %d, want 16 from the world size", l.gpus)
	}
}

// A corrupt step history does not stop the projection: it falls back on the
// next source and says why.
func TestProjectionWithCorruptHistory(t *testing.T) {
	hb := plantedStraggler()
	hb.history = historyFrom(t0.Add(-time.Hour), 8)
	in := writeCapture(t, "", hb)
	corruptPart(t, in, traces.PartStepHistory)
	fs, _ := Run(t.Context(), in, []*Analyzer{NCCLStraggler})
	if len(fs) != 1 || fs[0].Impact.Projected == nil {
		t.Fatalf("findings %+v", fs)
	}
	p := fs[0].Impact.Projected
	if p.RunStartFrom != traces.RunStartCapture || !strings.Contains(p.Basis, "step history unreadable") {
		t.Errorf("projection %+v, want the capture window as run start and a note on the history", p)
	}
}

// corruptPart flips a byte of host 0's part, so that its checksum fails.
func corruptPart(t *testing.T, in *Input, part string) {
	t.Helper()
	path := in.Hosts[0].Key(part)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A share measured on one rank's trace is that GPU's share: projected over
// a job of 8 GPUs it is an eighth of the job, the same GPU-hours. A
// one-off cost counts its occurrences and is spread over at least a day.
func TestProjectScopesAndOneOffs(t *testing.T) {
	l := jobLife{gpus: 8, gpuSeconds: 8 * 60, start: t0.Add(-47 * time.Hour), startFrom: traces.RunStartStepHistory, end: t0.Add(time.Hour)}
	rank := traces.Finding{Impact: traces.Impact{GPUSeconds: 0.001, WindowShare: 0.5, Projected: &traces.Projection{Share: 0.5, ScopeGPUs: 1}}}
	project(&rank, l)
	if p := rank.Impact.Projected; !near(p.Share, 0.5/8) || !near(p.GPUHoursPerDay, 12) || !near(p.GPUHoursRun, 0.5*48) {
		t.Errorf("rank-scoped projection %+v, want an eighth of the job: 12 GPU-h a day, 24 over 48 h", p)
	}
	warm := traces.Finding{Impact: traces.Impact{Projected: &traces.Projection{OneOff: true, OneOffGPUSeconds: 3600, Occurrences: 3}}}
	project(&warm, l)
	if p := warm.Impact.Projected; !near(p.GPUHoursRun, 3) || !near(p.GPUHoursPerDay, 3.0/2) || !strings.Contains(p.Basis, "3 time(s)") {
		t.Errorf("one-off projection %+v, want 3 GPU-h over 48 h: 1.5 a day", p)
	}
	l.start = l.end.Add(-time.Hour)
	project(&warm, l)
	if p := warm.Impact.Projected; !near(p.GPUHoursPerDay, 3) {
		t.Errorf("one-off within the first day: %v GPU-h per day, want all 3 of it", p.GPUHoursPerDay)
	}
}
