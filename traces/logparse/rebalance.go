package logparse

import (
	"slices"
	"strings"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

func rebalanceEvent(text string, when time.Time, rank int, client, group, member, phase string) traces.Event {
	e := newEvent(traces.EventRebalance, text, when, rank)
	e.Attrs[AttrClient], e.Attrs[AttrGroup], e.Attrs[AttrMember], e.Attrs[AttrPhase] = client, group, member, phase
	return e
}

// java parses a Kafka Java client line.
func (p *Parser) java(text string, when time.Time, rank int, out []traces.Event) []traces.Event {
	i := strings.Index(text, "[Consumer ")
	j := strings.IndexByte(text[i:], ']')
	if j < 0 {
		return out
	}
	prefix, msg := text[i+len("[Consumer "):i+j], strings.TrimSpace(text[i+j+1:])
	var client, group, instance string
	for _, kv := range strings.Split(prefix, ", ") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "clientId":
			client = v
		case "groupId":
			group = v
		case "instanceId":
			instance = v
		}
	}
	if group == "" {
		return out
	}
	ev := func(phase string) traces.Event {
		e := rebalanceEvent(text, when, rank, ClientJava, group, client, phase)
		e.Attrs[AttrProtocol] = ProtocolClassic
		if p.protocol != "" {
			e.Attrs[AttrProtocol] = p.protocol
		}
		if p.assignor != "" {
			e.Attrs[AttrAssignor] = p.assignor
			e.Attrs[AttrStrategy] = strategyOf(p.assignor)
		}
		if p.protocol == ProtocolConsumer {
			e.Attrs[AttrStrategy] = StrategyCooperative // KIP-848 reconciles incrementally
		}
		if instance != "" {
			e.Attrs["instance_id"] = instance
		}
		return e
	}
	withParts := func(e traces.Event, list string) traces.Event {
		e.Attrs[AttrPartitions] = partitionList(list)
		return e
	}
	switch {
	case strings.HasPrefix(msg, "Member ") && strings.Contains(msg, " transitioned from "):
		p.protocol = ProtocolConsumer // only the consumer protocol logs member states
		from, to, _ := strings.Cut(after(msg, " transitioned from "), " to ")
		to, _, _ = strings.Cut(to, " ")
		e := ev(PhaseState)
		e.Attrs[AttrProtocol] = ProtocolConsumer
		e.Attrs[AttrStrategy] = StrategyCooperative
		if i := strings.Index(msg, " with epoch "); i >= len("Member ") && msg[len("Member "):i] != "<no ID>" {
			e.Attrs[AttrMemberID] = msg[len("Member "):i]
		}
		e.Attrs[AttrGeneration] = number(after(msg, " with epoch "))
		e.Attrs[AttrFrom], e.Attrs[AttrTo] = from, strings.TrimSuffix(to, ".")
		return append(out, e)
	case strings.HasPrefix(msg, "Member ") && strings.Contains(msg, " sending LeaveGroup request"):
		e := ev(PhaseLeave)
		e.Attrs[AttrMemberID] = field(msg, "Member ")
		e.Attrs[AttrReason] = strings.TrimSuffix(strings.TrimSpace(after(msg, ") due to ")), ".")
		return append(out, e)
	case strings.HasPrefix(msg, "Subscribed to topic(s):") || strings.HasPrefix(msg, "Subscribed to pattern:"):
		return append(out, ev(PhaseReset))
	case strings.HasPrefix(msg, "Request joining group due to:"):
		e := ev(PhaseStart)
		e.Attrs[AttrReason] = strings.TrimSpace(after(msg, "due to:"))
		if id := after(msg, "with the given member-id: "); id != "" {
			e.Attrs[AttrMemberID] = field(id, "")
		}
		return append(out, e)
	case strings.HasPrefix(msg, "Revoke previously assigned partitions") || strings.HasPrefix(msg, "Revoking previously assigned partitions"):
		e := ev(PhaseStart)
		e.Attrs[AttrReason] = "revoke"
		return append(out, withParts(e, after(msg, "assigned partitions")))
	case strings.HasPrefix(msg, "Lost previously assigned partitions"):
		e := ev(PhaseStart)
		e.Attrs[AttrReason] = "lost"
		return append(out, withParts(e, after(msg, "assigned partitions")))
	case strings.HasPrefix(msg, "(Re-)joining group"):
		e := ev(PhaseStart)
		e.Attrs[AttrReason] = "joining"
		return append(out, e)
	case strings.HasPrefix(msg, "Successfully joined group with generation") || strings.HasPrefix(msg, "Successfully synced group in generation"):
		e := ev(PhaseStep)
		e.Attrs[AttrGeneration] = field(msg, "generationId=")
		e.Attrs[AttrMemberID] = field(msg, "memberId=")
		if a := field(msg, "protocol="); a != "" {
			e.Attrs[AttrAssignor] = a
			e.Attrs[AttrStrategy] = strategyOf(a)
		}
		return append(out, e)
	case strings.HasPrefix(msg, "Adding newly assigned partitions"):
		return append(out, withParts(ev(PhaseEnd), after(msg, "assigned partitions")))
	}
	return out
}

