package traces

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"strconv"
)

// NCCLMatcher gives collectives whose communicator was created before the
// agent attached (no init seen, no profiler plugin: CommID 0) the CommID
// and Seq that the other ranks' calls of the same collective carry, so that
// arrival skew can be measured across ranks without the ncclUniqueId.
//
// Each (host, pid, ncclComm_t handle) is one stream of calls in Seq order.
// Every rank of a communicator issues the same collectives in the same
// order, so two streams of one communicator agree on the (op, count,
// datatype) of every call once shifted by the right offset. Training loops
// repeat, so several offsets agree (one per iteration); of those, the one
// whose calls arrive closest in time is taken. Closeness is judged at the
// calls that follow a quiet spell (a gap over 8 times the stream's median
// gap: the forward pass, the optimizer step), where every rank leaves the
// same synchronization point together; a straggler's lateness builds up
// within an iteration and may come near half of it by its end. Streams
// without quiet spells are judged on every call.
// Streams are grouped greedily, the longest first, into communicators of at
// most one stream per rank; a stream may also join a communicator whose
// identity is known on other ranks (their CommID and Seq are then adopted).
//
// Limits: communicators of identical shape that run concurrently (the
// tensor-parallel groups of one job, say) cannot be told apart this way and
// are matched as one; streams with fewer than minMatchCalls collectives in
// the window, or whose calls agree with no other rank's, stay unmatched.
//
// Use: Add every row (in any order), Match once, then Apply to each row.
type NCCLMatcher struct {
	streams map[ncclStreamKey]*ncclStream
	anchors map[uint64]*ncclGroup // known CommID -> its collectives
	groups  []*ncclGroup
	matched bool
}

// NCCLMatchSummary says what Match did.
type NCCLMatchSummary struct {
	// Streams is how many (process, communicator handle) streams had no
	// known identity; Matched how many of them were aligned with other
	// ranks' into Communicators communicators.
	Streams, Matched, Communicators int
}

// Note is the sentence a manifest or finding carries about the matching;
// empty when no stream needed it.
func (s NCCLMatchSummary) Note() string {
	if s.Streams == 0 {
		return ""
	}
	return fmt.Sprintf("NCCL: %d communicator stream(s) (process x ncclComm_t) were created before the agent attached, without "+
		"the profiler plugin: %d of them were matched across ranks into %d communicator(s) by the order of op, count and "+
		"datatype of their collectives and by arrival time, not by ncclUniqueId (matched = %q; communicators of identical "+
		"shape running at once, such as tensor-parallel groups, count as one)", s.Streams, s.Matched, s.Communicators, MatchPattern)
}

// minMatchCalls is the fewest collectives a stream needs, and two streams
// must agree on, to be matched.
const minMatchCalls = 4

// maxVerify bounds the calls compared per candidate offset; they are spread
// over the whole overlap.
const maxVerify = 1024

type ncclStreamKey struct {
	host   string
	pid    int32
	handle uint64
}

type ncclCall struct {
	seq   int64
	sig   uint64 // op, count and datatype
	t     int64
	quiet bool // follows a quiet spell in its stream
}

// quietFactor marks a quiet spell: a gap over this many times the
// stream's median gap.
const quietFactor = 8

type ncclStream struct {
	key   ncclStreamKey
	rank  int32 // JobRank, -1 when unknown
	calls []ncclCall
	group *ncclGroup
	shift int64 // added to Seq to reach the group's numbering
}

// ncclGroup is one communicator: known (an anchor, numbered by its real
// Seq) or made of pattern-matched streams (numbered by its first member).
type ncclGroup struct {
	id      uint64
	known   bool
	calls   []ncclCall // in Seq order: the first member's, or the anchor's
	ranks   map[int32]bool
	members []*ncclStream
	bySig   map[uint64][]int // sig -> indexes into calls, by time
	seen    map[int64]bool   // an anchor's seqs: one call each, whatever the ranks
}

