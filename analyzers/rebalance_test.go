package analyzers

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/logparse"
)

// The fixtures of testdata/logs (TestLogFixtures) check every number of
// whole scenarios; these tests check the pieces and the edge cases.

// cri wraps a line as containerd writes it, at t0+at.
func cri(at time.Duration, line string) string {
	return t0.Add(at).UTC().Format(time.RFC3339Nano) + " stdout F " + line
}

// parseLog runs lines through the log parser, as one file would.
func parseLog(lines []string) []traces.Event {
	p := logparse.NewParser(0)
	var out []traces.Event
	for _, l := range lines {
		out = p.Feed([]byte(l), time.Time{}, out)
	}
	return p.Flush(time.Time{}, out)
}

// A pause still open when the window closes counts up to the end and is
// unfinished; events of other kinds are ignored.
func TestRebalanceUnfinished(t *testing.T) {
	events := parseLog([]string{
		cri(5*time.Second, "INFO [Consumer clientId=c0, groupId=g] (Re-)joining group"),
		cri(6*time.Second, "RuntimeError: CUDA error: unrelated"),
	})
	in := writeCapture(t, "", hostBundle{name: "h0", ranks: []int{0}, seconds: 10, events: events})
	fs := run(t, Rebalance, in)
	if len(fs) != 1 {
		t.Fatalf("findings %+v", fs)
	}
	check(t, fs[0], map[string]float64{"unfinished": 1, "pause_max": 5, "gpu_seconds_idled": 5, "rebalances": 1})
	if fs[0].Severity != traces.SeverityCritical {
		t.Errorf("half the window idle: severity %s, want critical", fs[0].Severity)
	}
}

// The case: one consumer restarts (same client id, new member id);
// the leave and the rejoin 18 s later are two rebalances, not one of 20 s.
func TestRebalanceRestartIsTwoGenerations(t *testing.T) {
	p := "INFO [Consumer clientId=consumer-infer-1, groupId=infer] "
	gen := func(g int, m string) string {
		return fmt.Sprintf("Generation{generationId=%d, memberId='%s', protocol='range'}", g, m)
	}
	events := parseLog([]string{
		cri(0, p+"Revoke previously assigned partitions requests-0"),
		cri(2*time.Millisecond, p+"Member consumer-infer-1-old sending LeaveGroup request to coordinator k:9092 (id: 1 rack: null) due to the consumer is being closed"),
		cri(3*time.Millisecond, "INFO [Consumer clientId=consumer-infer-2, groupId=infer] Request joining group due to: group is already rebalancing"),
		cri(2*time.Second, "INFO [Consumer clientId=consumer-infer-2, groupId=infer] Successfully joined group with generation "+gen(8, "consumer-infer-2-b")),
		cri(2*time.Second+2*time.Millisecond, "INFO [Consumer clientId=consumer-infer-2, groupId=infer] Adding newly assigned partitions: requests-0, requests-1"),
		cri(18*time.Second, p+"Subscribed to topic(s): requests"),
		cri(18*time.Second+time.Millisecond, p+"(Re-)joining group"),
		cri(19*time.Second, "INFO [Consumer clientId=consumer-infer-2, groupId=infer] Request joining group due to: group is already rebalancing"),
		cri(20*time.Second, "INFO [Consumer clientId=consumer-infer-2, groupId=infer] Successfully joined group with generation "+gen(9, "consumer-infer-2-b")),
		cri(20*time.Second, p+"Successfully joined group with generation "+gen(9, "consumer-infer-1-new")),
		cri(20*time.Second+2*time.Millisecond, p+"Adding newly assigned partitions: requests-0"),
		cri(20*time.Second+2*time.Millisecond, "INFO [Consumer clientId=consumer-infer-2, groupId=infer] Adding newly assigned partitions: requests-1"),
	})
	in := writeCapture(t, "", hostBundle{name: "h0", ranks: []int{0}, seconds: 60, events: events})
	fs := run(t, Rebalance, in)
	if len(fs) != 1 {
		t.Fatalf("findings %+v", fs)
	}
	// gen 8: 0.003 s .. 2.002 s; gen 9: 18.001 s .. 20.002 s.
	check(t, fs[0], map[string]float64{"rebalances": 2, "pause_max": 2.001, "pause_p50": 1.999, "pause_p50_linear": 2, "members": 2, "members_left": 1})
}

