package goodput

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/loupe-dev/loupe/traces"
)

// Any step history an agent (or an attacker) writes yields a goodput whose
// parts are finite, in range, and add up; none panics.
func FuzzCompute(f *testing.F) {
	f.Add([]byte{0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 10, 0, 0, 0, 0, 0, 0, 0})
	f.Add(make([]byte, 90))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &Run{Windows: []Window{{Start: t0, End: t0, Shares: map[string]float64{traces.CauseStraggler: 0.5, traces.CauseDataStall: 0.7}}}}
		base := t0.UnixNano()
		for len(data) >= 18 {
			d := data[:18]
			data = data[18:]
			start := base + int64(binary.LittleEndian.Uint32(d[4:]))*1e6
			s := traces.StepSpan{Rank: int32(d[0] % 4), PID: int32(d[1] % 3), FirstIteration: int64(int16(binary.LittleEndian.Uint16(d[2:]))),
				Steps: int32(d[8]%200) - 1, StartNs: start, EndNs: start + int64(binary.LittleEndian.Uint32(d[9:]))*1e3,
				MaxNs: int64(binary.LittleEndian.Uint32(d[13:])) * 1e3}
			r.Add(&s)
			if d[17]%7 == 0 {
				r.Checkpoints = append(r.Checkpoints, Checkpoint{TimeNs: start, Rank: int(d[0]%4) - 1})
			}
		}
		g := Compute(r, Options{Now: t0, FLOPsPerStep: 1e15})
		if g == nil {
			return
		}
		sum := g.ProductiveGPUSeconds
		for _, b := range g.Badput {
			if b.GPUSeconds < 0 || math.IsNaN(b.GPUSeconds) || b.Share < 0 || b.Share > 1 {
				t.Fatalf("cause %+v", b)
			}
			sum += b.GPUSeconds
		}
		if math.IsNaN(g.Goodput) || g.Goodput < 0 || g.Goodput > 1 || g.ETTR < 0 || g.ETTR > 1 || g.GPUSeconds < 0 {
			t.Fatalf("goodput %v ETTR %v GPU-s %v", g.Goodput, g.ETTR, g.GPUSeconds)
		}
		if math.Abs(sum-g.GPUSeconds) > 1e-6*max(1, g.GPUSeconds) {
			t.Fatalf("parts add up to %v, GPU time %v", sum, g.GPUSeconds)
		}
	})
}
