package views_test

import (
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/loupe-dev/loupe/traces"
)

// A synchronous straggler: 8 ranks on one host whose step times are all
// the same (each waits at the all-reduce for the slowest), while rank 3
// arrives 30 ms after the others at every collective and spends its CPU
// time in data_loader. One 20 s capture, two hours after the main
// fixture's, so nothing else is near it in time.
const (
	syncJob       = "sync-llm"
	syncStraggler = 3
	syncRanks     = 8
	syncLateMs    = 30
)

var (
	syncStart  = t0.Add(2 * time.Hour)
	syncWindow = 20 * time.Second
)

func seedSync(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	var ranks []int
	for r := range syncRanks {
		ranks = append(ranks, r)
	}
	m := manifest(syncJob, "gpu-a", syncRanks, ranks, false)
	m.CaptureID, m.Start, m.End = "cap-sync", syncStart, syncStart.Add(syncWindow)
	gpu := gpuSamples(syncStart, syncWindow, syncRanks, func(int, time.Duration) float32 { return float32(busySM) })
	var steps []traces.Step
	var nccl []traces.NCCLEvent
	const step = 200 * time.Millisecond
	for i := range 90 {
		start := syncStart.Add(time.Second + time.Duration(i)*step)
		for _, r := range ranks {
			steps = append(steps, traces.Step{Rank: int32(r), PID: int32(1000 + r), Iteration: int64(500 + i),
				StartNs: start.UnixNano(), EndNs: start.Add(step).UnixNano(), Source: traces.StepSourceMarker})
			arrive := start.Add(step - syncLateMs*time.Millisecond + time.Duration(r)*20*time.Microsecond)
			if r == syncStraggler {
				arrive = start.Add(step)
			}
			nccl = append(nccl, traces.NCCLEvent{TimeNs: arrive.UnixNano(), DurationNs: int64(time.Millisecond), PID: int32(1000 + r),
				Rank: int32(r), NRanks: syncRanks, CommID: commID, Op: "AllReduce", Seq: int64(i), Count: 1 << 20,
				Datatype: "float32", Bytes: 4 << 20, Peer: -1})
		}
	}
	bundle(t, root, m, gpu, steps, nccl, cpuProfile(ranks, syncStraggler))
	return root
}