// partitionList turns "[requests-0, requests-1] (org...)" or ": requests-0,
// requests-1" into "requests-0,requests-1", sorted.
func partitionList(s string) string {
	s = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(s), ":"))
	if i := strings.Index(s, " ("); i >= 0 {
		s = s[:i] // the logger's class name
	}
	s = strings.Trim(s, "[] ")
	if s == "" {
		return ""
	}
	parts := strings.Split(s, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	slices.Sort(parts)
	out := strings.Join(slices.Compact(parts), ",")
	if len(out) > maxPartitions {
		out = out[:strings.LastIndexByte(out[:maxPartitions], ',')+1]
	}
	return out
}

// assignorName turns the configured assignor classes into the name of the
// preferred (first) one: "[class org...CooperativeStickyAssignor, ...]"
// gives "cooperative-sticky".
func assignorName(list string) string {
	first, _, _ := strings.Cut(strings.Trim(strings.TrimSpace(list), "[]"), ",")
	first = strings.TrimPrefix(strings.TrimSpace(first), "class ")
	first = first[strings.LastIndexByte(first, '.')+1:]
	switch strings.TrimSuffix(first, "Assignor") {
	case "Range":
		return "range"
	case "RoundRobin":
		return "roundrobin"
	case "Sticky":
		return "sticky"
	case "CooperativeSticky":
		return "cooperative-sticky"
	}
	return strings.ToLower(first)
}

// strategyOf says whether an assignor revokes everything (eager) or only
// what moves (cooperative).
func strategyOf(assignor string) string {
	switch a := strings.ToLower(assignor); {
	case a == "":
		return ""
	case strings.Contains(a, "cooperative"):
		return StrategyCooperative
	}
	return StrategyEager
}

// librdkafka parses a librdkafka log line: "...|FAC|name| [thrd:x]: msg".
func (p *Parser) librdkafka(text string, when time.Time, rank int, out []traces.Event) []traces.Event {
	var fac string
	for _, f := range []string{"|CGRPJOINSTATE|", "|REBALANCE|", "|ASSIGN|", "|JOINGROUP|"} {
		if i := strings.Index(text, f); i >= 0 {
			fac, text = f[1:len(f)-1], text[i+len(f):]
			break
		}
	}
	name, msg, ok := strings.Cut(text, "|")
	if !ok {
		return out
	}
	if _, m, ok := strings.Cut(msg, "]: "); ok {
		msg = m
	}
	group := ""
	if i := strings.Index(msg, `Group "`); i >= 0 {
		group, _, _ = strings.Cut(msg[i+len(`Group "`):], `"`)
		if p.rdGroups == nil {
			p.rdGroups = map[string]string{}
		}
		if len(p.rdGroups) < 64 {
			p.rdGroups[name] = group
		}
	} else {
		group = p.rdGroups[name] // JOINGROUP lines do not name the group
	}
	if group == "" {
		return out
	}
	switch fac {
	case "CGRPJOINSTATE":
		from, to, ok := strings.Cut(after(msg, "changed join state "), " -> ")
		if !ok {
			return out
		}
		to, _, _ = strings.Cut(to, " ")
		phase := ""
		switch {
		case to == "steady":
			phase = PhaseEnd
		case from == "init" || from == "steady":
			phase = PhaseStart
		case to == "wait-join":
			phase = PhaseStep // the JoinGroup goes out: when a slow member rejoins
		default:
			return out
		}
		e := rebalanceEvent(msg, when, rank, ClientLibrdkafka, group, name, phase)
		e.Attrs[AttrReason] = from + " -> " + to
		e.Attrs[AttrProtocol] = ProtocolClassic
		if from == "init" {
			e.Attrs[AttrFresh] = "true"
		}
		return append(out, e)
	case "JOINGROUP":
		if !strings.HasPrefix(msg, "JoinGroup response: GenerationId ") {
			return out
		}
		e := rebalanceEvent(msg, when, rank, ClientLibrdkafka, group, name, PhaseStep)
		e.Attrs[AttrGeneration] = number(after(msg, "GenerationId "))
		id, _, _ := strings.Cut(after(msg, "my MemberId "), ",")
		e.Attrs[AttrMemberID] = id
		if a, _, _ := strings.Cut(after(msg, "Protocol "), ","); a != "" {
			e.Attrs[AttrAssignor] = a
			e.Attrs[AttrStrategy] = strategyOf(a)
		}
		return append(out, e)
	default:
		strategy := ""
		switch up := strings.ToUpper(msg); {
		case strings.Contains(up, "COOPERATIVE") || strings.Contains(up, "INCREMENTAL"):
			strategy = StrategyCooperative
		case strings.Contains(up, "EAGER"):
			strategy = StrategyEager
		default:
			return out
		}
		e := rebalanceEvent(msg, when, rank, ClientLibrdkafka, group, name, PhaseStep)
		e.Attrs[AttrStrategy] = strategy
		return append(out, e)
	}
}

