package analyzers

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/loupe-dev/loupe/traces"
)

// Thresholds of NCCLStraggler.
const (
	stragglerMinCollectives = 5   // complete collectives a rank must join to be judged
	stragglerLastShare      = 0.2 // share of its collectives a rank must arrive last at (and 3/nranks)
	stragglerWaitWarn       = 0.02
	stragglerWaitCrit       = 0.10
)

// NCCLStraggler finds ranks that arrive last at collectives.
var NCCLStraggler = &Analyzer{
	Name:    "nccl-straggler",
	Version: "2",
	Doc: `NCCL stragglers: ranks that arrive last at collectives, and what their lateness costs

Every rank calls a collective with the same (comm_id, seq); its arrival on
each rank is when its kernel started on that rank's GPU (gpu_start_ns, from
Loupe's NCCL profiler plugin) when every rank of the collective has one, else
when the call entered NCCL on the host (time_ns, enqueue time). Communicators
created before the agent attached (comm_id 0) are first matched across ranks
and hosts by the order of op, count and datatype of their collectives
(traces.NCCLMatcher). Ranks are named by their global rank in the job. For
every collective that all ranks of its communicator reached inside the
window (in a partial capture, all ranks present), the skew is last minus
first arrival, and every rank waits last - own arrival for the last one:
that waiting is charged to the rank that came last. Within each
communicator, a rank is a straggler when it arrives last at >= 20% (and >=
3/nranks; in communicators of 2 or 3 ranks, >= (1+1/nranks)/2) of at least
5 collectives; a collective all ranks reached at once has no last arrival.
Each communicator with stragglers is
one finding (data-parallel and tensor-parallel groups are judged apart),
whose title says which times it used. Severity is the waiting it causes as
a share of the window's GPU time: >= 2% warning, >= 10% critical, else info.
Host clocks must be synchronised (NTP or PTP); skew below clock error is
noise.

Memory: one small record per collective and per rank; communicators matched
by pattern also keep one entry per call of theirs while being matched.

Impact: the GPU-seconds the other ranks spent waiting for the straggler.`,
	Requires: []string{traces.PartNCCLEvents},
	Run:      runNCCLStraggler,
}

// arrivals are one collective's arrivals by one clock (host or GPU).
type arrivals struct {
	n, lastRank int32
	first, last int64 // first is the first seen, not the earliest
	earliest    int64
	sumDelta    int64 // sum of arrival - first, so sums stay small
}

func (a *arrivals) add(rank int32, t int64) {
	if a.n == 0 {
		*a = arrivals{n: 1, lastRank: rank, first: t, last: t, earliest: t}
		return
	}
	a.n++
	a.sumDelta += t - a.first
	if t > a.last || t == a.last && rank < a.lastRank {
		a.last, a.lastRank = t, rank
	}
	a.earliest = min(a.earliest, t)
}

// waitNs is what the others spent waiting for the last arrival.
func (a *arrivals) waitNs() float64 {
	return float64(a.n)*float64(a.last-a.first) - float64(a.sumDelta)
}

