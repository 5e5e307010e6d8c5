package analyzers

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/logparse"
)

// cri wraps a line as containerd writes it, at t0+at.
func cri(at time.Duration, line string) string {
	return t0.Add(at).UTC().Format(time.RFC3339Nano) + " stdout F " + line
}

// parseLog runs lines through the agent's log parser, as the tailer would.
func parseLog(lines []string) []traces.Event {
	p := logparse.NewParser(0)
	var out []traces.Event
	for _, l := range lines {
		out = p.Feed([]byte(l), t0, out)
	}
	return out
}

// javaClassicRebalance is what one eager classic member logs for one
// rebalance that pauses it from `from` to `to`.
func javaClassicRebalance(client string, gen int, from, to time.Duration) []string {
	p := fmt.Sprintf("INFO [Consumer clientId=%s, groupId=infer] ", client)
	return []string{
		cri(from, p+"Request joining group due to: group is already rebalancing (org.apache.kafka.clients.consumer.internals.ConsumerCoordinator)"),
		cri(from+time.Millisecond, p+"Revoke previously assigned partitions requests-0, requests-1 (org.apache.kafka.clients.consumer.internals.ConsumerCoordinator)"),
		cri(from+2*time.Millisecond, p+"(Re-)joining group (org.apache.kafka.clients.consumer.internals.ConsumerCoordinator)"),
		cri(to-time.Second, p+fmt.Sprintf("Successfully joined group with generation Generation{generationId=%d, memberId='%s-4f1e', protocol='range'}", gen, client)),
		cri(to-time.Millisecond, p+fmt.Sprintf("Successfully synced group in generation Generation{generationId=%d, memberId='%s-4f1e', protocol='range'}", gen, client)),
		cri(to, p+"Adding newly assigned partitions: requests-0 (org.apache.kafka.clients.consumer.internals.ConsumerCoordinator)"),
	}
}

func TestRebalanceRollingRestartStorm(t *testing.T) {
	// Three classic eager consumers on one 4-GPU host. A rolling restart
	// takes each down in turn: the other two pause 3 s when it leaves, all
	// three pause 4 s when it comes back.
	logs := map[string][]string{}
	for _, c := range []string{"c0", "c1", "c2"} {
		logs[c] = []string{
			cri(0, "INFO ConsumerConfig values: "),
			cri(0, "\tgroup.protocol = classic"),
			cri(0, "\tpartition.assignment.strategy = [class org.apache.kafka.clients.consumer.RangeAssignor]"),
		}
	}
	gen := 1
	for k, restarted := range []string{"c0", "c1", "c2"} {
		at := time.Minute + time.Duration(k)*time.Minute
		for _, c := range []string{"c0", "c1", "c2"} {
			if c != restarted {
				logs[c] = append(logs[c], javaClassicRebalance(c, gen, at, at+3*time.Second)...)
			}
		}
		gen++
		for _, c := range []string{"c0", "c1", "c2"} {
			logs[c] = append(logs[c], javaClassicRebalance(c, gen, at+20*time.Second, at+24*time.Second)...)
		}
		gen++
	}
	var events []traces.Event
	for _, c := range []string{"c0", "c1", "c2"} {
		events = append(events, parseLog(logs[c])...)
	}
	in := writeCapture(t, "", hostBundle{name: "h0", ranks: []int{0, 1, 2, 3}, seconds: 1800, events: events})
	fs := run(t, Rebalance, in)
	if len(fs) != 1 {
		t.Fatalf("findings %+v", fs)
	}
	f := fs[0]
	check(t, f, map[string]float64{
		"rebalances": 6, "rebalances_per_hour": 12, "member_pauses": 15, "pause_p50": 4, "pause_p99": 4, "pause_max": 4,
		"storms": 1, "most_rebalances_in_storm_window": 6, "gpu_seconds_idled": 84, "unfinished_pauses": 0,
	})
	if f.Severity != traces.SeverityWarning || f.Impact.GPUSeconds != 84 {
		t.Errorf("severity %s impact %v, want a warning (storm) costing 84 GPU-s", f.Severity, f.Impact)
	}
	for _, want := range []string{"classic protocol, eager", "Kafka consumer (Java)"} {
		if !strings.Contains(f.Title, want) {
			t.Errorf("title %q lacks %q", f.Title, want)
		}
	}
	for _, want := range []string{"group.protocol=consumer", "KIP-848", "cooperative-sticky", "group.instance.id"} {
		if !strings.Contains(f.Recommendation, want) {
			t.Errorf("recommendation lacks %q: %s", want, f.Recommendation)
		}
	}
}

