package analyzers

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// memHost is a host whose only part is events.jsonl, held in memory.
func memHost(events []byte) Host {
	m := &traces.Manifest{CaptureID: "cap", Cluster: "c", Job: "j", Run: "r", Host: "h0", Ranks: []int{0, 1}, WorldSize: 2,
		Start: t0, End: t0.Add(10 * time.Minute),
		GPUs:  []traces.GPUInfo{{Index: 0, Ranks: []int{0}}, {Index: 1, Ranks: []int{1}}},
		Parts: []traces.Part{{Name: traces.PartEvents, Size: int64(len(events))}}}
	return Host{Manifest: m, Key: func(n string) string { return n },
		Open: func(context.Context, string) (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(events)), nil
		}}
}

// FuzzDomainAnalyzers runs the rebalance and warm-up analyzers over any
// events.jsonl: they never panic, and what they report stays within the
// window.
func FuzzDomainAnalyzers(f *testing.F) {
	var seed bytes.Buffer
	enc := json.NewEncoder(&seed)
	for i, ph := range []string{"start", "end", "start", "start", "end", "end"} {
		enc.Encode(traces.Event{TimeNs: t0.Add(time.Duration(i) * time.Second).UnixNano(), Kind: traces.EventRebalance, GPU: -1, Rank: -1,
			Attrs: map[string]string{"client": "java", "group": "g", "member": "m", "phase": ph, "protocol": "classic"}})
	}
	for i := range 30 {
		enc.Encode(traces.Event{TimeNs: t0.Add(time.Duration(i) * time.Second).UnixNano(), Kind: traces.EventLatency, GPU: -1, Rank: -1,
			Attrs: map[string]string{"value_seconds": []string{"1e300", "0.1", "-1", "NaN", "0"}[i%5]}})
	}
	f.Add(seed.Bytes())
	seed.Reset()
	for i, st := range [][3]string{{"STABLE", "RECONCILING", "start"}, {"RECONCILING", "STABLE", "end"}, {"UNSUBSCRIBED", "JOINING", "state"}, {"JOINING", "STABLE", "state"}} {
		enc.Encode(traces.Event{TimeNs: t0.Add(time.Duration(i) * time.Second).UnixNano(), Kind: traces.EventRebalance, GPU: -1, Rank: -1,
			Attrs: map[string]string{"client": "java", "group": "g", "member_id": "m" + st[2], "phase": "state", "from": st[0], "to": st[1], "protocol": "consumer", "partitions": "t-0,t-1"}})
		enc.Encode(traces.Event{TimeNs: t0.Add(time.Duration(i) * time.Second).UnixNano(), Kind: traces.EventRebalance, GPU: -1, Rank: -1,
			Attrs: map[string]string{"client": "torchelastic", "group": "default", "member": "agent", "phase": st[2], "generation": "1", "source": "n" + st[0]}})
	}
	f.Add(seed.Bytes())
	f.Add([]byte(`{"time_ns":-9223372036854775808,"kind":"rebalance","attrs":{"group":"g","phase":"start"}}` + "\n" +
		`{"time_ns":9223372036854775807,"kind":"rebalance","attrs":{"group":"g","phase":"end"}}`))
	// The runner logs every failed analyzer; a fuzz worker's stderr must
	// not fill up with malformed-input errors.
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	f.Cleanup(func() { slog.SetDefault(prev) })
	f.Fuzz(func(t *testing.T, events []byte) {
		in := &Input{Hosts: []Host{memHost(events)}}
		fs, err := Run(context.Background(), in, []*Analyzer{Rebalance, Warmup})
		if err != nil {
			// The runner turns a panic into an error; malformed
			// events.jsonl is an error too, but not a crash.
			if strings.Contains(err.Error(), "panic:") {
				t.Fatal(err)
			}
			return
		}
		for _, f := range fs {
			for _, m := range f.Evidence {
				if math.IsNaN(m.Value) {
					t.Fatalf("%s: evidence %s is NaN", f.Title, m.Name)
				}
			}
			if f.Impact.GPUSeconds < 0 || f.Impact.GPUSeconds > 2*600+1e-6 {
				t.Fatalf("%s: impact %v outside the window's 1200 GPU-s", f.Title, f.Impact.GPUSeconds)
			}
		}
	})
}
