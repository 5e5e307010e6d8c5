package views_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/views"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

func server(t testing.TB) *httptest.Server {
	srv, _ := serverWithMetrics(t)
	return srv
}

func serverWithMetrics(t testing.TB) (*httptest.Server, *metrics.Set) {
	t.Helper()
	st, _ := seed(t)
	set := metrics.NewSet()
	h := views.New(views.Config{Store: st, Index: indexOf(t, st, trainJob, inferJob), Metrics: set})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, set
}

func TestMetrics(t *testing.T) {
	srv, set := serverWithMetrics(t)
	get(t, srv.URL+"/api/v1/views/fleet", nil)
	get(t, srv.URL+"/api/v1/views/jobs/c1/"+trainJob+"/r1", nil)
	var b strings.Builder
	set.WritePrometheus(&b)
	out := b.String()
	for _, want := range []string{`loupe_aggregator_view_duration_seconds_count{view="fleet"} 1`, `loupe_aggregator_view_duration_seconds_count{view="jobs"} 1`} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "loupe_aggregator_view_cache_bytes 0\n") || !strings.Contains(out, "loupe_aggregator_view_cache_bytes ") {
		t.Errorf("cache bytes not reported after two views:\n%s", out)
	}
}

func get(t testing.TB, url string, v any) int {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode == http.StatusOK && v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("GET %s: %v\n%.400s", url, err, body)
		}
	} else if res.StatusCode != http.StatusOK {
		if v != nil {
			json.Unmarshal(body, v)
		}
	}
	return res.StatusCode
}

type fleetBody struct {
	views.FleetView
	Values []*float64 `json:"values"`
}

func TestFleet(t *testing.T) {
	srv := server(t)
	for _, tc := range []struct {
		metric    string
		busy, low float64 // expected cell values of a busy GPU and of the idle one
	}{
		{"sm_active", busySM * 100, idleSM * 100},
		{"gpu_util", busySM*100 + 10, idleSM*100 + 10},
		{"tensor_active", busySM * 50, idleSM * 50},
		{"dram_active", busySM * 100 / 3, idleSM * 100 / 3},
		{"power", 100 + 500*busySM, 100 + 500*idleSM},
	} {
		t.Run(tc.metric, func(t *testing.T) {
			var v fleetBody
			url := srv.URL + "/api/v1/views/fleet?from=2026-11-25T12:00:00Z&to=2026-11-25T12:01:00Z&bucket=10s&metric=" + tc.metric
			if code := get(t, url, &v); code != http.StatusOK {
				t.Fatalf("GET %s: %d", url, code)
			}
			wantRows := (trainHosts + 1) * gpusPerHost
			if len(v.Rows) != wantRows || v.Columns != 6 || len(v.Values) != wantRows*6 {
				t.Fatalf("rows %d columns %d values %d, want %d x 6", len(v.Rows), v.Columns, len(v.Values), wantRows)
			}
			if len(v.Jobs) != 2 || v.Jobs[0].Job != inferJob || v.Jobs[1].Job != trainJob || v.Jobs[1].FirstRow != gpusPerHost || v.Jobs[1].Rows != trainHosts*gpusPerHost {
				t.Fatalf("jobs %+v", v.Jobs)
			}
			if !v.Simulated || !v.Jobs[0].Simulated || v.Jobs[1].Simulated || !v.Rows[0].Simulated || v.Rows[gpusPerHost].Simulated {
				t.Errorf("simulated flags wrong: view %v jobs %+v", v.Simulated, v.Jobs)
			}
			for i, r := range v.Rows[gpusPerHost:] {
				want := tc.busy
				if r.Host == idleHost && r.GPU == int32(idleGPU) {
					want = tc.low
				}
				for c := range 6 {
					got := v.Values[(gpusPerHost+i)*6+c]
					if got == nil || math.Abs(*got-want) > 0.11 {
						t.Fatalf("row %d (%s gpu%d) col %d = %v, want %.1f", gpusPerHost+i, r.Host, r.GPU, c, got, want)
					}
				}
			}
			if v.Rows[gpusPerHost].UUID != "GPU-0000" || v.Rows[gpusPerHost].Model == "" {
				t.Errorf("row identity %+v", v.Rows[gpusPerHost])
			}
		})
	}
}

