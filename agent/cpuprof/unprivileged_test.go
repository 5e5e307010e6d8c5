package cpuprof

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/bpf/cpu"
)

const childEnv = "LOUPE_CPUPROF_TEST_CHILD"

// unprivilegedChild runs in a copy of the test binary started without
// capabilities: New must fail with the capability error, and the process
// must go on serving /metrics, as the agent does.
func unprivilegedChild() {
	set := metrics.NewSet()
	_, err := New(DefaultConfig(), slog.New(slog.NewTextHandler(os.Stderr, nil)), set)
	var perm *cpu.PermissionError
	if err == nil || !errors.As(err, &perm) {
		fmt.Printf("ERR want a *cpu.PermissionError, got %v\n", err)
		os.Exit(1)
	}
	ln, lerr := net.Listen("tcp", "127.0.0.1:0")
	if lerr != nil {
		fmt.Printf("ERR listen: %v\n", lerr)
		os.Exit(1)
	}
	fmt.Printf("ADDR %s\nERROR %s\n", ln.Addr(), err)
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) { set.WritePrometheus(w) })
	http.Serve(ln, mux)
}

func TestUnprivilegedClearError(t *testing.T) {
	requireRoot(t) // to switch to an unprivileged user
	// A copy of this binary that user nobody may run.
	dir, err := os.MkdirTemp("", "cpuprof-unpriv-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "cpuprof.test")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), childEnv+"=1")
	// A non-root uid loses every capability at exec.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	r := bufio.NewReader(stdout)
	var addr, msg string
	for addr == "" || msg == "" {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("child: %v (stderr: %s)", err, stderr.String())
		}
		switch {
		case strings.HasPrefix(line, "ADDR "):
			addr = strings.TrimSpace(line[5:])
		case strings.HasPrefix(line, "ERROR "):
			msg = strings.TrimSpace(line[6:])
		case strings.HasPrefix(line, "ERR "):
			t.Fatalf("child: %s", line)
		}
	}
	for _, want := range []string{"CAP_BPF", "CAP_PERFMON", "CPU profiles are off"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %s", msg, want)
		}
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("the unprivileged process does not serve /metrics: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `loupe_cpuprof_lost_samples_total{reason="stack_map_full"} 0`) {
		t.Errorf("/metrics: %d\n%s", resp.StatusCode, body)
	}
}
