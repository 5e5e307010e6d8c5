//go:build amd64

package nccl

import (
	"encoding/binary"
	"os"
	"testing"
)

// The hand-written decoder must follow the C layout that bpf2go saw.
func TestEventLayout(t *testing.T) {
	if got := binary.Size(ncclEvent{}); got != EventSize {
		t.Fatalf("struct event is %d bytes in the object, EventSize is %d", got, EventSize)
	}
	want := ncclEvent{TimeNs: 1, DurationNs: 2, Comm: 3, CommId: 4, Count: 5, Seq: -6, Pid: 7, Tid: 8,
		Rank: 9, Nranks: 10, Peer: -11, Datatype: 12, Redop: 13, Result: 14, Op: uint32(OpReduce)}
	b, err := binary.Append(nil, binary.LittleEndian, &want)
	if err != nil {
		t.Fatal(err)
	}
	var ev Event
	if err := ParseEvent(b, &ev); err != nil {
		t.Fatal(err)
	}
	got := Event{1, 2, 3, 4, 5, -6, 7, 8, 9, 10, -11, 12, 13, 14, OpReduce}
	if ev != got {
		t.Fatalf("decoded %+v, want %+v", ev, got)
	}
	if err := ParseEvent(b[:EventSize-1], &ev); err == nil {
		t.Fatal("short record accepted")
	}
}

func TestOpsMatchObject(t *testing.T) {
	gen := map[Op]ncclNcclOp{
		OpCommInitRank: ncclNcclOpOP_COMM_INIT_RANK, OpCommInitRankConfig: ncclNcclOpOP_COMM_INIT_RANK_CONFIG,
		OpCommInitAll: ncclNcclOpOP_COMM_INIT_ALL, OpAllReduce: ncclNcclOpOP_ALL_REDUCE,
		OpAllGather: ncclNcclOpOP_ALL_GATHER, OpReduceScatter: ncclNcclOpOP_REDUCE_SCATTER,
		OpBroadcast: ncclNcclOpOP_BROADCAST, OpReduce: ncclNcclOpOP_REDUCE, OpAllToAll: ncclNcclOpOP_ALL_TO_ALL,
		OpSend: ncclNcclOpOP_SEND, OpRecv: ncclNcclOpOP_RECV, OpGroupStart: ncclNcclOpOP_GROUP_START,
		OpGroupEnd: ncclNcclOpOP_GROUP_END, OpCommInitRankScalable: ncclNcclOpOP_COMM_INIT_RANK_SCALABLE,
	}
	if len(gen) != len(Ops()) {
		t.Fatalf("%d ops in Go, %d in the object", len(Ops()), len(gen))
	}
	for o, g := range gen {
		if uint32(o) != uint32(g) {
			t.Errorf("%v = %d in Go, %d in the object", o, o, g)
		}
	}
}

// Load verifies every program in the kernel.
func TestLoad(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("loading eBPF needs root (or CAP_BPF+CAP_PERFMON); run the tests as root")
		}
		t.Skip("loading eBPF needs root")
	}
	o, err := Load(0)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	ops := map[Op]bool{}
	for _, p := range o.Probes {
		if p.Program == nil || (p.Op != 0) != (p.Return != nil) {
			t.Errorf("%s: entry %v, return %v", p.Symbol, p.Program, p.Return)
		}
		ops[p.Op] = true
	}
	for _, op := range Ops() {
		if !ops[op] {
			t.Errorf("no probe reports %v", op)
		}
	}
	if n, err := o.Lost(); err != nil || n != 0 {
		t.Fatalf("Lost() = %d, %v", n, err)
	}
	if _, err := Load(3000); err == nil {
		t.Fatal("ring size 3000 accepted")
	}
}
