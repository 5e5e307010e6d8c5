package nccl

import (
	"slices"
	"sort"
	"strings"

	"github.com/loupe-dev/loupe/traces"
)

// minCycles is how many times a call sequence must repeat back to back
// before it is taken for a training iteration.
const minCycles = 3

// bigGapFactor marks a call as following a long quiet spell: its gap to the
// previous call exceeds this many times the stream's median gap.
const bigGapFactor = 8

// DetectIterations finds training iteration boundaries in NCCL calls alone,
// for jobs that neither post step markers nor run Kineto.
//
// A training loop issues the same NCCL calls in the same order every
// iteration, so each process's call stream is periodic once warm-up is over.
// For every process (PID):
//
//  1. The calls (all but communicator init) become tokens: op, communicator,
//     count, datatype and peer, plus a flag for a call that follows a long
//     quiet spell (more than 8x the median gap: the forward pass or the
//     optimizer step, where no collectives run). The flag tells apart
//     iterations made of one repeated call (data-parallel buckets of equal
//     size). If the flagged stream has no period the flag is dropped.
//  2. The smallest period p of the longest periodic prefix and suffix of the
//     token stream is found with the KMP prefix function (linear time); the
//     periodic part must hold at least three whole cycles.
//  3. The iteration starts at the position of the cycle with the largest
//     median gap before it: the host is quiet between the last collective
//     of one iteration and the first of the next.
//  4. The shortest prefix of the cycle (from that start) that occurs exactly
//     once per cycle marks every boundary, in the periodic part and outside
//     it (an iteration with an extra call, such as a periodic logging
//     all-reduce, still starts the same way); when no prefix of up to 32
//     calls does, the periodic part alone is cut every p calls. Matching ignores the quiet
//     flag except on the first call, so a stray pause inside an iteration
//     does not hide its start.
//
// When a process's calls on several communicators interleave differently
// from one iteration to the next, the same search runs on the calls of its
// busiest communicator alone.
//
// A step runs from one boundary's call to the next one's, so the last
// iteration is reported once the next one starts. Iteration numbers count
// from 0 within events; they are not the job's own step numbers. Rank is
// the process's rank in its busiest communicator (-1 when unknown). A
// process whose calls never repeat three times yields no steps.
func DetectIterations(events []traces.NCCLEvent) []traces.Step {
	isInit := func(op string) bool {
		return strings.HasPrefix(op, "CommInit")
	}
	n := map[int32]int{}
	for _, ev := range events {
		if !isInit(ev.Op) {
			n[ev.PID]++
		}
	}
	byPID := make(map[int32][]traces.NCCLEvent, len(n))
	for pid, c := range n {
		byPID[pid] = make([]traces.NCCLEvent, 0, c)
	}
	for _, ev := range events {
		if !isInit(ev.Op) {
			byPID[ev.PID] = append(byPID[ev.PID], ev)
		}
	}
	pids := make([]int32, 0, len(byPID))
	for pid := range byPID {
		pids = append(pids, pid)
	}
	slices.Sort(pids)

	var out []traces.Step
	for _, pid := range pids {
		evs := byPID[pid]
		byTime := func(a, b traces.NCCLEvent) int { return cmpInt64(a.TimeNs, b.TimeNs) }
		if !slices.IsSortedFunc(evs, byTime) {
			slices.SortStableFunc(evs, byTime)
		}
		starts := boundaries(evs)
		id, rank, ok := busiestComm(evs)
		if len(starts) < 2 && ok {
			// Calls on several communicators (from several threads or
			// streams) may interleave differently from one iteration to
			// the next; the busiest communicator alone may still repeat.
			var own []traces.NCCLEvent
			for _, ev := range evs {
				if commOf(&ev) == id && ev.Rank == rank {
					own = append(own, ev)
				}
			}
			evs, starts = own, boundaries(own)
		}
		for i := 0; i+1 < len(starts); i++ {
			out = append(out, traces.Step{
				Rank:      rank,
				PID:       pid,
				Iteration: int64(i),
				StartNs:   evs[starts[i]].TimeNs,
				EndNs:     evs[starts[i+1]].TimeNs,
				Source:    traces.StepSourceNCCL,
			})
		}
	}
	return out
}

// boundaries returns the indexes of the calls that start an iteration.
func boundaries(evs []traces.NCCLEvent) []int {
	if len(evs) < minCycles {
		return nil
	}
	gaps := make([]int64, len(evs))
	for i := 1; i < len(evs); i++ {
		gaps[i] = evs[i].TimeNs - evs[i-1].TimeNs
	}
	gaps[0] = slices.Max(gaps) + 1 // nothing before the first call: treat as quiet
	toks := tokens(evs, gaps)
	for _, useQuiet := range []bool{true, false} {
		keys := make([]int, len(toks))
		for i, tk := range toks {
			keys[i] = tk.id * 2
			if useQuiet && tk.quiet {
				keys[i]++
			}
		}
		from, to, p := periodicPart(keys)
		if p == 0 {
			continue
		}
		// The phase of the cycle after the longest median quiet spell.
		best, bestGap := 0, int64(-1)
		for phase := 0; phase < p; phase++ {
			var g []int64
			for i := from + phase; i < to; i += p {
				g = append(g, gaps[i])
			}
			if m := median(g); m > bestGap {
				best, bestGap = phase, m
			}
		}
		start := from + best
		cycles := (to - start) / p
		pattern := toks[start : start+p]
		if !useQuiet {
			pattern = slices.Clone(pattern)
			pattern[0].quiet = false
		}
		// The shortest prefix of the cycle found once per cycle.
		for m := 1; m <= min(p, maxPrefix); m++ {
			if n := len(occurrences(toks[from:to], pattern[:m])); n <= cycles+1 && n >= cycles {
				return occurrences(toks, pattern[:m])
			}
		}
		// No short prefix marks the start: cut the periodic part every p calls.
		var out []int
		for i := start; i < to; i += p {
			out = append(out, i)
		}
		return out
	}
	return nil
}

