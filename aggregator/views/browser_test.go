package views_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/loupe-dev/loupe/aggregator"
	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/analyzers"
)

// artifacts is where screenshots go (git-ignored).
var artifacts = filepath.Join("..", "..", "test-artifacts", "dashboards")

// browser starts Debian's headless Chromium and returns a tab's context and
// the page errors seen so far. Without Chromium the test fails under CI and
// skips elsewhere.
func browser(t testing.TB) (context.Context, func() []string) {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		msg := "headless Chromium not found (" + err.Error() + "): apt-get install chromium"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1400, 1000))
	var mu sync.Mutex
	var pageErrs []string
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithListener(func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			desc := d.Text
			if d.Exception != nil {
				desc += " " + d.Exception.Description
			}
			pageErrs = append(pageErrs, fmt.Sprintf("exception at %s:%d: %s", d.URL, d.LineNumber, desc))
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError {
				var parts []string
				for _, a := range ev.Args {
					parts = append(parts, string(a.Value)+a.Description)
				}
				pageErrs = append(pageErrs, "console.error: "+strings.Join(parts, " "))
			}
		}
	}))
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start %s: %v", path, err)
	}
	return ctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(pageErrs)
	}
}

// checkPageErrors fails the test at its end if a page threw or logged an
// error.
func checkPageErrors(t *testing.T, pageErrors func() []string) {
	t.Cleanup(func() {
		if errs := pageErrors(); len(errs) > 0 {
			t.Errorf("page errors:\n%s", strings.Join(errs, "\n"))
		}
	})
}

// load opens url and waits until the page says it has drawn (or failed).
func load(t testing.TB, ctx context.Context, url, page string) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	state, err := chromedp.Run(ctx, chromedp.Poll[string](`document.body.dataset.ready || (document.body.dataset.error && "error: " + document.body.dataset.error)`,
		chromedp.WithPollingTimeout(60*time.Second)))
	if err != nil {
		t.Fatalf("%s never finished drawing: %v", url, err)
	}
	if state != page {
		t.Fatalf("%s: %s", url, state)
	}
}

