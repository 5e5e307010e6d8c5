package logparse

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

var ref = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

// parseAll feeds lines to one parser, as one log file would.
func parseAll(lines ...string) []traces.Event {
	p := NewParser(0)
	var out []traces.Event
	for _, l := range lines {
		out = p.Feed([]byte(l), ref, out)
	}
	return out
}

func TestParseLines(t *testing.T) {
	tests := []struct {
		name  string
		lines []string
		want  []map[string]string // per event: "kind", "rank", "gpu", "time" and attrs
	}{
		{
			name: "java classic eager join",
			lines: []string{
				"[2026-11-25 10:00:00,001] INFO ConsumerConfig values: ",
				"\tgroup.protocol = classic",
				"\tpartition.assignment.strategy = [class org.apache.kafka.clients.consumer.RangeAssignor, class org.apache.kafka.clients.consumer.CooperativeStickyAssignor]",
				"[2026-11-25 10:00:05,000] INFO [Consumer clientId=consumer-infer-1, groupId=infer] Request joining group due to: group is already rebalancing (org.apache.kafka.clients.consumer.internals.ConsumerCoordinator)",
				"[2026-11-25 10:00:05,010] INFO [Consumer clientId=consumer-infer-1, groupId=infer] Revoke previously assigned partitions requests-0, requests-1 (org.apache.kafka.clients.consumer.internals.ConsumerCoordinator)",
				"[2026-11-25 10:00:05,020] INFO [Consumer clientId=consumer-infer-1, groupId=infer] (Re-)joining group (org.apache.kafka.clients.consumer.internals.ConsumerCoordinator)",
				"[2026-11-25 10:00:08,000] INFO [Consumer clientId=consumer-infer-1, groupId=infer] Successfully joined group with generation Generation{generationId=7, memberId='consumer-infer-1-5b2c', protocol='range'} (org.apache.kafka.clients.consumer.internals.ConsumerCoordinator)",
				"[2026-11-25 10:00:08,100] INFO [Consumer clientId=consumer-infer-1, groupId=infer] Successfully synced group in generation Generation{generationId=7, memberId='consumer-infer-1-5b2c', protocol='range'} (org.apache.kafka.clients.consumer.internals.ConsumerCoordinator)",
				"[2026-11-25 10:00:08,200] INFO [Consumer clientId=consumer-infer-1, groupId=infer] Adding newly assigned partitions: requests-0 (org.apache.kafka.clients.consumer.internals.ConsumerCoordinator)",
			},
			want: []map[string]string{
				{"kind": "rebalance", "phase": "start", "client": "java", "group": "infer", "member": "consumer-infer-1", "protocol": "classic", "assignor": "range", "strategy": "eager", "time": "10:00:05.000"},
				{"kind": "rebalance", "phase": "start", "reason": "revoke"},
				{"kind": "rebalance", "phase": "start", "reason": "joining"},
				{"kind": "rebalance", "phase": "step", "generation": "7", "member_id": "consumer-infer-1-5b2c", "assignor": "range"},
				{"kind": "rebalance", "phase": "step", "generation": "7"},
				{"kind": "rebalance", "phase": "end", "time": "10:00:08.200"},
			},
		},
		{
			name: "java static member cooperative",
			lines: []string{
				"2026-11-25 10:00:00.000 INFO [Consumer instanceId=infer-0, clientId=c0, groupId=g] Successfully joined group with generation Generation{generationId=3, memberId='infer-0-aa', protocol='cooperative-sticky'}",
				"2026-11-25 10:00:09.000 INFO [Consumer instanceId=infer-0, clientId=c0, groupId=g] Lost previously assigned partitions requests-3",
			},
			want: []map[string]string{
				{"phase": "step", "strategy": "cooperative", "assignor": "cooperative-sticky", "instance_id": "infer-0", "member": "c0"},
				{"phase": "start", "reason": "lost"},
			},
		},
		{
			name: "java consumer protocol (KIP-848)",
			lines: []string{
				"\tgroup.protocol = consumer",
				"[2026-11-25 10:00:01,000] INFO [Consumer clientId=c1, groupId=g] Member Zq3yHYbjQ-O1RDgB_Ht5qw with epoch 0 transitioned from UNSUBSCRIBED to JOINING. (org.apache.kafka.clients.consumer.internals.ConsumerMembershipManager)",
				"[2026-11-25 10:00:01,200] INFO [Consumer clientId=c1, groupId=g] Member Zq3yHYbjQ-O1RDgB_Ht5qw with epoch 4 transitioned from JOINING to RECONCILING. (org.apache.kafka.clients.consumer.internals.ConsumerMembershipManager)",
				"[2026-11-25 10:00:01,300] INFO [Consumer clientId=c1, groupId=g] Member Zq3yHYbjQ-O1RDgB_Ht5qw with epoch 4 transitioned from RECONCILING to ACKNOWLEDGING. (org.apache.kafka.clients.consumer.internals.ConsumerMembershipManager)",
				"[2026-11-25 10:00:01,400] INFO [Consumer clientId=c1, groupId=g] Member Zq3yHYbjQ-O1RDgB_Ht5qw with epoch 5 transitioned from ACKNOWLEDGING to STABLE. (org.apache.kafka.clients.consumer.internals.ConsumerMembershipManager)",
			},
			want: []map[string]string{
				{"phase": "state", "protocol": "consumer", "strategy": "cooperative", "generation": "0", "member_id": "Zq3yHYbjQ-O1RDgB_Ht5qw", "from": "UNSUBSCRIBED", "to": "JOINING"},
				{"phase": "state", "generation": "4", "from": "JOINING", "to": "RECONCILING"},
				{"phase": "state", "generation": "4", "from": "RECONCILING", "to": "ACKNOWLEDGING", "time": "10:00:01.300"},
				{"phase": "state", "generation": "5", "from": "ACKNOWLEDGING", "to": "STABLE"},
			},
		},
		{
			name: "librdkafka",
			lines: []string{
				`%7|1795600800.500|REBALANCE|rdkafka#consumer-1| [thrd:main]: Group "infer" initiating rebalance (EAGER) in state up (join-state steady) with 2 assigned partition(s): rebalance in progress`,
				`%7|1795600800.501|CGRPJOINSTATE|rdkafka#consumer-1| [thrd:main]: Group "infer" changed join state steady -> wait-unassign-call (state up)`,
				`%7|1764064801.000|CGRPJOINSTATE|rdkafka#consumer-1| [thrd:main]: Group "infer" changed join state wait-unassign-call -> wait-join (state up)`,
				`%7|1764064803.250|CGRPJOINSTATE|rdkafka#consumer-1| [thrd:main]: Group "infer" changed join state wait-assign-call -> steady (state up)`,
			},
			want: []map[string]string{
				{"phase": "step", "client": "librdkafka", "strategy": "eager", "group": "infer", "member": "rdkafka#consumer-1"},
				{"phase": "start", "time": "10:00:00.501"},
				{"phase": "step", "reason": "wait-unassign-call -> wait-join"},
				{"phase": "end", "time": "10:00:03.250"},
			},
		},
		{
			name: "torch elastic",
			lines: []string{
				"[2026-11-25 10:00:00,000] torch.distributed.elastic.agent.server.api: [INFO] [default] Worker group FAILED. 3/3 attempts left; will restart worker group",
				"[2026-11-25 10:00:20,000] torch.distributed.elastic.agent.server.api: [INFO] [default] Rendezvous complete for workers. Result: restart_count=1 master_addr=n0 master_port=29500",
				"[2026-11-25 10:00:20,001] torch.distributed.elastic.agent.server.api: [INFO] [default] Starting worker group",
				"I1125 10:05:00.000000 140 torch/distributed/elastic/agent/server/api.py:868] [trainer] Detected 2 new nodes from group_rank=0; will restart worker group",
			},
			want: []map[string]string{
				{"client": "torchelastic", "phase": "start", "group": "default", "reason": "failed", "attempts_left": "3", "time": "10:00:00.000"},
				{"phase": "step", "generation": "1"},
				{"phase": "end", "generation": "1", "time": "10:00:20.001"},
				{"phase": "start", "group": "trainer", "reason": "new_nodes", "new_nodes": "2"},
			},
		},
		{
			name: "nccl watchdog",
			lines: []string{
				"[rank3]:[E1125 10:00:00.000000000 ProcessGroupNCCL.cpp:616] [Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1024, OpType=ALLREDUCE, NumelIn=262144, NumelOut=262144, Timeout(ms)=600000) ran for 600042 milliseconds before timing out.",
			},
			want: []map[string]string{{"kind": "nccl_watchdog", "rank": "3", "timeout_ms": "600000", "seq": "1024", "op": "ALLREDUCE", "ran_ms": "600042"}},
		},
		{
			name: "oom and cuda error",
			lines: []string{
				"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 5 has a total capacity of 79.11 GiB of which 1.12 GiB is free.",
				"RuntimeError: CUDA error: an illegal memory access was encountered",
			},
			want: []map[string]string{
				{"kind": "oom", "gpu": "5", "tried_to_allocate": "2.00 GiB"},
				{"kind": "cuda_error", "error": "an illegal memory access was encountered"},
			},
		},
		{
			name: "traceback",
			lines: []string{
				"[rank1]: Traceback (most recent call last):",
				`[rank1]:   File "/app/train.py", line 88, in <module>`,
				"[rank1]:     main()",
				`[rank1]:   File "/app/train.py", line 61, in main`,
				"[rank1]:     loss = step(batch)",
				"[rank1]:            ^^^^^^^^^^^",
				`[rank1]:   File "/app/model/step.py", line 12, in step`,
				`[rank1]:     raise RuntimeError("CUDA error: not from the GPU")`,
				"[rank1]: ValueError: bad batch",
				"after the crash",
			},
			want: []map[string]string{{"kind": "crash", "rank": "1", "exception": "ValueError",
				"stack": "step (/app/model/step.py:12)\nmain (/app/train.py:61)\n<module> (/app/train.py:88)"}},
		},
		{
			name: "traceback ending in oom",
			lines: []string{
				"Traceback (most recent call last):",
				`  File "/app/serve.py", line 5, in forward`,
				"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 79.11 GiB",
			},
			// The OOM is what the process died of: one event, with the stack.
			want: []map[string]string{
				{"kind": "oom", "gpu": "0", "tried_to_allocate": "20.00 MiB", "stack": "forward (/app/serve.py:5)", "exception": "torch.OutOfMemoryError", "fatal": "true"},
			},
		},
		{
			name: "CRI partial lines joined",
			lines: []string{
				"2026-11-25T10:00:07.000000001Z stderr P RuntimeError: CUDA er",
				"2026-11-25T10:00:07.000000002Z stdout F unrelated stdout line",
				"2026-11-25T10:00:07.000000003Z stderr F ror: device-side assert triggered",
			},
			want: []map[string]string{{"kind": "cuda_error", "error": "device-side assert triggered", "time": "10:00:07.000"}},
		},
		{
			name: "docker json-file",
			lines: []string{
				`{"log":"RuntimeError: CUDA error: misaligned address\n","stream":"stderr","time":"2026-11-25T10:00:09.5Z"}`,
				`{"log":"[Consumer clientId=c, groupId=g] (Re-)","stream":"stdout","time":"2026-11-25T10:00:10Z"}`,
				`{"log":"joining group\n","stream":"stdout","time":"2026-11-25T10:00:10.1Z"}`,
			},
			want: []map[string]string{
				{"kind": "cuda_error", "time": "10:00:09.500"},
				{"kind": "rebalance", "phase": "start", "time": "10:00:10.100"},
			},
		},
		{
			name:  "nothing to see",
			lines: []string{"", "INFO step 10 loss 2.31", "{not json", "2026-11-25T10:00:07Z stdout X odd", `  File "x.py", line 1, in f`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkEvents(t, parseAll(tt.lines...), tt.want)
		})
	}
}

