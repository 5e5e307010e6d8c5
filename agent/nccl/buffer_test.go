package nccl

import (
	"testing"

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
			r := newRing(tt.cap)
			for _, ts := range tt.times {
				r.add(traces.NCCLEvent{TimeNs: ts})
			}
			got := r.between(tt.from, tt.to)
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