// Add records one row. host names the row's host: pids repeat across
// hosts. Rows other than collectives are ignored.
func (m *NCCLMatcher) Add(host string, e *NCCLEvent) {
	if !e.IsCollective() || e.Seq < 0 {
		return
	}
	if m.streams == nil {
		m.streams, m.anchors = map[ncclStreamKey]*ncclStream{}, map[uint64]*ncclGroup{}
	}
	c := ncclCall{seq: e.Seq, sig: callSig(e), t: e.TimeNs}
	if e.CommID != 0 && e.Matched != MatchPattern {
		g := m.anchors[e.CommID]
		if g == nil {
			g = &ncclGroup{id: e.CommID, known: true, ranks: map[int32]bool{}, seen: map[int64]bool{}}
			m.anchors[e.CommID] = g
		}
		if !g.seen[e.Seq] {
			g.seen[e.Seq] = true
			g.calls = append(g.calls, c)
		}
		if r := e.JobRank(); r >= 0 {
			g.ranks[r] = true
		}
		return
	}
	if e.CommHandle == 0 {
		return
	}
	k := ncclStreamKey{host, e.PID, e.CommHandle}
	s := m.streams[k]
	if s == nil {
		s = &ncclStream{key: k, rank: e.JobRank()}
		m.streams[k] = s
	}
	s.calls = append(s.calls, c)
}

func callSig(e *NCCLEvent) uint64 {
	h := fnv.New64a()
	h.Write([]byte(e.Op))
	h.Write([]byte{0})
	h.Write([]byte(e.Datatype))
	h.Write([]byte{0})
	h.Write(strconv.AppendInt(nil, e.Count, 10))
	return h.Sum64()
}

// Match aligns the streams added so far and reports what it did.
func (m *NCCLMatcher) Match() NCCLMatchSummary {
	m.matched = true
	var sum NCCLMatchSummary
	if len(m.streams) == 0 {
		return sum
	}
	for _, g := range m.anchors {
		g.calls, g.seen = sortCalls(g.calls), nil
		m.groups = append(m.groups, g)
	}
	slices.SortFunc(m.groups, func(a, b *ncclGroup) int { return cmp.Compare(a.id, b.id) })
	streams := make([]*ncclStream, 0, len(m.streams))
	for _, s := range m.streams {
		s.calls = sortCalls(s.calls)
		streams = append(streams, s)
	}
	slices.SortFunc(streams, func(a, b *ncclStream) int {
		return cmp.Or(cmp.Compare(len(b.calls), len(a.calls)), cmp.Compare(a.key.host, b.key.host),
			cmp.Compare(a.key.pid, b.key.pid), cmp.Compare(a.key.handle, b.key.handle))
	})
	sum.Streams = len(streams)
	for _, s := range streams {
		if len(s.calls) < minMatchCalls {
			continue
		}
		var best *ncclGroup
		var bestShift, bestScore int64
		for _, g := range m.groups {
			if s.rank >= 0 && g.ranks[s.rank] {
				continue
			}
			if shift, score, ok := align(g, s); ok && (best == nil || score < bestScore) {
				best, bestShift, bestScore = g, shift, score
			}
		}
		if best == nil {
			best = &ncclGroup{calls: s.calls, ranks: map[int32]bool{}}
			m.groups = append(m.groups, best)
		}
		s.group, s.shift = best, bestShift
		best.members = append(best.members, s)
		if s.rank >= 0 {
			best.ranks[s.rank] = true
		}
	}
	for _, g := range m.groups {
		if g.known {
			if len(g.members) > 0 {
				sum.Matched += len(g.members)
				sum.Communicators++
			}
			continue
		}
		if len(g.members) < 2 {
			for _, s := range g.members {
				s.group = nil
			}
			continue
		}
		// Number from 0 at the earliest call any member was seen making,
		// and name the communicator by its members, so that the same
		// capture gets the same ids whenever it is analyzed.
		base := int64(0)
		h := fnv.New64a()
		for j, s := range g.members {
			if first := s.calls[0].seq + s.shift; j == 0 || first < base {
				base = first
			}
		}
		keys := make([]string, 0, len(g.members))
		for _, s := range g.members {
			s.shift -= base
			keys = append(keys, fmt.Sprintf("%s/%d/%x", s.key.host, s.key.pid, s.key.handle))
		}
		sort.Strings(keys)
		for _, k := range keys {
			h.Write([]byte(k))
			h.Write([]byte{0})
		}
		g.id = h.Sum64() | 1
		sum.Matched += len(g.members)
		sum.Communicators++
	}
	return sum
}

// sortCalls orders calls by seq, keeps one call per seq and marks the
// calls that follow a quiet spell.
func sortCalls(calls []ncclCall) []ncclCall {
	slices.SortStableFunc(calls, func(a, b ncclCall) int { return cmp.Compare(a.seq, b.seq) })
	calls = slices.CompactFunc(calls, func(a, b ncclCall) bool { return a.seq == b.seq })
	if len(calls) < 3 {
		return calls
	}
	gaps := make([]int64, len(calls)-1)
	for i := range gaps {
		gaps[i] = calls[i+1].t - calls[i].t
	}
	sorted := slices.Clone(gaps)
	slices.Sort(sorted)
	median := max(sorted[len(sorted)/2], 1)
	for i, g := range gaps {
		calls[i+1].quiet = g > quietFactor*median
	}
	return calls
}

