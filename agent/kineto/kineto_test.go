package kineto

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/traces"
)

// kinetoClient speaks Kineto's side of the IPC fabric, built from the
// documented struct layouts rather than from this package's encoder: a
// Metadata header {size_t size; char type[32]} then the payload.
type kinetoClient struct {
	t    *testing.T
	conn *net.UnixConn
	to   *net.UnixAddr
}

func newKinetoClient(t *testing.T, endpoint, dir string) *kinetoClient {
	t.Helper()
	name := fmt.Sprintf("dynoconfigclient%08x-test", rand.Uint32())
	local, remote := "@"+name+"\x00", "@"+endpoint+"\x00"
	if dir != "" {
		local, remote = filepath.Join(dir, name), filepath.Join(dir, endpoint)
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: local, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &kinetoClient{t: t, conn: conn, to: &net.UnixAddr{Name: remote, Net: "unixgram"}}
}

func datagram(typ string, payload []byte) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint64(len(payload)))
	var tbuf [32]byte
	copy(tbuf[:], typ)
	b.Write(tbuf[:])
	b.Write(payload)
	return b.Bytes()
}

// roundTrip sends one datagram and returns the reply's type and payload.
func (c *kinetoClient) roundTrip(msg []byte) (string, []byte) {
	c.t.Helper()
	if _, err := c.conn.WriteToUnix(msg, c.to); err != nil {
		c.t.Fatalf("send: %v", err)
	}
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65536)
	n, err := c.conn.Read(buf)
	if err != nil {
		c.t.Fatalf("no reply from the agent: %v", err)
	}
	if n < 40 {
		c.t.Fatalf("reply of %d bytes is shorter than the header", n)
	}
	size := binary.LittleEndian.Uint64(buf[:8])
	if int(size) != n-40 {
		c.t.Fatalf("reply header says %d bytes, carries %d", size, n-40)
	}
	return string(bytes.TrimRight(buf[8:40], "\x00")), buf[40:n]
}

// poll sends a "req" for activities with the given job id and pid chain.
func (c *kinetoClient) poll(jobID int64, pids ...int32) string {
	var p bytes.Buffer
	binary.Write(&p, binary.LittleEndian, int32(ConfigActivities))
	binary.Write(&p, binary.LittleEndian, int32(len(pids)))
	binary.Write(&p, binary.LittleEndian, jobID)
	for _, pid := range pids {
		binary.Write(&p, binary.LittleEndian, pid)
	}
	typ, payload := c.roundTrip(datagram("req", p.Bytes()))
	if typ != "req" {
		c.t.Fatalf("reply type %q, want req", typ)
	}
	return string(payload)
}

type fakeDCGM struct{ calls []bool }

func (f *fakeDCGM) PauseProfiling(p bool) error { f.calls = append(f.calls, p); return nil }

func startServer(t *testing.T, mutate func(*Config)) (*Server, *metrics.Set, *fakeDCGM) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Endpoint = fmt.Sprintf("dynolog-test-%08x", rand.Uint32())
	cfg.SocketDir = ""
	cfg.RPCAddr = "127.0.0.1:0"
	cfg.TraceDir = t.TempDir()
	if mutate != nil {
		mutate(&cfg)
	}
	set := metrics.NewSet()
	dcgm := &fakeDCGM{}
	s, err := New(cfg, nil, set, dcgm)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s, set, dcgm
}

func counter(set *metrics.Set, name string) uint64 { return set.GetOrCreateCounter(name).Get() }

