package views

import (
	"bytes"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/loupe-dev/loupe/traces"
)

// BenchmarkBinGPUSamples is the per-bundle work of a cold fleet view: one
// host's gpu_samples.parquet (8 GPUs, 1 h at 1 Hz) decoded and binned.
func BenchmarkBinGPUSamples(b *testing.B) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	var rows []traces.GPUSample
	for s := range 3600 {
		for g := range 8 {
			v := float32((s/60+g)%10) / 10
			rows = append(rows, traces.GPUSample{TimeNs: t0.Add(time.Duration(s) * time.Second).UnixNano(), GPU: int32(g),
				GPUUtil: v * 100, PowerW: 100 + 500*v, ProfValid: true, SMActive: v, TensorActive: v / 2, DRAMActive: v / 3})
		}
	}
	var buf bytes.Buffer
	if err := parquet.Write(&buf, rows); err != nil {
		b.Fatal(err)
	}
	m := &traces.Manifest{Start: t0, End: t0.Add(time.Hour)}
	b.ReportAllocs()
	for b.Loop() {
		bins, err := binGPUSamples(m, buf.Bytes())
		if err != nil {
			b.Fatal(err)
		}
		if len(bins.gpus) != 8 || bins.secs != 3601 {
			b.Fatalf("%d GPUs over %d s", len(bins.gpus), bins.secs)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(rows)), "ns/sample")
}
