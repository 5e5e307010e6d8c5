package main

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// writeFile writes data under dir, making folders.
func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func gz(t *testing.T, s string) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write([]byte(s))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// exportEntry is one entry of journalctl -o export; msg goes as a binary
// field when binary is set, as journald does for text with newlines.
func exportEntry(us int64, host, ident, msg string, binaryField bool) []byte {
	var b bytes.Buffer
	b.WriteString("__CURSOR=s=1;i=1\n__REALTIME_TIMESTAMP=" + itoa64(us) + "\n_HOSTNAME=" + host + "\nSYSLOG_IDENTIFIER=" + ident + "\n")
	if binaryField {
		b.WriteString("MESSAGE\n")
		binary.Write(&b, binary.LittleEndian, uint64(len(msg)))
		b.WriteString(msg + "\n")
	} else {
		b.WriteString("MESSAGE=" + msg + "\n")
	}
	b.WriteString("\n")
	return b.Bytes()
}

func itoa64(n int64) string { return strconv.FormatInt(n, 10) }

// analyze-logs reads every layout it documents, from files and folders,
// with the events' own timestamps, and turns them into findings and
// incidents.
func TestAnalyzeLogs(t *testing.T) {
	dir := t.TempDir()
	at := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	us := func(d time.Duration) int64 { return at.Add(d).UnixMicro() }
	// A rotated consumer log, gzip-compressed: a classic rebalance of 3 s.
	p := "[Consumer clientId=consumer-infer-1, groupId=infer] "
	writeFile(t, dir, "consumer/app.log.1.gz", gz(t, strings.Join([]string{
		"2026-11-25T10:00:00.000Z  INFO 1 --- [main] o.a.k.c.c.internals.ConsumerCoordinator  : " + p + "Request joining group due to: group is already rebalancing",
		"2026-11-25T10:00:03.000Z  INFO 1 --- [main] o.a.k.c.c.internals.ConsumerCoordinator  : " + p + "Successfully joined group with generation Generation{generationId=4, memberId='consumer-infer-1-x', protocol='range'}",
		"2026-11-25T10:00:03.000Z  INFO 1 --- [main] o.a.k.c.c.i.ConsumerRebalanceListenerInv : " + p + "Adding newly assigned partitions: requests-0",
	}, "\n")+"\n"))
	// A Docker json-file container log with a CUDA error.
	writeFile(t, dir, "docker/abc-json.log", []byte(`{"log":"RuntimeError: CUDA error: an illegal memory access was encountered\n","stream":"stderr","time":"2026-11-25T10:01:00.5Z"}`+"\n"))
	// A journal export: an XID 79 (a binary MESSAGE field), then a NCCL
	// timeout of the same job on another host.
	exp := append(exportEntry(us(2*time.Minute), "gpu-node-1", "kernel", "NVRM: Xid (PCI:0000:18:00): 79, pid=1, name=python3, GPU has fallen off the bus.", true),
		exportEntry(us(5*time.Minute), "gpu-node-2", "python3", "[rank3]:[E1125 10:05:00.000000000 ProcessGroupNCCL.cpp:616] [Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=9, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600001 milliseconds before timing out.", false)...)
	writeFile(t, dir, "journal.export", exp)
	// A journalctl -o json line.
	js, _ := json.Marshal(map[string]string{"__REALTIME_TIMESTAMP": itoa64(us(6 * time.Minute)), "_HOSTNAME": "gpu-node-2", "SYSLOG_IDENTIFIER": "python3",
		"MESSAGE": "[rank3]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB. GPU 3 has a total capacity of 79.11 GiB"})
	single := writeFile(t, t.TempDir(), "journal.json", append(js, '\n'))

	out, stderr, err := runCmd(t, "analyze-logs", dir, single, "--json", "--gpus", "8", "--tz", "UTC")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	var res LogsResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if len(res.Files) != 4 || res.Events != 7 {
		t.Fatalf("files %+v, %d events; want 4 files and 7 events", res.Files, res.Events)
	}
	if !res.Start.Equal(at) || !res.End.Equal(at.Add(6*time.Minute+time.Nanosecond)) {
		t.Errorf("window %v .. %v: the events' own times were not kept", res.Start, res.End)
	}
	if want := []string{"abc-json.log", "app.log.1", "gpu-node-1", "gpu-node-2"}; !slices.Equal(res.Hosts, want) {
		t.Errorf("hosts %v, want %v", res.Hosts, want)
	}
	var titles []string
	for _, f := range res.Findings {
		titles = append(titles, f.Analyzer+": "+f.Title)
	}
	for _, want := range []string{"rebalance: 1 Kafka consumer (Java) rebalances of group infer (classic protocol, eager)", "hw-faults: XID 79: GPU has fallen off the bus (GPU at PCI 0000:18:00)"} {
		if !slices.Contains(titles, want) {
			t.Errorf("findings %q lack %q", titles, want)
		}
	}
	cats := map[string]traces.Incident{}
	for _, i := range res.Incidents {
		cats[i.Category] = i
	}
	nt, hw := cats["nccl-timeout"], cats["hardware"]
	if nt.Cause == "" || nt.Cause != hw.ID || !strings.Contains(nt.Title, "after XID 79 on gpu-node-1") || !slices.Equal(nt.Hosts, []string{"gpu-node-2"}) {
		t.Errorf("the NCCL timeout is not tied to the XID before it: %+v (hardware %s)", nt, hw.ID)
	}
	if cats["cuda-error"].Rule != "F5" || cats["out-of-memory"].Rule != "F5" || !slices.Equal(cats["out-of-memory"].Ranks, []int{3}) {
		t.Errorf("incidents %+v", res.Incidents)
	}

	// The table form says the same.
	out, _, err = runCmd(t, "analyze-logs", dir, "--gpus", "8", "--tz", "UTC")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"journal.export", "most likely follows from \"XID 79", "pause_p50", "incidents"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestAnalyzeLogsErrors(t *testing.T) {
	dir := t.TempDir()
	quiet := writeFile(t, dir, "quiet.log", []byte("nothing to see\n"))
	journal := writeFile(t, dir, "system.journal", []byte("LPKSHHRH"))
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"analyze-logs"}, "at least one file or folder"},
		{[]string{"analyze-logs", "/nonexistent/x.log"}, "no such file"},
		{[]string{"analyze-logs", quiet}, "no line was recognised"},
		{[]string{"analyze-logs", journal}, "journalctl --file"},
		{[]string{"analyze-logs", quiet, "--tz", "Mars/Olympus"}, "--tz"},
	}
	for _, tt := range tests {
		_, stderr, err := runCmd(t, tt.args...)
		if err == nil || !strings.Contains(err.Error()+stderr, tt.want) {
			t.Errorf("%q: error %v (stderr %q), want %q", tt.args, err, stderr, tt.want)
		}
	}
}