// Each page's first screen (1400 x 1000, unscrolled) shows the planted
// problem: the fleet's default range is the capture, not an hour of grey;
// the job page leads with the straggler finding and the arrival heatmap
// where rank 3 is the bright row; the flame graph opens on rank 3, and its
// search and zoom work.
func TestFirstScreensShowTheProblem(t *testing.T) {
	ctx, pageErrors := browser(t)
	base := serveStore(t, seedSync(t), "cap-sync", syncJob)
	checkPageErrors(t, pageErrors)

	t.Run("fleet", func(t *testing.T) {
		load(t, ctx, base+"/fleet", "fleet")
		type fleet struct {
			Rows, Columns int
			Filled        float64
			Grey          float64
			InView        bool
		}
		f := eval[fleet](t, ctx, `(() => {
			const f = window.__loupe.fleet, canvas = document.querySelector("#fleet canvas"), c2 = canvas.getContext("2d"), dpr = window.devicePixelRatio;
			let filled = 0, grey = 0, n = 0;
			for (let r = 0; r < f.rows; r++) for (let c = 0; c < f.columns; c++) {
				n++;
				if (f.value(r, c) !== null) filled++;
				const px = c2.getImageData(Math.round((f.left + (c + 0.5) * f.gridW / f.columns) * dpr), Math.round((f.top + (r + 0.5) * f.rowPx) * dpr), 1, 1).data;
				if (px[0] === 236 && px[1] === 238 && px[2] === 241) grey++;
			}
			const b = canvas.getBoundingClientRect();
			return { rows: f.rows, columns: f.columns, filled: filled / n, grey: grey / n, inView: b.top < innerHeight && b.height > 0 };
		})()`)
		if f.Rows != syncRanks || f.Columns < 15 || f.Filled < 0.9 || f.Grey > 0.1 || !f.InView {
			t.Errorf("fleet default: %d rows x %d columns, %.0f%% filled, %.0f%% drawn grey, on screen %v: want the 20 s capture to fill the heatmap",
				f.Rows, f.Columns, f.Filled*100, f.Grey*100, f.InView)
		}
		screenshot(t, ctx, "first-fleet")
	})

	t.Run("job", func(t *testing.T) {
		load(t, ctx, base+"/jobs/c1/"+syncJob+"/r1", "job")
		type job struct {
			Analyzer, Rank, Title, Headline, StepsText string
			Order                                      []string
			LeadInView, ArrivalInView                  bool
			Bright                                     []int
		}
		j := eval[job](t, ctx, `(() => {
			const lead = document.getElementById("lead"), a = window.__loupe.job.charts.arrival, v = window.__loupe.job.view;
			const canvas = document.querySelector("#arrival canvas"), c2 = canvas.getContext("2d"), dpr = window.devicePixelRatio;
			const bright = v.arrival.ranks.map((_, r) => {
				let sum = 0;
				for (const c of [5, 40, 80]) {
					const px = c2.getImageData(Math.round((a.left + (c + 0.5) * a.gridW / v.arrival.collectives.length) * dpr), Math.round((a.top + (r + 0.5) * a.rowPx) * dpr), 1, 1).data;
					sum += px[0] + px[1] + px[2];
				}
				return sum;
			});
			const inView = (e) => { const b = e.getBoundingClientRect(); return b.height > 0 && b.top >= 0 && b.bottom <= innerHeight; };
			return { analyzer: lead.dataset.analyzer, rank: lead.dataset.rank, title: document.getElementById("lead-title").textContent,
				headline: (document.getElementById("lead-headline") || {}).textContent || "", stepsText: document.getElementById("hot-ranks").textContent,
				order: window.__loupe.job.order, leadInView: inView(lead), arrivalInView: inView(canvas), bright };
		})()`)
		if j.Analyzer != "nccl-straggler" || j.Rank != "3" || !strings.Contains(j.Headline, "Rank 3") || !strings.Contains(j.Headline, "30 ms") {
			t.Errorf("lead finding %s rank %s %q, headline %q: want the nccl-straggler finding about rank 3, 30 ms late", j.Analyzer, j.Rank, j.Title, j.Headline)
		}
		if len(j.Order) == 0 || j.Order[0] != "arrival" || !j.LeadInView || !j.ArrivalInView {
			t.Errorf("sections %v, lead on screen %v, arrival heatmap on screen %v: want the arrival heatmap first, on the first screen", j.Order, j.LeadInView, j.ArrivalInView)
		}
		brightest := 0
		for r, b := range j.Bright {
			if b > j.Bright[brightest] {
				brightest = r
			}
		}
		if len(j.Bright) != syncRanks || brightest != syncStraggler {
			t.Errorf("arrival heatmap row brightness %v: want rank %d's row the brightest", j.Bright, syncStraggler)
		}
		if strings.Contains(j.StepsText, "No rank stands out") || !strings.Contains(j.StepsText, "rank 3 arrives last") {
			t.Errorf("step heatmap note %q: it must point at the arrival lateness, not say nothing stands out", j.StepsText)
		}
		screenshot(t, ctx, "first-job")

		// The flame graph opened on rank 3; search and zoom.
		sel, err := chromedp.Run(ctx, chromedp.Poll[string](`window.__loupe.flame && document.getElementById("flame-rank").value`, chromedp.WithPollingTimeout(20*time.Second)))
		if err != nil || sel != "rank=3" {
			t.Fatalf("flame graph opened on %q (%v), want rank=3", sel, err)
		}
		type state struct {
			Term, Zoomed string
			Matched      int
			Share        float64
			Min, Max     float64
		}
		st := eval[state](t, ctx, `(() => { const s = document.getElementById("flame-search"); s.value = "DATA_loader"; s.dispatchEvent(new Event("input")); return window.__loupe.flame.state(); })()`)
		if st.Matched != 1 || st.Share < 0.79 || st.Share > 0.81 {
			t.Errorf("search: %+v, want data_loader matched with 80%% of rank 3's samples", st)
		}
		if info := eval[string](t, ctx, `document.getElementById("flame-info").textContent`); !strings.Contains(info, "80% of samples") {
			t.Errorf("search info %q", info)
		}
		st = eval[state](t, ctx, `(() => { const f = window.__loupe.flame; f.zoom(f.index("data_loader")); return f.state(); })()`)
		if st.Zoomed != "data_loader" || st.Max-st.Min <= 0 || st.Min == 0 && st.Max == 100 {
			t.Errorf("zoom: %+v", st)
		}
		screenshot(t, ctx, "first-job-flame")
		st = eval[state](t, ctx, `(() => { document.getElementById("flame-reset").click(); return window.__loupe.flame.state(); })()`)
		if st.Zoomed == "data_loader" || st.Min != 0 {
			t.Errorf("reset zoom: %+v", st)
		}
	})
}
