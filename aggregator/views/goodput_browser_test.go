package views_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/loupe-dev/loupe/aggregator"
	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/internal/aggtest"
	"github.com/loupe-dev/loupe/traces/store"
)

const (
	goodputPrice = 3.0
	imageOld     = "nvcr.io/nvidia/pytorch:24.05-py3"
	imageNew     = "nvcr.io/nvidia/pytorch:24.09-py3"
)

// startGoodputAggregator runs a real aggregator, with a price per GPU-hour,
// over a store of three jobs with step histories: llm's runs r1 and r2 (r2
// 15 % slower on a new image; rank 3 makes the others wait 3 % of every
// window), vit, and old, whose agent wrote none.
func startGoodputAggregator(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	st, err := store.NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	llm := aggtest.RunPlan{Cluster: "c1", Job: "llm", Run: "r1", Hosts: [][]int{{0, 1}, {2, 3}}, Start: day, Startup: 2 * time.Minute,
		Step: time.Second, Steps: 3000, Image: imageOld, Straggler: 3, Late: 8 * time.Millisecond, Captures: []time.Duration{10 * time.Minute, 50 * time.Minute}}
	llm2 := llm
	llm2.Run, llm2.Start, llm2.Step, llm2.Image, llm2.Captures = "r2", day.Add(24*time.Hour), 1150*time.Millisecond, imageNew, []time.Duration{55 * time.Minute}
	vit := aggtest.RunPlan{Cluster: "c1", Job: "vit", Run: "r1", Hosts: [][]int{{0, 1}}, Start: day, Startup: 30 * time.Second,
		Step: 500 * time.Millisecond, Steps: 2000, Straggler: -1, Captures: []time.Duration{10 * time.Minute}}
	old := aggtest.RunPlan{Cluster: "c1", Job: "old", Run: "r1", Hosts: [][]int{{0}}, Start: day, Startup: time.Minute,
		Step: time.Second, Steps: 1000, Straggler: -1, Captures: []time.Duration{5 * time.Minute}, NoHistory: true}
	var ids []capture.ID
	for _, p := range []aggtest.RunPlan{llm, llm2, vit, old} {
		ids = append(ids, aggtest.PutRun(t, st, p)...)
	}
	return serveAggregator(t, root, func(cfg *aggregator.Config) {
		cfg.GPUHourPrice = goodputPrice
		cfg.FLOPsPerStep = map[string]float64{"llm": 0.35 * 989e12 * 4} // 35 % of four H100s at 1 s a step
	}, ids)
}

