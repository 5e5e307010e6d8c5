package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/aggregator/api"
	"github.com/loupe-dev/loupe/traces"
)

// need fails under CI=true (where every real component must run) and
// skips otherwise, with what to install.
func need(t *testing.T, ok bool, msg string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// demoBinary builds this command once per test binary.
var demoBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "loupe-demo-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "demo")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// session is one run of the demo as a child process, as `make demo` runs it.
type session struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string
	dir  string

	mu    sync.Mutex
	lines []string
	eof   chan struct{}
}

func startDemo(t *testing.T, extra ...string) *session {
	t.Helper()
	_, err := exec.LookPath("gcc")
	need(t, err == nil, errNoGCC.Error())
	bin, err := demoBinary()
	if err != nil {
		t.Fatal(err)
	}
	s := &session{t: t, addr: freeAddr(t), dir: t.TempDir(), eof: make(chan struct{})}
	args := append([]string{"--dir", s.dir, "--addr", s.addr,
		"--agent-api", freeAddr(t), "--agent-metrics", freeAddr(t), "--receiver", freeAddr(t),
		"--minio", freeAddr(t), "--minio-console", freeAddr(t),
		// Shortened: the agent may capture from iteration 20, 30 iterations.
		"--trigger-at", "20", "--capture-iterations", "30"}, extra...)
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stderr = os.Stderr
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// The demo dies with the test binary even if the test is killed.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(s.eof)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			s.mu.Lock()
			s.lines = append(s.lines, sc.Text())
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			s.cmd.Process.Kill()
			s.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("demo output:\n%s", s.output())
			for _, name := range []string{"loupe-agent", "loupe-aggregator"} {
				data, _ := os.ReadFile(filepath.Join(s.dir, "run", "logs", name+".log"))
				t.Logf("%s.log (end):\n%s", name, tail(string(data), 3000))
			}
		}
	})
	return s
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (s *session) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines, "\n")
}

// waitOutput waits for a line containing want.
func (s *session) waitOutput(want string, timeout time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(s.output(), want) {
		select {
		case <-s.eof:
			s.t.Fatalf("the demo ended before printing %q", want)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the demo did not print %q within %v", want, timeout)
		}
	}
}

// findings polls the aggregator's API until every planted problem is
// found, and returns the findings.
func (s *session) findings(problems []problem, timeout time.Duration) []traces.Finding {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	var got api.FindingsResponse
	for {
		got = api.FindingsResponse{}
		resp, err := http.Get("http://" + s.addr + "/api/v1/findings?job=llm-pretrain-demo&limit=200")
		if err == nil {
			json.NewDecoder(resp.Body).Decode(&got)
			resp.Body.Close()
		}
		all := true
		for _, p := range problems {
			all = all && slices.ContainsFunc(got.Findings, p.matches)
		}
		if all {
			return got.Findings
		}
		if time.Now().After(deadline) {
			var have []string
			for _, f := range got.Findings {
				have = append(have, fmt.Sprintf("%s %s %+v", f.Analyzer, f.Severity, f.Scope))
			}
			s.t.Fatalf("after %v the aggregator's findings %q lack some of the planted problems %+v", timeout, have, problems)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// interrupt is Ctrl-C: the demo must stop every process it started and
// exit 0.
func (s *session) interrupt() {
	s.t.Helper()
	s.cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { <-s.eof; done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			s.t.Errorf("the demo exited with %v after Ctrl-C, want 0", err)
		}
	case <-time.After(60 * time.Second):
		s.t.Fatal("the demo did not exit within 60s of Ctrl-C")
	}
	if !strings.Contains(s.output(), "stopped cleanly") {
		s.t.Errorf("the demo did not report a clean stop")
	}
	if left := processesUsing(s.dir); len(left) > 0 {
		s.t.Errorf("processes of the demo still run after it exited: %q", left)
	}
}

// processesUsing lists the live processes whose command line names dir:
// every process the demo starts does (configs, data and job folders).
func processesUsing(dir string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte(dir)) {
			continue
		}
		// A zombie waiting for its reaper is gone in every way that matters.
		if stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); bytes.Contains(stat, []byte(") Z ")) {
			continue
		}
		out = append(out, e.Name()+": "+string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
	}
	return out
}

