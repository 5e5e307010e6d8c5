package dashboards

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// dashboard is the part of a Grafana dashboard JSON the tests read.
type dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

func loadDashboards(t *testing.T) map[string]dashboard {
	t.Helper()
	names, _ := fs.Glob(Grafana(), "*.json")
	if len(names) < 2 {
		t.Fatalf("grafana dashboards %v, want the GPU and agent ones", names)
	}
	out := map[string]dashboard{}
	for _, n := range names {
		data, _ := fs.ReadFile(Grafana(), n)
		var d dashboard
		if err := json.Unmarshal(data, &d); err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		out[n] = d
	}
	return out
}

var (
	promStrings   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	promMatchers  = regexp.MustCompile(`\{[^}]*\}`)
	promRanges    = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping  = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdent     = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*\s*\(?`)
	promLabelName = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)`)
	labelValues   = regexp.MustCompile(`^label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)$`)
	promKeywords  = []string{"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"}
)

// metricNames returns the metric names a PromQL expression reads.
func metricNames(expr string) []string {
	e := promStrings.ReplaceAllString(expr, `""`)
	e = promMatchers.ReplaceAllString(e, " ")
	e = promRanges.ReplaceAllString(e, " ")
	e = promGrouping.ReplaceAllString(e, " ")
	var out []string
	for _, m := range promIdent.FindAllString(e, -1) {
		if strings.HasSuffix(m, "(") || slices.Contains(promKeywords, strings.ToLower(strings.TrimSpace(m))) {
			continue // a function call or a keyword
		}
		out = append(out, strings.TrimSpace(m))
	}
	return out
}

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`DCGM_FI_DEV_GPU_UTIL{Hostname=~"$Hostname",gpu=~"$gpu"}`, []string{"DCGM_FI_DEV_GPU_UTIL"}},
		{`sum by (instance, reason) (rate(loupe_cpuprof_lost_samples_total{instance=~"a{b}"}[5m]))`, []string{"loupe_cpuprof_lost_samples_total"}},
		{`rate(a_sum[5m]) / rate(a_count[5m])`, []string{"a_sum", "a_count"}},
		{`count(x{simulated="true"}) or vector(0)`, []string{"x"}},
		{`time() - loupe_agent_start_time_seconds`, []string{"loupe_agent_start_time_seconds"}},
	} {
		if got := metricNames(tc.expr); !slices.Equal(got, tc.want) {
			t.Errorf("metricNames(%q) = %q, want %q", tc.expr, got, tc.want)
		}
	}
}

// exposed greps the agent's Go sources for the metric names it exposes
// (loupe_* and the dcgm-exporter compatible DCGM_FI_*), and the label names
// of its GPU series.
func exposed(t *testing.T) (names, labels map[string]bool) {
	t.Helper()
	names, labels = map[string]bool{}, map[string]bool{"instance": true, "job": true}
	name := regexp.MustCompile("[\"`](loupe_[a-z0-9_]+|DCGM_FI_[A-Z0-9_]+)")
	label := regexp.MustCompile(`\badd\("([A-Za-z_]+)"`)
	err := filepath.WalkDir(filepath.Join("..", "agent"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range name.FindAllStringSubmatch(string(data), -1) {
			names[m[1]] = true
		}
		if filepath.Base(p) == "metrics.go" {
			for _, m := range label.FindAllStringSubmatch(string(data), -1) {
				labels[m[1]] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, must := range []string{"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_SM_ACTIVE", "loupe_spool_entries"} {
		if !names[must] {
			t.Fatalf("found no %s in ../agent: did the agent's metrics move?", must)
		}
	}
	return names, labels
}

// TestDashboardsUseExposedMetrics decodes every dashboard and checks that
// each PromQL metric it reads is one the agent exposes, that GPU series are
// selected by labels the agent sets, and that the panels are well formed.
func TestDashboardsUseExposedMetrics(t *testing.T) {
	names, labels := exposed(t)
	for file, d := range loadDashboards(t) {
		if d.UID == "" || d.Title == "" {
			t.Errorf("%s: missing uid or title", file)
		}
		vars := map[string]bool{}
		for _, v := range d.Templating.List {
			vars[v.Name] = true
			q, ok := v.Query.(map[string]any)
			if !ok {
				continue
			}
			lv := labelValues.FindStringSubmatch(q["query"].(string))
			if lv == nil {
				t.Errorf("%s: variable %s: query %q is not label_values(EXPR, LABEL)", file, v.Name, q["query"])
				continue
			}
			for _, n := range metricNames(lv[1]) {
				if !names[n] {
					t.Errorf("%s: variable %s reads %s, which the agent does not expose", file, v.Name, n)
				}
			}
			if strings.Contains(lv[1], "DCGM_FI_") && !labels[lv[2]] {
				t.Errorf("%s: variable %s lists label %s, which the agent's GPU series lack", file, v.Name, lv[2])
			}
		}
		ids := map[int]bool{}
		exprs := 0
		var walk func([]panel)
		walk = func(ps []panel) {
			for _, p := range ps {
				if ids[p.ID] {
					t.Errorf("%s: panel id %d used twice", file, p.ID)
				}
				ids[p.ID] = true
				walk(p.Panels)
				if p.Type == "row" {
					continue
				}
				if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
					t.Errorf("%s: panel %q does not use the ${datasource} variable", file, p.Title)
				}
				if len(p.Targets) == 0 {
					t.Errorf("%s: panel %q has no query", file, p.Title)
				}
				for _, tg := range p.Targets {
					exprs++
					for _, n := range metricNames(tg.Expr) {
						base := n
						for _, suf := range []string{"_bucket", "_sum", "_count"} {
							if !names[base] && strings.HasSuffix(n, suf) {
								base = strings.TrimSuffix(n, suf)
							}
						}
						if !names[base] {
							t.Errorf("%s: panel %q reads %s, which the agent does not expose (expr %s)", file, p.Title, n, tg.Expr)
						}
					}
					for _, m := range promLabelName.FindAllStringSubmatch(promStrings.ReplaceAllString(tg.Expr, `""`), -1) {
						if strings.Contains(tg.Expr, "DCGM_FI_") && !labels[m[1]] {
							t.Errorf("%s: panel %q selects on label %s, which the agent's GPU series lack", file, p.Title, m[1])
						}
					}
					for _, v := range regexp.MustCompile(`\$([A-Za-z_]+)`).FindAllStringSubmatch(tg.Expr, -1) {
						if !vars[v[1]] {
							t.Errorf("%s: panel %q uses $%s, which is not a dashboard variable", file, p.Title, v[1])
						}
					}
				}
			}
		}
		walk(d.Panels)
		if exprs < 10 {
			t.Errorf("%s: only %d queries", file, exprs)
		}
	}
}
