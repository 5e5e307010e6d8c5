package aggregator_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/aggregator"
	"github.com/loupe-dev/loupe/aggregator/alerts"
	"github.com/loupe-dev/loupe/aggregator/api"
	"github.com/loupe-dev/loupe/aggregator/internal/aggtest"
	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/promtext"
	"github.com/loupe-dev/loupe/traces/promtext/promtexttest"
	"github.com/loupe-dev/loupe/traces/store"
)

// The aggregator's scrape after an analysis, triage, an alert and a view
// has HELP and TYPE on every family and passes promtool; every metric
// named in the aggregator's source has help too.
func TestMetricsHelp(t *testing.T) {
	secret := "metrics-signing-secret"
	t.Setenv("LOUPE_METRICS_WEBHOOK_SECRET", secret)
	rv := &receiver{secret: []byte(secret), got: map[string]int{}, owners: map[string][]string{}}
	hook := httptest.NewServer(rv)
	defer hook.Close()
	dir := t.TempDir()
	cfg := aggregator.DefaultConfig()
	cfg.Store = "file://" + filepath.Join(dir, "store")
	cfg.SweepInterval = 20 * time.Millisecond
	cfg.LeaseTTL = 10 * time.Second
	cfg.Webhooks = []alerts.Target{{Name: "oncall", Kind: alerts.KindWebhook, URL: hook.URL, SecretEnv: "LOUPE_METRICS_WEBHOOK_SECRET", MinSeverity: traces.SeverityCritical}}
	st, err := store.Open(context.Background(), cfg.Store)
	if err != nil {
		t.Fatal(err)
	}
	m := aggtest.Manifest("llm-train", "cap-metrics", "gpu-node-1", 4, 0, 1, 2, 3)
	m.GPUs = []traces.GPUInfo{{Index: 1, UUID: "GPU-1", Ranks: []int{1}}}
	aggtest.Put(t, st, m, map[string][]byte{traces.PartEvents: plantedEvents(t, m.Start)})

	base, _ := serveReplica(t, cfg)
	waitFor(t, "a signed alert", func() bool { return len(rv.counts()) > 0 })
	var fleet map[string]any
	getJSON(t, base+api.ViewsPrefix+"fleet", http.StatusOK, &fleet)

	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	scrape, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != promtext.ContentType {
		t.Errorf("Content-Type %q", ct)
	}
	promtexttest.RequireHelp(t, scrape, "aggregator/api/metrics_help.go")
	promtexttest.RequireSourceHelp(t, ".", regexp.MustCompile(`^loupe_[a-z0-9_]+($|\{)`),
		"aggregator/api/metrics_help.go", api.MetricsHelp, promtext.RuntimeHelp)
	promtexttest.Lint(t, scrape, nil)
	if t.Failed() {
		t.Logf("scrape:\n%s", scrape)
	}
}

// serveReplica runs an aggregator replica of cfg with every analyzer on a
// loopback port until the test ends; it returns the base URL and the
// service.
func serveReplica(t *testing.T, cfg aggregator.Config) (string, *aggregator.Service) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := aggregator.New(ctx, cfg, analyzers.All, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { svc.Serve(ctx, ln) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return "http://" + ln.Addr().String(), svc
}
