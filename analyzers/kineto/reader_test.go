package kineto

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

const sample = `{
  "schemaVersion": 1,
  "deviceProperties": [{"id": 0, "name": "NVIDIA H100 80GB HBM3", "totalGlobalMem": 85029158912}],
  "distributedInfo": {"backend": "nccl", "rank": 3, "world_size": 8, "pg_count": 2},
  "traceEvents": [
    {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1234, "tid": 1234,
     "ts": 1700000000001.250, "dur": 4.5, "args": {"External id": 12, "cbid": 211, "correlation": 77}},
    {"ph": "X", "cat": "kernel", "name": "void gemm<float, \"q\u00e9\">(int)", "pid": 0, "tid": 7,
     "ts": 1700000000010.001, "dur": 20.0, "args": {"queued": 0, "device": 0, "context": 1,
     "stream": 7, "correlation": 77, "registers per thread": 128, "grid": [1, 2, 3],
     "nested": {"a": [true, false, null, -1.5e-3]}}},
    {"name": "process_name", "ph": "M", "ts": 1700000000000.000, "pid": 0, "tid": 0, "args": {"name": "python"}}
  ],
  "traceName": "rank3.pt.trace.json",
  "displayTimeUnit": "ms",
  "baseTimeNanoseconds": 1700000000000000000
}
`

func readAll(t *testing.T, data []byte, lim Limits) ([]Event, Meta, error) {
	t.Helper()
	r, err := NewReader(bytes.NewReader(data), lim)
	if err != nil {
		return nil, Meta{}, err
	}
	defer r.Close()
	var out []Event
	for {
		ev, err := r.Next()
		if err == io.EOF {
			return out, r.Meta(), nil
		}
		if err != nil {
			return out, r.Meta(), err
		}
		c := *ev
		c.Cat = append([]byte(nil), ev.Cat...)
		c.Name = append([]byte(nil), ev.Name...)
		out = append(out, c)
	}
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func TestReaderSample(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
	}{{"plain", []byte(sample)}, {"gzip", gz([]byte(sample))}} {
		t.Run(tc.name, func(t *testing.T) {
			evs, meta, err := readAll(t, tc.data, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if meta.Rank != 3 || meta.WorldSize != 8 || meta.Backend != "nccl" || meta.SchemaVersion != 1 ||
				meta.DisplayTimeUnit != "ms" || meta.BaseTimeNanoseconds != 1700000000000000000 {
				t.Errorf("meta = %+v", meta)
			}
			if len(evs) != 3 {
				t.Fatalf("got %d events, want 3", len(evs))
			}
			rt, k, m := evs[0], evs[1], evs[2]
			if rt.Ph != 'X' || string(rt.Cat) != "cuda_runtime" || string(rt.Name) != "cudaLaunchKernel" ||
				rt.Ts != 1700000000001250 || rt.Dur != 4500 || rt.Correlation != 77 || !rt.HasCorrelation ||
				rt.Stream != -1 || rt.ExternalID != 12 {
				t.Errorf("runtime event = %+v", rt)
			}
			if string(k.Name) != `void gemm<float, "qé">(int)` || k.Stream != 7 || k.Correlation != 77 ||
				k.Ts != 1700000000010001 || k.Dur != 20000 || !k.HasDur {
				t.Errorf("kernel event = %+v name %q", k, k.Name)
			}
			if m.Ph != 'M' || m.HasDur || m.HasCat {
				t.Errorf("metadata event = %+v", m)
			}
		})
	}
}

func TestReaderAcceptsVariants(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		events   int
	}{
		{"empty object", `{}`, 0},
		{"empty events", `{"traceEvents": []}`, 0},
		{"bare array", `[{"ph":"X","ts":1,"dur":2,"cat":"kernel"}, {"ph":"M"}]`, 2},
		{"meta after events", `{"traceEvents":[{"ph":"i"}],"distributedInfo":{"rank":1}}`, 1},
		{"exponent times", `{"traceEvents":[{"ts":1.5e3,"dur":2E-3}]}`, 1},
		{"no distributedInfo rank", `{"distributedInfo":null,"traceEvents":[]}`, 0},
		{"string stream", `{"traceEvents":[{"args":{"stream":"7","correlation":null}}]}`, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs, _, err := readAll(t, []byte(tc.in), Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if len(evs) != tc.events {
				t.Fatalf("got %d events, want %d", len(evs), tc.events)
			}
		})
	}
	evs, _, _ := readAll(t, []byte(`{"traceEvents":[{"ts":1.5e3,"dur":2E-3,"args":{"stream":"7"}}]}`), Limits{})
	if evs[0].Ts != 1500000 || evs[0].Dur != 2 || evs[0].Stream != -1 {
		t.Errorf("event = %+v", evs[0])
	}
}

