package nccl

import (
	"testing"

	"github.com/loupe-dev/loupe/traces"
)

func TestSkew(t *testing.T) {
	ev := func(comm uint64, seq int64, rank int32, tm int64) traces.NCCLEvent {
		return traces.NCCLEvent{CommID: comm, Seq: seq, Rank: rank, NRanks: 3, PID: 100 + rank, TimeNs: tm, Op: "AllReduce"}
	}
	events := []traces.NCCLEvent{
		// comm 7: rank 1 arrives 5 and 9 ns after the first.
		ev(7, 0, 0, 100), ev(7, 0, 1, 105), ev(7, 0, 2, 101),
		ev(7, 1, 0, 200), ev(7, 1, 1, 209), ev(7, 1, 2, 203),
		// incomplete group: ignored.
		ev(7, 2, 0, 300), ev(7, 2, 2, 399),
		// duplicate of rank 0 in seq 0: ignored.
		ev(7, 0, 0, 50),
		// comm 3: rank 2 last.
		ev(3, 0, 0, 10), ev(3, 0, 1, 10), ev(3, 0, 2, 30),
		// not collectives, or unknown comms: ignored.
		{CommID: 3, Seq: 1, Rank: 0, NRanks: 3, TimeNs: 1, Op: "Send"},
		{CommID: 0, Seq: 1, Rank: 0, NRanks: 3, TimeNs: 1, Op: "AllReduce"},
		{CommID: 3, Seq: 1, Rank: -1, NRanks: 3, TimeNs: 1, Op: "AllReduce"},
	}
	got := Skew(events)
	want := []RankSkew{
		{CommID: 3, Rank: 2, PID: 102, Collectives: 1, MeanLagNs: 20, MaxLagNs: 20, LastArrivals: 1},
		{CommID: 3, Rank: 0, PID: 100, Collectives: 1},
		{CommID: 3, Rank: 1, PID: 101, Collectives: 1},
		{CommID: 7, Rank: 1, PID: 101, Collectives: 2, MeanLagNs: 7, MaxLagNs: 9, LastArrivals: 2},
		{CommID: 7, Rank: 2, PID: 102, Collectives: 2, MeanLagNs: 2, MaxLagNs: 3},
		{CommID: 7, Rank: 0, PID: 100, Collectives: 2},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if got := Skew(nil); len(got) != 0 {
		t.Errorf("Skew(nil) = %v", got)
	}
}
