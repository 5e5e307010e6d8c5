package logparse

import (
	"strconv"
	"strings"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// Attribute keys and values of the events the parsers produce.
//
// Every event may carry AttrHost, AttrUnit (from a journald or syslog
// prefix), AttrSource (the file it came from) and pod, namespace and
// container (from a kubelet log path).
const (
	AttrClient     = "client"     // java, librdkafka, torchelastic
	AttrGroup      = "group"      // consumer group id, or the elastic agent's role
	AttrMember     = "member"     // client id (Kafka), "agent" (elastic): the stream's label, never its identity
	AttrMemberID   = "member_id"  // the coordinator's member id, when logged: what identifies a member
	AttrGeneration = "generation" // classic generation id, KIP-848 member epoch, elastic restart_count
	AttrPhase      = "phase"      // see the Phase constants
	AttrProtocol   = "protocol"   // classic or consumer (KIP-848)
	AttrStrategy   = "strategy"   // eager or cooperative
	AttrAssignor   = "assignor"   // range, roundrobin, sticky, cooperative-sticky, uniform, ...
	AttrReason     = "reason"
	AttrFrom       = "from"       // KIP-848 member state before a transition
	AttrTo         = "to"         // KIP-848 member state after a transition
	AttrPartitions = "partitions" // "topic-0,topic-1": partitions revoked (phase start) or assigned (phase end)
	AttrFresh      = "fresh"      // "true" on the first join of a new consumer instance
	AttrStack      = "stack"
	AttrException  = "exception"
	AttrFatal      = "fatal" // "true" when the fault ended a Python traceback: the process died of it
	AttrRetry      = "retry" // "true" on an out-of-memory error the program retries after
	AttrError      = "error"
	AttrTimeoutMs  = "timeout_ms"
	AttrPCI        = "pci"  // PCI address of an XID's GPU, "0000:3b:00"
	AttrHost       = "host" // host name from a journald or syslog prefix
	AttrUnit       = "unit" // syslog identifier (kernel, python3, ...)
	AttrValue      = "value_seconds"
	AttrSource     = "source" // path of the log file

	ClientJava         = "java"
	ClientLibrdkafka   = "librdkafka"
	ClientTorchElastic = "torchelastic"

	// PhaseStart: a member stops consuming (revokes, rejoins) or a worker
	// stops; PhaseEnd: a member has its assignment again, or a new worker
	// group started; PhaseStep: a marker inside a rebalance (generation,
	// member id, strategy); PhaseLeave: a member leaves the group;
	// PhaseState: a KIP-848 member state transition (AttrFrom, AttrTo);
	// PhaseReset: a new consumer instance subscribes, so whatever its stream
	// had open belongs to the instance before.
	PhaseStart = "start"
	PhaseEnd   = "end"
	PhaseStep  = "step"
	PhaseLeave = "leave"
	PhaseState = "state"
	PhaseReset = "reset"

	ProtocolClassic  = "classic"
	ProtocolConsumer = "consumer"

	StrategyEager       = "eager"
	StrategyCooperative = "cooperative"
)

// Bounds on what one stream's parser holds.
const (
	maxMessage    = 1024 // bytes of a line kept in Event.Message
	maxFrames     = 64   // stack frames kept per traceback (the innermost)
	maxPartitions = 4096 // bytes of a partition list kept
	maxHeld       = 1024 // events waiting for the stream's first timestamp
)

// DefaultMaxLineBytes is the longest line kept whole (partial container
// lines are joined up to it).
const DefaultMaxLineBytes = 64 << 10

// Parser turns the lines of one log stream (one file) into events. It is
// not safe for concurrent use. It keeps only what spans lines: partial
// container lines, a Python traceback being read, the latest timestamp,
// events waiting for the stream's first timestamp, and what the Kafka
// client's configuration dump and torch elastic's rendezvous result said.
type Parser struct {
	maxLine  int
	partial  map[string]*strings.Builder // per container stream
	tb       *traceback
	protocol string            // from "group.protocol = ..."
	assignor string            // from "partition.assignment.strategy = [...]"
	restarts string            // restart_count of the latest elastic rendezvous
	role     string            // the elastic agent's role, from its latest "[role]" line
	rdGroups map[string]string // librdkafka client name -> group
	last     time.Time         // of the latest dated line
	lastNo   int               // its line number
	lineNo   int               // lines parsed
	held     []heldEvent       // events of undated lines since the latest dated one
	// Source is added to every event's attributes when set.
	Source Source
	// Ref dates timestamps that carry no year (glog, BSD syslog) until the
	// stream has a dated line (then that line dates the next): they are
	// taken in Ref's year, or the year before when that would put them
	// more than a day after Ref. Zero means the time of the first line.
	Ref time.Time
	// Location is the zone of timestamps printed without one (nil: the
	// machine's local zone).
	Location *time.Location
}

func (p *Parser) loc() *time.Location {
	if p.Location == nil {
		return time.Local
	}
	return p.Location
}

// NewParser returns a parser that joins partial container lines up to
// maxLine bytes (longer lines are cut there).
func NewParser(maxLine int) *Parser {
	if maxLine <= 0 {
		maxLine = DefaultMaxLineBytes
	}
	return &Parser{maxLine: maxLine, partial: map[string]*strings.Builder{}}
}

// Feed parses one line as read from the file (container or journal
// wrapper and all) and appends the events it completes to out. A line
// without a time of its own takes readAt when readAt is set (a line just
// written, read as it arrives); with a zero readAt (history) it takes the
// nearest timestamped line's time: its events wait in the parser until the
// next dated line (or Flush) shows which is nearer.
func (p *Parser) Feed(raw []byte, readAt time.Time, out []traces.Event) []traces.Event {
	rec := unwrap(raw, p.ref(), p.loc())
	if b := p.partial[rec.stream]; b != nil || rec.partial {
		if b == nil {
			b = &strings.Builder{}
			p.partial[rec.stream] = b
		}
		if room := p.maxLine - b.Len(); room > 0 {
			b.WriteString(rec.text[:min(len(rec.text), room)])
		}
		if rec.partial {
			return out
		}
		rec.text = b.String()
		delete(p.partial, rec.stream)
	}
	return p.parse(rec, readAt, out)
}

// Line parses one complete line of program output, unwrapped. fallback is
// used when the line has no timestamp of its own, as readAt in Feed.
func (p *Parser) Line(text string, fallback time.Time, out []traces.Event) []traces.Event {
	return p.parse(record{text: text}, fallback, out)
}

// Flush ends the stream: events still waiting for a timestamp take the
// latest one, or fallback when the stream had none (the Unix epoch when
// that is zero too, so that they are kept and visibly undated).
func (p *Parser) Flush(fallback time.Time, out []traces.Event) []traces.Event {
	for _, h := range p.held {
		switch {
		case !p.last.IsZero():
			h.e.TimeNs = p.last.UnixNano()
		case !fallback.IsZero():
			h.e.TimeNs = fallback.UnixNano()
		}
		out = append(out, h.e)
	}
	p.held = p.held[:0]
	return out
}

func (p *Parser) ref() time.Time {
	switch {
	case !p.last.IsZero():
		return p.last
	case p.Ref.IsZero():
		p.Ref = time.Now() // once: a clock read per line costs more than the parse
	}
	return p.Ref
}

func (p *Parser) parse(rec record, readAt time.Time, out []traces.Event) []traces.Event {
	text, rank := stripRankPrefix(rec.text)
	when, dated := rec.time, !rec.time.IsZero()
	// The wrapper's timestamp (runtime, journald) has a zone and the
	// host's clock: it wins over one the program printed.
	if t, ok := leadingTime(text, p.ref(), p.loc()); ok && !dated {
		when, dated = t, true
	}
	p.lineNo++
	switch {
	case dated:
	case !readAt.IsZero():
		when = readAt
	case !p.last.IsZero() && p.lineNo-p.lastNo <= 1:
		when = p.last // right after a dated line: nothing nearer to wait for
	}
	n := len(out)
	crash, ended, inTraceback := p.traceback(text, when, rank)
	if !inTraceback {
		out = p.line(text, when, rank, out)
	}
	if ended {
		out = p.endTraceback(crash, out, n)
	}
	for i := n; i < len(out); i++ {
		e := &out[i]
		if p.Source != (Source{}) {
			e.Attrs["pod"], e.Attrs["namespace"], e.Attrs["container"] = p.Source.Pod, p.Source.Namespace, p.Source.Container
		}
		if rec.host != "" {
			e.Attrs[AttrHost] = rec.host
		}
		if rec.unit != "" {
			e.Attrs[AttrUnit] = rec.unit
		}
		if e.PID == 0 {
			e.PID = rec.pid
		}
	}
	switch {
	case when.IsZero() && len(p.held) < maxHeld:
		// Undated: wait for the next dated line to see which is nearer.
		for i := n; i < len(out); i++ {
			p.held = append(p.held, heldEvent{out[i], p.lineNo})
		}
		return out[:n]
	case when.IsZero():
		for i := n; i < len(out); i++ {
			out[i].TimeNs = p.last.UnixNano() // too many waiting: the latest time known
		}
	case dated:
		out = p.release(when, out, n)
		p.last, p.lastNo = when, p.lineNo
	}
	return out
}

// heldEvent is an event of an undated line, waiting for the next dated
// line of the stream.
type heldEvent struct {
	e    traces.Event
	line int
}

// release dates the held events, now that line p.lineNo gave the time
// next: each takes the nearer of the dated lines around it (the earlier
// on a tie, the next when there was none before), and goes into out
// before the events from n on, which came from the dated line.
func (p *Parser) release(next time.Time, out []traces.Event, n int) []traces.Event {
	if len(p.held) == 0 {
		return out
	}
	held := make([]traces.Event, len(p.held))
	for i, h := range p.held {
		t := next
		if !p.last.IsZero() && h.line-p.lastNo <= p.lineNo-h.line {
			t = p.last
		}
		h.e.TimeNs = t.UnixNano()
		held[i] = h.e
	}
	p.held = p.held[:0]
	return append(out[:n], append(held, out[n:]...)...)
}

// line runs the single-line parsers. Each is gated on a literal so that
// the common line, which matches none, costs a few substring searches.
func (p *Parser) line(text string, when time.Time, rank int, out []traces.Event) []traces.Event {
	switch {
	case strings.Contains(text, "NVRM: "):
		return nvrm(text, when, out)
	case strings.Contains(text, "Watchdog caught collective operation timeout"):
		return append(out, ncclWatchdog(text, when, rank))
	case isNCCLError(text):
		return append(out, ncclError(text, when, rank))
	case strings.Contains(text, "CUDA out of memory") || strings.Contains(text, "CUDA error: out of memory"):
		return append(out, oom(text, when, rank))
	case strings.Contains(text, "CUDA error: "):
		return append(out, cudaError(text, when, rank))
	case strings.Contains(text, "[Consumer "):
		return p.java(text, when, rank, out)
	case strings.Contains(text, "|CGRPJOINSTATE|") || strings.Contains(text, "|REBALANCE|") || strings.Contains(text, "|ASSIGN|") || strings.Contains(text, "|JOINGROUP|"):
		return p.librdkafka(text, when, rank, out)
	case strings.Contains(text, "worker group") || strings.Contains(text, "Rendezvous complete") || strings.Contains(text, "restart_count=") ||
		strings.Contains(text, "closing signal") || strings.Contains(text, "failed (exitcode: "):
		return p.elastic(text, when, rank, out)
	case strings.Contains(text, "group.protocol = "):
		p.protocol = strings.ToLower(strings.TrimSpace(after(text, "group.protocol = ")))
	case strings.Contains(text, "partition.assignment.strategy = "):
		p.assignor = assignorName(after(text, "partition.assignment.strategy = "))
	}
	return out
}

func newEvent(kind, text string, when time.Time, rank int) traces.Event {
	msg := strings.TrimSpace(text)
	if len(msg) > maxMessage {
		msg = msg[:maxMessage]
	}
	var ns int64
	if !when.IsZero() {
		ns = when.UnixNano()
	}
	return traces.Event{TimeNs: ns, Kind: kind, GPU: -1, Rank: rank, Message: msg, Attrs: map[string]string{}}
}

// stripRankPrefix takes off the "[rank3]:" or "[default3]:" prefix that
// torchrun puts on each line of a worker's output, returning the rank.
func stripRankPrefix(s string) (string, int) {
	if !strings.HasPrefix(s, "[") {
		return s, -1
	}
	end := strings.Index(s, "]:")
	if end < 0 || end > 32 {
		return s, -1
	}
	tag := s[1:end]
	i := len(tag)
	for i > 0 && isDigit(tag[i-1]) {
		i--
	}
	if i == len(tag) || i == 0 || (tag[:i] != "rank" && !isWord(tag[:i])) {
		return s, -1
	}
	n, err := strconv.Atoi(tag[i:])
	if err != nil || n > 1<<20 {
		return s, -1
	}
	return strings.TrimPrefix(s[end+2:], " "), n
}

func isWord(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c == '_') {
			return false
		}
	}
	return true
}

