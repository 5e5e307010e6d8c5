package kineto

import (
	"errors"
	"fmt"
	"io"
)

// bufSize is the scanner's window over the input. Tokens longer than the
// window (long strings) are assembled in a separate scratch buffer.
const bufSize = 256 << 10

// SyntaxError reports malformed or hostile input, with the offset (in
// decompressed bytes) where it was found.
type SyntaxError struct {
	Offset int64
	Msg    string
}

// Error says what is wrong and at which byte offset of the trace.
func (e *SyntaxError) Error() string {
	return fmt.Sprintf("kineto trace: byte %d: %s", e.Offset, e.Msg)
}

// ErrTooLarge reports input beyond a configured limit (decompressed size,
// string length, nesting depth, number length).
var ErrTooLarge = errors.New("kineto trace exceeds a limit")

// limitError is a SyntaxError that also matches ErrTooLarge.
type limitError struct{ SyntaxError }

func (e *limitError) Unwrap() error { return ErrTooLarge }

// scanner is a minimal JSON tokenizer over a sliding buffer. It allocates
// nothing per token: strings without escapes are returned as slices of the
// window, valid until the next call.
type scanner struct {
	r       io.Reader
	buf     []byte
	pos     int   // next unread byte in buf
	n       int   // bytes valid in buf
	base    int64 // input offset of buf[0]
	eof     bool
	rerr    error // read error other than io.EOF
	scratch []byte
	key     []byte // the current object key, copied out of the window
	lim     Limits
}

func newScanner(r io.Reader, lim Limits) *scanner {
	return &scanner{r: r, buf: make([]byte, bufSize), lim: lim}
}

func (s *scanner) offset() int64 { return s.base + int64(s.pos) }

func (s *scanner) errorf(format string, args ...any) error {
	if s.rerr != nil {
		return s.rerr
	}
	return &SyntaxError{Offset: s.offset(), Msg: fmt.Sprintf(format, args...)}
}

func (s *scanner) limitf(format string, args ...any) error {
	return &limitError{SyntaxError{Offset: s.offset(), Msg: fmt.Sprintf(format, args...)}}
}

// fill makes at least want unread bytes available, unless the input ends
// first. It returns false when fewer are available.
func (s *scanner) fill(want int) bool {
	for s.n-s.pos < want {
		if s.eof {
			return false
		}
		if s.pos > 0 {
			copy(s.buf, s.buf[s.pos:s.n])
			s.base += int64(s.pos)
			s.n -= s.pos
			s.pos = 0
		}
		if s.n == len(s.buf) {
			return true // window full; callers never want more than it holds
		}
		m, err := s.r.Read(s.buf[s.n:])
		s.n += m
		if err != nil {
			s.eof = true
			if err != io.EOF {
				s.rerr = err
			}
		}
	}
	return true
}

// skipSpace advances over whitespace and returns the next byte without
// consuming it; 0 at the end of input.
func (s *scanner) skipSpace() byte {
	for {
		for s.pos < s.n {
			c := s.buf[s.pos]
			if c != ' ' && c != '\n' && c != '\r' && c != '\t' {
				return c
			}
			s.pos++
		}
		if !s.fill(1) {
			return 0
		}
	}
}

// expect consumes byte c after optional whitespace.
func (s *scanner) expect(c byte, what string) error {
	got := s.skipSpace()
	if got != c {
		return s.unexpected(got, what)
	}
	s.pos++
	return nil
}

func (s *scanner) unexpected(got byte, what string) error {
	if got == 0 && s.n-s.pos == 0 {
		if s.rerr != nil {
			return s.rerr
		}
		return s.errorf("unexpected end of input, want %s (the file is truncated)", what)
	}
	return s.errorf("unexpected %q, want %s", got, what)
}