// TestKinetoTraceLandsInBundle: a Kineto client registers by polling,
// receives the configuration of a trace request, writes its trace the way
// Kineto does (.tmp then rename), and the trace lands in a bundle.
func TestKinetoTraceLandsInBundle(t *testing.T) {
	for _, mode := range []string{"abstract", "socket-dir"} {
		t.Run(mode, func(t *testing.T) {
			dir := ""
			if mode == "socket-dir" {
				dir = t.TempDir()
			}
			s, _, _ := startServer(t, func(c *Config) { c.SocketDir = dir; c.JobOf = func(int) string { return "llama-70b" } })
			client := newKinetoClient(t, s.cfg.Endpoint, dir)
			const pid, parent = 4242, 4000
			if cfg := client.poll(77, pid, parent, 1); cfg != "" {
				t.Fatalf("first poll returned config %q, want none", cfg)
			}
			procs := s.Processes()
			if len(procs) != 1 || procs[0].PID != pid || procs[0].JobID != 77 || procs[0].Job != "llama-70b" || len(procs[0].Ancestors) != 2 {
				t.Fatalf("processes = %+v, want pid %d of job 77 with 2 ancestors", procs, pid)
			}

			logFile := filepath.Join(s.cfg.TraceDir, "cap-1.json")
			res, err := s.Trace(TraceRequest{Job: "llama-70b", PIDs: []int{parent}, LogFile: logFile, Iterations: 20, RoundUp: 100, WithStack: true})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.ProcessesMatched) != 1 || len(res.ActivityProfilersTriggered) != 1 {
				t.Fatalf("trace result %+v, want the process matched by its ancestor and triggered", res)
			}
			cfg := client.poll(77, pid, parent, 1)
			for _, want := range []string{"ACTIVITIES_LOG_FILE=" + logFile, "PROFILE_START_ITERATION=0", "PROFILE_START_ITERATION_ROUNDUP=100", "ACTIVITIES_ITERATIONS=20", "PROFILE_WITH_STACK=true"} {
				if !strings.Contains(cfg, want) {
					t.Errorf("config %q lacks %q", cfg, want)
				}
			}
			if again := client.poll(77, pid, parent, 1); again != "" {
				t.Errorf("config handed out twice: %q", again)
			}

			// Kineto writes <stem>_<pid>.json.tmp, then renames it.
			final := TraceFile(logFile, pid)
			trace := `{"schemaVersion":1,"distributedInfo":{"backend":"nccl","rank":3,"world_size":8},"traceEvents":[]}`
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			go func() {
				os.WriteFile(final+".tmp", []byte(trace), 0o644)
				time.Sleep(50 * time.Millisecond)
				os.Rename(final+".tmp", final)
			}()
			found, missing := WaitForTraces(ctx, logFile, res.ActivityProfilersTriggered, 10*time.Millisecond)
			if len(missing) != 0 || found[pid] != final {
				t.Fatalf("found %v missing %v, want %s", found, missing, final)
			}
			bundleDir := t.TempDir()
			w, err := traces.NewBundleWriter(bundleDir, traces.Manifest{CaptureID: "cap-1", Cluster: "c", Job: "llama-70b", Run: "r", Host: "h", WorldSize: 8, Ranks: []int{3}})
			if err != nil {
				t.Fatal(err)
			}
			has, err := AddToBundle(w, found[pid], 3, pid)
			if err != nil || !has {
				t.Fatalf("AddToBundle = %v, %v; want distributedInfo found", has, err)
			}
			m, err := w.Commit()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := traces.ReadDir(bundleDir, 0); err != nil {
				t.Fatal(err)
			}
			if len(m.Parts) != 1 || m.Parts[0].Name != "kineto/rank3-4242.json.gz" || len(m.Notes) != 0 {
				t.Fatalf("manifest parts %v notes %v", m.Parts, m.Notes)
			}
			f, _ := os.Open(filepath.Join(bundleDir, m.Parts[0].Name))
			defer f.Close()
			zr, err := gzip.NewReader(f)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(zr)
			if string(got) != trace {
				t.Errorf("stored trace %q, want %q", got, trace)
			}
		})
	}
}