// leadingTime reads the timestamp a log line starts with: ISO 8601 as
// log4j, logback, Spring Boot and Python's logging print it ("2026-11-25
// 10:00:00,123", "2026-11-25T10:00:00.123+01:00"; optionally bracketed,
// optionally after a level), librdkafka's "%7|1764064800.123|", or glog's
// "I1125 10:00:00.123456" (no year: dated by ref, see Parser.Ref). A
// timestamp without a zone is local time.
func leadingTime(s string, ref time.Time, loc *time.Location) (time.Time, bool) {
	s = strings.TrimLeft(s, "[ ")
	// torch elastic's "[INFO] 2026-11-25 10:00:00,123 api: ...": the level first.
	for _, level := range []string{"DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL"} {
		if rest, ok := strings.CutPrefix(s, level); ok && (strings.HasPrefix(rest, "] ") || strings.HasPrefix(rest, " ")) {
			s = strings.TrimLeft(rest, "] ")
			break
		}
	}
	switch {
	case len(s) >= 19 && s[4] == '-' && s[7] == '-' && (s[10] == ' ' || s[10] == 'T') && s[13] == ':' && s[16] == ':':
		t, _, ok := isoTime(s, loc)
		return t, ok
	case len(s) > 4 && s[0] == '%' && isDigit(s[1]) && s[2] == '|':
		num, _, ok := strings.Cut(s[3:], "|")
		if !ok {
			return time.Time{}, false
		}
		secs, frac, _ := strings.Cut(num, ".")
		sec, err := strconv.ParseInt(secs, 10, 64)
		if err != nil || sec <= 0 || sec > 1e11 || len(frac) > 9 || number(frac) != frac {
			return time.Time{}, false
		}
		ns, _ := strconv.ParseInt((frac + "000000000")[:9], 10, 64)
		return time.Unix(sec, ns).UTC(), true
	case len(s) >= 21 && strings.IndexByte("IWEF", s[0]) >= 0 && isDigit(s[1]) && s[5] == ' ' && s[8] == ':' && s[11] == ':':
		end := 14
		if s[14] == '.' {
			end = 15
			for end < len(s) && isDigit(s[end]) {
				end++
			}
		}
		return yearless("0102 15:04:05.999999999", s[1:end], ref, loc)
	}
	return time.Time{}, false
}

