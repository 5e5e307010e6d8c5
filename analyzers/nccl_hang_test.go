package analyzers

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

func hangReport(state string, missing traces.NCCLHangRank) string {
	r := traces.NCCLHang{ID: "hang-abc", State: state, CommID: 0xfeed, Seq: 140, Op: "AllReduce", WorldSize: 4,
		StalledSince: t0, Detected: t0.Add(62 * time.Second),
		Ranks: []traces.NCCLHangRank{
			{Rank: 0, State: traces.HangRankArrived, LastSeq: 146}, {Rank: 1, State: traces.HangRankArrived, LastSeq: 146},
			missing, {Rank: 3, State: traces.HangRankArrived, LastSeq: 146},
		}}
	if state == traces.HangStateRecovered {
		r.Recovered = t0.Add(90 * time.Second)
	}
	b, _ := json.Marshal(r)
	return string(b)
}

// A hang report becomes a critical finding on the missing rank, naming
// where it is stuck, with its stack as frames; its recovery an info
// finding with the same subject.
func TestNCCLHang(t *testing.T) {
	outside := traces.NCCLHangRank{Rank: 2, PID: 1002, State: traces.HangRankMissing, LastSeq: 139, Stack: []string{"load_batch", "next", "train_step", "main"}}
	in := writeCapture(t, "", hostBundle{name: "h1", ranks: []int{0, 1, 2, 3}, hang: hangReport(traces.HangStateHung, outside)})
	fs := run(t, NCCLHang, in)
	if len(fs) != 1 {
		t.Fatalf("findings %+v", fs)
	}
	f := fs[0]
	if f.Severity != traces.SeverityCritical || f.Scope.Rank != 2 || f.Scope.GPU != 2 || f.Subject != "hang-abc" ||
		f.Title != "NCCL hang: rank 2 never arrived at collective 140 (AllReduce); 3 rank(s) wait inside it" ||
		!strings.Contains(f.Recommendation, "rank 2 is stuck outside NCCL, in load_batch < next < train_step < main") ||
		len(f.Frames) != 4 || f.Impact.GPUSeconds != 62*4 {
		t.Fatalf("finding %+v", f)
	}
	check(t, f, map[string]float64{"collective_seq": 140, "ranks_missing": 1, "ranks_inside_collective": 3, "stalled": 62})

	inside := traces.NCCLHangRank{Rank: 2, State: traces.HangRankMissing, InNCCL: true, InCall: "AllReduce (collective 140) since 12:00"}
	fs = run(t, NCCLHang, writeCapture(t, "", hostBundle{name: "h1", ranks: []int{0, 1, 2, 3}, hang: hangReport(traces.HangStateHung, inside)}))
	if len(fs) != 1 || !strings.Contains(fs[0].Recommendation, "rank 2 is stuck inside NCCL (AllReduce (collective 140) since 12:00)") ||
		!strings.Contains(fs[0].Recommendation, "network") {
		t.Fatalf("inside NCCL: %+v", fs)
	}

	fs = run(t, NCCLHang, writeCapture(t, "", hostBundle{name: "h1", ranks: []int{0, 1, 2, 3}, hang: hangReport(traces.HangStateRecovered, outside)}))
	if len(fs) != 1 || fs[0].Severity != traces.SeverityInfo || fs[0].Subject != "hang-abc" ||
		!strings.HasPrefix(fs[0].Title, "NCCL hang at collective 140 (AllReduce) recovered after 90 s") {
		t.Fatalf("recovery: %+v", fs)
	}
	check(t, fs[0], map[string]float64{"recovered": 1, "stalled": 90})

	bad := writeCapture(t, "", hostBundle{name: "h1", ranks: []int{0}, hang: `{"id":"x","state":"exploded"}`})
	if _, err := Run(t.Context(), bad, []*Analyzer{NCCLHang}); err == nil {
		t.Fatal("a malformed report was accepted")
	}
}