// checkEvents compares events with what is wanted of each: "kind", "rank",
// "gpu", "pid", "code", "time" (UTC, compared to as many digits as the
// wanted value has) and attributes by name.
func checkEvents(t *testing.T, got []traces.Event, want []map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d events, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		e := got[i]
		for k, v := range w {
			var have string
			switch k {
			case "kind":
				have = e.Kind
			case "rank":
				have = itoa(e.Rank)
			case "gpu":
				have = itoa(e.GPU)
			case "pid":
				have = itoa(e.PID)
			case "code":
				have = itoa(int(e.Code))
			case "time":
				have = time.Unix(0, e.TimeNs).UTC().Format("15:04:05.000000000")[:len(v)]
			default:
				have = e.Attrs[k]
			}
			if have != v {
				t.Errorf("event %d %s = %q, want %q (event %+v)", i, k, have, v, e)
			}
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestLeadingTime(t *testing.T) {
	tests := []struct {
		in   string
		want string // UTC, "" when none
	}{
		{"2026-11-25T10:00:00.123456789Z x", "2026-11-25T10:00:00.123456789Z"},
		{"2026-11-25 10:00:00,250+02:00 x", "2026-11-25T08:00:00.25Z"},
		{"[2026-11-25T10:00:00Z] x", "2026-11-25T10:00:00Z"},
		{"[INFO] 2026-11-25 10:00:07,438+00:00 api: [default] Detected 1 new nodes", "2026-11-25T10:00:07.438Z"},
		{"INFORMATION 2026-11-25 10:00:07 x", ""},
		{"%7|1795600800.5|FAC|n| m", "2026-11-25T10:00:00.5Z"},
		{"not a time", ""},
		{"2026-13-45 99:00:00 bad", ""},
	}
	for _, tt := range tests {
		got, ok := leadingTime(tt.in, ref, time.Local)
		if s := got.UTC().Format(time.RFC3339Nano); ok != (tt.want != "") || ok && s != tt.want {
			t.Errorf("leadingTime(%q) = %s, %v; want %q", tt.in, s, ok, tt.want)
		}
	}
}

func TestSourceOf(t *testing.T) {
	tests := []struct {
		path string
		want Source
	}{
		{"/var/log/pods/ml_infer-7f9c_0b1e2d/consumer/0.log", Source{"ml", "infer-7f9c", "consumer"}},
		{"/var/log/containers/infer-7f9c_ml_consumer-4f2a9b.log", Source{"ml", "infer-7f9c", "consumer"}},
		{"/srv/app/app.log", Source{}},
	}
	for _, tt := range tests {
		if got := SourceOf(tt.path); got != tt.want {
			t.Errorf("SourceOf(%q) = %+v, want %+v", tt.path, got, tt.want)
		}
	}
}

func TestLongContainerLineIsBounded(t *testing.T) {
	p := NewParser(32)
	var out []traces.Event
	for range 100 {
		out = p.Feed([]byte("2026-11-25T10:00:07Z stderr P RuntimeError: CUDA error: xxxxxxxxxxxxxxxx"), ref, out)
	}
	out = p.Feed([]byte("2026-11-25T10:00:07Z stderr F end"), ref, out)
	if len(out) != 1 || len(out[0].Message) > 32 {
		t.Fatalf("want one event of at most 32 bytes, got %+v", out)
	}
}

// FuzzParser: any bytes, one line or many, never panic, and every event is
// well formed.
func FuzzParser(f *testing.F) {
	for _, s := range []string{
		"[Consumer clientId=a, groupId=b] Member x with epoch 1 transitioned from JOINING to RECONCILING.",
		`%7|1.5|CGRPJOINSTATE|n| [thrd:main]: Group "g" changed join state steady -> wait-join`,
		"Traceback (most recent call last):\n  File \"a\", line 1, in f\nE: x",
		"2026-11-25T10:00:07Z stderr P a\n2026-11-25T10:00:07Z stderr F b",
		`{"log":"x","stream":"stdout","time":"bad"}`,
		"[rank9999999999]: x", "I1125 10:00:00.1 x", "[a] Detected  new nodes; will restart worker group",
		"Watchdog caught collective operation timeout: Timeout(ms)=",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p := NewParser(256)
		var out []traces.Event
		for _, l := range strings.Split(s, "\n") {
			out = p.Feed([]byte(l), ref, out)
		}
		for _, e := range out {
			if e.Kind == "" || e.Attrs == nil || len(e.Message) > maxMessage {
				t.Fatalf("malformed event %+v", e)
			}
		}
	})
}

func BenchmarkParser(b *testing.B) {
	for _, bc := range []struct{ name, line string }{
		{"cri-plain", "2026-11-25T10:00:07.000000001Z stdout F INFO step 10 loss 2.31 lr 0.0001 tokens/s 12345"},
		{"java-rebalance", "[2026-11-25 10:00:05,000] INFO [Consumer clientId=consumer-infer-1, groupId=infer] Adding newly assigned partitions: requests-0"},
		{"docker-json", `{"log":"GET /v1/infer 200 12ms\n","stream":"stdout","time":"2026-11-25T10:00:09.5Z"}`},
		{"plain", "plain application log line without anything of interest in it, but of typical length"},
		{"journal-plain", "2026-11-25T10:00:05.123456+0000 gpu-node-2 python3[6161]: [rank6]: INFO step 10 loss 2.31 lr 0.0001 tokens/s 12345"},
		{"journal-xid", "2026-11-25T10:01:00.000200+0000 gpu-node-1 kernel: NVRM: Xid (PCI:0000:18:00): 79, pid=3131, name=python3, GPU has fallen off the bus."},
		{"glog-elastic", "I1125 10:20:31.002000 140 torch/distributed/elastic/agent/server/api.py:685] [default] Starting worker group"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			p := NewParser(0)
			line := []byte(bc.line)
			b.SetBytes(int64(len(line)))
			b.ReportAllocs()
			var out []traces.Event
			for b.Loop() {
				out = p.Feed(line, ref, out[:0])
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lines/s")
		})
	}
}
