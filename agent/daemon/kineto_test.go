package daemon

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/agent/api"
	"github.com/loupe-dev/loupe/agent/kineto"
)

// kinetoPoll sends one Kineto "req" datagram (activities, job id, pid
// chain) as libkineto lays it out, and returns the configuration text the
// agent answers with.
func kinetoPoll(t *testing.T, conn *net.UnixConn, to *net.UnixAddr, pids ...int32) string {
	t.Helper()
	var p bytes.Buffer
	binary.Write(&p, binary.LittleEndian, int32(kineto.ConfigActivities))
	binary.Write(&p, binary.LittleEndian, int32(len(pids)))
	binary.Write(&p, binary.LittleEndian, int64(77))
	for _, pid := range pids {
		binary.Write(&p, binary.LittleEndian, pid)
	}
	var msg bytes.Buffer
	binary.Write(&msg, binary.LittleEndian, uint64(p.Len()))
	var typ [32]byte
	copy(typ[:], "req")
	msg.Write(typ[:])
	msg.Write(p.Bytes())
	if _, err := conn.WriteToUnix(msg.Bytes(), to); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65536)
	n, err := conn.Read(buf)
	if err != nil || n < 40 {
		t.Fatalf("no reply from the agent: %d bytes, %v", n, err)
	}
	return string(buf[40:n])
}

// A capture asks the job's Kineto process for a trace, and the trace the
// process writes lands in the bundle.
func TestKinetoTraceInCapture(t *testing.T) {
	cfg := testConfig(t)
	cfg.Kineto.Enabled = true
	cfg.Kineto.SocketDir = t.TempDir()
	d := start(t, cfg)
	me := int32(os.Getpid())
	c := &api.Client{Addr: d.APIAddr()}
	ctx := context.Background()
	if err := c.Step(ctx, api.StepRequest{Job: "train", Rank: 4, PID: int(me), Iteration: 1}); err != nil {
		t.Fatal(err)
	}

	local := filepath.Join(cfg.Kineto.SocketDir, fmt.Sprintf("dynoconfigclient-%d", me))
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: local, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	to := &net.UnixAddr{Name: filepath.Join(cfg.Kineto.SocketDir, cfg.Kineto.Endpoint), Net: "unixgram"}
	if got := kinetoPoll(t, conn, to, me, int32(os.Getppid())); got != "" {
		t.Fatalf("first poll got %q", got)
	}

	rep, err := c.Capture(ctx, api.CaptureRequest{Job: "train", Duration: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// Kineto polls about once a second; the request is installed as soon
	// as the capture starts.
	var conf string
	for deadline := time.Now().Add(5 * time.Second); conf == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		conf = kinetoPoll(t, conn, to, me, int32(os.Getppid()))
	}
	var logFile string
	for line := range strings.SplitSeq(conf, "\n") {
		if v, ok := strings.CutPrefix(line, "ACTIVITIES_LOG_FILE="); ok {
			logFile = v
		}
	}
	if logFile == "" || !strings.Contains(conf, "ACTIVITIES_DURATION_MSECS=200") {
		t.Fatalf("configuration %q", conf)
	}
	trace := `{"distributedInfo":{"backend":"nccl","rank":4,"world_size":8},"traceEvents":[]}`
	if err := os.WriteFile(kineto.TraceFile(logFile, int(me)), []byte(trace), 0o644); err != nil {
		t.Fatal(err)
	}
	m, dir := waitBundle(t, cfg, "train", "default", rep.ID)
	name := kineto.PartName(4, int(me))
	if _, ok := m.Part(name); !ok {
		t.Fatalf("bundle parts %+v lack %s (notes %q)", m.Parts, name, m.Notes)
	}
	for _, n := range m.Notes {
		if strings.HasPrefix(n, "kineto") {
			t.Errorf("unexpected note %q", n)
		}
	}
	f, err := os.Open(filepath.Join(dir, filepath.FromSlash(name)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := io.ReadAll(zr); string(got) != trace {
		t.Errorf("stored trace %q", got)
	}
	if _, err := os.Stat(filepath.Dir(logFile)); !os.IsNotExist(err) {
		t.Errorf("trace folder %s left behind: %v", filepath.Dir(logFile), err)
	}
}
