package views_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/aggregator/views"
	"github.com/loupe-dev/loupe/dashboards"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// The benchmark fleet: 1024 GPUs (16 jobs x 8 hosts x 8 GPUs), each host
// with one capture of 1 h sampled at 1 Hz, shown in 10 s buckets (360
// columns, 368,640 cells).
const (
	benchJobs, benchHostsPerJob, benchGPUs = 16, 8, 8
	benchWindow                            = time.Hour
	benchQuery                             = "/api/v1/views/fleet?from=2026-11-25T12:00:00Z&to=2026-11-25T13:00:00Z&bucket=10s"
)

var (
	fleetOnce sync.Once
	fleetDir  string
	fleetErr  error
)

func TestMain(m *testing.M) {
	// The analyzers log skipped passes on the default logger.
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	code := m.Run()
	if fleetDir != "" {
		os.RemoveAll(fleetDir)
	}
	os.Exit(code)
}

// benchFleet writes the benchmark fleet once per test binary.
func benchFleet(b *testing.B) (store.Store, *findings.Index) {
	b.Helper()
	fleetOnce.Do(func() {
		if fleetDir, fleetErr = os.MkdirTemp("", "loupe-fleet-bench-"); fleetErr != nil {
			return
		}
		for j := range benchJobs {
			for h := range benchHostsPerJob {
				host := h + j*benchHostsPerJob
				m := traces.Manifest{
					CaptureID: "cap-1", Cluster: "c1", Job: fmt.Sprintf("job-%02d", j), Run: "r1", Host: fmt.Sprintf("node-%03d", host),
					Start: t0, End: t0.Add(benchWindow), Trigger: traces.Trigger{Kind: traces.TriggerOnDemand, Reason: "bench"}, AgentVersion: "bench",
				}
				var rows []traces.GPUSample
				for s := range int(benchWindow / time.Second) {
					for g := range benchGPUs {
						v := float32((s/60+g+host)%10) / 10
						rows = append(rows, traces.GPUSample{TimeNs: t0.Add(time.Duration(s) * time.Second).UnixNano(), GPU: int32(g),
							GPUUtil: v * 100, PowerW: 100 + 500*v, ProfValid: true, SMActive: v, TensorActive: v / 2, DRAMActive: v / 3})
					}
				}
				bundle(b, fleetDir, m, rows, nil, nil, nil)
			}
		}
	})
	if fleetErr != nil {
		b.Fatal(fleetErr)
	}
	st, err := store.NewDir(fleetDir)
	if err != nil {
		b.Fatal(err)
	}
	ix := findings.NewIndex(nil)
	for j := range benchJobs {
		c, err := capture.Load(context.Background(), st, capture.ID{Cluster: "c1", Job: fmt.Sprintf("job-%02d", j), Run: "r1", Capture: "cap-1"}, nil)
		if err != nil {
			b.Fatal(err)
		}
		ix.SetCapture(c, true)
	}
	return st, ix
}

// fetchOK GETs url and returns the body size; anything but 200 fails b.
func fetchOK(b *testing.B, url string) int {
	res, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b.Fatalf("GET %s: %d", url, res.StatusCode)
	}
	return int(n)
}