func runNCCLStraggler(pass *Pass) error {
	type collKey struct {
		comm uint64
		seq  int64
	}
	type coll struct {
		nranks    int32
		host, gpu arrivals
		pattern   bool
	}
	colls := map[collKey]*coll{}
	hostOf := map[int32]*Host{}
	members := map[uint64]map[int32]bool{} // communicator -> its ranks
	add := func(h *Host, e *traces.NCCLEvent) {
		r := e.JobRank()
		if e.CommID == 0 || e.Seq < 0 || r < 0 {
			return
		}
		hostOf[r] = h
		m := members[e.CommID]
		if m == nil {
			m = map[int32]bool{}
			members[e.CommID] = m
		}
		m[r] = true
		k := collKey{e.CommID, e.Seq}
		c := colls[k]
		if c == nil {
			c = &coll{}
			colls[k] = c
		}
		c.nranks = max(c.nranks, e.NRanks)
		c.pattern = c.pattern || e.Matched == traces.MatchPattern
		c.host.add(r, e.TimeNs)
		if e.GPUStartNs > 0 {
			c.gpu.add(r, e.GPUStartNs)
		}
	}
	// Rows of known communicators count at once; the others once matched,
	// in a second read that only captures with such rows need.
	var matcher traces.NCCLMatcher
	unknown := false
	known := func(e *traces.NCCLEvent) bool { return e.CommID != 0 && e.Matched != traces.MatchPattern }
	err := EachNCCLEvent(pass, func(h *Host, e *traces.NCCLEvent) error {
		if !e.IsCollective() {
			return nil
		}
		matcher.Add(h.Manifest.Host, e)
		if known(e) {
			add(h, e)
		} else {
			unknown = true
		}
		return nil
	})
	if err != nil {
		return err
	}
	if unknown {
		matcher.Match()
		err = EachNCCLEvent(pass, func(h *Host, e *traces.NCCLEvent) error {
			if !e.IsCollective() || known(e) {
				return nil
			}
			matcher.Apply(h.Manifest.Host, e)
			add(h, e)
			return nil
		})
		if err != nil {
			return err
		}
	}

	// A collective counts when every rank of its communicator reached it;
	// in a partial capture, every rank present (the most any collective of
	// the communicator saw). Others were cut off by the window's edges.
	// The communicator's size is NCCL's when known (not for splits and
	// matched ones: then the ranks seen).
	present := map[uint64]int32{}
	nranks := map[uint64]int32{}
	for k, c := range colls {
		present[k.comm] = max(present[k.comm], c.host.n)
		nranks[k.comm] = max(nranks[k.comm], c.nranks)
	}
	for comm, n := range nranks {
		if n <= 0 {
			nranks[comm] = int32(len(members[comm]))
		}
	}
	type rankStat struct {
		joined, last int
		waitNs       float64 // waiting this rank caused others
	}
	type commStat struct {
		ranks                 map[int32]*rankStat
		skews                 []float64
		complete, gpu, byPatt int
	}
	comms := map[uint64]*commStat{}
	for k, c := range colls {
		n := nranks[k.comm]
		if c.host.n < 2 || c.host.n != n && !(pass.Input.Partial && c.host.n == present[k.comm]) {
			continue
		}
		cs := comms[k.comm]
		if cs == nil {
			cs = &commStat{ranks: map[int32]*rankStat{}}
			comms[k.comm] = cs
		}
		a := &c.host
		if c.gpu.n == c.host.n {
			a = &c.gpu
			cs.gpu++
		}
		if c.pattern {
			cs.byPatt++
		}
		cs.complete++
		cs.skews = append(cs.skews, float64(a.last-a.earliest)/1e6)
		if a.last == a.earliest {
			continue // all at once: nobody waited, nobody came last
		}
		s := cs.ranks[a.lastRank]
		if s == nil {
			s = &rankStat{}
			cs.ranks[a.lastRank] = s
		}
		s.last++
		s.waitNs += a.waitNs()
	}
	window := windowGPUSeconds(pass.Input)
	for _, comm := range slices.Sorted(maps.Keys(comms)) {
		cs := comms[comm]
		ranks := slices.Sorted(maps.Keys(members[comm]))
		for _, r := range ranks {
			if cs.ranks[r] == nil {
				cs.ranks[r] = &rankStat{}
			}
			cs.ranks[r].joined = cs.complete
		}
		slices.Sort(cs.skews)
		times := "host enqueue times"
		if cs.gpu == cs.complete {
			times = "GPU kernel start times"
		} else if cs.gpu > 0 {
			times = "GPU kernel start times where every rank had one, else host enqueue times"
		}
		f := finding{
			Title: fmt.Sprintf("NCCL straggler ranks delay collectives of the communicator of ranks %s (%s)", rankList(ranks), times),
			Evidence: []traces.Metric{
				metric("collectives_complete", float64(cs.complete), unitCount),
				metric("arrival_skew_p50", quantile(cs.skews, 0.5), unitMs),
				metric("arrival_skew_p99", quantile(cs.skews, 0.99), unitMs),
				metric("communicator_ranks", float64(len(ranks)), unitCount),
				metric("timed_on_gpu", float64(cs.gpu)/float64(cs.complete), unitRatio),
				metric("matched_by_pattern", float64(cs.byPatt)/float64(cs.complete), unitRatio),
			},
			Recommendation: "Find out what the late ranks do before each collective: compare their CPU profile and " +
				"step time with a healthy rank's. Typical causes: a slower or throttled GPU (see the throttle and " +
				"hw-faults findings for that host), a slow input pipeline on that rank (input-bound), uneven work " +
				"per rank (sequence-length or expert imbalance), or other processes contending for that host's CPUs.",
		}
		// Three times chance; in communicators of two or three ranks,
		// halfway from chance to always.
		chance := 1 / float64(nranks[comm])
		minShare := max(stragglerLastShare, 3*chance)
		if minShare > 0.9 {
			minShare = (1 + chance) / 2
		}
		for _, r := range ranks {
			s := cs.ranks[r]
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
	}
	return nil
}

// rankList renders sorted ranks compactly: 0-3,8,10-11.
func rankList(ranks []int32) string {
	var b strings.Builder
	for i := 0; i < len(ranks); {
		j := i
		for j+1 < len(ranks) && ranks[j+1] == ranks[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d", ranks[i])
		if j > i {
			fmt.Fprintf(&b, "-%d", ranks[j])
		}
		i = j + 1
	}
	return b.String()
}

// quantile of sorted values, by nearest rank.
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}