func TestMissingDistributedInfoIsNoted(t *testing.T) {
	dir := t.TempDir()
	for i, content := range []string{`{"traceEvents":[]}`, gzipString(`{"schemaVersion":1,"traceEvents":[]}`)} {
		path := filepath.Join(dir, fmt.Sprintf("t_%d.json", i))
		os.WriteFile(path, []byte(content), 0o644)
		w, _ := traces.NewBundleWriter(t.TempDir(), traces.Manifest{CaptureID: "c", Cluster: "c", Job: "j", Run: "r", Host: "h"})
		has, err := AddToBundle(w, path, -1, 9)
		if err != nil || has {
			t.Fatalf("trace %d: AddToBundle = %v, %v; want no distributedInfo", i, has, err)
		}
		m, _ := w.Commit()
		if len(m.Notes) != 1 || !strings.Contains(m.Notes[0], "no distributedInfo") || m.Parts[0].Name != "kineto/pid9.json.gz" {
			t.Errorf("trace %d: notes %v parts %v", i, m.Notes, m.Parts)
		}
	}
}

func gzipString(s string) string {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write([]byte(s))
	zw.Close()
	return b.String()
}

func TestKeyDetectorAcrossChunks(t *testing.T) {
	text := strings.Repeat("x", 1000) + `"distributedInfo"` + strings.Repeat("y", 10)
	for chunk := 1; chunk < 40; chunk++ {
		d := &keyDetector{needle: []byte(`"distributedInfo"`)}
		for i := 0; i < len(text); i += chunk {
			d.Write([]byte(text[i:min(i+chunk, len(text))]))
		}
		if !d.found {
			t.Errorf("chunk %d: key not found", chunk)
		}
	}
	d := &keyDetector{needle: []byte(`"distributedInfo"`)}
	d.Write([]byte(`"distributed`))
	d.Write([]byte(`Inf"`))
	if d.found {
		t.Error("found a key that is not there")
	}
}

func TestContextRegistration(t *testing.T) {
	s, _, _ := startServer(t, nil)
	client := newKinetoClient(t, s.cfg.Endpoint, "")
	client.poll(5, 100)
	for i, pid := range []int32{100, 101} {
		var p bytes.Buffer
		binary.Write(&p, binary.LittleEndian, int32(2)) // gpu
		binary.Write(&p, binary.LittleEndian, pid)
		binary.Write(&p, binary.LittleEndian, int64(5))
		typ, payload := client.roundTrip(datagram("ctxt", p.Bytes()))
		if typ != "ctxt" || len(payload) != 4 || int32(binary.LittleEndian.Uint32(payload)) != int32(i+1) {
			t.Fatalf("ctxt reply %q %v, want count %d", typ, payload, i+1)
		}
	}
	if p := s.Processes(); p[0].GPU != 2 {
		t.Errorf("gpu of polled process = %d, want 2", p[0].GPU)
	}
}

