package nccl

import (
	"testing"
	"unsafe"

	bpfnccl "github.com/loupe-dev/loupe/bpf/nccl"

	"github.com/loupe-dev/loupe/traces"
)

func TestRing(t *testing.T) {
	tests := []struct {
		name     string
		cap      int
		times    []int64
		from, to int64
		want     []int64
	}{
		{"not full", 4, []int64{1, 2, 3}, 0, 10, []int64{1, 2, 3}},
		{"overwrites oldest", 3, []int64{1, 2, 3, 4, 5}, 0, 10, []int64{3, 4, 5}},
		{"window half open", 8, []int64{1, 2, 3, 4, 5}, 2, 4, []int64{2, 3}},
		{"sorted across wrap", 3, []int64{10, 30, 20, 50, 40}, 0, 100, []int64{20, 40, 50}},
		{"empty window", 3, []int64{1, 2}, 5, 9, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRing[record](tt.cap)
			for _, ts := range tt.times {
				r.add(record{timeNs: ts})
			}
			got := r.between(tt.from, tt.to, (*record).row, func(r *record) int64 { return r.timeNs })
			if len(got) != len(tt.want) {
				t.Fatalf("got %d events %v, want %v", len(got), got, tt.want)
			}
			for i := range got {
				if got[i].TimeNs != tt.want[i] {
					t.Fatalf("event %d at %d, want %v", i, got[i].TimeNs, tt.want)
				}
			}
		})
	}
}

func TestRecordSize(t *testing.T) {
	if n := unsafe.Sizeof(record{}); n != 80 {
		t.Fatalf("record is %d bytes; the buffer's memory budget assumes 80", n)
	}
}

// A record keeps everything a row needs.
func TestRecordRow(t *testing.T) {
	ev := bpfnccl.Event{TimeNs: 1000, DurationNs: 7, Comm: 0xabc, CommID: 42, Count: 2048, Seq: 9, PID: 10, TID: 11,
		Rank: 2, NRanks: 4, Peer: -1, Datatype: 7, RedOp: 0, Op: bpfnccl.OpReduceScatter, Source: bpfnccl.IDSplit}
	rec := newRecord(&ev, 5, procRank{6, 8})
	want := traces.NCCLEvent{TimeNs: 1005, DurationNs: 7, PID: 10, TID: 11, Rank: 2, NRanks: 4, CommID: 42,
		Op: "ReduceScatter", Seq: 9, Count: 2048, Datatype: "float32", Bytes: 2048 * 4 * 4, Peer: -1,
		GlobalRank: 6, WorldSize: 8, CommHandle: 0xabc, Matched: traces.MatchSplit, Source: traces.SourceUprobe}
	if got := rec.row(); got != want {
		t.Fatalf("row %+v, want %+v", got, want)
	}
	ev.CommID, ev.Source = 0, bpfnccl.IDUnknown
	if rec := newRecord(&ev, 5, procRank{6, 8}); rec.row().Matched != "" || rec.commID != 0 {
		t.Fatalf("late-attached communicator: %+v", rec)
	}
	ev.Datatype, ev.Op = 1<<20, 300
	rec = newRecord(&ev, 0, procRank{-1, -1})
	if got := rec.row(); got.Datatype != "type32767" || got.Bytes != 0 || got.Op != "Op(255)" {
		t.Fatalf("out-of-range values give %+v", got)
	}
}

func TestCallBytes(t *testing.T) {
	ev := []struct {
		op     string
		dt     int32
		count  uint64
		nranks int32
		want   int64
	}{
		{"AllReduce", 7, 1 << 20, 4, 4 << 20},
		{"AllReduce", 9, 10, 4, 20},
		{"AllGather", 6, 4096, 4, 4096 * 2 * 4},
		{"ReduceScatter", 7, 2048, 4, 2048 * 4 * 4},
		{"AllToAll", 2, 64, 8, 64 * 4 * 8},
		{"AllGather", 6, 4096, -1, 4096 * 2},
		{"Send", 1, 10, 4, 10},
		{"Reduce", 8, 300, 4, 2400},
		{"AllReduce", 12, 10, 4, 0}, // unknown datatype: no guess
	}
	for _, tt := range ev {
		op := opByName(t, tt.op)
		_, size := datatype(tt.dt)
		if got := callBytes(op, tt.count, size, tt.nranks); got != tt.want {
			t.Errorf("%s count %d type %d nranks %d: %d bytes, want %d", tt.op, tt.count, tt.dt, tt.nranks, got, tt.want)
		}
	}
}
