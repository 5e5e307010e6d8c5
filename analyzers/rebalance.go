package analyzers

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// RebalanceConfig tunes the rebalance analyzer.
type RebalanceConfig struct {
	// StormCount rebalances of one group within StormWindow make a storm,
	// as a rolling restart without static membership causes.
	StormCount  int
	StormWindow time.Duration
	// WarnShare and CritShare grade the GPU time idled during pauses, as a
	// share of the window's GPU time; a storm is at least a warning.
	WarnShare, CritShare float64
}

// DefaultRebalanceConfig: a storm is 3 rebalances within 10 minutes; 5 % of
// the window's GPU time idled is a warning, 25 % critical.
func DefaultRebalanceConfig() RebalanceConfig {
	return RebalanceConfig{StormCount: 3, StormWindow: 10 * time.Minute, WarnShare: 0.05, CritShare: 0.25}
}

// Rebalance is the rebalance analyzer with the default configuration.
var Rebalance = NewRebalance(DefaultRebalanceConfig())

// NewRebalance returns the rebalance analyzer with cfg.
func NewRebalance(cfg RebalanceConfig) *Analyzer {
	return &Analyzer{
		Name:    "rebalance",
		Version: "1",
		Doc: `group-membership rebalances: Kafka consumer groups and torch elastic restarts

From the rebalance events of events.jsonl (the agent's log tailer parses the
Kafka Java client, classic and consumer protocols, librdkafka and torch
elastic). Each member (a Kafka client id, an elastic agent) pauses from its
first "start" after an "end" to the next "end": that is its stop-the-world
pause (a start still open at the window's end counts up to the end). The
pauses of a group's members that overlap are one rebalance. Reported per
client and group: rebalances and rebalances per hour, the pause per member
and rebalance (p50, p99, max), GPU-seconds idled (on each host, the union of
its members' pauses times the host's GPUs), storms (StormCount rebalances
within StormWindow, default 3 in 10 min), and the protocol (classic or
consumer, KIP-848) and strategy (eager or cooperative) in use.

Severity: by idled GPU time over the window's (WarnShare 5 %, CritShare
25 %); a storm is at least a warning; otherwise info. The recommendation
fits the client: for Kafka's classic eager protocol, group.protocol=consumer
(KIP-848, Kafka 4.0+) or at least cooperative-sticky assignment, and static
membership (group.instance.id) against rolling-restart storms; for torch
elastic restarts, the failing worker.`,
		Requires: []string{traces.PartEvents},
		Run:      func(pass *Pass) error { return runRebalance(pass, cfg) },
	}
}

// interval is a span of time in Unix nanoseconds.
type interval struct{ from, to int64 }

// stormStats returns the most rebalances starting within any window of w
// ns, and the storms: runs of at least k rebalances within w of the run's
// first, counted without overlap. Both in one pass over the sorted starts.
func stormStats(rebalances []interval, w int64, k int) (most, storms int) {
	j := 0 // rebalances[i:j] start within w of rebalances[i]
	stormEnd := 0
	for i := range rebalances {
		j = max(j, i)
		for j < len(rebalances) && rebalances[j].from-rebalances[i].from <= w {
			j++
		}
		most = max(most, j-i)
		if i >= stormEnd && j-i >= k {
			storms++
			stormEnd = j
		}
	}
	return most, storms
}

// union merges overlapping intervals, sorted by start.
func union(iv []interval) []interval {
	slices.SortFunc(iv, func(a, b interval) int { return cmp.Compare(a.from, b.from) })
	var out []interval
	for _, x := range iv {
		if n := len(out); n > 0 && x.from <= out[n-1].to {
			out[n-1].to = max(out[n-1].to, x.to)
			continue
		}
		out = append(out, x)
	}
	return out
}

