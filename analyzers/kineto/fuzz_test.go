package kineto

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
)

// FuzzReader checks that no input crashes the reader or makes it loop, that
// every error is a *SyntaxError or a limit, and that whatever it accepts is
// valid JSON (encoding/json agrees).
func FuzzReader(f *testing.F) {
	f.Add([]byte(sample))
	f.Add(gz([]byte(sample)))
	f.Add(realisticTrace(3))
	f.Add([]byte(`[{"ph":"X","ts":1,"dur":2}]`))
	f.Add([]byte(`{"traceEvents":[{"ts":1e300}]}`))
	f.Add([]byte(`{"traceEvents":[{"args":` + strings.Repeat(`[`, 80) + `]}]}`))
	f.Add([]byte(`{"traceEvents":[{"name":"\ud83d\ude00\ud800x"}]}`))
	f.Add([]byte(`{"traceEvents":[{"ts":-0.0005e-2,"dur":9223372036854775.807}],"x":[]}`))
	f.Add(gz(bytes.Repeat([]byte(" "), 1<<16)))
	f.Fuzz(func(t *testing.T, data []byte) {
		lim := Limits{MaxBytes: 1 << 20, MaxStringBytes: 4096, MaxDepth: 16}
		r, err := NewReader(bytes.NewReader(data), lim)
		events := 0
		for err == nil {
			_, err = r.Next()
			events++
			if events > len(data)+1 {
				t.Fatalf("more events (%d) than input bytes", events)
			}
		}
		if err == io.EOF {
			if len(data) > 2 && data[0] == 0x1f && data[1] == 0x8b {
				return // compressed: the JSON check below does not apply
			}
			if !json.Valid(data) {
				t.Fatalf("accepted invalid JSON %q", data)
			}
			return
		}
		var se *SyntaxError
		var le *limitError
		if !errors.As(err, &se) && !errors.As(err, &le) && !errors.Is(err, ErrTooLarge) &&
			!strings.Contains(err.Error(), "gzip") && !strings.Contains(err.Error(), "flate") && err != io.ErrUnexpectedEOF {
			t.Fatalf("error of type %T: %v", err, err)
		}
	})
}