// The demo as `make demo` runs it, as root: MinIO with its S3 event
// webhook, the aggregator, the agent with its eBPF NCCL tracer and CPU
// profiler on 8 simulated GPUs, the 8-rank job. The findings of the three
// planted problems reach the aggregator's API and the demo's output, and,
// with alerts wired, the receiver prints a verified alert.
func TestDemo(t *testing.T) {
	need(t, os.Geteuid() == 0, "TestDemo needs root: the agent's eBPF NCCL tracer and CPU profiler find the straggler and the data-loader stall")
	store := "auto"
	if os.Getenv("CI") == "true" {
		if _, err := os.Stat(filepath.Join("..", "..", ".cache", "bin", "minio")); err != nil && os.Getenv("LOUPE_MINIO_BIN") == "" {
			t.Fatal("TestDemo in CI runs the demo on MinIO, and there is none at .cache/bin/minio: run `make tools` (or `make minio`)")
		}
		store = "minio"
	}
	start := time.Now()
	s := startDemo(t, "--store", store, "--ebpf", "on")
	o, err := parseFlags([]string{"--ebpf", "on"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	problems := plantedProblems(o)
	fs := s.findings(problems, 150*time.Second)
	t.Logf("findings of all three planted problems after %v", time.Since(start).Round(time.Second))
	for _, p := range problems {
		i := slices.IndexFunc(fs, p.matches)
		if f := fs[i]; !f.Simulated || f.Severity == traces.SeverityInfo || len(f.Lineage.Inputs) == 0 {
			t.Errorf("%s: finding %+v should be simulated, at least a warning, with lineage", p.name, f)
		}
	}
	// The straggler is found by its NCCL arrivals, which only eBPF sees.
	if !slices.ContainsFunc(fs, func(f traces.Finding) bool { return f.Analyzer == "nccl-straggler" && problems[0].matches(f) }) {
		t.Errorf("no nccl-straggler finding names rank %d", o.stragglerRank)
	}
	// The capture the findings came from: one host holding all 8 ranks, every
	// eBPF part present, the GPUs simulated.
	var cr api.CaptureResponse
	sc := fs[0].Scope
	resp, err := http.Get(fmt.Sprintf("http://%s/api/v1/captures/%s/%s/%s/%s", s.addr, sc.Cluster, sc.Job, sc.Run, sc.Capture))
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&cr)
	resp.Body.Close()
	if !cr.Complete || cr.WorldSize != 8 || len(cr.Manifests) != 1 {
		t.Fatalf("capture %s: complete %v, world size %d, %d manifests", sc.Capture, cr.Complete, cr.WorldSize, len(cr.Manifests))
	}
	m := cr.Manifests[0]
	for _, part := range []string{traces.PartNCCLEvents, traces.PartCPUProfile, traces.PartGPUSamples, traces.PartSteps} {
		if _, ok := m.Part(part); !ok {
			t.Errorf("the capture lacks %s (notes %q)", part, m.Notes)
		}
	}
	if !m.Simulated || len(m.GPUs) != 8 || len(m.Ranks) != 8 {
		t.Errorf("manifest: simulated %v, %d GPUs, ranks %v", m.Simulated, len(m.GPUs), m.Ranks)
	}
	// The dashboard is served.
	if body, err := httpGet(t.Context(), "http://"+s.addr+"/"); err != nil || !strings.Contains(strings.ToLower(body), "<html") {
		t.Errorf("dashboard: %v, %.200q", err, body)
	}
	s.waitOutput("all 3 findable planted problems found", 10*time.Second)
	out := s.output()
	wants := []string{"SIMULATED", "Path: eBPF (root)", "NCCL uprobes attached",
		"FOUND straggler", "FOUND throttled GPU", "FOUND data-loader stall", "http://" + s.addr + "/"}
	if store == "minio" {
		wants = append(wants, "store: MinIO")
	}
	for _, want := range wants {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if webhooksKey() {
		s.waitOutput("ALERT (signature verified)", 30*time.Second)
		if strings.Contains(s.output(), "ALERT REJECTED") {
			t.Error("the receiver rejected an alert's signature")
		}
	} else {
		t.Log("alerts are not wired into the aggregator's configuration yet: no alert expected")
	}
	s.interrupt()
}

// Without eBPF (as when not root): step markers and `loupe-agent capture`;
// the straggler shows in step times, the throttled GPU in the samples, and
// the demo says that the data-loader stall needs the CPU profiler.
func TestDemoWithoutEBPF(t *testing.T) {
	s := startDemo(t, "--store", "dir", "--ebpf", "off")
	o, err := parseFlags([]string{"--ebpf", "off"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	problems := plantedProblems(o)
	var findable []problem
	for _, p := range problems {
		if p.needs == "" {
			findable = append(findable, p)
		}
	}
	if len(findable) != 2 {
		t.Fatalf("findable without eBPF: %+v, want the straggler and the throttled GPU", findable)
	}
	fs := s.findings(findable, 150*time.Second)
	if !slices.ContainsFunc(fs, func(f traces.Finding) bool { return f.Analyzer == "step-imbalance" && problems[0].matches(f) }) {
		t.Errorf("no step-imbalance finding names rank %d", o.stragglerRank)
	}
	s.waitOutput("all 2 findable planted problems found", 10*time.Second)
	out := s.output()
	for _, want := range []string{"Path: no eBPF", "$ loupe-agent capture", "store: the local folder",
		"not findable in this run: data-loader stall: needs the eBPF CPU profiler"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	s.interrupt()
}

// Flags are checked before anything starts.
func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--ebpf", "maybe"}, `--ebpf "maybe": want auto, on or off`},
		{[]string{"--store", "s3"}, `--store "s3": want auto, minio or dir`},
		{[]string{"--ranks", "4", "--loader", "6"}, "--loader 6: want 0..3 (--ranks 4)"},
		{[]string{"--ranks", "1", "--straggler", "0", "--loader", "0", "--throttled-gpu", "0"}, "--ranks 1: want 2..64"},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"--job", "a/b"}, "--job: "},
	} {
		_, err := parseFlags(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) = %v, want %q", tc.args, err, tc.want)
		}
	}
	o, err := parseFlags([]string{"--ebpf", "off"}, io.Discard)
	if err != nil || o.ebpf || o.ranks != 8 || o.stragglerRank != 3 || o.loaderRank != 6 || o.throttledGPU != 5 {
		t.Errorf("defaults: %+v, %v", o, err)
	}
}

