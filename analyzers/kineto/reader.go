// Package kineto reads Kineto trace files (the Chrome trace JSON that
// torch.profiler and libkineto write) one event at a time, in memory that
// does not depend on the size of the trace.
//
// It is a hand-written tokenizer rather than encoding/json: a trace of
// several gigabytes holds tens of millions of events, and decoding each into
// maps (or through json.Decoder.Token, which allocates per token) costs more
// than the analyses themselves. Only the fields the analyzers use are
// decoded; everything else is syntax-checked and skipped.
//
// Input may be plain or gzip-compressed (detected from its first bytes).
// Hostile input (truncated files, deep nesting, huge numbers, oversized
// strings, gzip bombs) is rejected with a *SyntaxError saying what and where,
// after reading at most Limits.MaxBytes decompressed bytes.
package kineto

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strconv"

	"github.com/klauspost/compress/gzip"
)

// Limits bound what a Reader accepts. Zero fields take the defaults.
type Limits struct {
	// MaxBytes bounds the decompressed size of a trace (default 16 GiB).
	MaxBytes int64
	// MaxStringBytes bounds one string, such as a templated kernel name
	// (default 1 MiB).
	MaxStringBytes int
	// MaxDepth bounds the nesting of objects and arrays (default 64; Kineto
	// writes at most 4).
	MaxDepth int
	// MaxNumberBytes bounds the text of one number (default 64).
	MaxNumberBytes int
}

// DefaultLimits are the limits a zero Limits stands for.
var DefaultLimits = Limits{MaxBytes: 16 << 30, MaxStringBytes: 1 << 20, MaxDepth: 64, MaxNumberBytes: 64}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	if l.MaxBytes > 0 {
		d.MaxBytes = l.MaxBytes
	}
	if l.MaxStringBytes > 0 {
		d.MaxStringBytes = l.MaxStringBytes
	}
	if l.MaxDepth > 0 {
		d.MaxDepth = l.MaxDepth
	}
	if l.MaxNumberBytes > 0 {
		d.MaxNumberBytes = l.MaxNumberBytes
	}
	return d
}

// Meta is what a trace says about itself outside traceEvents. Kineto writes
// some of it after the events, so it is complete only once Next has
// returned io.EOF.
type Meta struct {
	SchemaVersion int64
	// Rank and WorldSize come from distributedInfo; -1 when absent.
	Rank, WorldSize int64
	Backend         string
	// BaseTimeNanoseconds is the wall-clock time of ts 0, when given.
	BaseTimeNanoseconds int64
	DisplayTimeUnit     string
}

// Event is one element of traceEvents. Times are in nanoseconds (Kineto
// writes microseconds with three decimals; they are converted exactly).
// Byte slices are valid until the next call to Next.
type Event struct {
	Ph   byte // first byte of "ph": 'X' complete, 'M' metadata, 'i', 's', 'f', ...
	Cat  []byte
	Name []byte

	Ts, Dur int64
	// TsMicros and DurMicros are ts and dur as a JSON reader that yields
	// doubles (Python's json, and so pandas and HTA) sees them: the double
	// nearest the decimal text, in microseconds.
	TsMicros, DurMicros float64
	HasTs, HasDur       bool
	HasCat              bool
	Correlation         int64 // args.correlation, -1 when absent
	Stream              int64 // args.stream, -1 when absent or not a number
	ExternalID          int64 // args["External id"], -1 when absent
	// Flops is args.flops, the floating-point operations PyTorch's profiler
	// counts for an operator when run with_flops=True; -1 when absent.
	Flops          int64
	HasCorrelation bool
}

// Reader streams the events of one trace.
type Reader struct {
	s     *scanner
	lim   Limits
	meta  Meta
	ev    Event
	state int
	count int64 // events returned
	gz    *gzip.Reader
}

// Reader states.
const (
	stTop    = iota // between top-level members
	stEvents        // inside traceEvents, before an element or ']'
	stArray         // top level is a bare array of events
	stDone
)

// NewReader returns a Reader over r, which may be gzip-compressed.
func NewReader(r io.Reader, lim Limits) (*Reader, error) {
	lim = lim.withDefaults()
	br := bufio.NewReaderSize(r, 64<<10)
	rd := &Reader{lim: lim, meta: Meta{Rank: -1, WorldSize: -1}}
	var src io.Reader = br
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("kineto trace: gzip header: %w", err)
		}
		rd.gz = gz
		src = gz
	}
	rd.s = newScanner(&limitReader{r: src, left: lim.MaxBytes, max: lim.MaxBytes}, lim)
	switch c := rd.s.skipSpace(); c {
	case '{':
		rd.s.pos++
		if rd.s.skipSpace() == '}' {
			rd.s.pos++
			rd.state = stDone
			if err := rd.trailer(); err != io.EOF {
				return nil, err
			}
		}
	case '[':
		rd.s.pos++
		rd.state = stArray
	default:
		return nil, rd.s.unexpected(c, "'{' at the start of a Kineto trace")
	}
	return rd, nil
}

