package logparse

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// syslogLine takes a journald or syslog prefix off s; without one, s is
// the program's text as it is.
func syslogLine(s string, ref time.Time, loc *time.Location) record {
	var (
		when time.Time
		rest string
	)
	switch {
	case len(s) > 25 && s[4] == '-' && s[7] == '-' && s[10] == 'T' && s[13] == ':':
		t, n, ok := isoTime(s, loc)
		if !ok || s[n-1] != 'Z' && !strings.ContainsAny(s[19:n], "+-") {
			return record{text: s} // journald always writes the zone
		}
		when, rest = t, s[n:]
	case len(s) > 16 && isMonth(s[:3]) && s[3] == ' ' && s[6] == ' ' && s[9] == ':' && s[12] == ':':
		end := 15
		if s[15] == '.' {
			end = 16
			for end < len(s) && isDigit(s[end]) {
				end++
			}
		}
		t, ok := yearless("Jan _2 15:04:05.999999999", s[:end], ref, loc)
		if !ok {
			return record{text: s}
		}
		when, rest = t, s[end:]
	case len(s) > 26 && s[0] == '[' && s[25] == ']' && isMonth(s[5:8]):
		t, err := time.ParseInLocation("Mon Jan _2 15:04:05 2006", s[1:25], loc)
		if err != nil {
			return record{text: s}
		}
		return record{text: strings.TrimPrefix(s[26:], " "), time: t}
	default:
		return record{text: s}
	}
	host, ident, msg, ok := hostAndIdent(rest)
	if !ok {
		return record{text: s}
	}
	r := record{text: msg, time: when, host: host}
	r.unit, r.pid = splitIdent(ident)
	return r
}

// hostAndIdent splits " host ident[pid]: message".
func hostAndIdent(s string) (host, ident, msg string, ok bool) {
	if !strings.HasPrefix(s, " ") {
		return "", "", "", false
	}
	host, rest, ok := strings.Cut(s[1:], " ")
	if !ok || host == "" || isLevel(host) {
		return "", "", "", false
	}
	ident, msg, ok = strings.Cut(rest, ": ")
	if !ok {
		ident, ok = strings.CutSuffix(rest, ":")
	}
	if !ok || ident == "" || len(ident) > 128 || strings.ContainsAny(ident, " \t") {
		return "", "", "", false
	}
	return host, ident, msg, true
}

// splitIdent splits "python3[4242]" into its name and pid.
func splitIdent(ident string) (string, int) {
	name, pid, ok := strings.Cut(ident, "[")
	if !ok {
		return ident, 0
	}
	n, err := strconv.Atoi(strings.TrimSuffix(pid, "]"))
	if err != nil || n < 0 {
		return name, 0
	}
	return name, n
}

func isMonth(s string) bool {
	return strings.Contains("JanFebMarAprMayJunJulAugSepOctNovDec", s) && len(s) == 3 && s[0] >= 'A' && s[0] <= 'Z'
}

// isLevel rules out application lines such as "2026-...Z INFO Main: x",
// whose second word is a log level rather than a host.
func isLevel(s string) bool {
	switch s {
	case "TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR", "FATAL", "CRITICAL":
		return true
	}
	return false
}

// journalJSON decodes one line of journalctl -o json.
func journalJSON(line []byte) (record, bool) {
	var d map[string]json.RawMessage
	if json.Unmarshal(line, &d) != nil {
		return record{}, false
	}
	str := func(k string) string {
		var v string
		if raw, ok := d[k]; ok && json.Unmarshal(raw, &v) != nil {
			// journald writes non-UTF-8 fields as arrays of bytes.
			var b []byte
			var ints []int
			if json.Unmarshal(raw, &ints) == nil {
				for _, c := range ints {
					b = append(b, byte(c))
				}
			}
			v = string(b)
		}
		return v
	}
	us, err := strconv.ParseInt(str("__REALTIME_TIMESTAMP"), 10, 64)
	if err != nil {
		return record{}, false
	}
	return journalRecord(us, str("_HOSTNAME"), str("SYSLOG_IDENTIFIER"), str("_PID"), str("_COMM"), str("MESSAGE")), true
}

func journalRecord(us int64, host, ident, pid, comm, msg string) record {
	r := record{text: strings.TrimSuffix(msg, "\n"), time: time.UnixMicro(us).UTC(), host: host, unit: ident}
	if r.unit == "" {
		r.unit = comm
	}
	r.pid, _ = strconv.Atoi(pid)
	return r
}

// ExportReader reads journalctl -o export (the journal export format: one
// entry per block of KEY=value lines ending in an empty line; a field that
// is not plain text is KEY, a newline, a little-endian 64-bit length and
// the bytes) and hands out each entry as one line in journalctl -o json
// form, which Parser.Feed reads.
type ExportReader struct {
	r   *bufio.Reader
	max int
}

// NewExportReader reads r; fields longer than maxField bytes are cut.
func NewExportReader(r io.Reader, maxField int) *ExportReader {
	if maxField <= 0 {
		maxField = DefaultMaxLineBytes
	}
	return &ExportReader{r: bufio.NewReaderSize(r, 64<<10), max: maxField}
}

// IsExport tells journal export data from other text by its first line.
func IsExport(first []byte) bool {
	return bytes.HasPrefix(first, []byte("__CURSOR=")) || bytes.HasPrefix(first, []byte("__REALTIME_TIMESTAMP="))
}

// Next returns the next entry as a JSON line; io.EOF at the end.
func (x *ExportReader) Next() ([]byte, error) {
	fields := map[string]string{}
	for {
		line, err := x.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// An over-long text field: keep its start, skip the rest.
			rest := line
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = x.r.ReadSlice('\n')
			}
			line = rest
		}
		if err != nil && len(line) == 0 {
			if err == io.EOF && len(fields) > 0 {
				return x.entry(fields)
			}
			return nil, err
		}
		line = bytes.TrimSuffix(line, []byte("\n"))
		if len(line) == 0 {
			if len(fields) == 0 {
				continue
			}
			return x.entry(fields)
		}
		k, v, ok := bytes.Cut(line, []byte("="))
		if !ok {
			// A binary field: its name, then the length and the bytes.
			key := string(line)
			var n uint64
			if err := binary.Read(x.r, binary.LittleEndian, &n); err != nil {
				return nil, fmt.Errorf("journal export: field %s: %w", key, err)
			}
			keep := min(n, uint64(x.max))
			b := make([]byte, keep)
			if _, err := io.ReadFull(x.r, b); err != nil {
				return nil, fmt.Errorf("journal export: field %s: %w", key, err)
			}
			if _, err := x.r.Discard(int(n - keep)); err != nil {
				return nil, fmt.Errorf("journal export: field %s: %w", key, err)
			}
			if nl, err := x.r.ReadByte(); err != nil || nl != '\n' {
				return nil, fmt.Errorf("journal export: field %s: no newline after %d bytes", key, n)
			}
			fields[key] = string(b)
			continue
		}
		if len(v) > x.max {
			v = v[:x.max]
		}
		fields[string(k)] = string(v)
	}
}

func (x *ExportReader) entry(fields map[string]string) ([]byte, error) {
	keep := map[string]string{}
	for _, k := range []string{"__REALTIME_TIMESTAMP", "_HOSTNAME", "SYSLOG_IDENTIFIER", "_PID", "_COMM", "MESSAGE"} {
		if v, ok := fields[k]; ok {
			keep[k] = v
		}
	}
	if keep["__REALTIME_TIMESTAMP"] == "" {
		return nil, errors.New("journal export: an entry without __REALTIME_TIMESTAMP")
	}
	return json.Marshal(keep)
}
