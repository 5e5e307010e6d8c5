package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/agent/api"
	"github.com/loupe-dev/loupe/agent/daemon"
)

// TestMain lets the test binary act as loupe-agent itself, so that the
// signal test runs the real main in a child process.
func TestMain(m *testing.M) {
	if os.Getenv("LOUPE_AGENT_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// daemonArgs are flags for an agent on ephemeral loopback ports with a
// temporary store and spool and no eBPF collectors.
func daemonArgs(t *testing.T, extra ...string) []string {
	dir := t.TempDir()
	return append([]string{
		"--metrics-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0",
		"--store", "file://" + filepath.Join(dir, "store"), "--spool-dir", filepath.Join(dir, "spool"),
		"--cpu.enabled=false", "--nccl.enabled=false", "--kineto.enabled=false", "--host", "h1",
		"--attribution.pod-resources-socket", filepath.Join(dir, "none.sock"),
	}, extra...)
}

func startDaemon(t *testing.T, args ...string) *daemon.Daemon {
	t.Helper()
	cfg, err := daemon.Load(args, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := daemon.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return d
}

func cli(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(context.Background(), args, &o, &e)
	return code, o.String(), e.String()
}

func TestCaptureCommand(t *testing.T) {
	d := startDaemon(t, daemonArgs(t, "--simulate-gpus", "2", "--gpu.simulate-problems.pids", strconv.Itoa(os.Getpid()))...)
	addr := d.APIAddr()
	c := &api.Client{Addr: addr}
	for i := range 3 {
		if err := c.Step(context.Background(), api.StepRequest{Job: "train", Rank: 0, PID: os.Getpid(), Iteration: int64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	pid := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		name     string
		args     []string
		code     int
		out, err string
	}{
		{"by job", []string{"capture", "--job", "train", "--duration", "200ms", "--wait", "--api-addr", addr}, 0,
			": committed\n|1 processes: pid " + pid + " rank 0|PID RANK GPU COMMAND|" + pid + " 0 0 loupe-agent|store key: v1/default/train/default/od-", ""},
		{"by pid", []string{"capture", "--pids", pid, "--duration", "100ms", "--api-addr", addr}, 0, "capture od-", ""},
		{"json", []string{"capture", "--job", "train", "--duration", "100ms", "--json", "--api-addr", addr}, 0, `"processes": [`, ""},
		{"no such job", []string{"capture", "--job", "nope", "--api-addr", addr}, 1, "", `no process matched job "nope" on this host (jobs seen here: train`},
		{"no such pid", []string{"capture", "--pids", "4194000", "--api-addr", addr}, 1, "", "no process matched: none of pids [4194000]"},
		{"bad pid", []string{"capture", "--pids", "12x", "--api-addr", addr}, 2, "", `"12x" is not a process id`},
		{"both bounds", []string{"capture", "--job", "train", "--duration", "1s", "--iterations", "3", "--api-addr", addr}, 1, "", "not both (HTTP 400)"},
		{"no agent", []string{"capture", "--job", "train", "--api-addr", "127.0.0.1:1"}, 1, "", "is the agent running?"},
		{"status", []string{"status", "--api-addr", addr}, 0, `"host": "h1"`, ""},
		{"dcgm pause", []string{"dcgm", "pause", "--api-addr", addr}, 0, "DCGM profiling paused", ""},
		{"dcgm resume", []string{"dcgm", "resume", "--api-addr", addr}, 0, "DCGM profiling resumed", ""},
		{"dcgm usage", []string{"dcgm", "stop", "--api-addr", addr}, 2, "", "usage: loupe-agent dcgm pause|resume"},
		{"version", []string{"version"}, 0, "loupe-agent dev", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := cli(tc.args...)
			out = squeeze(out)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, out, errOut)
			}
			for _, w := range strings.Split(tc.out, "|") {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			if !strings.Contains(errOut, tc.err) {
				t.Errorf("stderr lacks %q:\n%s", tc.err, errOut)
			}
		})
	}
}

func TestCaptureCommandNoneMatched(t *testing.T) {
	// No GPU processes, no markers: a host-wide capture is taken, and the
	// command says that nothing matched and fails.
	d := startDaemon(t, daemonArgs(t, "--simulate-gpus", "1")...)
	code, out, errOut := cli("capture", "--duration", "50ms", "--api-addr", d.APIAddr())
	if code != 1 || !strings.Contains(out, "no process matched") || !strings.Contains(errOut, "no process matched") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
}

func TestTokenFromEnvironment(t *testing.T) {
	d := startDaemon(t, daemonArgs(t, "--api-token", "tok")...)
	if code, _, errOut := cli("status", "--api-addr", d.APIAddr()); code != 1 || !strings.Contains(errOut, "missing bearer token") {
		t.Fatalf("without token: %d %s", code, errOut)
	}
	t.Setenv("LOUPE_API_TOKEN", "tok")
	if code, _, errOut := cli("status", "--api-addr", d.APIAddr()); code != 0 {
		t.Fatalf("with LOUPE_API_TOKEN: %d %s", code, errOut)
	}
}

func TestAgentRefusesOpenAPIWithoutToken(t *testing.T) {
	code, _, errOut := cli(daemonArgs(t, "--api-addr", "0.0.0.0:0")...)
	if code != 1 || !strings.Contains(errOut, "reachable from other hosts") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if code, _, errOut := cli("--gpu.interval", "fast"); code != 2 || !strings.Contains(errOut, "invalid value") {
		t.Fatalf("bad flag: exit %d: %s", code, errOut)
	}
}

// The real binary shuts down cleanly on SIGTERM and on SIGINT.
func TestSignals(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(os.Args[0], daemonArgs(t, "--simulate-gpus", "1")...)
			cmd.Env = append(os.Environ(), "LOUPE_AGENT_TEST_MAIN=1")
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			lines := bufio.NewScanner(stderr)
			var log strings.Builder
			for lines.Scan() {
				fmt.Fprintln(&log, lines.Text())
				if strings.Contains(lines.Text(), "loupe-agent running") {
					break
				}
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			for lines.Scan() {
				fmt.Fprintln(&log, lines.Text())
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil || !strings.Contains(log.String(), "loupe-agent stopped") {
					t.Fatalf("exit: %v\n%s", err, log.String())
				}
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("no exit 20s after %v\n%s", sig, log.String())
			}
		})
	}
}

// squeeze turns runs of spaces into one, so that table columns compare
// whatever their widths.
func squeeze(s string) string {
	for strings.Contains(s, "  ") {
		s = strings.ReplaceAll(s, "  ", " ")
	}
	return s
}

// Run as an unprivileged user, the agent cannot load eBPF: it says so once
// per collector, naming what is missing, and serves /metrics all the same.
func TestUnprivilegedAgent(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("TestUnprivilegedAgent runs as root and drops to nobody; run the tests as root in CI")
		}
		t.Skip("needs root to drop privileges")
	}
	dir, err := os.MkdirTemp("", "loupe-unpriv-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o777)
	bin := filepath.Join(dir, "loupe-agent")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--metrics-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0",
		"--store", "file://"+filepath.Join(dir, "store"), "--spool-dir", filepath.Join(dir, "spool"),
		"--kineto.enabled=false", "--host", "h1", "--attribution.pod-resources-socket", filepath.Join(dir, "none.sock"))
	cmd.Env = append(os.Environ(), "LOUPE_AGENT_TEST_MAIN=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(stderr)
	var log strings.Builder
	metricsAddr := ""
	for metricsAddr == "" && lines.Scan() {
		fmt.Fprintln(&log, lines.Text())
		if _, after, ok := strings.Cut(lines.Text(), "loupe-agent running"); ok {
			_, a, _ := strings.Cut(after, " metrics=")
			metricsAddr, _, _ = strings.Cut(a, " ")
		}
	}
	if metricsAddr == "" {
		cmd.Wait()
		t.Fatalf("agent did not start:\n%s", log.String())
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`loupe_collector_up{collector="cpu"} 0`, `loupe_collector_up{collector="nccl"} 0`, "\nloupe_gpu_devices 0\n"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	for lines.Scan() {
		fmt.Fprintln(&log, lines.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit: %v", err)
	}
	out := log.String()
	for _, want := range []string{"cpu profiler off", "nccl tracer off"} {
		if n := strings.Count(out, want); n != 1 {
			t.Errorf("%q logged %d times, want once:\n%s", want, n, out)
		}
	}
	if !strings.Contains(out, "CAP_BPF") {
		t.Errorf("no line names the missing capability:\n%s", out)
	}
}
