package logparse

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

func TestJournalAndKernelLines(t *testing.T) {
	tests := []struct {
		name  string
		lines []string
		want  []map[string]string // kind, rank, gpu, pid, code, time and attrs
	}{
		{
			name: "short-iso-precise, old and new zone spellings",
			lines: []string{
				"2026-11-25T10:01:00.000200+0000 gpu-node-1 kernel: NVRM: Xid (PCI:0000:18:00): 79, pid=3131, name=python3, GPU has fallen off the bus.",
				"2026-11-25T11:01:00.000200+01:00 gpu-node-2 kernel: NVRM: Xid (PCI:0000:3B:00.0): 48, pid='<unknown>', name=<unknown>, An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 6, subpartition 0.",
				"2026-11-25T10:01:00.000300Z gpu-node-1 kernel: NVRM: GPU 0000:18:00.0: GPU has fallen off the bus.",
			},
			want: []map[string]string{
				{"kind": "xid", "code": "79", "pci": "0000:18:00", "pid": "3131", "process": "python3", "host": "gpu-node-1", "unit": "kernel", "time": "10:01:00.000200", "xid_message": "GPU has fallen off the bus."},
				{"kind": "xid", "code": "48", "pci": "0000:3b:00", "pid": "0", "host": "gpu-node-2", "time": "10:01:00.000200"},
				{"kind": "gpu_lost", "pci": "0000:18:00", "host": "gpu-node-1"},
			},
		},
		{
			name: "short and dmesg -T, prefixed worker output",
			lines: []string{
				"Nov 25 10:02:00 gpu-node-2 python3[6161]: [rank6]: RuntimeError: CUDA error: an illegal memory access was encountered",
				"Nov 25 10:02:00.250000 gpu-node-2 python3[6161]: [rank6]: RuntimeError: CUDA error: an illegal memory access was encountered",
				"[Tue Nov 25 10:03:00 2026] NVRM: Xid (PCI:0000:18:00): 13, pid=1, name=x, Graphics Exception",
			},
			want: []map[string]string{
				{"kind": "cuda_error", "rank": "6", "pid": "6161", "host": "gpu-node-2", "unit": "python3", "error": "an illegal memory access was encountered", "time": "10:02:00.000000"},
				{"kind": "cuda_error", "rank": "6", "time": "10:02:00.250000"},
				{"kind": "xid", "code": "13", "time": "10:03:00.000000"},
			},
		},
		{
			name: "journalctl -o json, a binary message field",
			lines: []string{
				`{"__REALTIME_TIMESTAMP":"1795600920000000","_HOSTNAME":"gpu-node-3","SYSLOG_IDENTIFIER":"python3","_PID":"5151","MESSAGE":[91,114,97,110,107,57,93,58,32,82,117,110,116,105,109,101,69,114,114,111,114,58,32,67,85,68,65,32,101,114,114,111,114,58,32,120]}`,
			},
			want: []map[string]string{{"kind": "cuda_error", "rank": "9", "pid": "5151", "host": "gpu-node-3", "error": "x", "time": "10:02:00.000000"}},
		},
		{
			name: "NCCL errors apart from timeouts, OOM retried",
			lines: []string{
				"[rank9]: torch.distributed.DistBackendError: NCCL error in: /opt/pytorch/pytorch/torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1970, unhandled system error (run with NCCL_DEBUG=INFO for details), NCCL version 2.21.5",
				"[rank2]: RuntimeError: [Rank 2] ncclRemoteError: A call failed possibly due to a network error or a remote process exiting prematurely.",
				"[rank10]: WARNING:deepspeed:retrying after CUDA out of memory. Tried to allocate 1.50 GiB. GPU 2 has a total capacity of 79.11 GiB",
			},
			want: []map[string]string{
				{"kind": "nccl_error", "rank": "9", "error": "unhandled system error", "nccl_version": "2.21.5"},
				{"kind": "nccl_error", "rank": "2", "error": "[Rank 2] ncclRemoteError: A call failed possibly due to a network error or a remote process exiting prematurely."},
				{"kind": "oom", "rank": "10", "gpu": "2", "retry": "true"},
			},
		},
		{
			name: "undated lines take the nearer dated line, in lines",
			lines: []string{
				"2026-11-25T10:00:00Z stdout F INFO start",
				"RuntimeError: CUDA error: right after the first", // 1 line after 10:00:00, 4 before 10:20:00
				"plain", "plain",
				"RuntimeError: CUDA error: just before the second", // 3 after, 1 before
				"2026-11-25T10:20:00Z stdout F INFO next",
				"RuntimeError: CUDA error: after the last", // no later one: Flush takes the last
			},
			want: []map[string]string{
				{"error": "right after the first", "time": "10:00:00.000000"},
				{"error": "just before the second", "time": "10:20:00.000000"},
				{"error": "after the last", "time": "10:20:00.000000"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewParser(0)
			p.Ref, p.Location = ref, time.UTC
			var got []traces.Event
			for _, l := range tt.lines {
				got = p.Feed([]byte(l), time.Time{}, got)
			}
			checkEvents(t, p.Flush(time.Time{}, got), tt.want)
		})
	}
}

func TestPCIKey(t *testing.T) {
	for _, s := range []string{"0000:3b:00", "PCI:0000:3B:00", "00000000:3B:00.0", "0:3b:0"} {
		if k := PCIKey(s); k != "0:3b:0" {
			t.Errorf("PCIKey(%q) = %q", s, k)
		}
	}
	if PCIKey("not an address") != "" || PCIKey("0000:zz:00") != "" {
		t.Error("PCIKey accepted junk")
	}
}

// exportEntry is one entry of journalctl -o export.
func exportEntry(us, host, msg string, binaryMsg bool) string {
	s := "__CURSOR=s=1\n__REALTIME_TIMESTAMP=" + us + "\n_HOSTNAME=" + host + "\nSYSLOG_IDENTIFIER=kernel\n"
	if binaryMsg {
		var b bytes.Buffer
		binary.Write(&b, binary.LittleEndian, uint64(len(msg)))
		return s + "MESSAGE\n" + b.String() + msg + "\n\n"
	}
	return s + "MESSAGE=" + msg + "\n\n"
}

// ReadStream takes gzip, journal export and plain text alike, with the
// events' own times.
func TestReadStream(t *testing.T) {
	xid := "NVRM: Xid (PCI:0000:18:00): 79, pid=1, name=p, GPU has fallen off the bus."
	export := exportEntry("1795600860000000", "gpu-node-1", xid, false) + exportEntry("1795600861000000", "gpu-node-2", "line one\n"+xid, true)
	var zipped bytes.Buffer
	zw := gzip.NewWriter(&zipped)
	zw.Write([]byte(export))
	zw.Close()
	for name, data := range map[string][]byte{"export": []byte(export), "export.gz": zipped.Bytes()} {
		var got []traces.Event
		n, err := ReadStream(bytes.NewReader(data), StreamOptions{Ref: ref}, func(e traces.Event) error {
			got = append(got, e)
			return nil
		})
		if err != nil || n != 2 || len(got) != 2 {
			t.Fatalf("%s: %d entries, %v, events %+v", name, n, err, got)
		}
		if got[0].Attrs[AttrHost] != "gpu-node-1" || got[1].Attrs[AttrHost] != "gpu-node-2" || got[1].TimeNs != 1795600861000000000 || got[1].Code != 79 {
			t.Errorf("%s: events %+v", name, got)
		}
	}
	// A truncated export keeps what came before and says what failed.
	bad := export[:len(export)-10]
	var got []traces.Event
	_, err := ReadStream(strings.NewReader(bad), StreamOptions{}, func(e traces.Event) error { got = append(got, e); return nil })
	if err == nil || len(got) != 1 {
		t.Errorf("truncated export: %v, %d events", err, len(got))
	}
	// A long line is cut, and the next one is read.
	long := strings.Repeat("x", 300) + "\nRuntimeError: CUDA error: next\n"
	got = nil
	n, err := ReadStream(strings.NewReader(long), StreamOptions{MaxLine: 100}, func(e traces.Event) error { got = append(got, e); return nil })
	if err != nil || n != 2 || len(got) != 1 || got[0].Attrs[AttrError] != "next" {
		t.Errorf("long line: %d lines, %v, %+v", n, err, got)
	}
}

// FuzzReadStream: any bytes (text, gzip, export) never panic, and every
// event is well formed.
func FuzzReadStream(f *testing.F) {
	f.Add([]byte(exportEntry("1795600860000000", "h", "NVRM: Xid (PCI:0000:18:00): 79, pid=1, name=p, x", true)))
	f.Add([]byte("2026-11-25T10:01:00.000200+0000 h kernel: NVRM: Xid (PCI:0000:18:00): 79, pid=3131, name=python3, x\nNov 25 10:02:00 h p[1]: x\n"))
	f.Add([]byte("__CURSOR=x\nMESSAGE\n\xff\xff\xff\xff\xff\xff\xff\x7f"))
	f.Add([]byte(`{"__REALTIME_TIMESTAMP":"1","MESSAGE":[1,2,3]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ReadStream(bytes.NewReader(data), StreamOptions{MaxLine: 256}, func(e traces.Event) error {
			if e.Kind == "" || e.Attrs == nil || len(e.Message) > maxMessage {
				t.Fatalf("malformed event %+v", e)
			}
			return nil
		})
	})
}
