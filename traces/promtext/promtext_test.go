package promtext_test

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/traces/promtext"
	"github.com/loupe-dev/loupe/traces/promtext/promtexttest"
)

// Two sets writing samples of one family, a summary written by hand, a
// Prometheus histogram and help text that needs escaping: one header per
// family, every sample under it, help from the first table that has it.
func TestWrite(t *testing.T) {
	a, b := metrics.NewSet(), metrics.NewSet()
	a.NewCounter(`jobs_total{kind="x"}`).Add(2)
	a.NewGauge("queue", func() float64 { return 3 })
	b.NewCounter(`jobs_total{kind="y"}`).Inc()
	b.NewPrometheusHistogramExt("wait_seconds", []float64{0.1, 1}).Update(0.5)
	b.RegisterMetricsWriter(func(w io.Writer) {
		metrics.WriteMetadataIfNeeded(w, "step_seconds", "summary")
		io.WriteString(w, "step_seconds{quantile=\"0.5\"} 1\nstep_seconds_sum 4\nstep_seconds_count 4\n")
	})
	var out bytes.Buffer
	err := promtext.Write(&out, func(w io.Writer) { a.WritePrometheus(w); b.WritePrometheus(w) },
		promtext.Help{"jobs_total": `Jobs done \ by kind` + "\nsecond line", "queue": "Jobs waiting."},
		promtext.Help{"queue": "not this one", "wait_seconds": "Time waited.", "step_seconds": "Step time."})
	if err != nil {
		t.Fatal(err)
	}
	fams := promtexttest.Families(t, out.Bytes())
	want := map[string]promtexttest.Family{
		"jobs_total":   {Name: "jobs_total", Help: `Jobs done \\ by kind\nsecond line`, Type: "counter", Samples: 2},
		"queue":        {Name: "queue", Help: "Jobs waiting.", Type: "gauge", Samples: 1},
		"wait_seconds": {Name: "wait_seconds", Help: "Time waited.", Type: "histogram", Samples: 5},
		"step_seconds": {Name: "step_seconds", Help: "Step time.", Type: "summary", Samples: 3},
	}
	if len(fams) != len(want) {
		t.Errorf("families %v, want %v", fams, want)
	}
	for name, w := range want {
		if got := fams[name]; got == nil || *got != w {
			t.Errorf("family %s = %+v, want %+v", name, got, w)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out.String())
	}
}

// A family missing from every table keeps an empty HELP, which
// RequireHelp reports with the table to add it to.
func TestMissingHelp(t *testing.T) {
	s := metrics.NewSet()
	s.NewCounter("undocumented_total").Inc()
	var out bytes.Buffer
	promtext.Write(&out, s.WritePrometheus)
	if !strings.Contains(out.String(), "# HELP undocumented_total\n# TYPE undocumented_total counter\nundocumented_total 1\n") {
		t.Errorf("output:\n%s", out.String())
	}
	rec := &recorder{T: t}
	promtexttest.RequireHelp(rec, out.Bytes(), "the table")
	if len(rec.errs) != 1 || !strings.Contains(rec.errs[0], "undocumented_total has no help text: add a line for it to the table") {
		t.Errorf("RequireHelp reported %q", rec.errs)
	}
}

type recorder struct {
	*testing.T
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, strings.TrimSpace(fmt.Sprintf(format, args...)))
}

// agentSizedSet is about one agent's scrape: 8 GPUs, 40 families of 8
// series, plus 60 single series; help describes every family.
func agentSizedSet() (*metrics.Set, promtext.Help) {
	s := metrics.NewSet()
	help := promtext.Help{}
	for f := range 40 {
		name := fmt.Sprintf("gpu_family_%d", f)
		help[name] = "A GPU family."
		for g := range 8 {
			s.NewGauge(fmt.Sprintf(`%s{gpu="%d",UUID="GPU-0000",modelName="H100"}`, name, g), func() float64 { return 1.5 })
		}
	}
	for f := range 60 {
		name := fmt.Sprintf("single_%d_total", f)
		help[name] = "A counter."
		s.NewCounter(name).Inc()
	}
	return s, help
}

// BenchmarkWrite is the cost of one agent-sized scrape through the help
// filler; BenchmarkWriteBare is the same scrape written by
// VictoriaMetrics alone, the baseline.
func BenchmarkWrite(b *testing.B) {
	s, help := agentSizedSet()
	b.ReportAllocs()
	for b.Loop() {
		promtext.Write(io.Discard, s.WritePrometheus, help)
	}
}

func BenchmarkWriteBare(b *testing.B) {
	s, _ := agentSizedSet()
	metrics.ExposeMetadata(true) // as Write leaves it
	b.ReportAllocs()
	for b.Loop() {
		s.WritePrometheus(io.Discard)
	}
}
