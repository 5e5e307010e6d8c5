package traces

import (
	"encoding/binary"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// loop is one iteration's collectives on a communicator.
type loopCall struct {
	op, dtype string
	count     int64
}

var dataParallel = []loopCall{
	{"AllReduce", "float32", 1 << 20}, {"AllReduce", "bfloat16", 1 << 18}, {"AllGather", "float16", 4096},
	{"ReduceScatter", "float32", 2048}, {"Broadcast", "int64", 100},
}

// ncclRank is one rank's stream of one communicator.
type ncclRank struct {
	host   string
	pid    int32
	handle uint64
	rank   int32
	from   int // first call index the agent saw (late attach)
	late   time.Duration
	// lateEach adds to late at every call of an iteration: a straggler
	// that sleeps before each collective.
	lateEach time.Duration
	known    uint64 // CommID when its creation was seen
}

// streamRows makes the rows of r for iterations [0, iters) of loop: call k
// of the communicator at start + k/len(loop) iterations of 100 ms plus 5 ms
// per call, plus the rank's lateness; the true call index is kept in Bytes
// so that tests can check the alignment.
func streamRows(r ncclRank, loop []loopCall, iters int, start time.Time) []NCCLEvent {
	var out []NCCLEvent
	for k := r.from; k < iters*len(loop); k++ {
		c := loop[k%len(loop)]
		at := start.Add(time.Duration(k/len(loop))*100*time.Millisecond + time.Duration(k%len(loop))*5*time.Millisecond + r.late +
			time.Duration(k%len(loop))*r.lateEach)
		e := NCCLEvent{
			TimeNs: at.UnixNano(), PID: r.pid, TID: r.pid, Rank: -1, NRanks: -1, Op: c.op, Seq: int64(k - r.from),
			Count: c.count, Datatype: c.dtype, Bytes: int64(k), Peer: -1, GlobalRank: r.rank, WorldSize: 4,
			CommHandle: r.handle, Source: SourceUprobe,
		}
		if r.known != 0 {
			e.CommID, e.Seq, e.Matched, e.Rank, e.NRanks = r.known, int64(k), MatchInit, r.rank, 4
		}
		out = append(out, e)
	}
	return out
}

func matchAll(rows []NCCLEvent, hostOf func(*NCCLEvent) string) NCCLMatchSummary {
	var m NCCLMatcher
	for i := range rows {
		m.Add(hostOf(&rows[i]), &rows[i])
	}
	sum := m.Match()
	for i := range rows {
		m.Apply(hostOf(&rows[i]), &rows[i])
	}
	return sum
}

var byHandleHost = func(e *NCCLEvent) string { return "h" + string(rune('0'+e.PID%2)) }

// checkAligned checks that every row of the ranks got one CommID and a Seq
// that is the true call index plus one offset.
func checkAligned(t *testing.T, rows []NCCLEvent, pids map[int32]bool) uint64 {
	t.Helper()
	var id uint64
	var offset int64
	first := true
	for _, e := range rows {
		if !pids[e.PID] {
			continue
		}
		if e.Matched == "" || e.CommID == 0 {
			t.Fatalf("row not matched: %+v", e)
		}
		if first {
			id, offset, first = e.CommID, e.Seq-e.Bytes, false
		}
		if e.CommID != id || e.Seq-e.Bytes != offset {
			t.Fatalf("pid %d call %d: comm %x seq %d, want comm %x seq %d", e.PID, e.Bytes, e.CommID, e.Seq, id, e.Bytes+offset)
		}
		if e.Seq < 0 {
			t.Fatalf("negative seq %+v", e)
		}
	}
	return id
}

// Four ranks on two hosts whose agent attached at different iterations,
// one of them late by more than a call but less than an iteration: their
// calls line up on the true collective, not on the same call one
// iteration off, which has the same op, count and datatype.
func TestNCCLMatcherLateAttach(t *testing.T) {
	start := time.Unix(1700000000, 0)
	var rows []NCCLEvent
	pids := map[int32]bool{}
	for i, from := range []int{15, 27, 3, 40} {
		r := ncclRank{pid: int32(100 + i), handle: 0x5000 + uint64(i)*16, rank: int32(i), from: from}
		if i == 2 {
			r.late = 30 * time.Millisecond
		}
		pids[r.pid] = true
		rows = append(rows, streamRows(r, dataParallel, 20, start)...)
	}
	sum := matchAll(rows, byHandleHost)
	if sum.Streams != 4 || sum.Matched != 4 || sum.Communicators != 1 {
		t.Fatalf("summary %+v, want 4 streams matched into 1 communicator", sum)
	}
	checkAligned(t, rows, pids)
	for _, e := range rows {
		if e.Matched != MatchPattern || e.NRanks != 4 {
			t.Fatalf("row %+v: want matched by pattern, 4 ranks", e)
		}
	}
	if n := sum.Note(); !strings.Contains(n, "4 of them were matched") || !strings.Contains(n, `"pattern"`) {
		t.Errorf("note %q", n)
	}
}

// The window opens while the straggler, rank 2, is still in the iteration
// the others have already finished: its first calls have no partner among
// the others' (the longest stream, which the others' streams join first),
// and the shift is found from its calls that overlap theirs.
func TestNCCLMatcherStragglerBehindAtWindowStart(t *testing.T) {
	start := time.Unix(1700000000, 0)
	var rows []NCCLEvent
	pids := map[int32]bool{}
	for i := range 4 {
		r := ncclRank{pid: int32(600 + i), handle: 0x60, rank: int32(i), from: 5}
		rs := streamRows(r, dataParallel, 20, start)
		if i == 2 {
			r.from, r.late = 1, 30*time.Millisecond
			rs = streamRows(r, dataParallel, 20, start)
			rs = rs[:len(rs)-4] // its last calls come after the window
		}
		pids[r.pid] = true
		rows = append(rows, rs...)
	}
	if sum := matchAll(rows, byHandleHost); sum.Matched != 4 || sum.Communicators != 1 {
		t.Fatalf("summary %+v", sum)
	}
	checkAligned(t, rows, pids)
}

// A straggler whose lateness builds up over an iteration, until its last
// call comes as late as the others' next iteration: the calls after the
// quiet spell between iterations, where all ranks start together, decide.
func TestNCCLMatcherLatenessBuildsUp(t *testing.T) {
	start := time.Unix(1700000000, 0)
	var rows []NCCLEvent
	pids := map[int32]bool{}
	for i, from := range []int{10, 21, 33} {
		r := ncclRank{pid: int32(400 + i), handle: 0x40, rank: int32(i), from: from}
		if i == 1 {
			r.late, r.lateEach = 20*time.Millisecond, 17*time.Millisecond // 20 to 88 ms late
		}
		pids[r.pid] = true
		rows = append(rows, streamRows(r, dataParallel, 20, start)...)
	}
	if sum := matchAll(rows, byHandleHost); sum.Matched != 3 || sum.Communicators != 1 {
		t.Fatalf("summary %+v", sum)
	}
	checkAligned(t, rows, pids)
}

// A data-parallel communicator over all four ranks and a sub-communicator
// per pair, of another shape, in the same processes: two communicators
// (the pairs have the same shape and count as one), never mixed with the
// data-parallel one.
func TestNCCLMatcherSubCommunicators(t *testing.T) {
	start := time.Unix(1700000000, 0)
	tensor := []loopCall{{"AllGather", "bfloat16", 8192}, {"ReduceScatter", "bfloat16", 8192}}
	var rows []NCCLEvent
	world, pairs := map[int32]bool{}, map[int32]bool{}
	for i := range 4 {
		pid := int32(200 + i)
		rows = append(rows, streamRows(ncclRank{pid: pid, handle: 0x1000, rank: int32(i), from: 7 * i}, dataParallel, 12, start)...)
		rows = append(rows, streamRows(ncclRank{pid: pid + 10, handle: 0x2000, rank: int32(i), from: 3 * i}, tensor, 12, start.Add(40*time.Millisecond))...)
		world[pid], pairs[pid+10] = true, true
	}
	sum := matchAll(rows, byHandleHost)
	if sum.Matched != 8 || sum.Communicators != 2 {
		t.Fatalf("summary %+v, want 8 streams in 2 communicators", sum)
	}
	if checkAligned(t, rows, world) == checkAligned(t, rows, pairs) {
		t.Fatal("the two communicators got one id")
	}
}

// Ranks 0 and 1 saw their communicator's init; ranks 2 and 3 did not:
// theirs join it, with its id and numbering.
func TestNCCLMatcherJoinsKnownCommunicator(t *testing.T) {
	start := time.Unix(1700000000, 0)
	var rows []NCCLEvent
	for i := range 4 {
		r := ncclRank{pid: int32(300 + i), handle: 0x7000, rank: int32(i), from: 11 * i}
		if i < 2 {
			r.known, r.from = 0xfeed, 0
		}
		rows = append(rows, streamRows(r, dataParallel, 10, start)...)
	}
	sum := matchAll(rows, byHandleHost)
	if sum.Streams != 2 || sum.Matched != 2 || sum.Communicators != 1 {
		t.Fatalf("summary %+v", sum)
	}
	for _, e := range rows {
		if e.CommID != 0xfeed || e.Seq != e.Bytes {
			t.Fatalf("row %+v: want comm feed, seq %d", e, e.Bytes)
		}
		if want := MatchInit; e.GlobalRank >= 2 {
			if e.Matched != MatchPattern || e.NRanks != 4 {
				t.Fatalf("joined row %+v", e)
			}
		} else if e.Matched != want {
			t.Fatalf("known row changed: %+v", e)
		}
	}
}

// A stream whose calls agree with nobody's, and one too short to judge,
// stay unmatched; a lone rank is no communicator.
func TestNCCLMatcherLeavesStrangersAlone(t *testing.T) {
	start := time.Unix(1700000000, 0)
	other := []loopCall{{"AllToAll", "int32", 64}, {"Reduce", "float64", 300}}
	rows := streamRows(ncclRank{pid: 1, handle: 1, rank: 0}, dataParallel, 10, start)
	rows = append(rows, streamRows(ncclRank{pid: 2, handle: 1, rank: 1}, other, 10, start)...)
	rows = append(rows, streamRows(ncclRank{pid: 3, handle: 1, rank: 2, from: 47}, dataParallel, 10, start)...)
	sum := matchAll(rows, byHandleHost)
	if sum.Streams != 3 || sum.Matched != 0 || sum.Communicators != 0 {
		t.Fatalf("summary %+v, want nothing matched", sum)
	}
	for _, e := range rows {
		if e.Matched != "" || e.CommID != 0 || e.Seq != e.Bytes-int64(map[int32]int{1: 0, 2: 0, 3: 47}[e.PID]) {
			t.Fatalf("row changed: %+v", e)
		}
	}
	var empty NCCLMatcher
	if s := empty.Match(); s.Note() != "" {
		t.Fatalf("empty matcher: %+v %q", s, s.Note())
	}
}

// Whatever the rows, matching does not panic and changes only collectives
// of unknown communicators.
func FuzzNCCLMatcher(f *testing.F) {
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
	f.Fuzz(func(t *testing.T, data []byte) {
		ops := []string{"AllReduce", "AllGather", "Send", "Broadcast"}
		var rows []NCCLEvent
		for len(data) >= 8 {
			v := binary.LittleEndian.Uint64(data)
			data = data[8:]
			e := NCCLEvent{
				TimeNs: int64(v>>8) % 1e12, PID: int32(v % 5), CommHandle: v >> 60, Op: ops[v>>20&3],
				Seq: int64(v>>24&63) - 2, Count: int64(v >> 40 & 3), Datatype: "float32", Source: SourceUprobe,
				GlobalRank: int32(v%7) - 1,
			}
			if v>>30&7 == 0 {
				e.CommID, e.Matched = v>>50|1, MatchInit
			}
			rows = append(rows, e)
		}
		before := append([]NCCLEvent(nil), rows...)
		matchAll(rows, func(e *NCCLEvent) string { return "h" })
		for i, e := range rows {
			b := before[i]
			if (b.CommID != 0 || !b.IsCollective() || b.Seq < 0) && e != b {
				t.Fatalf("row %d changed: %+v -> %+v", i, b, e)
			}
		}
	})
}

// On a loaded machine: the ranks issue an iteration's collectives back to
// back (their enqueue is asynchronous), but preemption stretches some gaps
// to milliseconds; the straggler, rank 2, sleeps 4 ms before each call, and
// every iteration starts when it issued the last one. Matched by median
// distance alone, its calls would line up as well with the others' next
// iteration as with the true one.
func TestNCCLMatcherLoadedMachine(t *testing.T) {
	start := time.Unix(1700000000, 0)
	rnd := rand.New(rand.NewPCG(1, 2))
	const iters, slow = 60, 4 * time.Millisecond
	n := len(dataParallel)
	from := []int{3, 8, 0, 12}
	var rows []NCCLEvent
	pids := map[int32]bool{}
	iterStart := start
	for it := range iters {
		for r := range 4 {
			pid := int32(500 + r)
			pids[pid] = true
			at := iterStart
			for k, c := range dataParallel {
				switch {
				case r == 2:
					at = at.Add(slow)
				case k > 0 && rnd.IntN(3) == 0:
					at = at.Add(time.Duration(rnd.IntN(6000)) * time.Microsecond)
				case k > 0:
					at = at.Add(20 * time.Microsecond)
				}
				idx := it*n + k
				if idx < from[r] {
					continue
				}
				rows = append(rows, NCCLEvent{
					TimeNs: at.UnixNano(), PID: pid, TID: pid, Rank: -1, NRanks: -1, Op: c.op, Seq: int64(idx - from[r]),
					Count: c.count, Datatype: c.dtype, Bytes: int64(idx), Peer: -1, GlobalRank: int32(r), WorldSize: 4,
					CommHandle: 0x90, Source: SourceUprobe,
				})
			}
		}
		iterStart = iterStart.Add(time.Duration(n)*slow + time.Millisecond)
	}
	if sum := matchAll(rows, byHandleHost); sum.Matched != 4 || sum.Communicators != 1 {
		t.Fatalf("summary %+v", sum)
	}
	checkAligned(t, rows, pids)
}
