package capture_test

import (
	"bytes"
	"context"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/internal/aggtest"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

func TestOfKey(t *testing.T) {
	tests := []struct {
		key, rest string
		ok        bool
	}{
		{"v1/c/j/r/cap/host/manifest.json", "host/manifest.json", true},
		{"v1/c/j/r/cap/_findings/findings.json", "_findings/findings.json", true},
		{"v1/c/j/r/cap/", "", true},
		{"v1/c/j/r/cap", "", false},
		{"v2/c/j/r/cap/h/m", "", false},
		{"v1/c/../r/cap/h/m", "", false},
		{"_aggregator/cursor", "", false},
	}
	for _, tt := range tests {
		id, rest, err := capture.OfKey(tt.key)
		if (err == nil) != tt.ok || rest != tt.rest {
			t.Errorf("OfKey(%q) = %v, %q, %v", tt.key, id, rest, err)
		}
		if err == nil && id.Prefix() != "v1/c/j/r/cap/" {
			t.Errorf("OfKey(%q) prefix %s", tt.key, id.Prefix())
		}
	}
	for key, want := range map[string]bool{
		"v1/c/j/r/cap/h/manifest.json":         true,
		"v1/c/j/r/cap/h/kineto/manifest.json":  false,
		"v1/c/j/r/cap/_findings/manifest.json": false,
		"v1/c/j/r/cap/h/steps.parquet":         false,
	} {
		if capture.IsManifestKey(key) != want {
			t.Errorf("IsManifestKey(%q) = %v", key, !want)
		}
	}
}

func TestPartition(t *testing.T) {
	tests := []struct {
		name     string
		world    []int   // world size per host
		ranks    [][]int // ranks per host
		missing  []int
		complete bool
	}{
		{"all ranks", []int{4, 4}, [][]int{{0, 1}, {2, 3}}, nil, true},
		{"one rank missing", []int{4, 4}, [][]int{{0, 1}, {3}}, []int{2}, false},
		{"one host", []int{8}, [][]int{{4, 5, 6, 7}}, []int{0, 1, 2, 3}, false},
		{"world size disagrees: largest wins", []int{2, 3}, [][]int{{0}, {1}}, []int{2}, false},
		{"world size unknown", []int{0}, [][]int{{}}, nil, true},
		{"no hosts", nil, nil, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &capture.Capture{}
			for i, ws := range tt.world {
				m := aggtest.Manifest("j", "cap", "h", ws, tt.ranks[i]...)
				c.Hosts = append(c.Hosts, capture.Host{Manifest: &m})
			}
			if got := c.MissingRanks(); !slices.Equal(got, tt.missing) {
				t.Errorf("missing %v, want %v", got, tt.missing)
			}
			if c.Complete() != tt.complete {
				t.Errorf("complete %v, want %v", c.Complete(), tt.complete)
			}
			in := c.Input(nil, 0)
			if in.Partial != (len(tt.missing) > 0) || !slices.Equal(in.MissingRanks, tt.missing) {
				t.Errorf("input partial %v missing %v", in.Partial, in.MissingRanks)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	ctx := context.Background()
	st, err := store.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	aggtest.Put(t, st, aggtest.Manifest("j", "cap", "good", 2, 0), map[string][]byte{"steps.parquet": []byte("abc")})
	// A host folder whose manifest is not written yet: not committed.
	st.Put(ctx, "v1/c1/j/r1/cap/uploading/steps.parquet", strings.NewReader("x"), 1, store.PutOptions{})
	// A manifest that is not JSON, and one that lies about its key.
	st.Put(ctx, "v1/c1/j/r1/cap/broken/manifest.json", strings.NewReader("{"), 1, store.PutOptions{})
	other := aggtest.Put(t, st, aggtest.Manifest("j", "cap2", "h", 2, 1), nil)
	rc, _, _ := st.Get(ctx, traces.KeyOf(other).Object(traces.ManifestName))
	st.Put(ctx, "v1/c1/j/r1/cap/liar/manifest.json", rc, -1, store.PutOptions{})
	rc.Close()

	var extra []string
	c, err := capture.Load(ctx, st, capture.ID{Cluster: "c1", Job: "j", Run: "r1", Capture: "cap"}, func(o store.ObjectInfo) { extra = append(extra, o.Key) })
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Hosts) != 1 || c.Hosts[0].Manifest.Host != "good" || c.Hosts[0].ETag == "" || c.Hosts[0].Committed.IsZero() {
		t.Fatalf("hosts %+v", c.Hosts)
	}
	if len(c.Invalid) != 2 || !strings.Contains(strings.Join(c.Invalid, "\n"), "does not match its key") {
		t.Fatalf("invalid %q", c.Invalid)
	}
	if !slices.Equal(c.MissingRanks(), []int{1}) {
		t.Fatalf("missing %v", c.MissingRanks())
	}
	if len(extra) != 2 {
		t.Fatalf("extra objects %v", extra)
	}
	// Parts are verified as they are read.
	in := c.Input(st, 0)
	st.Put(ctx, "v1/c1/j/r1/cap/good/steps.parquet", strings.NewReader("abd"), 3, store.PutOptions{})
	r, err := in.Hosts[0].Open(ctx, "steps.parquet")
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(r)
	r.Close()
	if err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("tampered part read: %v, want a checksum error", err)
	}
	if _, err := in.Hosts[0].Open(ctx, "nccl_events.parquet"); err == nil {
		t.Fatal("opening a part the manifest does not list succeeded")
	}
}

// BenchmarkPartitionCheck: 1024 hosts of 8 ranks each.
func BenchmarkPartitionCheck(b *testing.B) {
	c := &capture.Capture{}
	for h := range 1024 {
		ranks := make([]int, 8)
		for i := range ranks {
			ranks[i] = 8*h + i
		}
		if h == 500 {
			ranks = ranks[:7]
		}
		m := aggtest.Manifest("j", "cap", "h", 8192, ranks...)
		c.Hosts = append(c.Hosts, capture.Host{Manifest: &m})
	}
	b.ReportAllocs()
	for b.Loop() {
		if got := c.MissingRanks(); len(got) != 1 || got[0] != 4007 {
			b.Fatalf("missing %v", got)
		}
	}
}

// TestBaseline: a host's normal profile merges its continuous profiles of
// the job run that ended in the half hour before the window, and nothing
// else: not other hosts', not the window's own interval, not older ones.
func TestBaseline(t *testing.T) {
	ctx := context.Background()
	st, err := store.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 3, 1, 12, 0, 30, 0, time.UTC)
	gz := func(n int64) []byte {
		p := &profile.Profile{
			SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"}},
			Sample:     []*profile.Sample{{Value: []int64{n}, NumLabel: map[string][]int64{"minute": {n}}}},
		}
		var b bytes.Buffer
		p.Write(&b)
		return b.Bytes()
	}
	// Minutes -40 to +2 around 12:00 on hosts h and other; sample values
	// say which minute each is.
	for min := -40; min <= 2; min++ {
		for _, host := range []string{"h", "other"} {
			from := start.Truncate(time.Minute).Add(time.Duration(min) * time.Minute)
			m := aggtest.Manifest("j", traces.ContinuousCaptureID(from, time.Minute), host, 0)
			m.Trigger.Kind = traces.TriggerContinuous
			aggtest.Put(t, st, m, map[string][]byte{traces.PartContinuousProfile: gz(int64(100 + min))})
		}
	}
	aggtest.Put(t, st, aggtest.Manifest("j", "cap", "h", 1, 0), nil)
	key := traces.Key{Cluster: "c1", Job: "j", Run: "r1", Capture: "cap", Host: "h"}
	p, keys, err := capture.Baseline(ctx, st, key, start, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Intervals from 11:30 (starting at or after 11:30:30 - 30 m, so
	// 11:31) to the one ending at 12:00: minutes -29 to -1.
	var got []int64
	for _, s := range p.Sample {
		got = append(got, s.Value[0]-100)
	}
	slices.Sort(got)
	if len(got) != 29 || got[0] != -29 || got[len(got)-1] != -1 {
		t.Errorf("baseline holds minutes %v, want -29 to -1", got)
	}
	if len(keys) != 2*29 || !strings.HasSuffix(keys[0], "/h/manifest.json") {
		t.Errorf("keys %d: %v", len(keys), keys[:min(len(keys), 2)])
	}
	none, _, err := capture.Baseline(ctx, st, traces.Key{Cluster: "c1", Job: "j", Run: "r1", Capture: "cap", Host: "nobody"}, start, 0)
	if err != nil || none != nil {
		t.Errorf("baseline of a host without continuous profiles: %v, %v", none, err)
	}
}