// readString consumes a JSON string (the opening quote is next) and returns
// its decoded bytes, valid until the next scanner call.
func (s *scanner) readString() ([]byte, error) {
	if c := s.skipSpace(); c != '"' {
		return nil, s.unexpected(c, "a string")
	}
	s.pos++
	// Fast path: the whole string, without escapes, is in the window.
	for i := s.pos; i < s.n; i++ {
		c := s.buf[i]
		if c == '"' {
			out := s.buf[s.pos:i]
			if len(out) > s.lim.MaxStringBytes {
				return nil, s.limitf("string of %d bytes is longer than the %d-byte limit", len(out), s.lim.MaxStringBytes)
			}
			s.pos = i + 1
			return out, nil
		}
		if c == '\\' || c < 0x20 {
			break
		}
	}
	return s.readStringSlow()
}

// readStringSlow assembles a string that has escapes or spans refills.
func (s *scanner) readStringSlow() ([]byte, error) {
	out := s.scratch[:0]
	for {
		if s.pos >= s.n && !s.fill(1) {
			return nil, s.unexpected(0, "the end of a string")
		}
		c := s.buf[s.pos]
		switch {
		case c == '"':
			s.pos++
			s.scratch = out
			return out, nil
		case c < 0x20:
			return nil, s.errorf("control character %#x in a string", c)
		case c == '\\':
			if !s.fill(2) {
				return nil, s.unexpected(0, "an escape sequence")
			}
			e := s.buf[s.pos+1]
			s.pos += 2
			switch e {
			case '"', '\\', '/':
				out = append(out, e)
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r, err := s.readHex4()
				if err != nil {
					return nil, err
				}
				if r >= 0xD800 && r < 0xDC00 && s.fill(6) && s.buf[s.pos] == '\\' && s.buf[s.pos+1] == 'u' {
					s.pos += 2
					lo, err := s.readHex4()
					if err != nil {
						return nil, err
					}
					if lo >= 0xDC00 && lo < 0xE000 {
						r = 0x10000 + (r-0xD800)<<10 + (lo - 0xDC00)
					} else {
						out = appendRune(out, 0xFFFD)
						r = lo
					}
				}
				if r >= 0xD800 && r < 0xE000 {
					r = 0xFFFD
				}
				out = appendRune(out, r)
			default:
				return nil, s.errorf("invalid escape \\%c in a string", e)
			}
		default:
			// Copy the run of plain bytes at once.
			i := s.pos
			for i < s.n && s.buf[i] != '"' && s.buf[i] != '\\' && s.buf[i] >= 0x20 {
				i++
			}
			out = append(out, s.buf[s.pos:i]...)
			s.pos = i
		}
		if len(out) > s.lim.MaxStringBytes {
			return nil, s.limitf("string longer than the %d-byte limit", s.lim.MaxStringBytes)
		}
	}
}

func (s *scanner) readHex4() (rune, error) {
	if !s.fill(4) {
		return 0, s.unexpected(0, "four hex digits")
	}
	var r rune
	for _, c := range s.buf[s.pos : s.pos+4] {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, s.errorf("invalid \\u escape")
		}
		r = r<<4 | rune(d)
	}
	s.pos += 4
	return r, nil
}

func appendRune(b []byte, r rune) []byte {
	switch {
	case r < 0x80:
		return append(b, byte(r))
	case r < 0x800:
		return append(b, 0xC0|byte(r>>6), 0x80|byte(r)&0x3F)
	case r < 0x10000:
		return append(b, 0xE0|byte(r>>12), 0x80|byte(r>>6)&0x3F, 0x80|byte(r)&0x3F)
	default:
		return append(b, 0xF0|byte(r>>18), 0x80|byte(r>>12)&0x3F, 0x80|byte(r>>6)&0x3F, 0x80|byte(r)&0x3F)
	}
}

// skipString consumes a string without decoding it.
func (s *scanner) skipString() error {
	if c := s.skipSpace(); c != '"' {
		return s.unexpected(c, "a string")
	}
	s.pos++
	length := 0
	for {
		i := s.pos
		for i < s.n {
			c := s.buf[i]
			if c == '"' || c == '\\' || c < 0x20 {
				break
			}
			i++
		}
		length += i - s.pos
		s.pos = i
		if length > s.lim.MaxStringBytes {
			return s.limitf("string longer than the %d-byte limit", s.lim.MaxStringBytes)
		}
		if s.pos >= s.n {
			if !s.fill(1) {
				return s.unexpected(0, "the end of a string")
			}
			continue
		}
		switch c := s.buf[s.pos]; {
		case c == '"':
			s.pos++
			return nil
		case c == '\\':
			if !s.fill(2) {
				return s.unexpected(0, "an escape sequence")
			}
			s.pos += 2
			length += 2
		default:
			return s.errorf("control character %#x in a string", c)
		}
	}
}

