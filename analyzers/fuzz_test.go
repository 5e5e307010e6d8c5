package analyzers

import (
	"bytes"
	"testing"

	"github.com/google/pprof/profile"
	"github.com/loupe-dev/loupe/traces"
)

// FuzzProfileLoad feeds arbitrary CPU profiles to the input-bound
// attribution: whatever parses must be attributed without a panic, and the
// loading samples never exceed the total.
func FuzzProfileLoad(f *testing.F) {
	var buf bytes.Buffer
	if err := cpuProfile(map[int][2]int{0: {60, 40}, 1: {5, 95}}).Write(&buf); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	buf.Reset()
	if err := cpuProfile(map[int][2]int{0: {1, 1}}).WriteUncompressed(&buf); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	h := &Host{Manifest: &traces.Manifest{Host: "h1", Ranks: []int{0, 1}, Processes: []traces.Process{{PID: pid(0), Rank: 0}, {PID: pid(1), Rank: 1}}}}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := profile.ParseData(data)
		if err != nil {
			return
		}
		for r, c := range profileLoad(h, p) {
			if c.loading > c.total {
				t.Errorf("rank %d: %v loading of %v samples", r, c.loading, c.total)
			}
		}
	})
}