// limitReader fails once more than left bytes have been read, so that a
// gzip bomb costs bounded time.
type limitReader struct {
	r         io.Reader
	left, max int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		// Only an error if there is more to read.
		var one [1]byte
		n, err := l.r.Read(one[:])
		if n > 0 {
			return 0, fmt.Errorf("%w: more than %d decompressed bytes (a gzip bomb, or raise Limits.MaxBytes if the trace is genuine)", ErrTooLarge, l.max)
		}
		return 0, err
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

// Meta returns the trace's metadata read so far.
func (r *Reader) Meta() Meta { return r.meta }

// Offset is the number of decompressed bytes consumed.
func (r *Reader) Offset() int64 { return r.s.offset() }

// Next returns the next event, or io.EOF after the last one once the whole
// document has been checked. The Event is reused by the next call.
func (r *Reader) Next() (*Event, error) {
	s := r.s
	for {
		switch r.state {
		case stDone:
			return nil, io.EOF
		case stArray, stEvents:
			if c := s.skipSpace(); c == ']' {
				s.pos++
				if r.state == stEvents {
					r.state = stTop
					if err := r.afterMember(); err != nil {
						return nil, err
					}
					continue
				}
				r.state = stDone
				return nil, r.trailer()
			}
			if err := r.event(); err != nil {
				return nil, err
			}
			r.count++
			switch c := s.skipSpace(); c {
			case ',':
				s.pos++
				if s.skipSpace() == ']' {
					return nil, s.errorf("trailing ',' before ']' in traceEvents")
				}
			case ']':
			default:
				return nil, s.unexpected(c, "',' or ']' after a trace event")
			}
			return &r.ev, nil
		case stTop:
			if err := r.topMember(); err != nil {
				return nil, err
			}
		}
	}
}

// topMember reads one member of the top-level object.
func (r *Reader) topMember() error {
	s := r.s
	key, err := s.readString()
	if err != nil {
		return err
	}
	if err := s.expect(':', "':' after an object key"); err != nil {
		return err
	}
	switch string(key) {
	case "traceEvents":
		if err := s.expect('[', "'[' starting traceEvents"); err != nil {
			return err
		}
		r.state = stEvents
		return nil
	case "schemaVersion":
		v, err := r.intValue("schemaVersion")
		if err != nil {
			return err
		}
		r.meta.SchemaVersion = v
	case "baseTimeNanoseconds":
		v, err := r.intValue("baseTimeNanoseconds")
		if err != nil {
			return err
		}
		r.meta.BaseTimeNanoseconds = v
	case "displayTimeUnit":
		v, err := r.stringValue(1)
		if err != nil {
			return err
		}
		r.meta.DisplayTimeUnit = v
	case "distributedInfo":
		if err := r.distributedInfo(); err != nil {
			return err
		}
	default:
		if err := s.skipValue(1); err != nil {
			return err
		}
	}
	return r.afterMember()
}

// afterMember consumes ',' or the closing '}' of the top-level object.
func (r *Reader) afterMember() error {
	s := r.s
	switch c := s.skipSpace(); c {
	case ',':
		s.pos++
		return nil
	case '}':
		s.pos++
		r.state = stDone
		return r.trailer()
	default:
		return s.unexpected(c, "',' or '}' in the top-level object")
	}
}

// trailer checks that nothing but whitespace follows the document.
func (r *Reader) trailer() error {
	if c := r.s.skipSpace(); c != 0 || r.s.n > r.s.pos {
		return r.s.errorf("unexpected data after the end of the trace")
	}
	if r.s.rerr != nil {
		return r.s.rerr
	}
	return io.EOF
}

// Close releases the decompressor; it does not close the underlying reader.
func (r *Reader) Close() error {
	if r.gz != nil {
		return r.gz.Close()
	}
	return nil
}

func (r *Reader) distributedInfo() error {
	s := r.s
	if c := s.skipSpace(); c != '{' {
		return s.skipValue(1) // tolerate null or other shapes: no rank then
	}
	s.pos++
	return s.eachMember(func(key []byte) error {
		switch string(key) {
		case "rank":
			v, err := r.optionalInt(2)
			r.meta.Rank = v
			return err
		case "world_size":
			v, err := r.optionalInt(2)
			r.meta.WorldSize = v
			return err
		case "backend":
			v, err := r.stringValue(2)
			r.meta.Backend = v
			return err
		}
		return s.skipValue(2)
	})
}

// intValue reads a number that must be an integer in range.
func (r *Reader) intValue(what string) (int64, error) {
	s := r.s
	if c := s.skipSpace(); c != '-' && (c < '0' || c > '9') {
		return 0, s.unexpected(c, what+" as a number")
	}
	tok, err := s.numberToken()
	if err != nil {
		return 0, err
	}
	v, ok := scaledInt(tok, 0)
	if !ok {
		return 0, s.errorf("%s %s is out of range", what, tok)
	}
	return v, nil
}

// optionalInt reads a number, or skips any other value and returns -1.
func (r *Reader) optionalInt(depth int) (int64, error) {
	s := r.s
	if c := s.skipSpace(); c != '-' && (c < '0' || c > '9') {
		return -1, s.skipValue(depth)
	}
	tok, err := s.numberToken()
	if err != nil {
		return -1, err
	}
	v, ok := scaledInt(tok, 0)
	if !ok {
		return -1, nil
	}
	return v, nil
}

// stringValue reads a string (allocating), or skips a non-string value.
func (r *Reader) stringValue(depth int) (string, error) {
	if r.s.skipSpace() != '"' {
		return "", r.s.skipValue(depth)
	}
	b, err := r.s.readString()
	return string(b), err
}

// timeValue reads a time in microseconds as nanoseconds, exactly, and as
// the double a float-reading parser sees.
func (r *Reader) timeValue(field string) (int64, float64, error) {
	s := r.s
	if c := s.skipSpace(); c != '-' && (c < '0' || c > '9') {
		return 0, 0, s.unexpected(c, "a number for "+field)
	}
	tok, err := s.numberToken()
	if err != nil {
		return 0, 0, err
	}
	v, ok := scaledInt(tok, 3)
	if !ok {
		return 0, 0, s.errorf("%s %s is out of range (more than 292 years in microseconds)", field, tok)
	}
	if !bytes.ContainsAny(tok, ".eE") {
		return v, float64(v / 1000), nil // an integer: exact as a double below 2^53
	}
	f, err := strconv.ParseFloat(string(tok), 64)
	if err != nil {
		return 0, 0, s.errorf("%s %s: %v", field, tok, err)
	}
	return v, f, nil
}

// event parses one trace event object into r.ev.
func (r *Reader) event() error {
	s := r.s
	if c := s.skipSpace(); c != '{' {
		return s.unexpected(c, "a trace event object")
	}
	s.pos++
	ev := &r.ev
	ev.Ph = 0
	ev.Cat, ev.Name = ev.Cat[:0], ev.Name[:0]
	ev.Ts, ev.Dur, ev.TsMicros, ev.DurMicros = 0, 0, 0, 0
	ev.HasTs, ev.HasDur, ev.HasCat, ev.HasCorrelation = false, false, false, false
	ev.Correlation, ev.Stream, ev.ExternalID, ev.Flops = -1, -1, -1, -1
	return s.eachMember(func(key []byte) error {
		switch string(key) {
		case "ph":
			if s.skipSpace() != '"' {
				return s.skipValue(2)
			}
			b, err := s.readString()
			if err != nil {
				return err
			}
			if len(b) > 0 {
				ev.Ph = b[0]
			}
		case "cat":
			if s.skipSpace() != '"' {
				return s.skipValue(2)
			}
			b, err := s.readString()
			if err != nil {
				return err
			}
			ev.Cat = append(ev.Cat, b...)
			ev.HasCat = true
		case "name":
			if s.skipSpace() != '"' {
				return s.skipValue(2)
			}
			b, err := s.readString()
			if err != nil {
				return err
			}
			ev.Name = append(ev.Name, b...)
		case "ts":
			v, f, err := r.timeValue("ts")
			ev.Ts, ev.TsMicros, ev.HasTs = v, f, err == nil
			return err
		case "dur":
			v, f, err := r.timeValue("dur")
			ev.Dur, ev.DurMicros, ev.HasDur = v, f, err == nil
			return err
		case "args":
			return r.args()
		default:
			return s.skipValue(2)
		}
		return nil
	})
}

// args reads the members of an event's args that the analyzers use.
func (r *Reader) args() error {
	s := r.s
	if s.skipSpace() != '{' {
		return s.skipValue(2)
	}
	s.pos++
	ev := &r.ev
	return s.eachMember(func(key []byte) error {
		var dst *int64
		switch string(key) {
		case "correlation":
			dst = &ev.Correlation
			ev.HasCorrelation = true
		case "stream":
			dst = &ev.Stream
		case "External id":
			dst = &ev.ExternalID
		case "flops":
			dst = &ev.Flops
		default:
			return s.skipValue(3)
		}
		v, err := r.optionalInt(3)
		*dst = v
		if dst == &ev.Correlation && v < 0 {
			ev.HasCorrelation = false
		}
		return err
	})
}
