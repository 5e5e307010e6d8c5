package gpu

import (
	"sync"

	"github.com/loupe-dev/loupe/traces"
)

// ring keeps one GPU's recent samples, oldest first, for a fixed span of
// time. It starts sized for the steady rate and grows (up to max samples)
// only while a capture samples faster, then shrinks back, so a host that is
// not capturing holds a few hundred samples per GPU, not tens of thousands.
type ring struct {
	mu     sync.Mutex
	buf    []traces.GPUSample
	head   int // index of the oldest sample
	n      int
	spanNs int64
	min    int
	max    int
}

func newRing(spanNs int64, min, max int) *ring {
	if min < 2 {
		min = 2
	}
	if max < min {
		max = min
	}
	return &ring{buf: make([]traces.GPUSample, min), spanNs: spanNs, min: min, max: max}
}

// push appends s, dropping samples older than the span, and the oldest one
// when the ring is at its maximum size.
func (r *ring) push(s *traces.GPUSample) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cut := s.TimeNs - r.spanNs
	for r.n > 0 && r.buf[r.head].TimeNs < cut {
		r.buf[r.head] = traces.GPUSample{}
		r.head = (r.head + 1) % len(r.buf)
		r.n--
	}
	switch {
	case r.n == len(r.buf) && len(r.buf) < r.max:
		r.resize(min(2*len(r.buf), r.max))
	case r.n < len(r.buf)/4 && len(r.buf) > r.min:
		r.resize(max(len(r.buf)/2, r.min))
	}
	if r.n == len(r.buf) { // full at max: overwrite the oldest
		r.head = (r.head + 1) % len(r.buf)
		r.n--
	}
	r.buf[(r.head+r.n)%len(r.buf)] = *s
	r.n++
}

func (r *ring) resize(size int) {
	nb := make([]traces.GPUSample, size)
	for i := 0; i < r.n; i++ {
		nb[i] = r.buf[(r.head+i)%len(r.buf)]
	}
	r.buf, r.head = nb, 0
}

// appendRange appends the samples with fromNs <= TimeNs <= toNs to dst.
func (r *ring) appendRange(dst []traces.GPUSample, fromNs, toNs int64) []traces.GPUSample {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := 0; i < r.n; i++ {
		s := &r.buf[(r.head+i)%len(r.buf)]
		if s.TimeNs > toNs {
			break
		}
		if s.TimeNs >= fromNs {
			dst = append(dst, *s)
		}
	}
	return dst
}

// len reports how many samples the ring holds and its current capacity.
func (r *ring) len() (n, capacity int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n, len(r.buf)
}