func TestSilentProcessesAreDropped(t *testing.T) {
	s, _, _ := startServer(t, func(c *Config) { c.KeepAlive = 200 * time.Millisecond })
	client := newKinetoClient(t, s.cfg.Endpoint, "")
	client.poll(0, 300)
	if len(s.Processes()) != 1 {
		t.Fatal("process not registered by its poll")
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(s.Processes()) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("process that stopped polling was never dropped")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMalformedDatagramsAreCounted(t *testing.T) {
	s, set, _ := startServer(t, nil)
	client := newKinetoClient(t, s.cfg.Endpoint, "")
	bad := [][]byte{
		{1, 2, 3},
		datagram("req", []byte{1, 2}),
		datagram("req", make([]byte, 16)), // n = 0
		datagram("bogus", nil),
		append(datagram("req", nil), 9), // size disagrees
	}
	for _, b := range bad {
		client.conn.WriteToUnix(b, client.to)
	}
	// The server is still serving, and counted every bad datagram.
	client.poll(0, 55)
	if got := counter(set, "loupe_kineto_ipc_malformed_total"); got != uint64(len(bad)) {
		t.Errorf("malformed counter = %d, want %d", got, len(bad))
	}
}

func rpc(t *testing.T, addr string, req any) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := Call(ctx, addr, req)
	if err != nil {
		t.Fatalf("rpc %v: %v", req, err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("rpc answer %q: %v", b, err)
	}
	return out
}

// TestDynoRPC sends what the dyno CLI sends and checks dynolog's answer shapes.
func TestDynoRPC(t *testing.T) {
	s, set, dcgm := startServer(t, nil)
	addr := s.RPCAddr()
	if got := rpc(t, addr, map[string]any{"fn": "getStatus"}); got["status"] != float64(1) {
		t.Errorf("getStatus = %v", got)
	}
	if got := rpc(t, addr, map[string]any{"fn": "getVersion"}); got["version"] != Version {
		t.Errorf("getVersion = %v", got)
	}
	client := newKinetoClient(t, s.cfg.Endpoint, "")
	client.poll(0, 700, 1)
	client.poll(0, 701, 1)
	cfg := "ACTIVITIES_LOG_FILE=/tmp/x.json\\nPROFILE_START_TIME=0\\nACTIVITIES_DURATION_MSECS=500"
	got := rpc(t, addr, map[string]any{"fn": "setKinetOnDemandRequest", "config": cfg, "job_id": 0, "pids": []int{0}, "process_limit": 1})
	want := map[string]any{
		"processesMatched": []any{float64(700), float64(701)}, "activityProfilersTriggered": []any{float64(700)},
		"eventProfilersTriggered": []any{}, "activityProfilersBusy": float64(0), "eventProfilersBusy": float64(0),
	}
	if g, w := fmt.Sprint(got), fmt.Sprint(want); g != w {
		t.Errorf("setKinetOnDemandRequest = %s, want %s", g, w)
	}
	if c := client.poll(0, 700, 1); !strings.Contains(c, "ACTIVITIES_DURATION_MSECS=500") {
		t.Errorf("pid 700 got config %q", c)
	}
	got = rpc(t, addr, map[string]any{"fn": "setKinetOnDemandRequest", "job_id": 0, "pids": []int{}})
	if got["status"] != "failed" {
		t.Errorf("request without config = %v, want status failed", got)
	}
	if got := rpc(t, addr, map[string]any{"fn": "dcgmProfPause", "duration_s": 300}); got["status"] != true {
		t.Errorf("dcgmProfPause = %v", got)
	}
	if got := rpc(t, addr, map[string]any{"fn": "dcgmProfResume"}); got["status"] != true {
		t.Errorf("dcgmProfResume = %v", got)
	}
	if fmt.Sprint(dcgm.calls) != "[true false]" {
		t.Errorf("DCGM calls = %v, want pause then resume", dcgm.calls)
	}
	if counter(set, `loupe_kineto_rpc_requests_total{fn="getStatus"}`) != 1 {
		t.Error("getStatus not counted")
	}
}

func TestRPCRejectsBadFrames(t *testing.T) {
	s, set, _ := startServer(t, nil)
	send := func(frame []byte) []byte {
		conn, err := net.Dial("tcp", s.RPCAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.Write(frame)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(conn)
		return b
	}
	frame := func(n int32, body string) []byte {
		b := binary.LittleEndian.AppendUint32(nil, uint32(n))
		return append(b, body...)
	}
	for name, f := range map[string][]byte{
		"oversized": frame(maxRPCFrame+1, "{}"),
		"negative":  frame(-5, ""),
		"not json":  frame(5, "hello"),
		"no fn":     frame(2, "{}"),
		"unknown":   frame(14, `{"fn":"bogus"}`),
	} {
		if got := send(f); len(got) != 0 {
			t.Errorf("%s: got answer %q, want the connection closed", name, got)
		}
	}
	total := counter(set, `loupe_kineto_rpc_rejected_total{reason="frame_size"}`) +
		counter(set, `loupe_kineto_rpc_rejected_total{reason="bad_request"}`) +
		counter(set, `loupe_kineto_rpc_rejected_total{reason="unknown_fn"}`)
	if total != 5 || counter(set, `loupe_kineto_rpc_rejected_total{reason="frame_size"}`) != 2 {
		t.Errorf("rejected counters total %d, want 5 with 2 for frame size", total)
	}
	if got := rpc(t, s.RPCAddr(), map[string]any{"fn": "getStatus"}); got["status"] != float64(1) {
		t.Error("server stopped answering after bad frames")
	}
}

func TestTraceRequestValidation(t *testing.T) {
	for _, r := range []TraceRequest{
		{LogFile: "rel.json", Iterations: 1, RoundUp: 1},
		{LogFile: "/abs/x.txt", Iterations: 1, RoundUp: 1},
		{LogFile: "/abs/x.json"},
		{LogFile: "/abs/x.json", Iterations: 5, Duration: time.Second, RoundUp: 1},
		{LogFile: "/abs/x.json", Iterations: 5},
		{LogFile: "/abs/x\n.json", Duration: time.Second},
	} {
		if err := r.Validate(); err == nil {
			t.Errorf("%+v validated, want an error", r)
		}
	}
	ok := TraceRequest{LogFile: "/abs/x.json", Duration: 2 * time.Second, StartTime: time.UnixMilli(1234)}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	if c := ok.Config(); !strings.Contains(c, "PROFILE_START_TIME=1234\nACTIVITIES_DURATION_MSECS=2000") {
		t.Errorf("config %q", c)
	}
	if TraceFile("/tmp/a.json", 7) != "/tmp/a_7.json" {
		t.Error(TraceFile("/tmp/a.json", 7))
	}
}

func FuzzHandleDatagram(f *testing.F) {
	req := func(n int32, pids ...int32) []byte {
		var p bytes.Buffer
		binary.Write(&p, binary.LittleEndian, int32(2))
		binary.Write(&p, binary.LittleEndian, n)
		binary.Write(&p, binary.LittleEndian, int64(1))
		for _, pid := range pids {
			binary.Write(&p, binary.LittleEndian, pid)
		}
		return datagram("req", p.Bytes())
	}
	f.Add(req(1, 10))
	f.Add(req(3, 10, 9, 1))
	f.Add(req(1<<30, 10))
	f.Add(datagram("ctxt", make([]byte, 16)))
	f.Add([]byte{})
	s := bareServer()
	f.Fuzz(func(t *testing.T, b []byte) {
		reply, err := s.handleDatagram(b, time.Now())
		if err == nil {
			if _, err := decodeMessage(reply); err != nil {
				t.Fatalf("reply does not decode: %v", err)
			}
		}
	})
}

func FuzzRPCFrame(f *testing.F) {
	f.Add([]byte("\x10\x00\x00\x00{\"fn\":\"getStatus\"}"))
	f.Add([]byte("\x40\x00\x00\x00{\"fn\":\"setKinetOnDemandRequest\",\"config\":\"x\",\"pids\":[0],\"job_id\":1}"))
	f.Add([]byte("\xff\xff\xff\x7f"))
	f.Add([]byte("\x05\x00\x00\x00[[[[["))
	s := bareServer()
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := readFrame(bytes.NewReader(b))
		if err != nil {
			return
		}
		if resp, err := s.handleRPC(req, func(time.Duration) {}); err == nil && !json.Valid(resp) {
			t.Fatalf("invalid JSON answer %q", resp)
		}
	})
}

// bareServer is a Server with no sockets, for driving its handlers directly.
func bareServer() *Server {
	s := &Server{reg: newRegistry(nil), log: slog.New(slog.DiscardHandler)}
	s.initMetrics(metrics.NewSet())
	return s
}
