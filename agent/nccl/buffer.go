package nccl

import (
	"slices"

	"github.com/loupe-dev/loupe/traces"
)

// ring keeps the most recent events for capture windows. It grows up to its
// capacity and then overwrites the oldest, so memory is bounded by
// capacity x 64 bytes.
type ring struct {
	buf  []record
	cap  int
	next int // where the next event goes once buf is full
}

func newRing(capacity int) *ring { return &ring{cap: capacity} }

func (r *ring) add(ev record) {
	if len(r.buf) < r.cap {
		r.buf = append(r.buf, ev)
		return
	}
	r.buf[r.next] = ev
	r.next = (r.next + 1) % r.cap
}

// between returns the events with from <= TimeNs < to, oldest first.
func (r *ring) between(from, to int64) []traces.NCCLEvent {
	var out []traces.NCCLEvent
	for _, part := range [2][]record{r.buf[r.next:], r.buf[:r.next]} {
		for i := range part {
			if part[i].timeNs >= from && part[i].timeNs < to {
				out = append(out, part[i].row())
			}
		}
	}
	// Records from different CPUs reach the ring buffer slightly out of order.
	slices.SortStableFunc(out, func(a, b traces.NCCLEvent) int { return cmpInt64(a.TimeNs, b.TimeNs) })
	return out
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