// maxPrefix bounds the search for a prefix that marks iteration starts, and
// so the cost of DetectIterations on long cycles of alike calls.
const maxPrefix = 32

// token is one call reduced to what repeats from one iteration to the next:
// id stands for op, communicator, count, datatype and peer; quiet marks a
// call after a long quiet spell.
type token struct {
	id    int
	quiet bool
}

func tokens(evs []traces.NCCLEvent, gaps []int64) []token {
	type call struct {
		op       string
		comm     uint64
		count    int64
		datatype string
		peer     int32
	}
	threshold := bigGapFactor * median(slices.Clone(gaps[1:]))
	ids := map[call]int{}
	out := make([]token, len(evs))
	for i, ev := range evs {
		k := call{ev.Op, commOf(&ev), ev.Count, ev.Datatype, ev.Peer}
		id, ok := ids[k]
		if !ok {
			id = len(ids)
			ids[k] = id
		}
		out[i] = token{id, gaps[i] > threshold}
	}
	return out
}

// matches reports whether s starts with the calls of pat. Only the first
// call's quiet flag is compared: a boundary must follow a quiet spell when
// the cycle's does, but a stray pause inside an iteration (preemption, a
// page fault) must not hide it.
func matches(s, pat []token) bool {
	if len(s) < len(pat) || (pat[0].quiet && !s[0].quiet) {
		return false
	}
	for i := range pat {
		if s[i].id != pat[i].id {
			return false
		}
	}
	return true
}

// periodicPart finds the longest prefix or suffix of s that repeats a cycle
// of length p at least minCycles times, and returns it as s[from:to] with p;
// p is 0 when there is none.
func periodicPart(s []int) (from, to, p int) {
	pre, preP := longestPeriodicPrefix(s)
	rev := slices.Clone(s)
	slices.Reverse(rev)
	suf, sufP := longestPeriodicPrefix(rev)
	switch {
	case pre == 0 && suf == 0:
		return 0, 0, 0
	case suf >= pre:
		return len(s) - suf, len(s), sufP
	default:
		return 0, pre, preP
	}
}

// longestPeriodicPrefix returns the length of the longest prefix of s made
// of at least minCycles repetitions of its smallest period, and that period.
// The smallest period of s[:k+1] is k+1-pi[k] (pi: KMP prefix function), and
// it does not decrease with k, so the last k that qualifies is the answer.
func longestPeriodicPrefix(s []int) (length, period int) {
	pi := make([]int, len(s))
	for i := 1; i < len(s); i++ {
		k := pi[i-1]
		for k > 0 && s[i] != s[k] {
			k = pi[k-1]
		}
		if s[i] == s[k] {
			k++
		}
		pi[i] = k
	}
	for k := range s {
		if p := k + 1 - pi[k]; k+1 >= minCycles*p {
			length, period = k+1, p
		}
	}
	return length, period
}

// occurrences returns the non-overlapping positions of pat in s, left to right.
func occurrences(s, pat []token) []int {
	var out []int
	for i := 0; i+len(pat) <= len(s); {
		if matches(s[i:], pat) {
			out = append(out, i)
			i += len(pat)
			continue
		}
		i++
	}
	return out
}

func median(v []int64) int64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	return v[len(v)/2]
}

// commOf names a call's communicator within its process: its id, or for
// one created before the agent attached (id 0), its handle.
func commOf(ev *traces.NCCLEvent) uint64 {
	if ev.CommID != 0 {
		return ev.CommID
	}
	return ev.CommHandle
}

// busiestComm is the communicator with the most calls, as (commOf, rank);
// ok is false when no call names a communicator.
func busiestComm(evs []traces.NCCLEvent) (id uint64, rank int32, ok bool) {
	type comm struct {
		id   uint64
		rank int32
	}
	n := map[comm]int{}
	for _, ev := range evs {
		if commOf(&ev) != 0 || ev.Rank >= 0 {
			n[comm{commOf(&ev), ev.Rank}]++
		}
	}
	keys := make([]comm, 0, len(n))
	for k := range n {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if n[keys[i]] != n[keys[j]] {
			return n[keys[i]] > n[keys[j]]
		}
		return keys[i].id < keys[j].id
	})
	if len(keys) == 0 {
		return 0, -1, false
	}
	return keys[0].id, keys[0].rank, true
}
