package api_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/aggregator/api"
	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/aggregator/internal/aggtest"
	"github.com/loupe-dev/loupe/aggregator/lease"
	"github.com/loupe-dev/loupe/aggregator/runner"
	"github.com/loupe-dev/loupe/aggregator/watcher"
	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// sink records accepted events.
type sink struct{ got []watcher.Event }

func (s *sink) Accept(evs []watcher.Event) int { s.got = append(s.got, evs...); return len(evs) }

type fixture struct {
	srv    *httptest.Server
	api    *api.Server
	events *sink
}

// newFixture seeds a store with an analyzed capture of two hosts (ranks
// 0-1 and 2-3, real steps.parquet parts) and a capture waiting for rank 1.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	st, err := store.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for i, ranks := range [][]int{{0, 1}, {2, 3}} {
		m := aggtest.Manifest("train", "cap1", []string{"node-a", "node-b"}[i], 4, ranks...)
		aggtest.PutDir(t, st, aggtest.StepsBundle(t, m))
	}
	aggtest.PutDir(t, st, aggtest.StepsBundle(t, aggtest.Manifest("train", "cap2", "node-a", 2, 0)))
	count := aggtest.NewCounter("count", "1")
	list := []*analyzers.Analyzer{count.Analyzer}
	ix := findings.NewIndex(runner.Versions(list))
	r := runner.New(runner.Config{Store: st, Analyzers: list, Index: ix, Logger: quiet,
		Leases: &lease.Manager{Store: st, Owner: "t", TTL: time.Minute}})
	for _, c := range []string{"cap1", "cap2"} {
		if _, err := r.Process(context.Background(), capture.ID{Cluster: "c1", Job: "train", Run: "r1", Capture: c}); err != nil {
			t.Fatal(err)
		}
	}
	ev := &sink{}
	a := api.New(api.Config{Index: ix, Store: st, Analyzers: list, Events: ev, EventToken: "s3cret", Logger: quiet})
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	return &fixture{srv: srv, api: a, events: ev}
}

func (f *fixture) get(t *testing.T, path string, out any) (int, string) {
	t.Helper()
	resp, err := http.Get(f.srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("GET %s: %v\n%s", path, err, body)
		}
	}
	return resp.StatusCode, string(body)
}

func TestBadParameters(t *testing.T) {
	f := newFixture(t)
	tests := []struct{ path, want string }{
		{"/api/v1/findings?severity=urgent", `\"urgent\" is not one of critical, warning, info`},
		{"/api/v1/findings?severity=info,,warning", `\"\" is not one of`},
		{"/api/v1/findings?limit=0", "limit=\\\"0\\\": want a whole number from 1 to 10000"},
		{"/api/v1/findings?limit=abc", "limit=\\\"abc\\\""},
		{"/api/v1/findings?limit=10001", "from 1 to 10000"},
		{"/api/v1/findings?job=../etc", `parameter job=\"../etc\"`},
		{"/api/v1/findings?host=", ""}, // empty is no filter: not an error
		{"/api/v1/findings?hots=node-a", `unknown parameter \"hots\"; this endpoint takes cluster, job, run, capture, host, analyzer, severity, limit`},
		{"/api/v1/findings?job=a&job=b", `parameter \"job\" given 2 times`},
		{"/api/v1/findings?job=%zz", "query string"},
		{"/api/v1/captures?status=done", `status=\"done\": want one of waiting, pending, analyzed, partial`},
		{"/api/v1/captures?limit=-1", "limit"},
		{"/api/v1/captures/c1/train/r1/cap1?x=1", `unknown parameter \"x\"`},
		{"/api/v1/captures/c1/train/r1/cap1/trace?host=node%20a", `parameter host=\"node a\"`},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			code, body := f.get(t, tt.path, nil)
			if tt.want == "" {
				if code != http.StatusOK {
					t.Fatalf("code %d: %s", code, body)
				}
				return
			}
			if code != http.StatusBadRequest || !strings.Contains(body, tt.want) || !strings.Contains(body, `"error"`) {
				t.Fatalf("code %d body %s; want 400 with %s", code, body, tt.want)
			}
		})
	}
}