// KIP-848 partitions revoked whose new owner's log is missing: the
// reconciliation ends when every member was STABLE, once the grace passes,
// and counts them.
func TestReconciliationWithMissingOwner(t *testing.T) {
	st := func(at time.Duration, id string, from, to string) string {
		return cri(at, fmt.Sprintf("INFO [Consumer clientId=c-%s, groupId=g] Member %s with epoch 3 transitioned from %s to %s.", id, id, from, to))
	}
	events := parseLog([]string{
		st(0, "A", "STABLE", "RECONCILING"),
		cri(10*time.Millisecond, "INFO [Consumer clientId=c-A, groupId=g] Revoking previously assigned partitions t-0, t-1"),
		st(100*time.Millisecond, "A", "RECONCILING", "ACKNOWLEDGING"),
		st(200*time.Millisecond, "A", "ACKNOWLEDGING", "STABLE"),
		// 40 s later, an unrelated change: the first one ended at 0.2 s.
		st(40*time.Second, "A", "STABLE", "RECONCILING"),
		st(41*time.Second, "A", "RECONCILING", "STABLE"),
	})
	in := writeCapture(t, "", hostBundle{name: "h0", ranks: []int{0}, seconds: 60, events: events})
	fs := run(t, Rebalance, in)
	if len(fs) != 1 {
		t.Fatalf("findings %+v", fs)
	}
	check(t, fs[0], map[string]float64{"reconciliations": 2, "reconciliation_max": 1, "reconciliation_p50": 0.2, "partitions_never_reassigned": 2})
	if _, ok := evidence(fs[0])["gpu_seconds_idled"]; ok || fs[0].Impact.GPUSeconds != 0 {
		t.Errorf("a KIP-848 reconciliation charged as idle: %+v", fs[0])
	}
	if !strings.Contains(fs[0].Title, "no stop-the-world pause") {
		t.Errorf("title %q", fs[0].Title)
	}
}

func TestStorms(t *testing.T) {
	at := func(mins ...float64) []int64 {
		var out []int64
		for _, m := range mins {
			out = append(out, int64(m*float64(time.Minute)))
		}
		return out
	}
	w := (10 * time.Minute).Nanoseconds()
	tests := []struct {
		starts []int64
		want   [][2]int
	}{
		{at(0, 1, 2, 30, 31, 32, 60), [][2]int{{0, 3}, {3, 6}}},
		{at(0, 5, 10, 15, 20), [][2]int{{0, 5}}}, // overlapping windows of 3 merge
		{at(0, 11, 22), nil},
		{at(0, 1, 2, 3, 20, 21), [][2]int{{0, 4}}},
		{nil, nil},
	}
	for _, tt := range tests {
		if got := storms(tt.starts, w, 3); !slices.Equal(got, tt.want) {
			t.Errorf("%v: storms %v, want %v", tt.starts, got, tt.want)
		}
	}
}

func TestQuantiles(t *testing.T) {
	tests := []struct {
		vals            []float64
		q               float64
		nearest, linear float64
	}{
		{[]float64{1, 3}, 0.5, 1, 2}, // the issue: p50 of two values is not the larger one
		{[]float64{1, 2, 3, 4}, 0.5, 2, 2.5},
		{[]float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 0.99, 10, 9.91},
		{[]float64{5}, 0.99, 5, 5},
		{[]float64{1, 2, 3}, 0, 1, 1},
		{nil, 0.5, 0, 0},
	}
	for _, tt := range tests {
		if n, l := nearestRank(tt.vals, tt.q), linearQuantile(tt.vals, tt.q); !near(n, tt.nearest) || !near(l, tt.linear) {
			t.Errorf("%v q=%v: nearest-rank %v linear %v, want %v %v", tt.vals, tt.q, n, l, tt.nearest, tt.linear)
		}
	}
}