// eval runs a JavaScript expression and decodes its value.
func eval[T any](t testing.TB, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// screenshot saves the whole page under test-artifacts/dashboards/.
func screenshot(t testing.TB, ctx context.Context, name string) {
	t.Helper()
	buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(artifacts, name+".png")
	if err := os.WriteFile(p, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s (%d bytes)", p, len(buf))
}

// startAggregator runs a real aggregator (every analyzer) over the seeded
// store and waits until both captures are analyzed.
func startAggregator(t *testing.T) string {
	t.Helper()
	_, root := seed(t)
	addContinuous(t, root)
	return serveStore(t, root, "cap-1", trainJob, inferJob)
}

// serveStore runs a real aggregator over the store in root and waits until
// capture id of each job is analyzed.
func serveStore(t *testing.T, root, id string, jobs ...string) string {
	var ids []capture.ID
	for _, job := range jobs {
		ids = append(ids, capture.ID{Cluster: "c1", Job: job, Run: "r1", Capture: id})
	}
	return serveAggregator(t, root, nil, ids)
}

// serveAggregator runs a real aggregator over the store in root, its
// configuration changed by edit (when not nil), and waits until the
// captures ids are analyzed.
func serveAggregator(t *testing.T, root string, edit func(*aggregator.Config), ids []capture.ID) string {
	t.Helper()
	cfg := aggregator.DefaultConfig()
	cfg.Store = "file://" + root
	cfg.SweepInterval = 100 * time.Millisecond
	if edit != nil {
		edit(&cfg)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := aggregator.New(ctx, cfg, analyzers.All, log)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { svc.Serve(ctx, ln) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	deadline := time.Now().Add(60 * time.Second)
	for _, id := range ids {
		for !svc.Index.Done(id) {
			if time.Now().After(deadline) {
				t.Fatalf("capture %s not analyzed after 60 s", id)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return "http://" + ln.Addr().String()
}

// The fleet page of a shared host lists gpu-job with its one GPU and the
// host's other GPUs as "no job", with no link to cpu-job's page.
func TestFleetUnownedInChromium(t *testing.T) {
	ctx, pageErrors := browser(t)
	_, root := seedSharedHost(t)
	base := serveStore(t, root, "cap-1", "gpu-job", "cpu-job")
	checkPageErrors(t, pageErrors)
	load(t, ctx, base+"/fleet?from=2026-11-25T12:00:00Z&to=2026-11-25T12:01:00Z", "fleet")
	legend := eval[string](t, ctx, `document.querySelector(".jobs-legend").textContent`)
	links := eval[[]string](t, ctx, `[...document.querySelectorAll(".jobs-legend a")].map((a) => a.dataset.job)`)
	if !strings.Contains(legend, "c1/gpu-job/r1 (1 GPUs)") || !strings.Contains(legend, "c1: no job (7 GPUs no captured job uses)") ||
		strings.Contains(legend, "cpu-job") || !slices.Equal(links, []string{"gpu-job"}) {
		t.Errorf("legend %q, links %v", legend, links)
	}
}

func TestPagesInChromium(t *testing.T) {
	ctx, pageErrors := browser(t)
	base := startAggregator(t)
	checkPageErrors(t, pageErrors)

	t.Run("fleet", func(t *testing.T) {
		load(t, ctx, base+"/fleet?from=2026-11-25T12:00:00Z&to=2026-11-25T12:01:00Z&bucket=5s", "fleet")
		type fleet struct {
			Rows, Columns int
			Labels        []string
			Jobs          []string
			Banner        bool
			Idle, Busy    float64
			IdleRGB       []int
			BusyRGB       []int
		}
		// The chart's own option (rows on the axis) and the drawn pixels of
		// one idle and one busy cell: a dead zone must look dark.
		f := eval[fleet](t, ctx, `(() => {
			const f = window.__loupe.fleet, o = echarts.getInstanceByDom(document.getElementById("fleet")).getOption();
			const idleRow = f.rowLabels.indexOf("node-2 · gpu7"), busyRow = f.rowLabels.indexOf("node-2 · gpu6");
			const canvas = document.querySelector("#fleet canvas"), ctx2 = canvas.getContext("2d"), dpr = window.devicePixelRatio;
			const px = (r, c) => Array.from(ctx2.getImageData(Math.round((230 + (c + 0.5) * f.gridW / f.columns) * dpr), Math.round((16 + (r + 0.5) * f.rowPx) * dpr), 1, 1).data).slice(0, 3);
			return { rows: f.rows, columns: f.columns, labels: o.yAxis[0].data, jobs: f.jobs.map((j) => j.job),
				banner: !!document.querySelector(".banner-sim"), idle: f.value(idleRow, 3), busy: f.value(busyRow, 3),
				idleRGB: px(idleRow, 3), busyRGB: px(busyRow, 3) };
		})()`)
		if f.Rows != 24 || f.Columns != 12 || len(f.Labels) != 24 {
			t.Fatalf("heatmap %d rows x %d columns (%d axis labels), want 24 x 12", f.Rows, f.Columns, len(f.Labels))
		}
		if !slices.Equal(f.Jobs, []string{inferJob, trainJob}) || !strings.HasSuffix(f.Labels[0], "(sim)") || strings.HasSuffix(f.Labels[8], "(sim)") || !f.Banner {
			t.Errorf("jobs %v, labels %q..., banner %v: want simulated rows labelled and the banner shown", f.Jobs, f.Labels[:9], f.Banner)
		}
		if f.Idle != idleSM*100 || f.Busy != busySM*100 {
			t.Errorf("cell values idle %v busy %v", f.Idle, f.Busy)
		}
		bright := func(c []int) int { return c[0] + c[1] + c[2] }
		if len(f.IdleRGB) != 3 || bright(f.IdleRGB)+200 > bright(f.BusyRGB) {
			t.Errorf("idle cell drawn %v, busy cell %v: the dead zone does not stand out", f.IdleRGB, f.BusyRGB)
		}
		screenshot(t, ctx, "fleet")

		// Hover shows the cell; a click opens the row's job.
		xy := eval[[]float64](t, ctx, `(() => { const b = document.getElementById("fleet").getBoundingClientRect(), f = window.__loupe.fleet;
			return [b.left + 230 + 2.5 * f.gridW / f.columns, b.top + 16 + 10.5 * f.rowPx]; })()`)
		x, y := xy[0], xy[1]
		if err := chromedp.Do(ctx, chromedp.MouseEvent("mouseMoved", x, y)); err != nil {
			t.Fatal(err)
		}
		tip := eval[string](t, ctx, `document.getElementById("tip").textContent`)
		if !strings.Contains(tip, "c1/"+trainJob+"/r1") || !strings.Contains(tip, "node-1 gpu2") || !strings.Contains(tip, "SM active 80 %") {
			t.Errorf("tooltip %q", tip)
		}
		if err := chromedp.Do(ctx, chromedp.MouseClickXY(x, y)); err != nil {
			t.Fatal(err)
		}
		// The click navigates, which ends any script run across it: ask
		// again until the job page has drawn.
		opened := false
		for range 100 {
			p, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.pathname + location.search + " " + (document.body.dataset.ready || "")`))
			if opened = err == nil && p == "/jobs/c1/"+trainJob+"/r1?capture=cap-1 job"; opened {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !opened {
			t.Errorf("a click on a row did not open its job page")
		}

		// A bad parameter in the page's URL shows the API's message.
		if err := chromedp.Do(ctx, chromedp.Navigate(base+"/fleet?bucket=often")); err != nil {
			t.Fatal(err)
		}
		if msg, err := chromedp.Run(ctx, chromedp.Poll[string](`document.body.dataset.error`)); err != nil || !strings.Contains(msg, "bucket") {
			t.Errorf("bad bucket: page error %q %v", msg, err)
		}

		// Another metric, from the switch.
		load(t, ctx, base+"/fleet?from=2026-11-25T12:00:00Z&to=2026-11-25T12:01:00Z&metric=power", "fleet")
		if m := eval[string](t, ctx, `window.__loupe.fleet.metric + " " + document.getElementById("metric").value`); m != "power power" {
			t.Errorf("metric switch: %q", m)
		}
	})

	t.Run("job", func(t *testing.T) {
		load(t, ctx, base+"/jobs/c1/"+trainJob+"/r1?capture=cap-1", "job")
		type job struct {
			Cells     [][3]float64
			Bright    []int
			Ranks     []string
			Hot       []int
			HotText   string
			Skew      []float64
			Findings  []string
			Impacts   []string
			TraceJSON int
			Hosts     int
			Kernels   []int
		}
		j := eval[job](t, ctx, `(async () => {
			const h = window.__loupe.job.charts.steps, o = h.chart.getOption(), s = window.__loupe.job.view.steps;
			const canvas = document.querySelector("#steps canvas"), c2 = canvas.getContext("2d"), dpr = window.devicePixelRatio;
			const cells = [], bright = [];
			for (let r = 0; r < s.ranks.length; r++) {
				for (let c = 0; c < s.iterations.length; c++) if (h.value(r, c) !== null) cells.push([c, r, h.value(r, c)]);
				const px = c2.getImageData(Math.round((h.left + 10.5 * h.gridW / s.iterations.length) * dpr), Math.round((h.top + (r + 0.5) * h.rowPx) * dpr), 1, 1).data;
				bright.push(px[0] + px[1] + px[2]);
			}
			const skew = echarts.getInstanceByDom(document.getElementById("nccl-skew")).getOption();
			const rows = [...document.querySelectorAll("table.findings tbody tr")];
			const trace = await (await fetch(document.getElementById("trace-all").href)).json();
			return { cells, bright, ranks: o.yAxis[0].data, hot: window.__loupe.job.hotRanks,
				hotText: document.getElementById("hot-ranks").textContent, skew: skew.series[0].data,
				findings: rows.map((r) => r.textContent), impacts: rows.map((r) => r.children[3].textContent),
				traceJSON: trace.traceEvents.length, hosts: document.querySelectorAll("a.trace-host").length,
				kernels: echarts.getInstanceByDom(document.getElementById("kernel-hist")).getOption().series[0].data };
		})()`)
		world := trainHosts * gpusPerHost
		if len(j.Ranks) != world || len(j.Cells) != world*iterations {
			t.Fatalf("step heatmap %d rows, %d cells; want %d x %d", len(j.Ranks), len(j.Cells), world, iterations)
		}
		sum := make([]float64, world)
		for _, c := range j.Cells {
			sum[int(c[1])] += c[2]
		}
		hottest := 0
		for r := range sum {
			if sum[r] > sum[hottest] {
				hottest = r
			}
		}
		others := (slices.Max(slices.Delete(slices.Clone(sum), hottest, hottest+1)))
		if j.Ranks[hottest] != fmt.Sprintf("rank %d", straggler) || sum[hottest] < 1.4*others {
			t.Errorf("hottest row %q (sum %.0f ms vs next %.0f): want rank %d to stand out", j.Ranks[hottest], sum[hottest], others, straggler)
		}
		// As drawn: the straggler's row is the brightest on the canvas.
		if b := slices.Index(j.Bright, slices.Max(j.Bright)); len(j.Bright) != world || b != straggler || slices.Contains(slices.Delete(slices.Clone(j.Bright), b, b+1), j.Bright[b]) {
			t.Errorf("drawn row brightness %v: want row %d alone the brightest", j.Bright, straggler)
		}
		if !slices.Equal(j.Hot, []int{straggler}) || !strings.Contains(j.HotText, "rank 5") {
			t.Errorf("called-out ranks %v %q", j.Hot, j.HotText)
		}
		if len(j.Skew) != world || slices.Index(j.Skew, slices.Max(j.Skew)) != straggler {
			t.Errorf("NCCL skew %v: want rank %d latest", j.Skew, straggler)
		}
		if !slices.ContainsFunc(j.Findings, func(s string) bool { return strings.Contains(s, "rank 5") && strings.Contains(s, "nccl-straggler") }) {
			t.Errorf("no nccl-straggler finding about rank 5 in the table: %q", j.Findings)
		}
		launches := 0
		for _, n := range j.Kernels {
			launches += n
		}
		if launches != 10 {
			t.Errorf("kernel-duration histogram %v: want the 10 kernel launches of rank 0's Kineto trace", j.Kernels)
		}
		if j.TraceJSON == 0 || j.Hosts != trainHosts {
			t.Errorf("trace download: %d events, %d host links", j.TraceJSON, j.Hosts)
		}

		// Flame graph of the straggler: its samples sit in data_loader.
		eval[bool](t, ctx, `(() => { const s = document.getElementById("flame-rank"); s.value = "rank=5"; s.dispatchEvent(new Event("change")); return true; })()`)
		names, err := chromedp.Run(ctx, chromedp.Poll[[]string](`window.__loupe.flame && echarts.getInstanceByDom(document.getElementById("flame")).getOption().series[0].data.map((d) => d.name).includes("data_loader") &&
			echarts.getInstanceByDom(document.getElementById("flame")).getOption().series[0].data.map((d) => d.name)`, chromedp.WithPollingTimeout(20*time.Second)))
		if err != nil {
			t.Fatalf("flame graph of rank 5: %v", err)
		}
		if slices.Contains(names, "forward") {
			t.Errorf("rank 5's flame graph has other ranks' frames: %v", names)
		}
		screenshot(t, ctx, "job")

		// The continuous profiles of node-1 around the capture: the time
		// range control reads them (the fixture's are all in forward).
		eval[bool](t, ctx, `(() => { document.getElementById("flame-rank").value = "host=node-1"; const r = document.getElementById("flame-range");
			r.value = "-1800"; r.dispatchEvent(new Event("change")); return true; })()`)
		names, err = chromedp.Run(ctx, chromedp.Poll[[]string](`document.querySelector("#flame-box .controls").textContent.includes("from 10 continuous profiles") &&
			echarts.getInstanceByDom(document.getElementById("flame")).getOption().series[0].data.map((d) => d.name)`, chromedp.WithPollingTimeout(20*time.Second)))
		if err != nil {
			t.Fatalf("continuous flame graph of node-1: %v (status %q)", err, eval[string](t, ctx, `document.querySelector("#flame-box .controls").textContent`))
		}
		if !slices.Contains(names, "forward") || slices.Contains(names, "data_loader") {
			t.Errorf("node-1's continuous flame graph: %v, want forward and no data_loader", names)
		}
		screenshot(t, ctx, "job-continuous")

		// The CPU page: the whole fleet over the fixture's first minute.
		load(t, ctx, fmt.Sprintf("%s/cpu?from=%d&to=%d", base, t0.Unix(), t0.Add(time.Minute).Unix()), "cpu")
		if n := eval[int](t, ctx, `window.__loupe.cpu.profiles`); n != 3 {
			t.Errorf("CPU page merged %d continuous profiles, want 3 (two hosts of the training job, one ETL)", n)
		}
		names = eval[[]string](t, ctx, `echarts.getInstanceByDom(document.getElementById("flame")).getOption().series[0].data.map((d) => d.name)`)
		if !slices.Contains(names, "forward") || !slices.Contains(names, "data_loader") {
			t.Errorf("fleet CPU flame graph %v, want both jobs' frames", names)
		}
		screenshot(t, ctx, "cpu")

		// The simulated job says so.
		load(t, ctx, base+"/jobs/c1/"+inferJob+"/r1", "job")
		if !eval[bool](t, ctx, `!!document.querySelector(".banner-sim") && document.getElementById("capture").value === "cap-1"`) {
			t.Error("simulated job page has no simulated banner")
		}
		screenshot(t, ctx, "job-simulated")

		// A job the store does not have: the error, not a blank page.
		if err := chromedp.Do(ctx, chromedp.Navigate(base+"/jobs/c1/no-such-job/r1")); err != nil {
			t.Fatal(err)
		}
		msg, err := chromedp.Run(ctx, chromedp.Poll[string](`document.body.dataset.error`))
		if err != nil || !strings.Contains(msg, "no capture") {
			t.Errorf("unknown job: %q %v", msg, err)
		}
	})

	t.Run("findings", func(t *testing.T) {
		var api struct{ Total int }
		res, err := http.Get(base + "/api/v1/findings?limit=1")
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(res.Body).Decode(&api)
		res.Body.Close()
		load(t, ctx, base+"/findings", "findings")
		type table struct {
			Rows   int
			Links  []string
			PerDay []float64
			Basis  []string
		}
		tb := eval[table](t, ctx, `(() => { const rows = [...document.querySelectorAll("table.findings tbody tr")];
			return { rows: rows.length, links: rows.map((r) => r.querySelector("a.job-link").getAttribute("href")),
				perDay: rows.map((r) => parseFloat(r.children[4].dataset.perDay)), basis: rows.map((r) => r.children[4].title) }; })()`)
		if api.Total == 0 || tb.Rows != api.Total {
			t.Fatalf("findings table has %d rows, the API %d findings", tb.Rows, api.Total)
		}
		// Ranked fleet-wide by the projected GPU-hours per day, each stated
		// as a projection with its basis.
		if !slices.IsSortedFunc(tb.PerDay, func(a, b float64) int { return cmp.Compare(b, a) }) {
			t.Errorf("findings not ranked by projected impact: %v", tb.PerDay)
		}
		for i, b := range tb.Basis {
			if !strings.HasPrefix(b, "projection: ") {
				t.Errorf("row %d: projected impact without its basis: %q", i, b)
			}
		}
		if !slices.Contains(tb.Links, "/jobs/c1/"+trainJob+"/r1?capture=cap-1") {
			t.Errorf("no link to the training job's page: %v", tb.Links)
		}
		screenshot(t, ctx, "findings")

		// Filters come from the URL and reach the API.
		for _, tc := range []struct {
			query string
			rows  int
		}{
			{"severity=warning&analyzer=nccl-straggler", 1},
			{"severity=info&analyzer=nccl-straggler", 0},
			{"job=" + inferJob, 0},
		} {
			load(t, ctx, base+"/findings?"+tc.query, "findings")
			rows := eval[[]string](t, ctx, `[...document.querySelectorAll("table.findings tbody tr")].map((r) => r.dataset.severity + " " + r.children[8].textContent)`)
			if len(rows) != tc.rows {
				t.Errorf("findings?%s: rows %q, want %d", tc.query, rows, tc.rows)
			}
			for _, r := range rows {
				if !strings.HasPrefix(r, "warning nccl-straggler") {
					t.Errorf("findings?%s: row %q", tc.query, r)
				}
			}
		}
	})
}
