package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/agent/api"
	"github.com/loupe-dev/loupe/traces"
)

// testConfig is a daemon on ephemeral loopback ports with a temporary store
// and spool, and only the collectors a test asks for.
func testConfig(t *testing.T) Config {
	t.Helper()
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.MetricsAddr, cfg.APIAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Store = "file://" + filepath.Join(dir, "store")
	cfg.SpoolDir = filepath.Join(dir, "spool")
	cfg.Host, cfg.Cluster = "host-a", "test"
	cfg.Upload.Interval = 100 * time.Millisecond
	cfg.CPU.Enabled, cfg.NCCL.Enabled, cfg.Kineto.Enabled = false, false, false
	cfg.Attribution.PodResourcesSocket = filepath.Join(dir, "no-kubelet.sock")
	cfg.Kineto.Endpoint = fmt.Sprintf("loupe-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	cfg.Kineto.RPCAddr = "127.0.0.1:0"
	cfg.Kineto.TraceDir = filepath.Join(dir, "kineto")
	return cfg
}

// start runs a daemon until the test ends and checks that it shuts down.
func start(t *testing.T, cfg Config) *Daemon {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d, err := New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("daemon did not shut down within 20s")
		}
	})
	return d
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	return string(body)
}

func TestNoGPUServesMetrics(t *testing.T) {
	if _, err := os.Stat("/dev/nvidiactl"); err == nil {
		t.Skip("this host has an NVIDIA driver; the no-GPU path needs a host without one")
	}
	d := start(t, testConfig(t))
	out := get(t, "http://"+d.MetricsAddr()+"/metrics")
	for _, want := range []string{
		"\nloupe_gpu_devices 0\n",
		`loupe_collector_up{collector="gpu"} 0`,
		`loupe_collector_up{collector="cpu"} 0`,
		`loupe_agent_info{version="dev",host="host-a",cluster="test"} 1`,
		"\ngo_goroutines ",
		"\nloupe_spool_entries 0\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if got := get(t, "http://"+d.MetricsAddr()+"/healthz"); got != "ok\n" {
		t.Errorf("/healthz = %q", got)
	}
	if got := get(t, "http://"+d.MetricsAddr()+"/readyz"); got != "ready\n" {
		t.Errorf("/readyz = %q", got)
	}
	st, err := (&api.Client{Addr: d.APIAddr()}).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(st.Collectors, func(c api.Collector) bool { return c.Name == "gpu" })
	if i < 0 || st.Collectors[i].Up || !strings.Contains(st.Collectors[i].Reason, "no NVIDIA GPU") || len(st.GPUs) != 0 {
		t.Errorf("status %+v", st)
	}
	// Without GPUs, DCGM cannot be paused, and the API says why.
	err = (&api.Client{Addr: d.APIAddr()}).PauseProfiling(context.Background(), true)
	var e *api.Error
	if !errors.As(err, &e) || e.Code != http.StatusConflict {
		t.Errorf("pause without GPU: %v", err)
	}
}

func TestAPITokenOffLoopback(t *testing.T) {
	cfg := testConfig(t)
	cfg.APIAddr = "0.0.0.0:0"
	if _, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil ||
		!strings.Contains(err.Error(), "reachable from other hosts") {
		t.Fatalf("no token on 0.0.0.0: %v", err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.APITokenFile = tokenFile
	d := start(t, cfg)
	port := d.APIAddr()[strings.LastIndex(d.APIAddr(), ":"):]
	ctx := context.Background()
	var e *api.Error
	if _, err := (&api.Client{Addr: "127.0.0.1" + port}).Status(ctx); !errors.As(err, &e) || e.Code != http.StatusUnauthorized {
		t.Fatalf("without token: %v", err)
	}
	if _, err := (&api.Client{Addr: "127.0.0.1" + port, Token: "s3cret"}).Status(ctx); err != nil {
		t.Fatalf("with token: %v", err)
	}
}

func TestBadConfigRefused(t *testing.T) {
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Store = "ftp://x" }, "store"},
		{func(c *Config) { c.Host = "a/b" }, "host"},
		{func(c *Config) { c.Capture.DefaultDuration = time.Hour }, "default_duration"},
		{func(c *Config) { c.APITokenFile = "/nonexistent/token" }, "api token file"},
		{func(c *Config) { c.GPU.CaptureHz = 1000 }, "capture_hz"},
		{func(c *Config) { c.Capture.MaxDuration = time.Hour }, "gpu.ring_seconds"},
	} {
		cfg := testConfig(t)
		tc.mod(&cfg)
		_, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New: %v, want an error mentioning %q", err, tc.want)
		}
	}
}

// waitBundle waits for the uploader to store the manifest of a capture.
func waitBundle(t *testing.T, cfg Config, job, run, id string) (*traces.Manifest, string) {
	t.Helper()
	dir := filepath.Join(strings.TrimPrefix(cfg.Store, "file://"), filepath.FromSlash(
		traces.Key{Cluster: cfg.Cluster, Job: job, Run: run, Capture: id, Host: cfg.Host}.Prefix()))
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(filepath.Join(dir, traces.ManifestName)); err == nil {
			m, err := traces.ReadDir(dir, traces.DefaultMaxPartSize)
			if err != nil {
				t.Fatal(err)
			}
			return m, dir
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no bundle at %s", dir)
	return nil, ""
}

func readRows[T any](t *testing.T, dir, name string) []T {
	t.Helper()
	rows, err := traces.ReadTableFile[T](filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// BenchmarkPostStep is the cost of one step marker through the real API
// over loopback HTTP, as a training loop pays it.
func BenchmarkPostStep(b *testing.B) {
	dir := b.TempDir()
	cfg := DefaultConfig()
	cfg.MetricsAddr, cfg.APIAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Store, cfg.SpoolDir = "file://"+filepath.Join(dir, "store"), filepath.Join(dir, "spool")
	cfg.CPU.Enabled, cfg.NCCL.Enabled, cfg.Kineto.Enabled = false, false, false
	cfg.Trigger.Disabled = true
	ctx, cancel := context.WithCancel(context.Background())
	d, err := New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); <-done }()
	c := &api.Client{Addr: d.APIAddr()}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := c.Step(ctx, api.StepRequest{Job: "bench", Rank: i % 8, Iteration: int64(i / 8)}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