// BenchmarkFleetAPI is GET /api/v1/views/fleet for 1024 GPUs over 1 h in
// 10 s buckets with the per-bundle bins cached (every load after the first).
func BenchmarkFleetAPI(b *testing.B) {
	st, ix := benchFleet(b)
	srv := httptest.NewServer(views.New(views.Config{Store: st, Index: ix}))
	defer srv.Close()
	size := fetchOK(b, srv.URL+benchQuery)
	b.ResetTimer()
	for b.Loop() {
		fetchOK(b, srv.URL+benchQuery)
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/request")
	b.ReportMetric(float64(size)/1e6, "MB/response")
}

// BenchmarkFleetAPICold is the same request on an empty cache: reading and
// binning 128 bundles' gpu_samples.parquet (3.7 M samples).
func BenchmarkFleetAPICold(b *testing.B) {
	st, ix := benchFleet(b)
	b.ResetTimer()
	for b.Loop() {
		srv := httptest.NewServer(views.New(views.Config{Store: st, Index: ix}))
		fetchOK(b, srv.URL+benchQuery)
		srv.Close()
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/request")
}

// BenchmarkFleetPageChromium loads the fleet page for 1024 GPUs over 1 h at
// 10 s buckets in headless Chromium and reports the time from navigation
// start until the heatmap is drawn (render-ms), API answer included.
func BenchmarkFleetPageChromium(b *testing.B) {
	ctx, pageErrors := browser(b)
	st, ix := benchFleet(b)
	mux := http.NewServeMux()
	mux.Handle(views.Prefix, views.New(views.Config{Store: st, Index: ix}))
	mux.Handle("/", dashboards.Handler())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	page := srv.URL + "/fleet?from=2026-11-25T12:00:00Z&to=2026-11-25T13:00:00Z&bucket=10s"
	load(b, ctx, page, "fleet") // warms the cache and the browser
	if n := eval[int](b, ctx, `window.__loupe.fleet.rows * window.__loupe.fleet.columns`); n != 1024*360 {
		b.Fatalf("fleet page drew %d cells, want 1024 x 360", n)
	}
	total := 0.0
	b.ResetTimer()
	for b.Loop() {
		load(b, ctx, page, "fleet")
		total += eval[float64](b, ctx, `window.__loupe.readyMs`)
	}
	b.ReportMetric(total/float64(b.N), "render-ms")
	if errs := pageErrors(); len(errs) > 0 {
		b.Errorf("page errors: %v", errs)
	}
	screenshot(b, ctx, "fleet-1024")
}

// bigJob commits a 1024-rank capture (128 hosts, 200 iterations, one
// all-reduce per iteration) and returns its store and index.
func bigJob(b *testing.B) (store.Store, *findings.Index) {
	const hosts, ranksPerHost, iters = 128, 8, 200
	root := b.TempDir()
	world := hosts * ranksPerHost
	for h := range hosts {
		var ranks []int
		var steps []traces.Step
		var nccl []traces.NCCLEvent
		for g := range ranksPerHost {
			r := h*ranksPerHost + g
			ranks = append(ranks, r)
			for i := range iters {
				start := t0.Add(time.Duration(i) * 120 * time.Millisecond)
				steps = append(steps, traces.Step{Rank: int32(r), Iteration: int64(i), StartNs: start.UnixNano(),
					EndNs: start.Add(time.Duration(stepMsOf(r, i) * float64(time.Millisecond))).UnixNano(), Source: traces.StepSourceMarker})
				nccl = append(nccl, traces.NCCLEvent{TimeNs: start.Add(time.Duration(r%7) * time.Millisecond).UnixNano(), Rank: int32(r),
					NRanks: int32(world), CommID: commID, Op: "AllReduce", Seq: int64(i), Peer: -1})
			}
		}
		m := traces.Manifest{CaptureID: "cap-1", Cluster: "c1", Job: "big", Run: "r1", Host: fmt.Sprintf("node-%03d", h), Ranks: ranks,
			WorldSize: world, Start: t0, End: t0.Add(window), Trigger: traces.Trigger{Kind: traces.TriggerOnDemand, Reason: "bench"}, AgentVersion: "bench"}
		bundle(b, root, m, nil, steps, nccl, nil)
	}
	st, err := store.NewDir(root)
	if err != nil {
		b.Fatal(err)
	}
	ix := findings.NewIndex(nil)
	c, err := capture.Load(context.Background(), st, capture.ID{Cluster: "c1", Job: "big", Run: "r1", Capture: "cap-1"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	ix.SetCapture(c, true)
	return st, ix
}

// BenchmarkJobView is GET /api/v1/views/jobs/... for a 1024-rank capture:
// cold computes the view from the store's Parquet parts, warm reads the
// manifests again and answers from the cache.
func BenchmarkJobView(b *testing.B) {
	st, ix := bigJob(b)
	url := "/api/v1/views/jobs/c1/big/r1"
	b.Run("cold", func(b *testing.B) {
		for b.Loop() {
			srv := httptest.NewServer(views.New(views.Config{Store: st, Index: ix}))
			fetchOK(b, srv.URL+url)
			srv.Close()
		}
		b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/request")
	})
	b.Run("warm", func(b *testing.B) {
		srv := httptest.NewServer(views.New(views.Config{Store: st, Index: ix}))
		defer srv.Close()
		size := fetchOK(b, srv.URL+url)
		b.ResetTimer()
		for b.Loop() {
			fetchOK(b, srv.URL+url)
		}
		b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/request")
		b.ReportMetric(float64(size)/1e6, "MB/response")
	})
}

// BenchmarkJobPageChromium loads the job page of a 1024-rank capture (a
// 1024 x 200 step heatmap) in headless Chromium: time from navigation start
// until every chart is drawn.
func BenchmarkJobPageChromium(b *testing.B) {
	ctx, pageErrors := browser(b)
	st, ix := bigJob(b)
	mux := http.NewServeMux()
	mux.Handle(views.Prefix, views.New(views.Config{Store: st, Index: ix}))
	mux.Handle("/", dashboards.Handler())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	page := srv.URL + "/jobs/c1/big/r1"
	load(b, ctx, page, "job")
	if n := eval[int](b, ctx, `window.__loupe.job.view.steps.ranks.length * window.__loupe.job.view.steps.iterations.length`); n != 1024*200 {
		b.Fatalf("job page drew %d step cells, want 1024 x 200", n)
	}
	total := 0.0
	b.ResetTimer()
	for b.Loop() {
		load(b, ctx, page, "job")
		total += eval[float64](b, ctx, `window.__loupe.readyMs`)
	}
	b.ReportMetric(total/float64(b.N), "render-ms")
	if errs := pageErrors(); len(errs) > 0 {
		b.Errorf("page errors: %v", errs)
	}
	screenshot(b, ctx, "job-1024")
}