// isoTime parses "2006-01-02[T ]15:04:05[.frac][Z|+07:00|+0700]" at the
// start of s, returning the time and its length.
func isoTime(s string, loc *time.Location) (time.Time, int, bool) {
	if len(s) < 19 {
		return time.Time{}, 0, false
	}
	end := 19
	if end < len(s) && (s[end] == '.' || s[end] == ',') {
		end++
		for end < len(s) && isDigit(s[end]) {
			end++
		}
	}
	layout := "2006-01-02T15:04:05.999999999"
	v := s[:10] + "T" + s[11:19]
	if end > 20 {
		v += "." + s[20:end]
	}
	switch {
	case end < len(s) && s[end] == 'Z':
		t, err := time.Parse(layout+"Z07:00", v+"Z")
		return t, end + 1, err == nil
	case end+6 <= len(s) && (s[end] == '+' || s[end] == '-') && s[end+3] == ':':
		t, err := time.Parse(layout+"Z07:00", v+s[end:end+6])
		return t, end + 6, err == nil
	case end+5 <= len(s) && (s[end] == '+' || s[end] == '-') && number(s[end+1:end+5]) == s[end+1:end+5]:
		t, err := time.Parse(layout+"Z0700", v+s[end:end+5])
		return t, end + 5, err == nil
	}
	t, err := time.ParseInLocation(layout, v, loc)
	return t, end, err == nil
}