// elastic parses torch elastic agent and launcher lines.
func (p *Parser) elastic(text string, when time.Time, rank int, out []traces.Event) []traces.Event {
	role := func(marker string) string {
		i := strings.Index(text, marker)
		if i > 0 && text[i-1] == ' ' {
			i--
		}
		if i <= 0 || text[i-1] != ']' {
			return p.elasticRole()
		}
		j := strings.LastIndexByte(text[:i-1], '[')
		if j < 0 {
			return p.elasticRole()
		}
		p.role = text[j+1 : i-1]
		return p.role
	}
	start := func(group, reason string) []traces.Event {
		e := rebalanceEvent(text, when, rank, ClientTorchElastic, group, "agent", PhaseStart)
		e.Attrs[AttrReason] = reason
		return append(out, e)
	}
	switch {
	case strings.Contains(text, "; will restart worker group"):
		if strings.Contains(text, "Detected ") {
			out = start(role("Detected "), "new_nodes")
			out[len(out)-1].Attrs["new_nodes"] = number(after(text, "Detected "))
			return out
		}
		state, _, _ := strings.Cut(after(text, "Worker group "), ".")
		out = start(role("Worker group "), strings.ToLower(state))
		out[len(out)-1].Attrs["attempts_left"] = number(after(text, state+". "))
		return out
	case strings.Contains(text, "] Stopping worker group"):
		return start(role("Stopping worker group"), "stopping")
	case strings.Contains(text, "Sending process ") && strings.Contains(text, " closing signal "):
		out = start(p.elasticRole(), "signal")
		out[len(out)-1].PID = atoi(number(after(text, "Sending process ")))
		out[len(out)-1].Attrs["signal"] = strings.TrimSpace(after(text, " closing signal "))
		return out
	case strings.Contains(text, "failed (exitcode: ") && strings.Contains(text, " local_rank: "):
		out = start(p.elasticRole(), "worker_failed")
		e := &out[len(out)-1]
		e.Attrs["exitcode"] = signedNumber(after(text, "failed (exitcode: "))
		e.Attrs["local_rank"] = number(after(text, " local_rank: "))
		e.PID = atoi(number(after(text, "(pid: ")))
		return out
	case strings.Contains(text, "Rendezvous complete for workers"):
		p.restarts = field(text, "restart_count=")
		e := rebalanceEvent(text, when, rank, ClientTorchElastic, role("Rendezvous complete"), "agent", PhaseStep)
		if p.restarts != "" {
			e.Attrs[AttrGeneration] = p.restarts
		}
		return append(out, e)
	case strings.Contains(text, "restart_count="):
		p.restarts = field(text, "restart_count=") // the rendezvous result, on its own line
	case strings.Contains(text, "] Starting worker group"):
		e := rebalanceEvent(text, when, rank, ClientTorchElastic, role("Starting worker group"), "agent", PhaseEnd)
		if p.restarts != "" {
			e.Attrs[AttrGeneration] = p.restarts
		}
		return append(out, e)
	}
	return out
}

func (p *Parser) elasticRole() string {
	if p.role == "" {
		return "default"
	}
	return p.role
}

// signedNumber returns the run of digits, with an optional minus, that
// starts s (exit codes of signalled workers are negative).
func signedNumber(s string) string {
	if strings.HasPrefix(s, "-") {
		return "-" + number(s[1:])
	}
	return number(s)
}

func atoi(s string) int {
	n := 0
	for i := 0; i < len(s) && i < 9; i++ {
		n = n*10 + int(s[i]-'0')
	}
	return n
}
