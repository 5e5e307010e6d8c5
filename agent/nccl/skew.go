package nccl

import (
	"sort"

	"github.com/loupe-dev/loupe/traces"
)

// RankSkew is how late one rank of one communicator reaches its collectives
// compared with the first rank to get there.
//
// Every rank of a communicator issues the same collectives in the same
// order, so the events with the same (CommID, Seq) are one collective seen
// from each rank. Its arrival skew is each rank's call time minus the
// earliest call time of the group. NCCL cannot finish a collective before
// its last rank arrives, so the others wait for it: the rank with the
// largest lag, consistently, is the straggler (slow data loading, a slow
// GPU, CPU contention on its host). Times are host enqueue times; across
// hosts they include the clocks' offset, so only lags well above the
// hosts' clock error (NTP: about a millisecond; PTP: microseconds) are
// meaningful.
type RankSkew struct {
	CommID uint64
	Rank   int32
	PID    int32
	// Collectives is how many complete groups (every rank seen) were counted.
	Collectives int
	MeanLagNs   int64
	MaxLagNs    int64
	// LastArrivals is how many of those collectives this rank reached last.
	LastArrivals int
}

// Skew computes the arrival lag of every rank of every communicator over
// the collectives in events whose ranks were all seen. Ranks are named by
// traces.NCCLEvent.JobRank (the global rank when known). Events of unknown
// communicators (CommID 0, no rank) are ignored; a communicator whose size
// is unknown (a split) counts the ranks seen on it. The result is ordered by
// CommID, then by mean lag, largest first: for each communicator the first
// entry is the rank the others wait for.
func Skew(events []traces.NCCLEvent) []RankSkew {
	type groupKey struct {
		comm uint64
		seq  int64
	}
	type arrival struct {
		rank int32
		pid  int32
		t    int64
	}
	groups := map[groupKey][]arrival{}
	nranks := map[uint64]int32{}
	seen := map[uint64]map[int32]bool{}
	for _, ev := range events {
		rank := ev.JobRank()
		if ev.CommID == 0 || rank < 0 || ev.Seq < 0 || !ev.IsCollective() {
			continue
		}
		k := groupKey{ev.CommID, ev.Seq}
		dup := false
		for _, a := range groups[k] {
			dup = dup || a.rank == rank
		}
		if !dup {
			groups[k] = append(groups[k], arrival{rank, ev.PID, ev.TimeNs})
			nranks[ev.CommID] = max(nranks[ev.CommID], ev.NRanks)
			if seen[ev.CommID] == nil {
				seen[ev.CommID] = map[int32]bool{}
			}
			seen[ev.CommID][rank] = true
		}
	}
	for comm, n := range nranks {
		if n <= 0 {
			nranks[comm] = int32(len(seen[comm]))
		}
	}

	type rankKey struct {
		comm uint64
		rank int32
	}
	acc := map[rankKey]*RankSkew{}
	sum := map[rankKey]int64{}
	for k, as := range groups {
		if len(as) < 2 || int32(len(as)) != nranks[k.comm] {
			continue
		}
		first, last := as[0].t, 0
		for i, a := range as {
			first = min(first, a.t)
			if a.t > as[last].t {
				last = i
			}
		}
		for i, a := range as {
			rk := rankKey{k.comm, a.rank}
			s := acc[rk]
			if s == nil {
				s = &RankSkew{CommID: k.comm, Rank: a.rank, PID: a.pid}
				acc[rk] = s
			}
			lag := a.t - first
			s.Collectives++
			sum[rk] += lag
			s.MaxLagNs = max(s.MaxLagNs, lag)
			if i == last {
				s.LastArrivals++
			}
		}
	}
	out := make([]RankSkew, 0, len(acc))
	for rk, s := range acc {
		s.MeanLagNs = sum[rk] / int64(s.Collectives)
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.CommID != b.CommID {
			return a.CommID < b.CommID
		}
		if a.MeanLagNs != b.MeanLagNs {
			return a.MeanLagNs > b.MeanLagNs
		}
		return a.Rank < b.Rank
	})
	return out
}