// yearless parses a timestamp printed without a year, in ref's year, or
// the year before when that would be more than a day after ref (December
// lines read in January), or the year after when more than half a year
// before it (a stream going on past New Year).
func yearless(layout, v string, ref time.Time, loc *time.Location) (time.Time, bool) {
	if ref.IsZero() {
		ref = time.Now()
	}
	t, err := time.ParseInLocation("2006 "+layout, strconv.Itoa(ref.Year())+" "+v, loc)
	if err != nil {
		return time.Time{}, false
	}
	switch {
	case t.Sub(ref) > 24*time.Hour:
		t = t.AddDate(-1, 0, 0)
	case ref.Sub(t) > 183*24*time.Hour:
		t = t.AddDate(1, 0, 0)
	}
	return t, true
}

// after returns what follows the first sep in s ("" when absent).
func after(s, sep string) string {
	_, v, _ := strings.Cut(s, sep)
	return v
}

// field returns the value of key=value (or key='value') in s, ending at a
// comma, space, brace, parenthesis or quote.
func field(s, key string) string {
	i := strings.Index(s, key)
	if i < 0 {
		return ""
	}
	v := strings.TrimPrefix(s[i+len(key):], "'")
	end := strings.IndexAny(v, ",' }){]\"")
	if end >= 0 {
		v = v[:end]
	}
	return v
}

// number returns the run of digits that starts s.
func number(s string) string {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	return s[:i]
}