func runRebalance(pass *Pass, cfg RebalanceConfig) error {
	type member struct {
		host   *Host
		events []traces.Event
	}
	type groupKey struct{ client, group string }
	members := map[groupKey]map[string]*member{} // by host and member name
	err := EachEvent(pass, func(h *Host, e *traces.Event) error {
		if e.Kind != traces.EventRebalance || e.Attrs[logAttrGroup] == "" {
			return nil
		}
		gk := groupKey{e.Attrs[logAttrClient], e.Attrs[logAttrGroup]}
		if members[gk] == nil {
			members[gk] = map[string]*member{}
		}
		mk := h.Manifest.Host + "\x00" + e.Attrs[logAttrMember]
		m := members[gk][mk]
		if m == nil {
			m = &member{host: h}
			members[gk][mk] = m
		}
		m.events = append(m.events, *e)
		return nil
	})
	if err != nil {
		return err
	}
	window := windowGPUSeconds(pass.Input)
	keys := slices.SortedFunc(maps.Keys(members), func(a, b groupKey) int {
		return cmp.Or(cmp.Compare(a.client, b.client), cmp.Compare(a.group, b.group))
	})
	for _, gk := range keys {
		var (
			pauses    []float64 // seconds, per member and rebalance
			all       []interval
			perHost   = map[*Host][]interval{}
			open      int
			protocol  = ""
			strategy  = ""
			static    = false
			reasons   = map[string]int{}
			hostOrder []*Host
		)
		for _, mk := range slices.Sorted(maps.Keys(members[gk])) {
			m := members[gk][mk]
			slices.SortStableFunc(m.events, func(a, b traces.Event) int { return cmp.Compare(a.TimeNs, b.TimeNs) })
			start := int64(-1)
			for _, e := range m.events {
				if p := e.Attrs[logAttrProtocol]; p == "consumer" || protocol == "" && p != "" {
					protocol = p
				}
				if s := e.Attrs[logAttrStrategy]; s != "" {
					strategy = s
				}
				if e.Attrs["instance_id"] != "" {
					static = true
				}
				switch e.Attrs[logAttrPhase] {
				case "start":
					if start < 0 {
						start = e.TimeNs
						reasons[e.Attrs["reason"]]++
					}
				case "end":
					if start >= 0 {
						all = append(all, interval{start, e.TimeNs})
						perHost[m.host] = append(perHost[m.host], interval{start, e.TimeNs})
						pauses = append(pauses, float64(e.TimeNs-start)/1e9)
						start = -1
					}
				}
			}
			if start >= 0 { // still paused when the window closed
				end := max(m.host.Manifest.End.UnixNano(), start)
				all = append(all, interval{start, end})
				perHost[m.host] = append(perHost[m.host], interval{start, end})
				pauses = append(pauses, float64(end-start)/1e9)
				open++
			}
			if !slices.Contains(hostOrder, m.host) {
				hostOrder = append(hostOrder, m.host)
			}
		}
		if len(pauses) == 0 {
			continue
		}
		rebalances := union(all)
		most, storms := stormStats(rebalances, cfg.StormWindow.Nanoseconds(), cfg.StormCount)
		slices.Sort(pauses)
		var hours float64
		for _, h := range hostOrder {
			hours = max(hours, h.Seconds()/3600)
		}
		f := finding{
			Title: fmt.Sprintf("%d %s rebalances of group %s", len(rebalances), clientName(gk.client), gk.group),
			Evidence: []traces.Metric{
				metric("rebalances", float64(len(rebalances)), unitCount),
				metric("rebalances_per_hour", float64(len(rebalances))/max(hours, 1e-9), "1/h"),
				metric("pause_p50", quantile(pauses, 0.5), unitSeconds),
				metric("pause_p99", quantile(pauses, 0.99), unitSeconds),
				metric("pause_max", pauses[len(pauses)-1], unitSeconds),
				metric("member_pauses", float64(len(pauses)), unitCount),
				metric("unfinished_pauses", float64(open), unitCount),
				metric("storms", float64(storms), unitCount),
				metric("most_rebalances_in_storm_window", float64(most), unitCount),
			},
			Recommendation: rebalanceAdvice(gk.client, protocol, strategy, static, storms > 0, reasons),
		}
		if protocol != "" {
			f.Title += " (" + protocol + " protocol"
			if strategy != "" {
				f.Title += ", " + strategy
			}
			f.Title += ")"
		}
		var lost float64
		for _, h := range hostOrder {
			var idle float64
			for _, iv := range union(perHost[h]) {
				from := max(iv.from, h.Manifest.Start.UnixNano())
				to := min(iv.to, h.Manifest.End.UnixNano())
				if to > from {
					idle += float64(to-from) / 1e9
				}
			}
			lost += idle * float64(len(h.Manifest.GPUs))
			f.Targets = append(f.Targets, target{Host: h, GPU: -1, Rank: -1, Lost: idle * float64(len(h.Manifest.GPUs)),
				Evidence: []traces.Metric{metric("paused", idle, unitSeconds), metric("gpus", float64(len(h.Manifest.GPUs)), unitCount)}})
		}
		sev := gradeAbove(share(lost, window), cfg.WarnShare, cfg.CritShare)
		if sev == "" && storms > 0 {
			sev = traces.SeverityWarning
		}
		if sev == "" {
			sev = traces.SeverityInfo
		}
		for i := range f.Targets {
			f.Targets[i].Severity = sev
		}
		f.Evidence = append(f.Evidence, metric("gpu_seconds_idled", lost, unitGPUSec))
		f.report(pass)
	}
	return nil
}

