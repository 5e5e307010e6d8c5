package logtail

import (
	"strings"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// Group-membership lines of the Kafka Java client, librdkafka and torch
// elastic become traces.EventRebalance events with phase start, end or step.
// The analyzer pairs each member's first start after an end with the next
// end; that span is the member's stop-the-world pause.
//
// Kafka Java client, classic protocol (AbstractCoordinator,
// ConsumerCoordinator; every line prefixed "[Consumer clientId=C, groupId=G] ",
// with "instanceId=I, " first under static membership), all INFO:
//
//	Request joining group due to: <reason>                      start
//	Revoke previously assigned partitions <list>                start
//	Lost previously assigned partitions <list>                  start (session expired)
//	(Re-)joining group                                          start
//	Successfully joined group with generation Generation{generationId=N, memberId='M', protocol='P'}   step
//	Successfully synced group in generation Generation{...}    step
//	Adding newly assigned partitions: <list>                    end
//
// (the last three come from ConsumerRebalanceListenerInvoker, which the
// new consumer uses too), and in the configuration dump at start-up "group.protocol = classic|consumer"
// and "partition.assignment.strategy = [class ...Assignor, ...]".
//
// Kafka Java client, consumer protocol (KIP-848; AbstractMembershipManager
// logs every state change at INFO):
//
//	Member M with epoch E transitioned from A to B.
//
// start when B is JOINING or RECONCILING (from another state), end when A is
// RECONCILING and B is STABLE or ACKNOWLEDGING, as the client's own
// rebalance-latency metric counts.
//
// librdkafka (debug=cgrp; the default logger prints
// "%7|<unix time>|<FACILITY>|<client name>| [thrd:main]: <message>"):
//
//	CGRPJOINSTATE  Group "G" changed join state A -> B (state S)   start when A is init or steady, end when B is steady
//	REBALANCE, ASSIGN lines naming EAGER or COOPERATIVE             step, giving the strategy
//
// torch elastic (torch/distributed/elastic/agent/server/api.py, INFO):
//
//	[role] Worker group FAILED. 2/3 attempts left; will restart worker group     start (reason failed)
//	[role] Detected 1 new nodes from group_rank=0; will restart worker group     start (reason new_nodes)
//	[role] Rendezvous complete for workers. Result: ... restart_count=N          end

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
		if instance != "" {
			e.Attrs["instance_id"] = instance
		}
		return e
	}
	switch {
	case strings.HasPrefix(msg, "Member ") && strings.Contains(msg, " transitioned from "):
		// Member M with epoch E transitioned from A to B.
		from, to, _ := strings.Cut(after(msg, " transitioned from "), " to ")
		to, _, _ = strings.Cut(to, " ")
		to = strings.TrimSuffix(to, ".")
		phase := ""
		switch {
		case from == "RECONCILING" && (to == "STABLE" || to == "ACKNOWLEDGING"):
			phase = PhaseEnd
		case to == "JOINING" || to == "RECONCILING" && from != "RECONCILING":
			phase = PhaseStart
		default:
			return out
		}
		e := ev(phase)
		e.Attrs[AttrProtocol] = ProtocolConsumer
		e.Attrs[AttrStrategy] = StrategyCooperative // KIP-848 reconciles incrementally
		e.Attrs[AttrMemberID] = field(msg, "Member ")
		e.Attrs[AttrGeneration] = number(after(msg, " with epoch "))
		e.Attrs[AttrReason] = from + " -> " + to
		return append(out, e)
	case strings.HasPrefix(msg, "Request joining group due to:"):
		e := ev(PhaseStart)
		e.Attrs[AttrReason] = strings.TrimSpace(after(msg, "due to:"))
		return append(out, e)
	case strings.HasPrefix(msg, "Revoke previously assigned partitions") || strings.HasPrefix(msg, "Revoking previously assigned partitions"):
		e := ev(PhaseStart)
		e.Attrs[AttrReason] = "revoke"
		return append(out, e)
	case strings.HasPrefix(msg, "Lost previously assigned partitions"):
		e := ev(PhaseStart)
		e.Attrs[AttrReason] = "lost"
		return append(out, e)
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
		return append(out, ev(PhaseEnd))
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
	for _, f := range []string{"|CGRPJOINSTATE|", "|REBALANCE|", "|ASSIGN|"} {
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
		default:
			return out
		}
		e := rebalanceEvent(msg, when, rank, ClientLibrdkafka, group, name, phase)
		e.Attrs[AttrReason] = from + " -> " + to
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

// elastic parses torch elastic agent lines.
func elastic(text string, when time.Time, rank int, out []traces.Event) []traces.Event {
	role := func(marker string) string {
		i := strings.Index(text, marker)
		if i > 0 && text[i-1] == ' ' {
			i--
		}
		if i <= 0 || text[i-1] != ']' {
			return "default"
		}
		j := strings.LastIndexByte(text[:i-1], '[')
		if j < 0 {
			return "default"
		}
		return text[j+1 : i-1]
	}
	switch {
	case strings.Contains(text, "; will restart worker group"):
		var e traces.Event
		if strings.Contains(text, "Detected ") {
			e = rebalanceEvent(text, when, rank, ClientTorchElastic, role("Detected "), "agent", PhaseStart)
			e.Attrs[AttrReason] = "new_nodes"
			e.Attrs["new_nodes"] = number(after(text, "Detected "))
		} else {
			e = rebalanceEvent(text, when, rank, ClientTorchElastic, role("Worker group "), "agent", PhaseStart)
			state, _, _ := strings.Cut(after(text, "Worker group "), ".")
			e.Attrs[AttrReason] = strings.ToLower(state)
			e.Attrs["attempts_left"] = number(after(text, state+". "))
		}
		return append(out, e)
	case strings.Contains(text, "Rendezvous complete for workers"):
		e := rebalanceEvent(text, when, rank, ClientTorchElastic, role("Rendezvous complete"), "agent", PhaseEnd)
		if g := field(text, "restart_count="); g != "" {
			e.Attrs[AttrGeneration] = g
		}
		return append(out, e)
	}
	return out
}