// A finding about several targets names them in its evidence; the planted
// problem matches when its rank or GPU is among them.
func TestProblemMatches(t *testing.T) {
	straggler := problem{analyzers: []string{"nccl-straggler", "step-imbalance"}, rank: 3, gpu: -1}
	hot := problem{analyzers: []string{"throttle"}, rank: -1, gpu: 5}
	one := func(analyzer string, gpu, rank int) traces.Finding {
		return traces.Finding{Analyzer: analyzer, Scope: traces.Scope{GPU: gpu, Rank: rank}}
	}
	several := func(analyzer string, names ...string) traces.Finding {
		f := one(analyzer, -1, -1)
		for _, n := range names {
			f.Evidence = append(f.Evidence, traces.Metric{Name: n})
		}
		return f
	}
	for _, tc := range []struct {
		p    problem
		f    traces.Finding
		want bool
	}{
		{straggler, one("nccl-straggler", 3, 3), true},
		{straggler, one("step-imbalance", 3, 3), true},
		{straggler, one("nccl-straggler", 4, 4), false},
		{straggler, one("throttle", 3, 3), false},
		{straggler, several("nccl-straggler", "node gpu 6 rank 6: arrived_last", "node gpu 3 rank 3: arrived_last"), true},
		{straggler, several("nccl-straggler", "node gpu 6 rank 6: arrived_last", "node gpu 3 rank 13: arrived_last"), false},
		{hot, one("throttle", 5, 5), true},
		{hot, one("throttle", 5, -1), true},
		{hot, several("throttle", "node gpu 5 rank 5: thermal_time_share"), true},
		{hot, several("throttle", "node gpu 5: thermal_time_share"), true},
		{hot, several("throttle", "node gpu 15 rank 5: thermal_time_share"), false},
	} {
		if got := tc.p.matches(tc.f); got != tc.want {
			t.Errorf("%+v matches %+v = %v, want %v", tc.p, tc.f, got, tc.want)
		}
	}
}