func TestReaderRejectsHostileInput(t *testing.T) {
	deep := strings.Repeat(`{"a":`, 100) + "1" + strings.Repeat("}", 100)
	bomb := gz(bytes.Repeat([]byte(" "), 4<<20))
	for _, tc := range []struct {
		name, in string
		lim      Limits
		want     string
		tooLarge bool
	}{
		{"truncated", `{"traceEvents":[{"ph":"X","ts":1`, Limits{}, "truncated", false},
		{"truncated string", `{"traceEvents":[{"name":"abc`, Limits{}, "truncated", false},
		{"not json", `hello`, Limits{}, "want '{'", false},
		{"bad number", `{"traceEvents":[{"ts":1.}]}`, Limits{}, "invalid number", false},
		{"leading zero", `{"traceEvents":[{"ts":01}]}`, Limits{}, "invalid number", false},
		{"huge ts", `{"traceEvents":[{"ts":1e300}]}`, Limits{}, "out of range", false},
		{"huge negative dur", `{"traceEvents":[{"dur":-99999999999999999999}]}`, Limits{}, "out of range", false},
		{"long number", `{"traceEvents":[{"ts":` + strings.Repeat("9", 100) + `}]}`, Limits{}, "number longer", true},
		{"deep nesting", `{"traceEvents":[{"args":` + deep + `}]}`, Limits{}, "nesting deeper", true},
		{"deep top level", `{"x":` + deep + `}`, Limits{}, "nesting deeper", true},
		{"oversized name", `{"traceEvents":[{"name":"` + strings.Repeat("k", 2000) + `"}]}`, Limits{MaxStringBytes: 1000}, "longer than", true},
		{"oversized escaped", `{"traceEvents":[{"x":"` + strings.Repeat(`\n`, 2000) + `"}]}`, Limits{MaxStringBytes: 1000}, "longer than", true},
		{"gzip bomb", string(bomb), Limits{MaxBytes: 1 << 20}, "decompressed bytes", true},
		{"trailing garbage", `{"traceEvents":[]} x`, Limits{}, "after the end", false},
		{"trailing comma", `{"traceEvents":[{},]}`, Limits{}, "trailing ','", false},
		{"event not object", `{"traceEvents":[1]}`, Limits{}, "trace event object", false},
		{"control char", "{\"traceEvents\":[{\"name\":\"a\x01\"}]}", Limits{}, "control character", false},
		{"bad escape", `{"traceEvents":[{"name":"\q"}]}`, Limits{}, "invalid escape", false},
		{"bad literal", `{"traceEvents":[{"x":nul}]}`, Limits{}, "invalid literal", false},
		{"missing colon", `{"traceEvents" []}`, Limits{}, "':'", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := readAll(t, []byte(tc.in), tc.lim)
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
			if got := errors.Is(err, ErrTooLarge); got != tc.tooLarge {
				t.Errorf("errors.Is(ErrTooLarge) = %v, want %v (%v)", got, tc.tooLarge, err)
			}
		})
	}
}

func TestScaledInt(t *testing.T) {
	for _, tc := range []struct {
		in    string
		shift int
		want  int64
		ok    bool
	}{
		{"0", 3, 0, true},
		{"1.001", 3, 1001, true},
		{"1700000000001.250", 3, 1700000000001250, true},
		{"-2.5", 3, -2500, true},
		{"0.0004", 3, 0, true},
		{"0.0005", 3, 1, true},
		{"1e-9", 3, 0, true},
		{"9223372036854775.807", 3, 9223372036854775807, true},
		{"9223372036854775.808", 3, 0, false},
		{"12345678901234567890123", 0, 0, false},
		{"0.000000000000000000000000001", 30, 1000, true},
		{"1.2345678901234567890123", 3, 1235, true},
	} {
		got, ok := scaledInt([]byte(tc.in), tc.shift)
		if got != tc.want || ok != tc.ok {
			t.Errorf("scaledInt(%s, %d) = %d, %v; want %d, %v", tc.in, tc.shift, got, ok, tc.want, tc.ok)
		}
	}
}

// TestReaderSmallReads feeds the trace a byte at a time, so that every
// token straddles a refill of the window.
func TestReaderSmallReads(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"traceEvents":[`)
	for i := range 5000 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"ph":"X","cat":"kernel","name":"k\"%d","ts":%d.125,"dur":1,"args":{"stream":%d,"correlation":%d}}`, i, i, i%3, i)
	}
	b.WriteString(`],"distributedInfo":{"rank":5}}`)
	r, err := NewReader(io.LimitReader(oneByte{strings.NewReader(b.String())}, 1<<30), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		ev, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf(`k"%d`, n); string(ev.Name) != want || ev.Ts != int64(n)*1000+125 || ev.Correlation != int64(n) {
			t.Fatalf("event %d = %+v (%q)", n, ev, ev.Name)
		}
		n++
	}
	if n != 5000 || r.Meta().Rank != 5 {
		t.Fatalf("read %d events, rank %d", n, r.Meta().Rank)
	}
}

type oneByte struct{ r io.Reader }

func (o oneByte) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}
