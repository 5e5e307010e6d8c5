package logtail

import (
	"strconv"
	"strings"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// Attribute keys and values of the events the parsers produce.
const (
	AttrClient     = "client"     // java, librdkafka, torchelastic
	AttrGroup      = "group"      // consumer group id, or the elastic agent's role
	AttrMember     = "member"     // client id (Kafka), role (elastic): what pairs a start with its end
	AttrMemberID   = "member_id"  // the coordinator's member id, when logged
	AttrGeneration = "generation" // classic generation id, KIP-848 member epoch, elastic restart count
	AttrPhase      = "phase"      // start, end, or step (a marker inside a rebalance)
	AttrProtocol   = "protocol"   // classic or consumer (KIP-848)
	AttrStrategy   = "strategy"   // eager or cooperative
	AttrAssignor   = "assignor"   // range, roundrobin, sticky, cooperative-sticky, uniform, ...
	AttrReason     = "reason"
	AttrStack      = "stack"
	AttrTimeoutMs  = "timeout_ms"
	AttrValue      = "value_seconds"
	AttrSource     = "source" // path of the log file

	ClientJava         = "java"
	ClientLibrdkafka   = "librdkafka"
	ClientTorchElastic = "torchelastic"

	PhaseStart = "start"
	PhaseEnd   = "end"
	PhaseStep  = "step"

	ProtocolClassic  = "classic"
	ProtocolConsumer = "consumer"

	StrategyEager       = "eager"
	StrategyCooperative = "cooperative"
)

// Bounds on what one stream's parser holds.
const (
	maxMessage = 1024 // bytes of a line kept in Event.Message
	maxFrames  = 64   // stack frames kept per traceback (the innermost)
)

// Parser turns the lines of one log stream (one file) into events. It is
// not safe for concurrent use. It keeps only what spans lines: partial
// container lines, a Python traceback being read, and what the Kafka
// client's configuration dump said about the protocol and assignor.
type Parser struct {
	maxLine  int
	partial  map[string]*strings.Builder // per container stream
	tb       *traceback
	protocol string // from "group.protocol = ..."
	assignor string // from "partition.assignment.strategy = [...]"
	// Source is added to every event's attributes when set.
	Source Source
}

// NewParser returns a parser that joins partial container lines up to
// maxLine bytes (longer lines are cut there).
func NewParser(maxLine int) *Parser {
	if maxLine <= 0 {
		maxLine = DefaultMaxLineBytes
	}
	return &Parser{maxLine: maxLine, partial: map[string]*strings.Builder{}}
}

// Feed parses one line as read from the file (container wrapper and all)
// and appends the events it completes to out. readAt stands in for the
// line's time when neither the wrapper nor the line carries one.
func (p *Parser) Feed(raw []byte, readAt time.Time, out []traces.Event) []traces.Event {
	rec := unwrap(raw)
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
	if rec.time.IsZero() {
		return p.Line(rec.text, readAt, out)
	}
	// The runtime's timestamp has a zone and the runtime's clock: it wins
	// over one the program printed.
	return p.parse(rec.text, rec.time, false, out)
}

// Line parses one complete line of program output. fallback is used when
// the line has no timestamp of its own.
func (p *Parser) Line(text string, fallback time.Time, out []traces.Event) []traces.Event {
	return p.parse(text, fallback, true, out)
}

func (p *Parser) parse(text string, when time.Time, sniff bool, out []traces.Event) []traces.Event {
	text, rank := stripRankPrefix(text)
	if t, ok := leadingTime(text, when); ok && sniff {
		when = t
	}
	n := len(out)
	out, inTraceback := p.traceback(text, when, rank, out)
	if !inTraceback {
		out = p.line(text, when, rank, out)
	}
	if p.Source != (Source{}) {
		for i := n; i < len(out); i++ {
			out[i].Attrs["pod"], out[i].Attrs["namespace"], out[i].Attrs["container"] = p.Source.Pod, p.Source.Namespace, p.Source.Container
		}
	}
	return out
}

// line runs the single-line parsers. Each is gated on a literal so that
// the common line, which matches none, costs a few substring searches.
func (p *Parser) line(text string, when time.Time, rank int, out []traces.Event) []traces.Event {
	switch {
	case strings.Contains(text, "Watchdog caught collective operation timeout"):
		return append(out, ncclWatchdog(text, when, rank))
	case strings.Contains(text, "CUDA out of memory") || strings.Contains(text, "CUDA error: out of memory"):
		return append(out, oom(text, when, rank))
	case strings.Contains(text, "CUDA error: "):
		return append(out, cudaError(text, when, rank))
	case strings.Contains(text, "[Consumer "):
		return p.java(text, when, rank, out)
	case strings.Contains(text, "|CGRPJOINSTATE|") || strings.Contains(text, "|REBALANCE|") || strings.Contains(text, "|ASSIGN|"):
		return p.librdkafka(text, when, rank, out)
	case strings.Contains(text, "worker group") || strings.Contains(text, "Rendezvous complete"):
		return elastic(text, when, rank, out)
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
	return traces.Event{TimeNs: when.UnixNano(), Kind: kind, GPU: -1, Rank: rank, Message: msg, Attrs: map[string]string{}}
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
// log4j, logback and Python's logging print it ("2026-11-25 10:00:00,123",
// optionally bracketed, optionally with a zone, optionally after a
// level), librdkafka's
// "%7|1764064800.123|", or glog's "I1125 10:00:00.123456" (no year: taken
// from ref). A timestamp without a zone is local time.
func leadingTime(s string, ref time.Time) (time.Time, bool) {
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
		if end < len(s) && s[end] == 'Z' {
			t, err := time.Parse(layout+"Z07:00", v+"Z")
			return t, err == nil
		}
		if end+6 <= len(s) && (s[end] == '+' || s[end] == '-') && s[end+3] == ':' {
			t, err := time.Parse(layout+"Z07:00", v+s[end:end+6])
			return t, err == nil
		}
		t, err := time.ParseInLocation(layout, v, time.Local)
		return t, err == nil
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
		t, err := time.ParseInLocation("2006 0102 15:04:05.999999999", strconv.Itoa(ref.Year())+" "+s[1:end], time.Local)
		return t, err == nil
	}
	return time.Time{}, false
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