func TestFindings(t *testing.T) {
	f := newFixture(t)
	var all api.FindingsResponse
	if code, body := f.get(t, "/api/v1/findings", &all); code != http.StatusOK {
		t.Fatalf("%d %s", code, body)
	}
	// cap1: one finding per host; cap2 still waits for rank 1.
	if all.Total != 2 || len(all.Findings) != 2 || all.Findings[0].Scope.Capture != "cap1" {
		t.Fatalf("all findings: %+v", all)
	}
	tests := []struct {
		query string
		total int
	}{
		{"host=node-b", 1},
		{"host=node-a", 1},
		{"job=train&capture=cap1", 2},
		{"job=other", 0},
		{"cluster=c1&run=r1", 2},
		{"severity=info", 2},
		{"severity=critical,warning", 0},
		{"analyzer=count", 2},
		{"analyzer=nccl-straggler", 0},
		{"limit=1", 2},
	}
	var one traces.Finding
	if code, body := f.get(t, "/api/v1/findings/"+all.Findings[1].ID, &one); code != http.StatusOK || one.ID != all.Findings[1].ID {
		t.Fatalf("finding by ID: %d %s", code, body)
	}
	if code, _ := f.get(t, "/api/v1/findings/0000", nil); code != http.StatusNotFound {
		t.Fatalf("unknown finding: %d", code)
	}
	var an struct{ Analyzers []api.AnalyzerInfo }
	if f.get(t, "/api/v1/analyzers", &an); len(an.Analyzers) != 1 || an.Analyzers[0].Name != "count" || an.Analyzers[0].Version != "1" {
		t.Fatalf("analyzers: %+v", an)
	}
	for _, tt := range tests {
		var got api.FindingsResponse
		if code, body := f.get(t, "/api/v1/findings?"+tt.query, &got); code != http.StatusOK {
			t.Fatalf("%s: %d %s", tt.query, code, body)
		}
		if got.Total != tt.total {
			t.Errorf("%s: total %d, want %d", tt.query, got.Total, tt.total)
		}
		if strings.Contains(tt.query, "limit=1") && len(got.Findings) != 1 {
			t.Errorf("%s: %d findings returned", tt.query, len(got.Findings))
		}
	}
}

func TestCaptures(t *testing.T) {
	f := newFixture(t)
	var list api.CapturesResponse
	f.get(t, "/api/v1/captures", &list)
	if list.Total != 2 {
		t.Fatalf("captures: %+v", list)
	}
	byID := map[string]findings.Entry{}
	for _, e := range list.Captures {
		byID[e.ID.Capture] = e
	}
	if e := byID["cap1"]; e.Status != findings.StatusAnalyzed || !e.Complete || e.WorldSize != 4 || len(e.Hosts) != 2 || e.Findings != 2 {
		t.Errorf("cap1: %+v", e)
	}
	if e := byID["cap2"]; e.Status != findings.StatusWaiting || e.Complete || len(e.MissingRanks) != 1 || e.MissingRanks[0] != 1 {
		t.Errorf("cap2: %+v", e)
	}
	f.get(t, "/api/v1/captures?status=waiting", &list)
	if list.Total != 1 || list.Captures[0].ID.Capture != "cap2" {
		t.Errorf("waiting: %+v", list)
	}

	var detail api.CaptureResponse
	if code, body := f.get(t, "/api/v1/captures/c1/train/r1/cap1", &detail); code != http.StatusOK {
		t.Fatalf("%d %s", code, body)
	}
	if len(detail.Manifests) != 2 || detail.Record == nil || len(detail.Record.Findings) != 2 || !detail.Complete || detail.Status != findings.StatusAnalyzed {
		t.Fatalf("detail: %+v", detail)
	}
	if code, body := f.get(t, "/api/v1/captures/c1/train/r1/nope", nil); code != http.StatusNotFound || !strings.Contains(body, "no committed host manifest") {
		t.Fatalf("unknown capture: %d %s", code, body)
	}
	if code, _ := f.get(t, "/api/v1/nothing", nil); code != http.StatusNotFound {
		t.Fatalf("unknown endpoint: %d", code)
	}
}

