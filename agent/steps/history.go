package steps

import (
	"cmp"
	"slices"

	"github.com/loupe-dev/loupe/traces"
)

// history is one lane's record of a run from the first step the agent saw:
// the first head steps one row each, then spans of consecutive steps. When
// the tail outgrows its bound, neighbouring spans are merged pairwise (the
// stride doubles), so memory stays fixed however long the run lasts while
// the start of the run, where warm-up happens, keeps full resolution.
//
// Spans never join across a PID change or an iteration that does not follow
// on (a restart goes back; a gap skips ahead), so restarts stay visible.
type history struct {
	rows []histRow
	// headSteps counts the rows still at full resolution at the front.
	headSteps int
	// stride is the most steps a tail row may cover.
	stride int32
	// dropped counts tail steps given up because restarts left nothing to
	// merge within the bound.
	dropped int64
}

// histRow is a StepSpan without the fields its lane and rank already say.
type histRow struct {
	pid                   int32
	steps                 int32
	first                 int64
	start, end, min, maxD int64
}

// add records one completed step.
func (h *history) add(s traces.Step, headCap, tailCap int) {
	d := s.EndNs - s.StartNs
	if h.headSteps < headCap && len(h.rows) == h.headSteps {
		h.rows = append(h.rows, histRow{pid: s.PID, steps: 1, first: s.Iteration, start: s.StartNs, end: s.EndNs, min: d, maxD: d})
		h.headSteps++
		return
	}
	if h.stride == 0 {
		h.stride = 1
	}
	if n := len(h.rows); n > h.headSteps {
		last := &h.rows[n-1]
		if last.steps < h.stride && last.follows(s) {
			last.steps++
			last.end = s.EndNs
			last.min, last.maxD = min(last.min, d), max(last.maxD, d)
			return
		}
	}
	if len(h.rows) == h.headSteps {
		// The tail starts: size the rows once for everything they will hold.
		h.rows = append(make([]histRow, 0, len(h.rows)+tailCap+1), h.rows...)
	}
	h.rows = append(h.rows, histRow{pid: s.PID, steps: 1, first: s.Iteration, start: s.StartNs, end: s.EndNs, min: d, maxD: d})
	if len(h.rows)-h.headSteps > tailCap {
		h.compact(tailCap)
	}
}

// follows reports whether s may extend r: same process, next iteration.
func (r *histRow) follows(s traces.Step) bool {
	return r.pid == s.PID && r.first+int64(r.steps) == s.Iteration && s.StartNs >= r.end
}

// joins reports whether r and next may merge into one span.
func (r *histRow) joins(next *histRow) bool {
	return r.pid == next.pid && r.first+int64(r.steps) == next.first && next.start >= r.end
}

// compact doubles the stride and merges neighbouring tail rows up to it; if
// restarts leave the tail still over its bound, the oldest tail rows go.
func (h *history) compact(tailCap int) {
	h.stride *= 2
	tail := h.rows[h.headSteps:]
	out := tail[:0]
	for i := 0; i < len(tail); i++ {
		r := tail[i]
		for i+1 < len(tail) && r.joins(&tail[i+1]) && r.steps+tail[i+1].steps <= h.stride {
			n := tail[i+1]
			r.steps += n.steps
			r.end = n.end
			r.min, r.maxD = min(r.min, n.min), max(r.maxD, n.maxD)
			i++
		}
		out = append(out, r)
	}
	if over := len(out) - tailCap/2; len(out) > tailCap && over > 0 {
		for _, r := range out[:over] {
			h.dropped += int64(r.steps)
		}
		out = out[:copy(out, out[over:])]
	}
	h.rows = h.rows[:h.headSteps+len(out)]
}

// spans returns the history as StepSpan rows, oldest first.
func (h *history) spans(rank int32, source string) []traces.StepSpan {
	out := make([]traces.StepSpan, len(h.rows))
	for i, r := range h.rows {
		out[i] = traces.StepSpan{
			Rank: rank, PID: r.pid, FirstIteration: r.first, Steps: r.steps,
			StartNs: r.start, EndNs: r.end, MinNs: r.min, MaxNs: r.maxD, Source: source,
		}
	}
	return out
}

// History returns the step history of every rank of job, from the lane each
// rank currently prefers, ordered by rank and time, with the number of steps
// dropped from it because restarts filled its bound.
func (t *Tracker) History(job string) (spans []traces.StepSpan, dropped int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, st := range t.ranks {
		if k.job != job {
			continue
		}
		src := t.bestLocked(st)
		h := &st.lanes[src].hist
		spans = append(spans, h.spans(int32(k.rank), sources[src])...)
		dropped += h.dropped
	}
	slices.SortFunc(spans, func(a, b traces.StepSpan) int {
		return cmp.Or(cmp.Compare(a.Rank, b.Rank), cmp.Compare(a.StartNs, b.StartNs))
	})
	return spans, dropped
}