// align finds the shift that maps s's seqs onto g's numbering: candidate
// shifts come from the calls of g with the same signature nearest in time
// to s's first calls and to its first calls within g's time; a candidate
// holds when every compared call agrees and at least minMatchCalls
// overlap; of those that hold, the one with the smallest median arrival
// difference wins (its score).
func align(g *ncclGroup, s *ncclStream) (shift, score int64, ok bool) {
	if g.bySig == nil {
		g.bySig = map[uint64][]int{}
		for i, c := range g.calls {
			g.bySig[c.sig] = append(g.bySig[c.sig], i)
		}
		for _, idx := range g.bySig {
			slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(g.calls[a].t, g.calls[b].t) })
		}
	}
	// From s's first calls, and from its first calls within g's time: a
	// stream that starts before g's (a straggler still in the iteration
	// the others had finished when the window opened) has no partner in g
	// for its first calls.
	within := max(0, slices.IndexFunc(s.calls, func(c ncclCall) bool { return c.t >= g.calls[0].t }))
	var cands []int64
	for _, from := range []int{0, within} {
		for _, c := range s.calls[from:min(from+4, len(s.calls))] {
			idx := g.bySig[c.sig]
			at, _ := slices.BinarySearchFunc(idx, c.t, func(i int, t int64) int { return cmp.Compare(g.calls[i].t, t) })
			for _, j := range []int{at - 2, at - 1, at, at + 1} {
				if j >= 0 && j < len(idx) {
					if d := g.calls[idx[j]].seq - c.seq; !slices.Contains(cands, d) {
						cands = append(cands, d)
					}
				}
			}
		}
	}
	for _, d := range cands {
		sc, good := verify(g.calls, s.calls, d)
		if good && (!ok || sc < score) {
			shift, score, ok = d, sc, true
		}
	}
	return shift, score, ok
}

// verify compares s's calls shifted by d with g's: it fails on any
// disagreement or too small an overlap, and scores by the median absolute
// arrival difference of the calls after a quiet spell (of all calls when
// there are fewer than two such).
func verify(g, s []ncclCall, d int64) (int64, bool) {
	lo, _ := slices.BinarySearchFunc(s, g[0].seq-d, func(c ncclCall, seq int64) int { return cmp.Compare(c.seq, seq) })
	hi, _ := slices.BinarySearchFunc(s, g[len(g)-1].seq-d+1, func(c ncclCall, seq int64) int { return cmp.Compare(c.seq, seq) })
	if hi-lo < minMatchCalls {
		return 0, false
	}
	step := max(1, (hi-lo)/maxVerify)
	var diffs, quiet []int64
	for i := lo; i < hi; i++ {
		c := s[i]
		if (i-lo)%step != 0 && !c.quiet {
			continue
		}
		j, found := slices.BinarySearchFunc(g, c.seq+d, func(x ncclCall, seq int64) int { return cmp.Compare(x.seq, seq) })
		if !found {
			continue // lost or outside the window on one side
		}
		if g[j].sig != c.sig {
			return 0, false
		}
		dt := g[j].t - c.t
		dt = max(dt, -dt)
		diffs = append(diffs, dt)
		if c.quiet || g[j].quiet {
			quiet = append(quiet, dt)
		}
	}
	if len(diffs) < min(minMatchCalls, (hi-lo)/step) {
		return 0, false
	}
	if len(quiet) >= 2 {
		diffs = quiet
	}
	slices.Sort(diffs)
	return diffs[len(diffs)/2], true
}

// Apply rewrites a row of a matched stream: CommID and Seq take the
// communicator's, Matched becomes MatchPattern and an unknown NRanks the
// number of ranks matched. Other rows are left as they are. Call it with
// the host given to Add, after Match.
func (m *NCCLMatcher) Apply(host string, e *NCCLEvent) {
	if !m.matched || len(m.streams) == 0 || !e.IsCollective() || e.Seq < 0 {
		return
	}
	if e.CommID != 0 && e.Matched != MatchPattern {
		return
	}
	s := m.streams[ncclStreamKey{host, e.PID, e.CommHandle}]
	if s == nil || s.group == nil {
		return
	}
	g := s.group
	e.CommID, e.Seq, e.Matched = g.id, e.Seq+s.shift, MatchPattern
	if e.NRanks <= 0 {
		e.NRanks = int32(max(len(g.ranks), len(g.members)))
	}
}
