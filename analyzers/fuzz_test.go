package analyzers

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"github.com/google/pprof/profile"
	"github.com/loupe-dev/loupe/traces"
)

// FuzzScanColumns feeds arbitrary bytes to the Parquet decoder: it must
// return rows or an error, never panic or hang.
func FuzzScanColumns(f *testing.F) {
	in := writeCapture(f, "", hostBundle{name: "h1", ranks: []int{0, 1}, samples: series(2, 20, nil),
		nccl: collectives([]int{0, 1}, 5, 2, func(int, int) float64 { return 0 })})
	for _, part := range []string{traces.PartGPUSamples, traces.PartNCCLEvents} {
		data, err := os.ReadFile(in.Hosts[0].Key(part))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
		f.Add(data[:len(data)/2])
		f.Add(data[len(data)/3:])
		flipped := bytes.Clone(data)
		flipped[len(flipped)/2] ^= 0x5a
		f.Add(flipped)
	}
	f.Add([]byte("PAR1PAR1"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		buf := make([]traces.GPUSample, 64)
		rows := 0
		err := scanColumns(bytes.NewReader(data), int64(len(data)), buf, nil, func(b []traces.GPUSample) error {
			rows += len(b)
			return nil
		})
		if err != nil && !errors.Is(err, errCorrupt) {
			t.Errorf("error %v does not say the part is corrupt", err)
		}
		nb := make([]traces.NCCLEvent, 64)
		_ = scanColumns(bytes.NewReader(data), int64(len(data)), nb, nil, func([]traces.NCCLEvent) error { return nil })
	})
}

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
