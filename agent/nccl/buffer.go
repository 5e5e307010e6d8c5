package nccl

import (
	"slices"

	"github.com/loupe-dev/loupe/traces"
)

// ring keeps the most recent records for capture windows. It grows up to
// its capacity and then overwrites the oldest, so memory is bounded by the
// capacity.
type ring[T any] struct {
	buf  []T
	cap  int
	next int // where the next record goes once buf is full
}

func newRing[T any](capacity int) *ring[T] { return &ring[T]{cap: capacity} }

func (r *ring[T]) add(v T) {
	if len(r.buf) < r.cap {
		r.buf = append(r.buf, v)
		return
	}
	r.buf[r.next] = v
	r.next = (r.next + 1) % r.cap
}

// between returns the records with from <= timeOf < to as rows, oldest
// first.
func (r *ring[T]) between(from, to int64, row func(*T) traces.NCCLEvent, timeOf func(*T) int64) []traces.NCCLEvent {
	var out []traces.NCCLEvent
	for _, part := range [2][]T{r.buf[r.next:], r.buf[:r.next]} {
		for i := range part {
			if t := timeOf(&part[i]); t >= from && t < to {
				out = append(out, row(&part[i]))
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