func TestRebalanceProtocols(t *testing.T) {
	member := func(client, id string, at time.Duration) []string {
		p := fmt.Sprintf("INFO [Consumer instanceId=%s, clientId=%s, groupId=infer] Member %s with epoch %%d transitioned from %%s to %%s. (org.apache.kafka.clients.consumer.internals.ConsumerMembershipManager)", client, client, id)
		return []string{
			cri(0, "\tgroup.protocol = consumer"),
			cri(at, fmt.Sprintf(p, 5, "STABLE", "RECONCILING")),
			cri(at+150*time.Millisecond, fmt.Sprintf(p, 5, "RECONCILING", "ACKNOWLEDGING")),
			cri(at+200*time.Millisecond, fmt.Sprintf(p, 6, "ACKNOWLEDGING", "STABLE")),
		}
	}
	kip848 := append(parseLog(member("c0", "AAAA", 100*time.Second)), parseLog(member("c1", "BBBB", 100*time.Second+20*time.Millisecond))...)

	rdkafka := parseLog([]string{
		fmt.Sprintf(`%%7|%d.000|REBALANCE|rdkafka#consumer-1| [thrd:main]: Group "infer" initiating rebalance (EAGER) in state up (join-state steady) with 2 assigned partition(s): rebalance in progress`, t0.Unix()+60),
		fmt.Sprintf(`%%7|%d.001|CGRPJOINSTATE|rdkafka#consumer-1| [thrd:main]: Group "infer" changed join state steady -> wait-unassign-call (state up)`, t0.Unix()+60),
		fmt.Sprintf(`%%7|%d.751|CGRPJOINSTATE|rdkafka#consumer-1| [thrd:main]: Group "infer" changed join state wait-assign-call -> steady (state up)`, t0.Unix()+62),
	})

	elastic := parseLog([]string{
		cri(60*time.Second, "[2026-11-01 12:01:00,000] torch.distributed.elastic.agent.server.api: [INFO] [default] Worker group FAILED. 2/3 attempts left; will restart worker group"),
		cri(90*time.Second, "[2026-11-01 12:01:30,000] torch.distributed.elastic.agent.server.api: [INFO] [default] Rendezvous complete for workers. Result: restart_count=1"),
	})

	tests := []struct {
		name     string
		events   []traces.Event
		gpus     int
		want     map[string]float64
		severity string
		title    string
		advice   []string
	}{
		{"kip-848", kip848, 2, map[string]float64{"rebalances": 1, "pause_p50": 0.15, "gpu_seconds_idled": 0.17 * 2},
			traces.SeverityInfo, "consumer protocol, cooperative", []string{"already reconciles incrementally"}},
		{"librdkafka eager", rdkafka, 1, map[string]float64{"rebalances": 1, "pause_max": 2.75},
			traces.SeverityInfo, "librdkafka", []string{"group.protocol=consumer", "cooperative-sticky"}},
		{"torch elastic restart", elastic, 8, map[string]float64{"rebalances": 1, "pause_max": 30, "gpu_seconds_idled": 240},
			traces.SeverityWarning, "torch elastic", []string{"failing worker"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ranks := make([]int, tt.gpus)
			for i := range ranks {
				ranks[i] = i
			}
			in := writeCapture(t, "", hostBundle{name: "h0", ranks: ranks, seconds: 600, events: tt.events})
			fs := run(t, Rebalance, in)
			if len(fs) != 1 {
				t.Fatalf("findings %+v", fs)
			}
			check(t, fs[0], tt.want)
			if fs[0].Severity != tt.severity || !strings.Contains(fs[0].Title, tt.title) {
				t.Errorf("severity %s title %q; want %s, %q", fs[0].Severity, fs[0].Title, tt.severity, tt.title)
			}
			for _, a := range tt.advice {
				if !strings.Contains(fs[0].Recommendation, a) {
					t.Errorf("recommendation lacks %q: %s", a, fs[0].Recommendation)
				}
			}
		})
	}
}

// A pause still open when the window closes counts up to the end; events
// of other kinds are ignored.
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
	check(t, fs[0], map[string]float64{"unfinished_pauses": 1, "pause_max": 5, "gpu_seconds_idled": 5})
	if fs[0].Severity != traces.SeverityCritical {
		t.Errorf("half the window idle: severity %s, want critical", fs[0].Severity)
	}
}

func TestStormStats(t *testing.T) {
	at := func(mins ...float64) []interval {
		var out []interval
		for _, m := range mins {
			ns := int64(m * float64(time.Minute))
			out = append(out, interval{ns, ns + int64(time.Second)})
		}
		return out
	}
	w := (10 * time.Minute).Nanoseconds()
	tests := []struct {
		starts       []interval
		most, storms int
	}{
		{at(0, 1, 2, 30, 31, 32, 60), 3, 2},
		{at(0, 5, 10, 15, 20), 3, 1}, // 0,5,10 is one storm; 15,20 are two short of the next
		{at(0, 11, 22), 1, 0},
		{nil, 0, 0},
	}
	for _, tt := range tests {
		most, storms := stormStats(tt.starts, w, 3)
		if most != tt.most || storms != tt.storms {
			t.Errorf("%v: most %d storms %d, want %d %d", tt.starts, most, storms, tt.most, tt.storms)
		}
	}
}