func TestTraceExport(t *testing.T) {
	f := newFixture(t)
	for _, tt := range []struct {
		query string
		ranks int
	}{{"", 4}, {"?host=node-b", 2}} {
		resp, err := http.Get(f.srv.URL + "/api/v1/captures/c1/train/r1/cap1/trace" + tt.query)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			TraceEvents []struct {
				Name string `json:"name"`
				Ph   string `json:"ph"`
				PID  int    `json:"pid"`
			} `json:"traceEvents"`
		}
		err = json.NewDecoder(resp.Body).Decode(&doc)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("trace%s: %d %v", tt.query, resp.StatusCode, err)
		}
		if cd := resp.Header.Get("Content-Disposition"); !strings.Contains(cd, ".trace.json") {
			t.Errorf("Content-Disposition %q", cd)
		}
		steps := 0
		for _, e := range doc.TraceEvents {
			if e.Ph == "X" && strings.HasPrefix(e.Name, "ProfilerStep#") {
				steps++
			}
		}
		if steps != 10*tt.ranks {
			t.Errorf("trace%s: %d step slices, want %d", tt.query, steps, 10*tt.ranks)
		}
	}
	if code, _ := f.get(t, "/api/v1/captures/c1/train/r1/cap1/trace?host=node-z", nil); code != http.StatusNotFound {
		t.Fatalf("unknown host: %d", code)
	}
}

func TestEventsEndpoint(t *testing.T) {
	f := newFixture(t)
	body := `{"EventName":"s3:ObjectCreated:Put","Key":"loupe/v1/c1/j/r/c/h/manifest.json"}`
	post := func(auth, body string) int {
		req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/api/v1/s3-events", strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tt := range []struct {
		auth, body string
		code       int
	}{
		{"", body, http.StatusUnauthorized},
		{"Bearer wrong", body, http.StatusUnauthorized},
		{"Bearer s3cret", "{", http.StatusBadRequest},
		{"Bearer s3cret", body, http.StatusOK},
		{"s3cret", body, http.StatusOK},
	} {
		if code := post(tt.auth, tt.body); code != tt.code {
			t.Errorf("auth %q body %q: %d, want %d", tt.auth, tt.body, code, tt.code)
		}
	}
	if len(f.events.got) != 2 || f.events.got[0].Key != "v1/c1/j/r/c/h/manifest.json" {
		t.Fatalf("events passed on: %+v", f.events.got)
	}
}

