package analyzers

import (
	"maps"
	"slices"

	"github.com/loupe-dev/loupe/traces"
)

// Thresholds of NCCLStraggler.
const (
	stragglerMinCollectives = 5   // complete collectives a rank must join to be judged
	stragglerLastShare      = 0.2 // share of its collectives a rank must arrive last at (and 3/nranks)
	stragglerWaitWarn       = 0.02
	stragglerWaitCrit       = 0.10
)

// collectiveOps are the NCCL calls every rank of a communicator makes with
// the same sequence number; point-to-point and group calls are not matched.
var collectiveOps = map[string]bool{
	"AllReduce": true, "AllGather": true, "ReduceScatter": true,
	"Broadcast": true, "Reduce": true, "AllToAll": true,
}

// NCCLStraggler finds ranks that arrive last at collectives.
var NCCLStraggler = &Analyzer{
	Name:    "nccl-straggler",
	Version: "1",
	Doc: `NCCL stragglers: ranks that arrive last at collectives, and what their lateness costs

Every rank calls a collective with the same (comm_id, seq); the call's entry
time on each rank (nccl_events.parquet, all hosts) is its arrival. For every
collective that all nranks of its communicator reached inside the window (in
a partial capture, all ranks present), the skew is last minus first arrival,
and every rank waits last - own arrival for the last one: that waiting is
charged to the rank that came last. A rank is a
straggler when it arrives last at >= 20% (and >= 3/nranks) of at least 5
collectives. Severity is the waiting it causes as a share of the window's
GPU time: >= 2% warning, >= 10% critical, else info. Host clocks must be
synchronised (NTP or PTP); skew below clock error is noise.

Memory is one small record per collective and per rank, whatever the
number of events.

Impact: the GPU-seconds the other ranks spent waiting for the straggler.`,
	Requires: []string{traces.PartNCCLEvents},
	Run:      runNCCLStraggler,
}

func runNCCLStraggler(pass *Pass) error {
	type collKey struct {
		comm uint64
		seq  int64
	}
	type coll struct {
		n, nranks   int32
		lastRank    int32
		first, last int64 // arrivals; first is the first seen, not the earliest
		earliest    int64
		sumDelta    int64 // sum of arrival - first, so sums stay small
	}
	colls := map[collKey]*coll{}
	hostOf := map[int32]*Host{}
	members := map[uint64]map[int32]bool{} // communicator -> its ranks
	err := EachNCCLEvent(pass, func(h *Host, e *traces.NCCLEvent) error {
		if !collectiveOps[e.Op] {
			return nil
		}
		hostOf[e.Rank] = h
		m := members[e.CommID]
		if m == nil {
			m = map[int32]bool{}
			members[e.CommID] = m
		}
		m[e.Rank] = true
		k := collKey{e.CommID, e.Seq}
		c := colls[k]
		if c == nil {
			colls[k] = &coll{n: 1, nranks: e.NRanks, lastRank: e.Rank, first: e.TimeNs, last: e.TimeNs, earliest: e.TimeNs}
			return nil
		}
		c.n++
		c.sumDelta += e.TimeNs - c.first
		if e.TimeNs > c.last || e.TimeNs == c.last && e.Rank < c.lastRank {
			c.last, c.lastRank = e.TimeNs, e.Rank
		}
		c.earliest = min(c.earliest, e.TimeNs)
		return nil
	})
	if err != nil {
		return err
	}
	type rankStat struct {
		joined, last int
		waitNs       float64 // waiting this rank caused others
	}
	ranks := map[int32]*rankStat{}
	stat := func(r int32) *rankStat {
		s := ranks[r]
		if s == nil {
			s = &rankStat{}
			ranks[r] = s
		}
		return s
	}
	var skews []float64
	var nranks int32
	// A collective counts when every rank of its communicator reached it;
	// in a partial capture, every rank present (the most any collective of
	// the communicator saw). Others were cut off by the window's edges.
	present := map[uint64]int32{}
	for k, c := range colls {
		present[k.comm] = max(present[k.comm], c.n)
	}
	complete := map[uint64]int{} // communicator -> complete collectives
	for k, c := range colls {
		if c.n < 2 || c.n != c.nranks && !(pass.Input.Partial && c.n == present[k.comm]) {
			continue
		}
		complete[k.comm]++
		nranks = max(nranks, c.nranks)
		skews = append(skews, float64(c.last-c.earliest)/1e6)
		s := stat(c.lastRank)
		s.last++
		s.waitNs += float64(c.n)*float64(c.last-c.first) - float64(c.sumDelta)
	}
	if len(skews) == 0 {
		return nil
	}
	for comm, n := range complete {
		for r := range members[comm] {
			stat(r).joined += n
		}
	}
	slices.Sort(skews)
	window := windowGPUSeconds(pass.Input)
	f := finding{
		Title: "NCCL straggler ranks delay collectives",
		Evidence: []traces.Metric{
			metric("collectives_complete", float64(len(skews)), unitCount),
			metric("arrival_skew_p50", quantile(skews, 0.5), unitMs),
			metric("arrival_skew_p99", quantile(skews, 0.99), unitMs),
		},
		Recommendation: "Find out what the late ranks do before each collective: compare their CPU profile and " +
			"step time with a healthy rank's. Typical causes: a slower or throttled GPU (see the throttle and " +
			"hw-faults findings for that host), a slow input pipeline on that rank (input-bound), uneven work " +
			"per rank (sequence-length or expert imbalance), or other processes contending for that host's CPUs.",
	}
	minShare := max(stragglerLastShare, 3/float64(nranks))
	for _, r := range slices.Sorted(maps.Keys(ranks)) {
		s := ranks[r]
		if s.joined < stragglerMinCollectives || float64(s.last)/float64(s.joined) < minShare {
			continue
		}
		lost := s.waitNs / 1e9
		sev := gradeAbove(share(lost, window), stragglerWaitWarn, stragglerWaitCrit)
		if sev == "" {
			sev = traces.SeverityInfo
		}
		h := hostOf[r]
		f.Targets = append(f.Targets, target{
			Host: h, GPU: h.RankGPU(int(r)), Rank: int(r), Severity: sev, Lost: lost,
			Evidence: []traces.Metric{
				metric("arrived_last", float64(s.last), unitCount),
				metric("arrived_last_share", float64(s.last)/float64(s.joined), unitRatio),
				metric("others_waiting", lost, unitGPUSec),
			},
		})
	}
	f.report(pass)
	return nil
}

// quantile of sorted values, by nearest rank.
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}
