package gpu

import (
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

func TestRing(t *testing.T) {
	sec := int64(time.Second)
	tests := []struct {
		name          string
		span          int64
		min, max      int
		times         []int64 // seconds
		from, to      int64
		want          []int64
		wantCap       int
		wantAfterFast bool
	}{
		{"keeps the span", 10 * sec, 4, 100, []int64{0, 5, 10, 15, 20}, 0, 100, []int64{10, 15, 20}, 4, false},
		{"window", 100 * sec, 4, 100, []int64{1, 2, 3, 4, 5, 6}, 2, 4, []int64{2, 3, 4}, 8, false},
		{"grows to max then overwrites", 1000 * sec, 2, 5, []int64{1, 2, 3, 4, 5, 6, 7}, 0, 100, []int64{3, 4, 5, 6, 7}, 5, false},
		{"empty window", 100 * sec, 4, 100, []int64{1, 2}, 50, 60, nil, 4, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRing(tt.span, tt.min, tt.max)
			for _, ts := range tt.times {
				r.push(&traces.GPUSample{TimeNs: ts * sec})
			}
			got := r.appendRange(nil, tt.from*sec, tt.to*sec)
			if len(got) != len(tt.want) {
				t.Fatalf("got %d samples, want %v", len(got), tt.want)
			}
			for i, s := range got {
				if s.TimeNs != tt.want[i]*sec {
					t.Errorf("sample %d at %ds, want %ds", i, s.TimeNs/sec, tt.want[i])
				}
			}
			if _, c := r.len(); c != tt.wantCap {
				t.Errorf("capacity %d, want %d", c, tt.wantCap)
			}
		})
	}
}

// A capture burst grows the ring; when the burst ages out it shrinks back,
// so a host that captured once does not keep the capture-sized buffer.
func TestRingShrinksAfterABurst(t *testing.T) {
	ms := int64(time.Millisecond)
	r := newRing(10_000*ms, 12, 1002)
	now := int64(0)
	for range 1000 { // 10 s at 100 Hz
		now += 10 * ms
		r.push(&traces.GPUSample{TimeNs: now})
	}
	n, c := r.len()
	if n != 1000 || c < 1000 {
		t.Fatalf("after the burst: %d samples in %d slots, want 1000", n, c)
	}
	for range 30 { // 30 s at 1 Hz
		now += 1000 * ms
		r.push(&traces.GPUSample{TimeNs: now})
	}
	n, c = r.len()
	if n != 10 && n != 11 || c > 48 {
		t.Errorf("after the burst aged out: %d samples in %d slots, want ~10 in <= 48", n, c)
	}
}
