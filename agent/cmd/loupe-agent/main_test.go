package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
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