func TestMountAndOps(t *testing.T) {
	f := newFixture(t)
	f.api.Handle("GET /{$}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ui") }))
	if code, body := f.get(t, "/", nil); code != http.StatusOK || body != "ui" {
		t.Fatalf("UI mount: %d %q", code, body)
	}
	for _, p := range []string{"/api/v1/x", "GET /api/v1/", "/metrics"} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Handle(%q) did not panic", p)
				}
			}()
			f.api.Handle(p, http.NotFoundHandler())
		}()
	}
	var health map[string]any
	if code, _ := f.get(t, "/healthz", &health); code != http.StatusOK || health["status"] != "ok" {
		t.Fatalf("healthz: %d %v", code, health)
	}
	f.get(t, "/api/v1/findings?limit=0", nil)
	_, metrics := f.get(t, "/metrics", nil)
	for _, want := range []string{`loupe_aggregator_http_requests_total{route="findings",code="400"} 1`, "process_resident_memory_bytes"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// The export of a capture with a Kineto trace comes gzip-encoded when the
// client accepts it (plain otherwise), with the trace's kernels on the
// rank's timeline at their wall-clock time.
func TestTraceExportGzipAndKernels(t *testing.T) {
	st, err := store.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m := aggtest.Manifest("train", "cap-k", "node-a", 1, 0)
	base := m.Start.Add(2 * time.Second).UnixNano()
	kin := fmt.Sprintf(`{"schemaVersion":1,"distributedInfo":{"backend":"nccl","rank":0,"world_size":1},"baseTimeNanoseconds":%d,"traceEvents":[
{"ph":"X","cat":"kernel","name":"sm90_gemm","pid":0,"tid":7,"ts":1000.000,"dur":500.000,"args":{"stream":7,"correlation":1}},
{"ph":"X","cat":"cuda_runtime","name":"cudaLaunchKernel","pid":1,"tid":1,"ts":990.000,"dur":5.000,"args":{"correlation":1}}]}`, base)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(kin))
	zw.Close()
	aggtest.Put(t, st, m, map[string][]byte{traces.KinetoDir + "rank0.json.gz": gz.Bytes()})
	srv := httptest.NewServer(api.New(api.Config{Store: st, Index: findings.NewIndex(nil), Logger: quiet}))
	defer srv.Close()
	get := func(enc string) (*http.Response, []byte) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/captures/c1/train/r1/cap-k/trace", nil)
		req.Header.Set("Accept-Encoding", enc) // set by hand: the client then does not decode
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		return resp, body
	}
	resp, plain := get("identity")
	if resp.Header.Get("Content-Encoding") != "" || !json.Valid(plain) {
		t.Fatalf("identity: Content-Encoding %q, valid JSON %v", resp.Header.Get("Content-Encoding"), json.Valid(plain))
	}
	resp, body := get("br;q=1.0, gzip;q=0.8")
	if resp.Header.Get("Content-Encoding") != "gzip" || resp.Header.Get("Vary") != "Accept-Encoding" {
		t.Fatalf("headers %v", resp.Header)
	}
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	unzipped, err := io.ReadAll(zr)
	if err != nil || !bytes.Equal(unzipped, plain) {
		t.Fatalf("gzip body does not decode to the plain export (%v)", err)
	}
	var doc struct {
		OtherData struct {
			Origin int64 `json:"origin_unix_ns"`
		} `json:"otherData"`
		TraceEvents []struct {
			Name, Cat, Ph string
			TS, Dur       float64
		} `json:"traceEvents"`
	}
	if err := json.Unmarshal(plain, &doc); err != nil {
		t.Fatal(err)
	}
	var kernels int
	for _, e := range doc.TraceEvents {
		if e.Ph == "X" && e.Cat == "kernel" {
			kernels++
			at := doc.OtherData.Origin + int64(e.TS*1e3)
			if e.Name != "sm90_gemm" || at != base+1_000_000 || e.Dur != 500 {
				t.Errorf("kernel %+v at %d, want sm90_gemm at base+1ms for 500us", e, at)
			}
		}
		if e.Cat == "cuda_runtime" {
			t.Errorf("CPU-side runtime call %s exported as a kernel", e.Name)
		}
	}
	if kernels != 1 {
		t.Errorf("%d kernels, want 1", kernels)
	}
	if len(body) >= len(plain) {
		t.Errorf("gzip body %d bytes, plain %d", len(body), len(plain))
	}
}

// /readyz fails until the index is built, while /healthz (liveness)
// answers all along: a starting replica is not restarted, only kept out of
// the Service.
func TestReadiness(t *testing.T) {
	var ready atomic.Bool
	srv := httptest.NewServer(api.New(api.Config{Index: findings.NewIndex(nil), Logger: quiet, Ready: ready.Load}))
	defer srv.Close()
	code := func(path string) int {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code("/readyz") != http.StatusServiceUnavailable || code("/healthz") != http.StatusOK {
		t.Errorf("before the index: readyz %d, healthz %d", code("/readyz"), code("/healthz"))
	}
	ready.Store(true)
	if code("/readyz") != http.StatusOK {
		t.Errorf("after the index: readyz %d", code("/readyz"))
	}
}
