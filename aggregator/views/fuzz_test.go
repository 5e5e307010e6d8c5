package views

import (
	"bytes"
	"github.com/loupe-dev/loupe/aggregator/httpjson"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/loupe-dev/loupe/traces"
)

// FuzzFleetQuery feeds arbitrary query strings to the fleet parameters:
// they are accepted or rejected with a parameter error, never a panic, and
// an accepted one is within the view's limits.
func FuzzFleetQuery(f *testing.F) {
	for _, s := range []string{
		"", "metric=power", "from=2026-11-25T12:00:00Z&to=2026-11-25T13:00:00Z&bucket=10s",
		"from=1764072000&bucket=60", "bucket=1.5s", "to=0", "from=1e300", "bucket=-5s", "metric=%zz", "job=a&job=b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		r := httptest.NewRequest(http.MethodGet, "/api/v1/views/fleet", nil)
		r.URL.RawQuery = raw
		q, err := parseFleetQuery(r)
		if err != nil {
			if _, ok := err.(httpjson.BadRequest); !ok {
				t.Fatalf("%q: %T %v is not a parameter error", raw, err, err)
			}
			return
		}
		if q.metric < 0 || q.metric >= len(Metrics) || q.bucket < 0 || q.bucket > 86400 {
			t.Fatalf("%q accepted out of range: %+v", raw, q)
		}
		if q.fromSet && q.toSet && (!q.to.After(q.from) || q.to.Sub(q.from) > MaxWindow) {
			t.Fatalf("%q accepted a bad window: %+v", raw, q)
		}
	})
}

// FuzzBinGPUSamples feeds arbitrary bytes (and mutations of a real table)
// as gpu_samples.parquet: an error or bins within the capture window, never
// a panic.
func FuzzBinGPUSamples(f *testing.F) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	m := &traces.Manifest{Start: t0, End: t0.Add(10 * time.Second)}
	var buf bytes.Buffer
	rows := []traces.GPUSample{
		{TimeNs: t0.UnixNano(), GPU: 0, SMActive: 0.5, ProfValid: true},
		{TimeNs: t0.Add(3 * time.Second).UnixNano(), GPU: 3, GPUUtil: 40},
		{TimeNs: t0.Add(-time.Hour).UnixNano(), GPU: 1},
	}
	if err := parquet.Write(&buf, rows); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte("PAR1"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := binGPUSamples(m, data)
		if err != nil {
			return
		}
		if b.secs != 11 || len(b.vals) != len(Metrics) || len(b.gpus) > maxBundleGPUs {
			t.Fatalf("bins %d s, %d metrics, %d GPUs", b.secs, len(b.vals), len(b.gpus))
		}
		for _, v := range b.vals {
			if int64(len(v)) != int64(len(b.gpus))*b.secs {
				t.Fatalf("%d values for %d GPUs x %d s", len(v), len(b.gpus), b.secs)
			}
		}
	})
}
