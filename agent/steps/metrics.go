package steps

import (
	"fmt"
	"io"
	"strings"

	"github.com/VictoriaMetrics/metrics"
)

// Register makes set expose the tracker's statistics at every scrape, in
// summary form over the last Window steps of each rank:
//
//	loupe_step_time_seconds{job,rank,quantile="0.5"|"0.99"}
//	loupe_step_time_seconds_sum{job,rank}, loupe_step_time_seconds_count{job,rank}
//	loupe_step_time_cv{job,rank}, loupe_step_iteration{job,rank}, loupe_steps_total{job,rank,source}
//
// The values are computed from the tracker's rings at scrape time; ranks the
// tracker forgets disappear from the output with them.
func (t *Tracker) Register(set *metrics.Set) {
	set.RegisterMetricsWriter(t.WriteMetrics)
}

// WriteMetrics writes the statistics of every rank in Prometheus text format.
func (t *Tracker) WriteMetrics(w io.Writer) {
	all := t.Stats("")
	if len(all) == 0 {
		return
	}
	metrics.WriteMetadataIfNeeded(w, "loupe_step_time_seconds", "summary")
	for _, s := range all {
		l := labels(s)
		for _, q := range []struct {
			q string
			v float64
		}{{"0.5", s.P50.Seconds()}, {"0.99", s.P99.Seconds()}} {
			fmt.Fprintf(w, "loupe_step_time_seconds{%s,quantile=%q} %g\n", l, q.q, q.v)
		}
		fmt.Fprintf(w, "loupe_step_time_seconds_sum{%s} %g\n", l, s.Mean.Seconds()*float64(s.Window))
		fmt.Fprintf(w, "loupe_step_time_seconds_count{%s} %d\n", l, s.Window)
	}
	for _, m := range []struct {
		name, typ string
		v         func(Stats) float64
	}{
		{"loupe_step_time_cv", "gauge", func(s Stats) float64 { return s.CV }},
		{"loupe_step_iteration", "gauge", func(s Stats) float64 { return float64(s.Iteration) }},
	} {
		metrics.WriteMetadataIfNeeded(w, m.name, m.typ)
		for _, s := range all {
			fmt.Fprintf(w, "%s{%s} %g\n", m.name, labels(s), m.v(s))
		}
	}
	metrics.WriteMetadataIfNeeded(w, "loupe_steps_total", "counter")
	for _, s := range all {
		fmt.Fprintf(w, "loupe_steps_total{%s,source=\"%s\"} %d\n", labels(s), s.Source, s.Steps)
	}
}

func labels(s Stats) string {
	return fmt.Sprintf(`job="%s",rank="%d"`, escapeLabel(s.Job), s.Rank)
}

// escapeLabel escapes a label value as the Prometheus text format requires
// (backslash, double quote and newline only; other bytes stay as they are).
func escapeLabel(v string) string {
	return labelEscaper.Replace(v)
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