// numberToken consumes a number and returns its text, valid until the next
// scanner call.
func (s *scanner) numberToken() ([]byte, error) {
	s.skipSpace()
	max := s.lim.MaxNumberBytes
	s.fill(max + 1)
	i := s.pos
	for i < s.n && i-s.pos <= max {
		c := s.buf[i]
		if (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E' {
			i++
			continue
		}
		break
	}
	if i-s.pos > max {
		return nil, s.limitf("number longer than the %d-byte limit", max)
	}
	tok := s.buf[s.pos:i]
	if !validNumber(tok) {
		return nil, s.errorf("invalid number %q", tok)
	}
	s.pos = i
	return tok, nil
}

// validNumber checks JSON number syntax.
func validNumber(b []byte) bool {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	if i >= len(b) {
		return false
	}
	if b[i] == '0' {
		i++
	} else if b[i] >= '1' && b[i] <= '9' {
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	} else {
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		start := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == start {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		start := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == start {
			return false
		}
	}
	return i == len(b)
}

// literal consumes true, false or null.
func (s *scanner) literal() error {
	s.fill(5)
	for _, lit := range [...]string{"true", "false", "null"} {
		if s.n-s.pos >= len(lit) && string(s.buf[s.pos:s.pos+len(lit)]) == lit {
			s.pos += len(lit)
			return nil
		}
	}
	return s.errorf("invalid literal")
}

// skipValue consumes any value; depth is the nesting depth of the value.
func (s *scanner) skipValue(depth int) error {
	switch c := s.skipSpace(); c {
	case '"':
		return s.skipString()
	case '{':
		if depth >= s.lim.MaxDepth {
			return s.limitf("nesting deeper than %d levels", s.lim.MaxDepth)
		}
		s.pos++
		return s.eachMember(func(key []byte) error { return s.skipValue(depth + 1) })
	case '[':
		if depth >= s.lim.MaxDepth {
			return s.limitf("nesting deeper than %d levels", s.lim.MaxDepth)
		}
		s.pos++
		return s.eachElement(func() error { return s.skipValue(depth + 1) })
	case 't', 'f', 'n':
		return s.literal()
	default:
		if c == '-' || (c >= '0' && c <= '9') {
			_, err := s.numberToken()
			return err
		}
		return s.unexpected(c, "a value")
	}
}

// eachMember calls fn for each member of an object whose '{' was consumed;
// fn must consume the member's value. key is valid only until fn reads.
func (s *scanner) eachMember(fn func(key []byte) error) error {
	if s.skipSpace() == '}' {
		s.pos++
		return nil
	}
	for {
		key, err := s.readString()
		if err != nil {
			return err
		}
		// The window may move before fn looks at the key.
		s.key = append(s.key[:0], key...)
		if err := s.expect(':', "':' after an object key"); err != nil {
			return err
		}
		if err := fn(s.key); err != nil {
			return err
		}
		switch c := s.skipSpace(); c {
		case ',':
			s.pos++
		case '}':
			s.pos++
			return nil
		default:
			return s.unexpected(c, "',' or '}' in an object")
		}
	}
}

// eachElement calls fn for each element of an array whose '[' was consumed.
func (s *scanner) eachElement(fn func() error) error {
	if s.skipSpace() == ']' {
		s.pos++
		return nil
	}
	for {
		if err := fn(); err != nil {
			return err
		}
		switch c := s.skipSpace(); c {
		case ',':
			s.pos++
		case ']':
			s.pos++
			return nil
		default:
			return s.unexpected(c, "',' or ']' in an array")
		}
	}
}