// The attributes the agent's log tailer writes (agent/logtail).
const (
	logAttrClient   = "client"
	logAttrGroup    = "group"
	logAttrMember   = "member"
	logAttrPhase    = "phase"
	logAttrProtocol = "protocol"
	logAttrStrategy = "strategy"
)

func clientName(c string) string {
	switch c {
	case "java":
		return "Kafka consumer (Java)"
	case "librdkafka":
		return "Kafka consumer (librdkafka)"
	case "torchelastic":
		return "torch elastic"
	}
	return c
}

// rebalanceAdvice is the recommendation that fits the client and protocol.
func rebalanceAdvice(client, protocol, strategy string, static, storm bool, reasons map[string]int) string {
	var b strings.Builder
	switch {
	case client == "torchelastic":
		b.WriteString("Each restart stops every worker until the rendezvous completes. ")
		if reasons["failed"]+reasons["unhealthy"] > 0 {
			b.WriteString("Workers failed: find the failing worker (the crash, OOM or NCCL-timeout incidents of this job name its rank and stack) and fix it rather than relying on max_restarts. ")
		}
		if reasons["new_nodes"] > 0 {
			b.WriteString("Nodes joined mid-run and forced restarts: set --nnodes MIN:MAX so the job starts at its full size, or admit nodes together. ")
		}
		b.WriteString("Checkpoint often enough that a restart loses little.")
	case protocol == "consumer":
		b.WriteString("The consumer protocol (KIP-848) already reconciles incrementally; remaining pauses come from members joining and leaving. ")
		if storm || !static {
			b.WriteString("For rolling restarts set group.instance.id (static membership) so a restarted member gets its partitions back without a rebalance. ")
		}
		b.WriteString("Keep per-poll work below max.poll.interval.ms so members are not expelled.")
	default:
		if strategy != "cooperative" {
			b.WriteString("The classic protocol with an eager assignor revokes every partition of every member on each rebalance (stop-the-world). ")
		}
		b.WriteString("Set group.protocol=consumer (KIP-848, Kafka 4.0+ brokers and clients) so that rebalances are incremental and broker-driven; ")
		if strategy != "cooperative" {
			b.WriteString("until then, at least partition.assignment.strategy=cooperative-sticky. ")
		} else {
			b.WriteString("cooperative-sticky already limits revocations. ")
		}
		if storm || !static {
			b.WriteString("For rolling restarts, use static membership: group.instance.id per pod (e.g. the StatefulSet pod name) with session.timeout.ms above the restart time.")
		}
	}
	return strings.TrimSpace(b.String())
}
