package analyzers

import (
	"cmp"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/logparse"
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
		Version: "2",
		Doc: `group-membership rebalances: Kafka consumer groups and torch elastic restarts

From the rebalance events of events.jsonl (traces/logparse parses the Kafka
Java client, classic and consumer protocols, librdkafka and torch elastic),
accounted as the package documentation of analyzers defines: members by
member id; classic: one rebalance per generation, from its first member's
pause to its last member's assignment; KIP-848: one reconciliation from the
first member leaving STABLE until all are STABLE and every revoked partition
is assigned again, never charged as stop-the-world idle; torch elastic: one
restart from the first worker stopped to the new worker group started.
Reported per client and group: rebalances (reconciliations, restarts) and
their rate per hour, the pause per rebalance (p50 and p99 nearest-rank, with
linear interpolation as a second figure, max, total), the most delayed
member of the longest one (a stuck consumer), GPU-seconds idled (eager
classic and elastic only: on each host the union of its members' pauses
times its GPUs), storms (StormCount starts within StormWindow, default 3 in
10 min, overlapping windows merged), the protocol (classic or consumer,
KIP-848) and strategy (eager or cooperative).

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

// Kinds of group change, by protocol.
const (
	KindRebalance      = "rebalance"      // classic protocol: one generation
	KindReconciliation = "reconciliation" // KIP-848
	KindRestart        = "restart"        // torch elastic
)

// GroupChange is one rebalance, reconciliation or restart of one group,
// accounted by definition. The events are those of traces/logparse (kind
// rebalance); a group is one client kind (Kafka Java, librdkafka, torch
// elastic) and group id (elastic: the agent's role).
//
//   - Members are identified by their member id (the coordinator's, as the
//     client logs it); the client id is only a label, since a restarted pod
//     keeps its client id and gets a new member id. Lines before a member
//     id is known belong to the stream (file and client id) they came from
//     and go to the member id that stream learns next; "Subscribed to
//     topic(s)" (a new consumer instance) and a LeaveGroup start the stream
//     afresh.
//   - Classic protocol (Java, librdkafka): a rebalance is one generation.
//     Each member's pause runs from its first start (request to join,
//     revocation) after its previous assignment to its next assignment;
//     the pauses that end in generation N make rebalance N, which starts
//     at the earliest of them and ends at the latest. With an eager
//     assignor (range, roundrobin, sticky, or unknown, the classic default
//     range first) every member stops consuming for its pause: the GPU
//     time idled on a host is the union of its members' pauses times its
//     GPUs, within the window; the first join of a new instance (a pod
//     starting) is left out of that, being start-up rather than a pause.
//     With a cooperative assignor members keep their other partitions, so
//     nothing is charged as idle.
//   - Consumer protocol (KIP-848): a reconciliation runs from the first
//     member leaving STABLE (or joining) until every member is STABLE again
//     and every partition revoked meanwhile has been assigned again (when a
//     new owner's log is missing, until all were STABLE, and the partitions
//     never seen again are counted, 30 s on). Members learn of a change at
//     their next heartbeat, so a member leaving STABLE within 5 s (the
//     default heartbeat interval) of the others settling is the same
//     reconciliation. It is reported as a reconciliation and never as
//     stop-the-world idle time: members keep consuming what they are not
//     asked to give up.
//   - torch elastic: a restart runs from the first worker stopped (a
//     worker failing, a closing signal, "Worker group FAILED", "Detected N
//     new nodes", "Stopping worker group") to the new worker group started
//     ("Starting worker group") on every agent that stopped. Every GPU of
//     the job idles for it.
//   - Start, end and pause (downtime) are per rebalance, not per member.
//     Percentiles are nearest-rank (sorted[ceil(q*n)-1], always one of the
//     values), with linear interpolation between closest ranks (numpy's
//     default) as a second figure.
//   - A storm is StormCount rebalances starting within StormWindow; storm
//     windows that overlap are merged, so a long rolling restart is one
//     storm however many windows of K it contains.
//   - A rebalance still open when the logs (or the window) end counts up
//     to that end and is marked unfinished.
type GroupChange struct {
	Client, Group string
	Kind          string
	Protocol      string // classic or consumer; "" for elastic
	Strategy      string // eager or cooperative, when known
	// Generation is the classic generation, the highest KIP-848 member
	// epoch reached, or the elastic restart_count.
	Generation string
	// Start and End in Unix nanoseconds.
	Start, End int64
	// Members are the member ids (elastic: agents) that took part.
	Members []string
	// StopTheWorld is set when members stopped consuming (eager classic,
	// elastic restarts): only then is GPU time charged.
	StopTheWorld bool
	// Unfinished: still open when the events ended; End is then the end
	// of the logs or window.
	Unfinished bool
	// Reason is what the first member (agent) logged as the cause.
	Reason string
	// SlowestMember is the member that rejoined last (classic: sent its
	// JoinGroup; KIP-848: left STABLE), and SlowestDelay how long after
	// Start it did: a consumer stuck in its poll loop stretches every
	// member's pause.
	SlowestMember string
	SlowestDelay  time.Duration
	// Left counts LeaveGroup requests that preceded it; Unassigned the
	// KIP-848 partitions revoked and never seen assigned again.
	Left, Unassigned int
	// pauses are the stretches charged as idle, per host.
	pauses map[*Host][]interval
}

// Duration is the change's pause (downtime, reconciliation time).
func (c *GroupChange) Duration() time.Duration { return time.Duration(c.End - c.Start) }

// hostEvent is a rebalance event and the bundle it came from.
type hostEvent struct {
	host *Host
	e    traces.Event
}

// GroupChanges reads the capture's rebalance events and returns every
// group's rebalances, reconciliations and restarts, by the definitions
// above, ordered by client, group and start.
func GroupChanges(pass *Pass) ([]GroupChange, error) {
	groups, err := rebalanceGroups(pass)
	if err != nil {
		return nil, err
	}
	var out []GroupChange
	for _, gk := range sortedGroupKeys(groups) {
		out = append(out, groupChanges(gk, groups[gk])...)
	}
	return out, nil
}

type groupKey struct{ client, group, family string }

func sortedGroupKeys(m map[groupKey][]hostEvent) []groupKey {
	return slices.SortedFunc(maps.Keys(m), func(a, b groupKey) int {
		return cmp.Or(cmp.Compare(a.client, b.client), cmp.Compare(a.group, b.group), cmp.Compare(a.family, b.family))
	})
}

func rebalanceGroups(pass *Pass) (map[groupKey][]hostEvent, error) {
	groups := map[groupKey][]hostEvent{}
	err := EachEvent(pass, func(h *Host, e *traces.Event) error {
		if e.Kind != traces.EventRebalance || e.Attrs[logparse.AttrGroup] == "" {
			return nil
		}
		family := KindRebalance
		switch {
		case e.Attrs[logparse.AttrClient] == logparse.ClientTorchElastic:
			family = KindRestart
		case e.Attrs[logparse.AttrProtocol] == logparse.ProtocolConsumer:
			family = KindReconciliation
		}
		gk := groupKey{e.Attrs[logparse.AttrClient], e.Attrs[logparse.AttrGroup], family}
		groups[gk] = append(groups[gk], hostEvent{h, *e})
		return nil
	})
	for _, evs := range groups {
		slices.SortStableFunc(evs, func(a, b hostEvent) int { return cmp.Compare(a.e.TimeNs, b.e.TimeNs) })
	}
	return groups, err
}

// streamOf names the log stream an event came from: one client instance's
// lines in one file on one host.
func streamOf(he hostEvent) string {
	a := he.e.Attrs
	return he.host.Manifest.Host + "\x00" + a[logparse.AttrHost] + "\x00" + a[logparse.AttrSource] + "\x00" +
		a["namespace"] + "/" + a["pod"] + "\x00" + a[logparse.AttrMember]
}

// logEnd is where the events of a group stop: the latest window end of
// the hosts they came from.
func logEnd(evs []hostEvent) int64 {
	var end int64
	for _, he := range evs {
		end = max(end, he.host.Manifest.End.UnixNano(), he.e.TimeNs)
	}
	return end
}

func groupChanges(gk groupKey, evs []hostEvent) []GroupChange {
	var out []GroupChange
	switch gk.family {
	case KindReconciliation:
		out = reconciliations(evs)
	case KindRestart:
		out = restarts(evs)
	default:
		out = classicRebalances(evs)
	}
	protocol, strategy := "", ""
	for _, he := range evs {
		if p := he.e.Attrs[logparse.AttrProtocol]; p != "" && protocol == "" {
			protocol = p
		}
		if s := he.e.Attrs[logparse.AttrStrategy]; s != "" {
			strategy = s
		}
	}
	for i := range out {
		c := &out[i]
		c.Client, c.Group, c.Kind, c.Protocol = gk.client, gk.group, gk.family, protocol
		if c.Strategy == "" {
			c.Strategy = strategy
		}
	}
	slices.SortStableFunc(out, func(a, b GroupChange) int { return cmp.Compare(a.Start, b.Start) })
	return out
}

// memberPause is one classic member's pause, ending in a generation; join
// is when it sent its JoinGroup (a stuck member sends it last).
type memberPause struct {
	host           *Host
	member         string
	gen            string
	from, join, to int64
	fresh          bool // the first join of a new instance
	reason         string
	unfinished     bool
}

// classicRebalances groups members' pauses by generation.
func classicRebalances(evs []hostEvent) []GroupChange {
	type stream struct {
		host                *Host
		member, gen, reason string
		open, joinAt        int64
		fresh               bool
	}
	streams := map[string]*stream{}
	var pauses []memberPause
	for _, he := range evs {
		e, sk := he.e, streamOf(he)
		st := streams[sk]
		if st == nil {
			st = &stream{open: -1}
			streams[sk] = st
		}
		st.host = he.host
		a := e.Attrs
		switch a[logparse.AttrPhase] {
		case logparse.PhaseReset:
			*st = stream{host: he.host, open: -1, fresh: true}
		case logparse.PhaseLeave:
			*st = stream{host: he.host, open: -1, fresh: true}
		case logparse.PhaseStart:
			if a[logparse.AttrFresh] == "true" {
				*st = stream{host: he.host, open: -1, fresh: true}
			}
			if id := a[logparse.AttrMemberID]; id != "" {
				st.member = id
			}
			if st.open < 0 {
				st.open, st.reason = e.TimeNs, a[logparse.AttrReason]
			}
			if joining(a) {
				st.joinAt = e.TimeNs
			}
		case logparse.PhaseStep:
			if joining(a) {
				st.joinAt = e.TimeNs
			}
			if id := a[logparse.AttrMemberID]; id != "" {
				st.member = id
			}
			if g := a[logparse.AttrGeneration]; g != "" {
				st.gen = g
			}
			if st.open < 0 {
				st.open = e.TimeNs // joined with no start seen: count from here
			}
		case logparse.PhaseEnd:
			from := st.open
			if from < 0 {
				from = e.TimeNs
			}
			pauses = append(pauses, memberPause{he.host, cmp.Or(st.member, a[logparse.AttrMember]), st.gen, from, max(st.joinAt, from), e.TimeNs, st.fresh, st.reason, false})
			// The next pause belongs to the generation its member logs next.
			st.open, st.joinAt, st.fresh, st.reason, st.gen = -1, 0, false, "", ""
		}
	}
	end := logEnd(evs)
	for _, sk := range slices.Sorted(maps.Keys(streams)) {
		if st := streams[sk]; st.open >= 0 {
			pauses = append(pauses, memberPause{st.host, st.member, "open", st.open, max(st.joinAt, st.open), max(end, st.open), st.fresh, st.reason, true})
		}
	}
	// One rebalance per generation; pauses whose generation was never
	// logged are merged with those they overlap.
	byGen := map[string][]memberPause{}
	var unknown []memberPause
	for _, p := range pauses {
		if p.gen == "" {
			unknown = append(unknown, p)
			continue
		}
		byGen[p.gen] = append(byGen[p.gen], p)
	}
	var out []GroupChange
	for _, g := range slices.Sorted(maps.Keys(byGen)) {
		out = append(out, classicChange(g, byGen[g]))
	}
	slices.SortFunc(unknown, func(a, b memberPause) int { return cmp.Compare(a.from, b.from) })
	for i := 0; i < len(unknown); {
		j, to := i+1, unknown[i].to
		for j < len(unknown) && unknown[j].from <= to {
			to = max(to, unknown[j].to)
			j++
		}
		out = append(out, classicChange("", unknown[i:j]))
		i = j
	}
	// A leave starts the next rebalance of the group: count it there.
	slices.SortFunc(out, func(a, b GroupChange) int { return cmp.Compare(a.Start, b.Start) })
	var leaveTimes []int64
	for _, he := range evs {
		if he.e.Attrs[logparse.AttrPhase] == logparse.PhaseLeave {
			leaveTimes = append(leaveTimes, he.e.TimeNs)
		}
	}
	for _, t := range leaveTimes {
		for i := range out {
			if out[i].End >= t {
				out[i].Left++
				break
			}
		}
	}
	return out
}

// joining tells the event of a member sending its JoinGroup: the Java
// client's "(Re-)joining group", librdkafka's join state wait-join.
func joining(a map[string]string) bool {
	r := a[logparse.AttrReason]
	return r == "joining" || strings.HasSuffix(r, "-> wait-join")
}

func classicChange(gen string, ps []memberPause) GroupChange {
	c := GroupChange{Generation: gen, Start: ps[0].from, End: ps[0].to, pauses: map[*Host][]interval{}}
	if gen == "open" {
		c.Generation, c.Unfinished = "", true
	}
	first := ps[0]
	for _, p := range ps {
		if p.from < c.Start {
			c.Start, first = p.from, p
		}
		c.End = max(c.End, p.to)
		if p.member != "" && !slices.Contains(c.Members, p.member) {
			c.Members = append(c.Members, p.member)
		}
		c.Unfinished = c.Unfinished || p.unfinished
	}
	c.Reason = first.reason
	for _, p := range ps {
		if d := time.Duration(p.join - c.Start); d > c.SlowestDelay {
			c.SlowestDelay, c.SlowestMember = d, p.member
		}
		if !p.fresh && p.host != nil {
			c.pauses[p.host] = append(c.pauses[p.host], interval{p.from, p.to})
		}
	}
	slices.Sort(c.Members)
	return c
}

// KIP-848 member states (MemberState).
const (
	stateStable       = "STABLE"
	stateUnsubscribed = "UNSUBSCRIBED"
	stateFatal        = "FATAL"
)

// How KIP-848 reconciliations are told apart. Members learn of an
// assignment change at their next heartbeat, so a member leaving STABLE
// within reconcileSettle (the default group.consumer.heartbeat.interval.ms)
// of the others settling belongs to the same change. Partitions revoked
// and not seen assigned again within reassignGrace of every member being
// STABLE were taken by a member whose log is not here.
const (
	reconcileSettle = 5 * time.Second
	reassignGrace   = 30 * time.Second
)

// reconciliations follows KIP-848 members' states and the partitions
// revoked and assigned.
func reconciliations(evs []hostEvent) []GroupChange {
	var (
		out       []GroupChange
		states    = map[string]string{} // member -> state
		streamMem = map[string]string{} // stream -> its current member id
		cur       *GroupChange
		revoked         = map[string]bool{}
		assigned        = map[string]bool{}
		stableAt  int64 = -1 // all stable, partitions outstanding
		maxEpoch  int
	)
	closeAt := func(t int64) {
		for p := range revoked {
			if !assigned[p] {
				cur.Unassigned++
			}
		}
		cur.End = t
		cur.Generation = fmt.Sprint(maxEpoch)
		slices.Sort(cur.Members)
		out = append(out, *cur)
		cur, stableAt, maxEpoch = nil, -1, 0
		clear(revoked)
		clear(assigned)
	}
	open := func(t int64, reason string) {
		cur = &GroupChange{Start: t, Reason: reason, Strategy: logparse.StrategyCooperative}
	}
	join := func(member string, t int64) {
		if cur != nil && member != "" && !slices.Contains(cur.Members, member) {
			cur.Members = append(cur.Members, member)
			if d := time.Duration(t - cur.Start); d > cur.SlowestDelay {
				cur.SlowestDelay, cur.SlowestMember = d, member
			}
		}
	}
	pendingEnd := int64(-1) // all stable, nothing outstanding: ends unless more follows soon
	for _, he := range evs {
		e, sk := he.e, streamOf(he)
		a := e.Attrs
		switch {
		case cur != nil && pendingEnd >= 0 && e.TimeNs-pendingEnd > int64(reconcileSettle):
			closeAt(pendingEnd)
			pendingEnd = -1
		case cur != nil && stableAt >= 0 && e.TimeNs-stableAt > int64(reassignGrace):
			closeAt(stableAt)
		}
		id := a[logparse.AttrMemberID]
		if id != "" {
			if old := streamMem[sk]; old == "" {
				delete(states, "stream:"+sk) // the placeholder of a member not yet named
			}
			streamMem[sk] = id
		} else if id = streamMem[sk]; id == "" {
			id = "stream:" + sk
		}
		switch a[logparse.AttrPhase] {
		case logparse.PhaseReset:
			delete(states, streamMem[sk])
			delete(states, "stream:"+sk)
			delete(streamMem, sk)
			continue
		case logparse.PhaseState:
			from, to := a[logparse.AttrFrom], a[logparse.AttrTo]
			if from == stateUnsubscribed && a[logparse.AttrMemberID] == "" {
				// A new instance joining before it has an id: not the
				// member its stream had before.
				delete(streamMem, sk)
				id = "stream:" + sk
			}
			leavesStable := to != stateStable && to != stateUnsubscribed && to != stateFatal && (from == stateStable || from == stateUnsubscribed)
			if leavesStable {
				pendingEnd = -1 // the change goes on
				if cur == nil {
					open(e.TimeNs, from+" -> "+to)
				}
			}
			if to == stateUnsubscribed || to == stateFatal {
				delete(states, id)
				if streamMem[sk] == id {
					delete(streamMem, sk)
				}
			} else {
				states[id] = to
			}
			if to != stateStable {
				join(id, e.TimeNs)
			}
			if n := atoiAttr(a[logparse.AttrGeneration]); cur != nil && n > maxEpoch {
				maxEpoch = n
			}
		case logparse.PhaseStart:
			pendingEnd = -1
			if cur == nil {
				open(e.TimeNs, a[logparse.AttrReason])
			}
			join(id, e.TimeNs)
			for _, p := range strings.Split(a[logparse.AttrPartitions], ",") {
				if p != "" {
					revoked[p] = true
				}
			}
		case logparse.PhaseEnd:
			for _, p := range strings.Split(a[logparse.AttrPartitions], ",") {
				if p != "" {
					assigned[p] = true
				}
			}
		}
		if cur == nil {
			continue
		}
		allStable := true
		for _, s := range states {
			allStable = allStable && s == stateStable
		}
		if !allStable {
			stableAt, pendingEnd = -1, -1
			continue
		}
		complete := true
		for p := range revoked {
			complete = complete && assigned[p]
		}
		switch {
		case complete:
			pendingEnd, stableAt = e.TimeNs, -1
		case stableAt < 0:
			stableAt = e.TimeNs
		}
	}
	if cur != nil {
		switch {
		case pendingEnd >= 0:
			closeAt(pendingEnd)
		case stableAt >= 0:
			closeAt(stableAt)
		default:
			cur.Unfinished = true
			closeAt(max(logEnd(evs), cur.Start))
		}
	}
	return out
}

func atoiAttr(s string) int {
	n := 0
	for i := 0; i < len(s) && i < 9 && s[i] >= '0' && s[i] <= '9'; i++ {
		n = n*10 + int(s[i]-'0')
	}
	return n
}

// restarts follows torch elastic agents from the first worker stopped to
// the new worker group started on every agent that stopped.
func restarts(evs []hostEvent) []GroupChange {
	var (
		out     []GroupChange
		cur     *GroupChange
		stopped = map[string]bool{} // agents (streams) whose workers stopped and have not restarted
		hosts   = map[*Host]bool{}
	)
	finish := func(t int64) {
		cur.End = t
		cur.pauses = map[*Host][]interval{}
		for h := range hosts {
			cur.pauses[h] = []interval{{cur.Start, cur.End}}
		}
		slices.Sort(cur.Members)
		out = append(out, *cur)
		cur = nil
		clear(hosts)
	}
	for _, he := range evs {
		e, agent := he.e, streamOf(he)
		switch e.Attrs[logparse.AttrPhase] {
		case logparse.PhaseStart:
			if cur == nil {
				cur = &GroupChange{Start: e.TimeNs, Reason: e.Attrs[logparse.AttrReason], StopTheWorld: true}
			}
			if !stopped[agent] {
				stopped[agent] = true
				name := cmp.Or(e.Attrs[logparse.AttrHost], baseName(e.Attrs[logparse.AttrSource]), he.host.Manifest.Host)
				if !slices.Contains(cur.Members, name) {
					cur.Members = append(cur.Members, name)
				}
			}
			hosts[he.host] = true
		case logparse.PhaseEnd:
			if cur == nil || !stopped[agent] {
				continue // a group's first start, not a restart
			}
			delete(stopped, agent)
			if g := e.Attrs[logparse.AttrGeneration]; g != "" {
				cur.Generation = g
			}
			if len(stopped) == 0 {
				finish(e.TimeNs)
			}
		}
	}
	if cur != nil {
		cur.Unfinished = true
		finish(max(logEnd(evs), cur.Start))
	}
	return out
}

// baseName is the last element of a slash-separated path, "" for "".
func baseName(p string) string {
	if p == "" {
		return ""
	}
	return path.Base(p)
}

// interval is a span of time in Unix nanoseconds.
type interval struct{ from, to int64 }

// storms merges the windows of k starts within w ns: each run of k
// consecutive starts (sorted) spanning at most w is a storm window, and
// windows that overlap are one storm. It returns the storms as the index
// ranges [i, j) of the starts they hold.
func storms(starts []int64, w int64, k int) [][2]int {
	var out [][2]int
	if k <= 0 {
		return nil
	}
	for i := 0; i+k <= len(starts); i++ {
		if starts[i+k-1]-starts[i] > w {
			continue
		}
		if n := len(out); n > 0 && i < out[n-1][1] {
			out[n-1][1] = i + k
			continue
		}
		out = append(out, [2]int{i, i + k})
	}
	return out
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

// nouns name a kind's changes and their duration in titles and evidence.
var nouns = map[string][2]string{
	KindRebalance:      {"rebalances", "pause"},
	KindReconciliation: {"reconciliations", "reconciliation"},
	KindRestart:        {"restarts", "downtime"},
}

func runRebalance(pass *Pass, cfg RebalanceConfig) error {
	groups, err := rebalanceGroups(pass)
	if err != nil {
		return err
	}
	window := windowGPUSeconds(pass.Input)
	var hours float64
	for i := range pass.Input.Hosts {
		hours = max(hours, pass.Input.Hosts[i].Seconds()/3600)
	}
	for _, gk := range sortedGroupKeys(groups) {
		changes := groupChanges(gk, groups[gk])
		if len(changes) == 0 {
			continue
		}
		reportGroup(pass, cfg, gk, groups[gk], changes, window, hours)
	}
	return nil
}

func reportGroup(pass *Pass, cfg RebalanceConfig, gk groupKey, evs []hostEvent, changes []GroupChange, window, hours float64) {
	noun, dur := nouns[gk.family][0], nouns[gk.family][1]
	var (
		secs     []float64
		starts   []int64
		open     int
		longest  = &changes[0]
		perHost  = map[*Host][]interval{}
		members  = map[string]bool{}
		left     int
		unassign int
		reasons  = map[string]int{}
	)
	for i := range changes {
		c := &changes[i]
		secs = append(secs, c.Duration().Seconds())
		starts = append(starts, c.Start)
		if c.Unfinished {
			open++
		}
		if c.Duration() > longest.Duration() {
			longest = c
		}
		for _, m := range c.Members {
			members[m] = true
		}
		left += c.Left
		unassign += c.Unassigned
		reasons[c.Reason]++
		if c.stopTheWorld() {
			for h, iv := range c.pauses {
				perHost[h] = append(perHost[h], iv...)
			}
		}
	}
	slices.Sort(secs)
	var total float64
	for _, s := range secs {
		total += s
	}
	st := storms(starts, cfg.StormWindow.Nanoseconds(), cfg.StormCount)
	most := 0
	for _, s := range st {
		most = max(most, s[1]-s[0])
	}
	n := float64(len(changes))
	f := finding{
		Title: fmt.Sprintf("%d %s %s of group %s", len(changes), clientName(gk.client), noun, gk.group),
		Evidence: []traces.Metric{
			metric(noun, n, unitCount),
			metric(noun+"_per_hour", n/max(hours, 1e-9), "1/h"),
			metric(dur+"_p50", nearestRank(secs, 0.5), unitSeconds),
			metric(dur+"_p50_linear", linearQuantile(secs, 0.5), unitSeconds),
			metric(dur+"_p99", nearestRank(secs, 0.99), unitSeconds),
			metric(dur+"_p99_linear", linearQuantile(secs, 0.99), unitSeconds),
			metric(dur+"_max", secs[len(secs)-1], unitSeconds),
			metric(dur+"_total", total, unitSeconds),
			metric("members", float64(len(members)), unitCount),
			metric("unfinished", float64(open), unitCount),
			metric("storms", float64(len(st)), unitCount),
			metric("most_in_one_storm", float64(most), unitCount),
			metric("slowest_member_delay", longest.SlowestDelay.Seconds(), unitSeconds),
		},
	}
	if gk.family == KindRebalance {
		f.Evidence = append(f.Evidence, metric("members_left", float64(left), unitCount))
	}
	if gk.family == KindReconciliation {
		f.Evidence = append(f.Evidence, metric("partitions_never_reassigned", float64(unassign), unitCount))
	}
	strategy := longest.Strategy
	static := false
	for _, he := range evs {
		static = static || he.e.Attrs["instance_id"] != ""
	}
	switch {
	case gk.family == KindReconciliation:
		f.Title += " (consumer protocol, KIP-848): incremental, no stop-the-world pause"
	case longest.Protocol != "":
		f.Title += " (" + longest.Protocol + " protocol"
		if strategy != "" {
			f.Title += ", " + strategy
		}
		f.Title += ")"
	}
	var slow string
	if longest.SlowestMember != "" && longest.SlowestDelay >= 5*time.Second && gk.family != KindRestart {
		slow = fmt.Sprintf("The longest %s (%.1f s) waited %.1f s for member %s to rejoin: a consumer stuck in its poll loop (long processing between polls) holds up every member's assignment; keep the work per poll well under max.poll.interval.ms (smaller max.poll.records) or move it off the polling thread.",
			strings.TrimSuffix(noun, "s"), longest.Duration().Seconds(), longest.SlowestDelay.Seconds(), longest.SlowestMember)
	}
	f.Recommendation = strings.TrimSpace(slow + " " + rebalanceAdvice(gk.client, longest.Protocol, strategy, static, len(st) > 0, reasons))
	var lost float64
	hosts := map[*Host]bool{}
	for _, he := range evs {
		hosts[he.host] = true
	}
	for _, h := range slices.SortedFunc(maps.Keys(hosts), func(a, b *Host) int { return cmp.Compare(a.Manifest.Host, b.Manifest.Host) }) {
		var idle float64
		for _, iv := range union(perHost[h]) {
			from := max(iv.from, h.Manifest.Start.UnixNano())
			to := min(iv.to, h.Manifest.End.UnixNano())
			if to > from {
				idle += float64(to-from) / 1e9
			}
		}
		gpus := float64(len(h.Manifest.GPUs))
		lost += idle * gpus
		ev := []traces.Metric{metric("gpus", gpus, unitCount)}
		if gk.family != KindReconciliation {
			ev = append([]traces.Metric{metric("paused", idle, unitSeconds)}, ev...)
		}
		f.Targets = append(f.Targets, target{Host: h, GPU: -1, Rank: -1, Lost: idle * gpus, Evidence: ev})
	}
	sev := gradeAbove(share(lost, window), cfg.WarnShare, cfg.CritShare)
	if sev == "" && len(st) > 0 {
		sev = traces.SeverityWarning
	}
	if sev == "" {
		sev = traces.SeverityInfo
	}
	for i := range f.Targets {
		f.Targets[i].Severity = sev
	}
	if gk.family != KindReconciliation {
		f.Evidence = append(f.Evidence, metric("gpu_seconds_idled", lost, unitGPUSec))
	}
	f.report(pass)
}

// stopTheWorld says whether the change stopped its members: elastic
// restarts always, classic rebalances unless the assignor is cooperative,
// KIP-848 reconciliations never.
func (c *GroupChange) stopTheWorld() bool {
	switch c.Kind {
	case KindRestart:
		return true
	case KindReconciliation:
		return false
	}
	return c.Strategy != logparse.StrategyCooperative
}

func clientName(c string) string {
	switch c {
	case logparse.ClientJava:
		return "Kafka consumer (Java)"
	case logparse.ClientLibrdkafka:
		return "Kafka consumer (librdkafka)"
	case logparse.ClientTorchElastic:
		return "torch elastic"
	}
	return c
}

// rebalanceAdvice is the recommendation that fits the client and protocol.
func rebalanceAdvice(client, protocol, strategy string, static, storm bool, reasons map[string]int) string {
	var b strings.Builder
	switch {
	case client == logparse.ClientTorchElastic:
		b.WriteString("Each restart stops every worker until the new worker group starts. ")
		if reasons["failed"]+reasons["unhealthy"]+reasons["worker_failed"]+reasons["signal"] > 0 {
			b.WriteString("Workers failed: find the failing worker (the crash, OOM or NCCL incidents of this job name its rank and stack) and fix it rather than relying on max_restarts. ")
		}
		if reasons["new_nodes"] > 0 {
			b.WriteString("Nodes joined mid-run and forced restarts: set --nnodes MIN:MAX so the job starts at its full size, or admit nodes together. ")
		}
		b.WriteString("Checkpoint often enough that a restart loses little.")
	case protocol == logparse.ProtocolConsumer:
		b.WriteString("The consumer protocol (KIP-848) already reconciles incrementally; remaining reconciliations come from members joining and leaving. ")
		if storm || !static {
			b.WriteString("For rolling restarts set group.instance.id (static membership) so a restarted member gets its partitions back without a reconciliation. ")
		}
		b.WriteString("Keep per-poll work below max.poll.interval.ms so members are not expelled.")
	default:
		if strategy != logparse.StrategyCooperative {
			b.WriteString("The classic protocol with an eager assignor revokes every partition of every member on each rebalance (stop-the-world). ")
		}
		b.WriteString("Set group.protocol=consumer (KIP-848, Kafka 4.0+ brokers and clients) so that rebalances are incremental and broker-driven; ")
		if strategy != logparse.StrategyCooperative {
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