// TestFleetCaptures checks that a GPU's captures fill one row, and that the
// job link opens the latest capture in the window.
func TestFleetCaptures(t *testing.T) {
	st, root := seed(t)
	later := manifest(trainJob, "node-1", trainHosts*gpusPerHost, []int{0, 1, 2, 3, 4, 5, 6, 7}, false) // node-1 runs ranks 0-7
	later.CaptureID, later.Start, later.End = "cap-2", t0.Add(2*time.Minute), t0.Add(3*time.Minute)
	bundle(t, root, later, gpuSamples(later.Start, time.Minute, gpusPerHost, func(int, time.Duration) float32 { return 0.5 }), nil, nil, nil)
	ix := indexOf(t, st, trainJob, inferJob)
	c, err := capture.Load(context.Background(), st, capture.ID{Cluster: "c1", Job: trainJob, Run: "r1", Capture: "cap-2"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ix.SetCapture(c, true)
	srv := httptest.NewServer(views.New(views.Config{Store: st, Index: ix}))
	defer srv.Close()
	var v fleetBody
	get(t, srv.URL+"/api/v1/views/fleet?job="+trainJob+"&from=2026-11-25T12:00:00Z&to=2026-11-25T12:03:00Z&bucket=1m", &v)
	if len(v.Rows) != trainHosts*gpusPerHost || len(v.Jobs) != 1 || v.Jobs[0].Capture != "cap-2" || v.Captures != 2 {
		t.Fatalf("%d rows, jobs %+v, %d captures", len(v.Rows), v.Jobs, v.Captures)
	}
	at := func(r, c int) string {
		if x := v.Values[r*3+c]; x != nil {
			return fmt.Sprint(*x)
		}
		return "null"
	}
	// node-1 gpu0: busy, nothing, then the second capture; node-2 gpu0: no second capture.
	if got := at(0, 0) + " " + at(0, 1) + " " + at(0, 2) + " / " + at(gpusPerHost, 2); got != "80 null 50 / null" {
		t.Errorf("cells %s", got)
	}
}

// seedSharedHost: on a shared host, job gpu-job uses GPU 2 and cpu-job no
// GPU, so the agent gave cpu-job's capture every GPU of the host (it
// matched no process).
func seedSharedHost(t *testing.T) (store.Store, string) {
	t.Helper()
	root := t.TempDir()
	gpuJob := manifest("gpu-job", "shared-1", 1, nil, false)
	gpuJob.GPUs = []traces.GPUInfo{{Index: 2, UUID: "GPU-0002", Ranks: []int{0}}}
	gpuJob.Processes = []traces.Process{{PID: 4242, Rank: 0, GPU: 2}}
	gpuJob.Ranks = []int{0}
	bundle(t, root, gpuJob, gpuSamples(t0, window, gpusPerHost, func(int, time.Duration) float32 { return 0.8 }), nil, nil, nil)
	bundle(t, root, manifest("cpu-job", "shared-1", 0, nil, false), gpuSamples(t0, window, gpusPerHost, func(int, time.Duration) float32 { return 0.1 }), nil, nil, nil)
	st, err := store.NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	return st, root
}

// TestFleetUnownedGPUs: on the shared host, GPU 2 is gpu-job's row; the
// other seven are the host's, in one group with no job, not cpu-job's.
func TestFleetUnownedGPUs(t *testing.T) {
	st, _ := seedSharedHost(t)
	srv := httptest.NewServer(views.New(views.Config{Store: st, Index: indexOf(t, st, "gpu-job", "cpu-job")}))
	defer srv.Close()
	var v fleetBody
	get(t, srv.URL+"/api/v1/views/fleet?from=2026-11-25T12:00:00Z&to=2026-11-25T12:01:00Z&bucket=1m", &v)
	if len(v.Rows) != gpusPerHost || len(v.Jobs) != 2 {
		t.Fatalf("%d rows, jobs %+v; want %d rows in two groups", len(v.Rows), v.Jobs, gpusPerHost)
	}
	var owned, unowned FleetJobRef
	for _, j := range v.Jobs {
		switch {
		case j.Unowned && j.Job == "" && j.Capture == "":
			unowned = FleetJobRef{j.FirstRow, j.Rows}
		case j.Job == "gpu-job" && !j.Unowned && j.Capture == "cap-1":
			owned = FleetJobRef{j.FirstRow, j.Rows}
		default:
			t.Errorf("unexpected group %+v", j)
		}
	}
	if owned.rows != 1 || v.Rows[owned.first].GPU != 2 || unowned.rows != gpusPerHost-1 {
		t.Fatalf("gpu-job %+v, unowned %+v, rows %+v", owned, unowned, v.Rows)
	}
	for i := unowned.first; i < unowned.first+unowned.rows; i++ {
		if v.Rows[i].GPU == 2 || v.Rows[i].Host != "shared-1" {
			t.Errorf("unowned row %+v", v.Rows[i])
		}
	}
	if x := v.Values[owned.first]; x == nil || math.Abs(*x-80) > 0.1 {
		t.Errorf("gpu-job's GPU 2 = %v, want its own 80 %%", x)
	}
}

// FleetJobRef is a group's rows in a fleet view.
type FleetJobRef struct{ first, rows int }

func TestFleetDefaultsAndGaps(t *testing.T) {
	srv := server(t)
	// No window: fitted to the captures (60 s here), in 1 s buckets, so the
	// data fills the heatmap instead of a sliver of an hour.
	var v fleetBody
	if code := get(t, srv.URL+"/api/v1/views/fleet", &v); code != http.StatusOK {
		t.Fatal(code)
	}
	if v.BucketS != 1 || !v.From.Equal(t0) || !v.To.Equal(t0.Add(window)) {
		t.Fatalf("default window %s..%s bucket %d columns %d, want the capture's %s", v.From, v.To, v.BucketS, v.Columns, window)
	}
	empty, filled := 0, 0
	for _, x := range v.Values {
		if x == nil {
			empty++
		} else {
			filled++
		}
	}
	if filled < len(v.Values)*9/10 {
		t.Errorf("%d filled, %d empty cells for %d rows: the default window does not fit the data", filled, empty, len(v.Rows))
	}
	// Filters.
	if get(t, srv.URL+"/api/v1/views/fleet?job="+trainJob, &v); len(v.Rows) != trainHosts*gpusPerHost || v.Simulated {
		t.Errorf("job filter: %d rows, simulated %v", len(v.Rows), v.Simulated)
	}
	// A window with no capture answers an empty heatmap, not an error.
	if code := get(t, srv.URL+"/api/v1/views/fleet?from=2020-01-01T00:00:00Z", &v); code != http.StatusOK || len(v.Rows) != 0 {
		t.Errorf("empty window: %d, %d rows", code, len(v.Rows))
	}
}

func TestBadParameters(t *testing.T) {
	srv := server(t)
	for _, tc := range []struct {
		path, want string
	}{
		{"/api/v1/views/fleet?metric=temperature", `metric="temperature"`},
		{"/api/v1/views/fleet?bucket=1.5s", "whole seconds"},
		{"/api/v1/views/fleet?bucket=often", "bucket"},
		{"/api/v1/views/fleet?bucket=0", "whole seconds"},
		{"/api/v1/views/fleet?from=yesterday", "from="},
		{"/api/v1/views/fleet?from=2026-11-25T12:00:00Z&to=2026-11-25T11:00:00Z", "to must be after from"},
		{"/api/v1/views/fleet?from=2026-11-01T00:00:00Z&to=2026-11-25T00:00:00Z", "at most"},
		{"/api/v1/views/fleet?from=2026-11-25T00:00:00Z&to=2026-11-26T00:00:00Z&bucket=1s", "use a larger bucket"},
		{"/api/v1/views/fleet?color=red", `unknown parameter "color"`},
		{"/api/v1/views/fleet?metric=power&metric=sm_active", "given 2 times"},
		{"/api/v1/views/fleet?cluster=../etc", "cluster="},
		{"/api/v1/views/jobs/c1/" + trainJob + "/r1?capture=..", "capture="},
		{"/api/v1/views/jobs/c1/" + trainJob + "/r1?rank=1", `unknown parameter "rank"`},
		{"/api/v1/views/jobs/c1/bad%20job/r1", "path"},
		{"/api/v1/views/flamegraph/c1/" + trainJob + "/r1/cap-1", "give host="},
		{"/api/v1/views/flamegraph/c1/" + trainJob + "/r1/cap-1?rank=-1", "rank="},
		{"/api/v1/views/flamegraph/c1/" + trainJob + "/r1/cap-1?rank=x", "rank="},
		{"/api/v1/views/flamegraph/c1/" + trainJob + "/r1/cap-1?host=a%2Fb", "host="},
	} {
		var e struct{ Error string }
		if code := get(t, srv.URL+tc.path, &e); code != http.StatusBadRequest || !strings.Contains(e.Error, tc.want) {
			t.Errorf("GET %s: %d %q, want 400 mentioning %q", tc.path, code, e.Error, tc.want)
		}
	}
	for _, path := range []string{
		"/api/v1/views/jobs/c1/no-such-job/r1",
		"/api/v1/views/jobs/c1/" + trainJob + "/r1?capture=cap-9",
		"/api/v1/views/flamegraph/c1/" + trainJob + "/r1/cap-1?rank=99",
		"/api/v1/views/flamegraph/c1/" + inferJob + "/r1/cap-1?host=infer-1",
		"/api/v1/views/nothing",
	} {
		var e struct{ Error string }
		if code := get(t, srv.URL+path, &e); code != http.StatusNotFound || e.Error == "" {
			t.Errorf("GET %s: %d %q, want 404 with a message", path, code, e.Error)
		}
	}
}

func TestJob(t *testing.T) {
	srv := server(t)
	var v views.JobView
	if code := get(t, srv.URL+"/api/v1/views/jobs/c1/"+trainJob+"/r1", &v); code != http.StatusOK {
		t.Fatal(code)
	}
	world := trainHosts * gpusPerHost
	s := v.Steps
	if v.ID.Capture != "cap-1" || len(v.Hosts) != trainHosts || v.WorldSize != world || v.Simulated || len(v.Captures) != 1 {
		t.Fatalf("job header %+v", v)
	}
	if len(s.Ranks) != world || len(s.Iterations) != iterations || len(s.Ms) != world*iterations || s.Iterations[0] != 100 {
		t.Fatalf("step matrix %d ranks x %d iterations, %d cells", len(s.Ranks), len(s.Iterations), len(s.Ms))
	}
	if got := float64(s.Ms[straggler*iterations+3]); got != stepMsOf(straggler, 3) {
		t.Errorf("rank %d iteration 103 = %v ms, want %v", straggler, got, stepMsOf(straggler, 3))
	}
	hottest := 0
	for i := range s.Ranks {
		if s.RankMedianMs[i] > s.RankMedianMs[hottest] {
			hottest = i
		}
	}
	if s.Ranks[hottest] != int32(straggler) || float64(s.RankMedianMs[hottest]) < 1.5*float64(s.JobMedianMs) {
		t.Errorf("hottest rank %d (median %v, job %v), want the straggler %d well above", s.Ranks[hottest], s.RankMedianMs[hottest], s.JobMedianMs, straggler)
	}
	var hist int64
	for _, c := range s.Histogram.Counts {
		hist += c
	}
	if hist != int64(world*iterations) || len(s.Histogram.Edges) != len(s.Histogram.Counts)+1 {
		t.Errorf("step histogram counts %d values in %d bins", hist, len(s.Histogram.Counts))
	}
	if len(v.NCCL) != world {
		t.Fatalf("NCCL skew for %d ranks, want %d", len(v.NCCL), world)
	}
	for _, r := range v.NCCL {
		late := float64(r.P50Ms)
		if r.Rank == int32(straggler) {
			if late < stragglerMs-stepMs-5 || r.LastShare != 1 || r.Collectives != iterations {
				t.Errorf("straggler skew %+v", r)
			}
		} else if late > 5 {
			t.Errorf("rank %d lateness %v ms", r.Rank, late)
		}
	}
	if v.Trace != "/api/v1/captures/c1/"+trainJob+"/r1/cap-1/trace" || !strings.HasSuffix(v.Hosts[1].Trace, "?host=node-2") || !v.Hosts[0].Profile {
		t.Errorf("downloads %q %+v", v.Trace, v.Hosts)
	}
	// Rank 0's Kineto trace: two profiler steps count (the last is left
	// out), each with four 100 us GEMMs and one 10 us ReLU.
	k := v.Kernels
	var launches int64
	for _, c := range k.Histogram.Counts {
		launches += c
	}
	if k.Ranks != 1 || len(k.Top) != 2 || k.Top[0].Name != gemmKernel || k.Top[0].Count != 8 || k.Top[0].MeanUs != 100 ||
		k.Top[1].Name != reluKernel || k.Top[1].MeanUs != 10 || launches != 10 {
		t.Errorf("kernels %+v, %d launches in the histogram", k, launches)
	}
	for i, c := range k.Histogram.Counts {
		lo, hi := float64(k.Histogram.Edges[i]), float64(k.Histogram.Edges[i+1])
		want := int64(0)
		if lo <= 100 && 100 < hi {
			want += 8
		}
		if lo <= 10 && 10 < hi {
			want += 2
		}
		if c != want {
			t.Errorf("kernel histogram bin [%v, %v): %d, want %d", lo, hi, c, want)
		}
	}
	var sim views.JobView
	if get(t, srv.URL+"/api/v1/views/jobs/c1/"+inferJob+"/r1?capture=cap-1", &sim); !sim.Simulated || !sim.Hosts[0].Simulated || len(sim.Steps.Ranks) != 0 || len(sim.Kernels.Histogram.Counts) != 0 {
		t.Errorf("simulated job %+v", sim)
	}
}

func TestFlamegraph(t *testing.T) {
	srv := server(t)
	var fg views.FlameGraph
	url := srv.URL + "/api/v1/views/flamegraph/c1/" + trainJob + "/r1/cap-1?rank=5"
	if code := get(t, url, &fg); code != http.StatusOK {
		t.Fatal(code)
	}
	// Rank 5's samples only: 80 in data_loader, 20 waiting, in CPU time.
	if fg.Host != "node-1" || fg.Rank != straggler || fg.Unit != "nanoseconds" || fg.Total != cpuNs(80)+cpuNs(20) {
		t.Fatalf("flame graph %s rank %d unit %s total %d", fg.Host, fg.Rank, fg.Unit, fg.Total)
	}
	path := []string{"python3", "main", "train_step"}
	n := fg.Root
	for _, name := range path {
		if len(n.Children) != 1 || n.Children[0].Name != name {
			t.Fatalf("below %s: %+v, want only %s", n.Name, n.Children, name)
		}
		n = n.Children[0]
	}
	if len(n.Children) != 2 || n.Children[1].Name != "data_loader" || n.Children[1].Value != cpuNs(80) {
		t.Errorf("train_step callees %+v", n.Children)
	}
	var host views.FlameGraph
	get(t, srv.URL+"/api/v1/views/flamegraph/c1/"+trainJob+"/r1/cap-1?host=node-2", &host)
	if host.Rank != -1 || host.Total != 8*(cpuNs(80)+cpuNs(20)) {
		t.Errorf("whole host: rank %d total %d", host.Rank, host.Total)
	}
}

// cpuNs is the CPU time of n samples at 19 Hz, as the fixture profile has it.
func cpuNs(n int64) int64 { return n * int64(time.Second) / 19 }

// TestFleetBadBundles: a host bundle whose manifest or samples cannot be
// read is left out of the fleet view (and logged); the rest still shows.
func TestFleetBadBundles(t *testing.T) {
	st, _ := seed(t)
	ix := indexOf(t, st, trainJob, inferJob)
	ctx := context.Background()
	// After indexing: node-2's samples fail their checksum, infer-1's
	// manifest is no longer JSON.
	bad := strings.NewReader("not parquet")
	if _, err := st.Put(ctx, "v1/c1/"+trainJob+"/r1/cap-1/node-2/gpu_samples.parquet", bad, bad.Size(), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	junk := strings.NewReader("{")
	if _, err := st.Put(ctx, "v1/c1/"+inferJob+"/r1/cap-1/infer-1/manifest.json", junk, junk.Size(), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(views.New(views.Config{Store: st, Index: ix}))
	defer srv.Close()
	var v fleetBody
	if code := get(t, srv.URL+"/api/v1/views/fleet?from=2026-11-25T12:00:00Z&to=2026-11-25T12:01:00Z", &v); code != http.StatusOK {
		t.Fatalf("fleet with bad bundles: %d", code)
	}
	for _, r := range v.Rows {
		if r.Host != "node-1" {
			t.Errorf("row of a bad bundle shown: %+v", r)
		}
	}
	if len(v.Rows) != gpusPerHost {
		t.Errorf("%d rows, want node-1's %d", len(v.Rows), gpusPerHost)
	}
}