func TestGoodputPagesInChromium(t *testing.T) {
	ctx, pageErrors := browser(t)
	base := startGoodputAggregator(t)
	t.Cleanup(func() {
		if errs := pageErrors(); len(errs) > 0 {
			t.Errorf("page errors:\n%s", strings.Join(errs, "\n"))
		}
	})

	t.Run("fleet goodput", func(t *testing.T) {
		load(t, ctx, base+"/goodput", "goodput")
		type page struct {
			Jobs     []string
			Lost     []float64
			Costs    []float64
			Regress  []string
			Summary  string
			Axis     []string
			Series   int
			Stacked  []float64 // the chart's bar per job, summed over causes
			APILost  []float64
			TopCause string
		}
		p := eval[page](t, ctx, `(() => {
			const rows = [...document.querySelectorAll("table.goodput tbody tr")], f = window.__loupe.goodputFleet;
			const num = (td) => parseFloat(td.textContent.replace(/,/g, ""));
			const o = f.chart.getOption();
			return { jobs: rows.map((r) => r.dataset.job), lost: rows.map((r) => num(r.querySelector("td.lost"))),
				costs: rows.map((r) => num(r.querySelector("td.cost"))),
				regress: [...document.querySelectorAll(".regression")].map((e) => e.textContent + " | " + e.title),
				summary: document.getElementById("fleet-summary").textContent, axis: o.yAxis[0].data, series: o.series.length,
				stacked: o.yAxis[0].data.map((_, i) => o.series.reduce((s, x) => s + x.data[i], 0)),
				apiLost: f.data.jobs.map((j) => j.lost_gpu_hours), topCause: rows[0].children[9].textContent };
		})()`)
		if len(p.Jobs) != 2 || p.Jobs[0] != "llm" || p.Jobs[1] != "vit" || p.Lost[0] <= p.Lost[1] {
			t.Fatalf("goodput table %v lost %v: want llm above vit, old (no step history) left out", p.Jobs, p.Lost)
		}
		for i := range p.Jobs {
			if math.Abs(p.Costs[i]-goodputPrice*p.APILost[i]) > 0.006 {
				t.Errorf("%s costs %v, want %v GPU-h x %v", p.Jobs[i], p.Costs[i], p.APILost[i], goodputPrice)
			}
			// The chart's bars (the biggest loss on top) are the same losses.
			if bar := p.Stacked[len(p.Stacked)-1-i]; math.Abs(bar-p.APILost[i]) > 1e-6 {
				t.Errorf("%s drawn at %v GPU-h, lost %v", p.Jobs[i], bar, p.APILost[i])
			}
		}
		if len(p.Regress) != 1 || !strings.Contains(p.Regress[0], "regressed in r2") || !strings.Contains(p.Regress[0], "image changed from "+imageOld+" to "+imageNew) {
			t.Errorf("regression marks %q", p.Regress)
		}
		if !strings.Contains(p.Summary, "USD") || !strings.Contains(p.Summary, "at 3 USD per GPU-hour") || p.Series != 9 || p.Axis[1] != "c1/llm" {
			t.Errorf("summary %q, %d series, axis %v", p.Summary, p.Series, p.Axis)
		}
		if !strings.HasPrefix(p.TopCause, "start-up") && !strings.HasPrefix(p.TopCause, "straggler wait") {
			t.Errorf("llm's largest loss %q, want start-up or straggler wait", p.TopCause)
		}
		screenshot(t, ctx, "goodput")
		// A job's row opens its latest run.
		if href := eval[string](t, ctx, `document.querySelector("table.goodput a.job-link").getAttribute("href")`); href != "/jobs/c1/llm/r2" {
			t.Errorf("llm links to %q", href)
		}
	})

	t.Run("job page stacked badput", func(t *testing.T) {
		load(t, ctx, base+"/jobs/c1/llm/r2", "job")
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.getElementById("goodput").dataset.ready === "1"`, chromedp.WithPollingTimeout(20*time.Second))); err != nil {
			t.Fatalf("goodput section never drew: %v", err)
		}
		type job struct {
			Names    []string
			Stacks   []string
			Buckets  int
			Sums     []float64
			Hours    float64
			Change   string
			Cost     string
			Green    int
			Straggle string
			Summary  string
		}
		j := eval[job](t, ctx, `(() => {
			const g = window.__loupe.goodput, o = g.chart.getOption();
			const sums = o.xAxis[0].data.map((_, i) => o.series.reduce((s, x) => s + x.data[i], 0));
			const c = document.querySelector("#goodput-chart canvas"), d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
			let green = 0;
			for (let i = 0; i < d.length; i += 4) if (d[i] === 0x43 && d[i + 1] === 0xa0 && d[i + 2] === 0x47) green++;
			return { names: o.series.map((s) => s.name), stacks: o.series.map((s) => s.stack), buckets: o.xAxis[0].data.length, sums,
				hours: g.run.gpu_seconds / 3600, change: document.getElementById("goodput-change").textContent,
				cost: document.getElementById("goodput-cost").textContent, green,
				straggle: document.querySelector("tr[data-cause=straggler_wait]").textContent,
				summary: document.getElementById("goodput-summary").textContent };
		})()`)
		if j.Names[0] != "productive" || !contains(j.Names, "start-up") || !contains(j.Names, "straggler wait") || j.Buckets == 0 {
			t.Fatalf("badput chart series %v over %d buckets", j.Names, j.Buckets)
		}
		for _, s := range j.Stacks {
			if s != "gpu" {
				t.Errorf("series stacks %v: want every series in one stack", j.Stacks)
				break
			}
		}
		total := 0.0
		for _, v := range j.Sums {
			total += v
		}
		if math.Abs(total-j.Hours) > 1e-6 {
			t.Errorf("the stacked bars add up to %v GPU-h, the run has %v", total, j.Hours)
		}
		if !strings.Contains(j.Change, "Regression") || !strings.Contains(j.Change, "step time rose 15%") || !strings.Contains(j.Change, imageNew) {
			t.Errorf("change line %q", j.Change)
		}
		if !strings.HasSuffix(j.Cost, "USD") || j.Green == 0 || !strings.Contains(j.Straggle, "%") {
			t.Errorf("cost %q, %d productive pixels, straggler row %q", j.Cost, j.Green, j.Straggle)
		}
		// r2's steps are 15 % slower for the same FLOPs: 35 % / 1.15.
		if !strings.Contains(j.Summary, "MFU 30.4%") {
			t.Errorf("summary %q, want MFU 30.4%%", j.Summary)
		}
		screenshot(t, ctx, "job-goodput")

		// A run without a step history says so instead of drawing nothing.
		load(t, ctx, base+"/jobs/c1/old/r1", "job")
		msg, err := chromedp.Run(ctx, chromedp.Poll[string](`document.getElementById("goodput").dataset.ready === "1" && document.getElementById("goodput").textContent`,
			chromedp.WithPollingTimeout(20*time.Second)))
		if err != nil || !strings.Contains(msg, "step history") {
			t.Errorf("old job's goodput section %q, %v", msg, err)
		}
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
