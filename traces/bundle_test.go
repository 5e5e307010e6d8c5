package traces_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"github.com/parquet-go/parquet-go"

	"github.com/loupe-dev/loupe/traces"
)

func testManifest() traces.Manifest {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	return traces.Manifest{
		CaptureID: "cap-1", Cluster: "c1", Job: "job-7", Run: "run-a", Host: "gpu-node-3",
		Ranks: []int{8, 9}, WorldSize: 16, Start: t0, End: t0.Add(30 * time.Second),
		Trigger:      traces.Trigger{Kind: traces.TriggerStableIteration, Reason: "cv 0.03 < 0.1 at iteration 550", StartIteration: 600, Iterations: 20},
		AgentVersion: "test",
	}
}

func testProfile() *profile.Profile {
	fn := &profile.Function{ID: 1, Name: "train_step", SystemName: "train_step", Filename: "train.py"}
	loc := &profile.Location{ID: 1, Address: 0x1000, Line: []profile.Line{{Function: fn, Line: 42}}}
	return &profile.Profile{
		SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		PeriodType: &profile.ValueType{Type: "cpu", Unit: "nanoseconds"},
		Period:     52631578,
		Sample: []*profile.Sample{{
			Location: []*profile.Location{loc}, Value: []int64{3, 157894734},
			Label: map[string][]string{"comm": {"python"}}, NumLabel: map[string][]int64{"pid": {1234}},
		}},
		Location: []*profile.Location{loc}, Function: []*profile.Function{fn},
	}
}

func testTables() ([]traces.GPUSample, []traces.NCCLEvent, []traces.Step, []traces.Event) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC).UnixNano()
	var gpu []traces.GPUSample
	for i := 0; i < 50; i++ {
		gpu = append(gpu, traces.GPUSample{
			TimeNs: t0 + int64(i)*10e6, GPU: int32(i % 2), UUID: "GPU-abc" + string(rune('0'+i%2)),
			GPUUtil: float32(90 + i%10), PowerW: 650.5, SMClockMHz: 1980, ClockEventReasons: traces.ClockEventSWThermalSlowdown,
			ProfValid: i%3 == 0, SMActive: 0.41, TensorActive: 0.12, FBTotalMiB: 81559,
		})
	}
	nccl := []traces.NCCLEvent{
		{TimeNs: t0 + 5e6, DurationNs: 2000, PID: 10, TID: 11, Rank: 8, NRanks: 16, CommID: 0xfeed, Op: "AllReduce", Seq: 0, Count: 1 << 20, Datatype: "float32", Bytes: 4 << 20, Peer: -1},
		{TimeNs: t0 + 9e6, DurationNs: 1500, PID: 12, TID: 13, Rank: 9, NRanks: 16, CommID: 0xfeed, Op: "AllReduce", Seq: 0, Count: 1 << 20, Datatype: "float32", Bytes: 4 << 20, Peer: -1},
	}
	steps := []traces.Step{
		{Rank: 8, PID: 10, Iteration: 600, StartNs: t0, EndNs: t0 + 250e6, Source: traces.StepSourceMarker},
		{Rank: 8, PID: 10, Iteration: 601, StartNs: t0 + 250e6, EndNs: t0 + 500e6, Source: traces.StepSourceMarker},
	}
	events := []traces.Event{{TimeNs: t0 + 1e9, Kind: traces.EventXID, GPU: 1, Rank: -1, Code: 79, Message: "GPU has fallen off the bus"}}
	return gpu, nccl, steps, events
}

// writeTestBundle writes a complete bundle and returns its directory.
func writeTestBundle(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	w, err := traces.NewBundleWriter(dir, testManifest())
	if err != nil {
		t.Fatal(err)
	}
	gpu, nccl, steps, events := testTables()
	must(t, traces.WriteTable(w, traces.PartGPUSamples, gpu))
	must(t, traces.WriteTable(w, traces.PartNCCLEvents, nccl))
	must(t, traces.WriteTable(w, traces.PartSteps, steps))
	must(t, w.WriteProfile(testProfile()))
	must(t, w.WriteEvents(events))
	must(t, w.WritePart(traces.KinetoDir+"rank8-10.json.gz", traces.MediaKineto, strings.NewReader("gzip bytes as produced")))
	w.Note("kineto trace rank8-10 has no distributedInfo")
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func readPart[T any](t *testing.T, dir, name string) []T {
	t.Helper()
	rows, err := traces.ReadTableFile[T](filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

func TestBundleRoundTrip(t *testing.T) {
	dir := writeTestBundle(t)
	m, err := traces.ReadDir(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := testManifest()
	if m.SchemaVersion != traces.SchemaVersion || m.Job != want.Job || !reflect.DeepEqual(m.Ranks, want.Ranks) ||
		!m.Start.Equal(want.Start) || m.Trigger != want.Trigger {
		t.Errorf("manifest = %+v, want fields of %+v", m, want)
	}
	var names []string
	for _, p := range m.Parts {
		names = append(names, p.Name)
	}
	wantNames := []string{traces.PartCPUProfile, traces.PartEvents, traces.PartGPUSamples, "kineto/rank8-10.json.gz", traces.PartNCCLEvents, traces.PartSteps}
	if !reflect.DeepEqual(names, wantNames) {
		t.Errorf("parts = %v, want %v (sorted)", names, wantNames)
	}
	if len(m.Notes) != 1 {
		t.Errorf("notes = %v, want the distributedInfo note", m.Notes)
	}

	gpu, nccl, steps, events := testTables()
	for i := range gpu {
		gpu[i].Rank = -1 // the manifest names no GPU's rank
	}
	if got := readPart[traces.GPUSample](t, dir, traces.PartGPUSamples); !reflect.DeepEqual(got, gpu) {
		t.Errorf("gpu samples differ after round trip:\n got %+v\nwant %+v", got[0], gpu[0])
	}
	if got := readPart[traces.NCCLEvent](t, dir, traces.PartNCCLEvents); !reflect.DeepEqual(got, nccl) {
		t.Errorf("nccl events differ: got %+v want %+v", got, nccl)
	}
	if got := readPart[traces.Step](t, dir, traces.PartSteps); !reflect.DeepEqual(got, steps) {
		t.Errorf("steps differ: got %+v want %+v", got, steps)
	}
	f, _ := os.Open(filepath.Join(dir, traces.PartEvents))
	var gotEvents []traces.Event
	must(t, traces.ReadEvents(f, func(e traces.Event) error { gotEvents = append(gotEvents, e); return nil }))
	f.Close()
	if !reflect.DeepEqual(gotEvents, events) {
		t.Errorf("events differ: got %+v want %+v", gotEvents, events)
	}
	f, _ = os.Open(filepath.Join(dir, traces.PartCPUProfile))
	p, err := traces.ReadProfile(f)
	f.Close()
	must(t, err)
	wantP := testProfile()
	if len(p.Sample) != 1 || !reflect.DeepEqual(p.Sample[0].Value, wantP.Sample[0].Value) ||
		p.Sample[0].Location[0].Line[0].Function.Name != "train_step" || p.Sample[0].NumLabel["pid"][0] != 1234 {
		t.Errorf("profile differs after round trip: %v", p)
	}
}

func TestTableReaderStreams(t *testing.T) {
	dir := writeTestBundle(t)
	f, err := os.Open(filepath.Join(dir, traces.PartGPUSamples))
	must(t, err)
	defer f.Close()
	st, _ := f.Stat()
	tr, err := traces.NewTableReader[traces.GPUSample](f, st.Size())
	must(t, err)
	defer tr.Close()
	if tr.NumRows() != 50 {
		t.Fatalf("NumRows = %d, want 50", tr.NumRows())
	}
	buf := make([]traces.GPUSample, 7)
	total := 0
	for {
		n, err := tr.Read(buf)
		total += n
		if err != nil {
			break
		}
	}
	if total != 50 {
		t.Errorf("streamed %d rows, want 50", total)
	}
}

// TestReadDirErrors checks that each kind of damage gets its own error.
func TestReadDirErrors(t *testing.T) {
	editManifest := func(edit func(m map[string]any)) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			path := filepath.Join(dir, traces.ManifestName)
			data, _ := os.ReadFile(path)
			var m map[string]any
			must(t, json.Unmarshal(data, &m))
			edit(m)
			data, _ = json.Marshal(m)
			must(t, os.WriteFile(path, data, 0o644))
		}
	}
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string)
		want   error
	}{
		{"unknown schema version", editManifest(func(m map[string]any) { m["schema_version"] = 2 }), traces.ErrSchemaVersion},
		{"missing schema version", editManifest(func(m map[string]any) { delete(m, "schema_version") }), traces.ErrSchemaVersion},
		{"missing part", func(t *testing.T, dir string) { must(t, os.Remove(filepath.Join(dir, traces.PartSteps))) }, traces.ErrMissingPart},
		{"checksum mismatch", func(t *testing.T, dir string) {
			path := filepath.Join(dir, traces.PartEvents)
			data, _ := os.ReadFile(path)
			data[0] ^= 0xff
			must(t, os.WriteFile(path, data, 0o644))
		}, traces.ErrChecksum},
		{"truncated part", func(t *testing.T, dir string) {
			must(t, os.Truncate(filepath.Join(dir, traces.PartEvents), 3))
		}, traces.ErrChecksum},
		{"oversized part", editManifest(func(m map[string]any) {
			m["parts"].([]any)[0].(map[string]any)["size"] = float64(traces.DefaultMaxPartSize + 1)
		}), traces.ErrPartTooLarge},
		{"name escapes folder", editManifest(func(m map[string]any) {
			m["parts"].([]any)[0].(map[string]any)["name"] = "../../etc/passwd"
		}), traces.ErrUnsafeName},
		{"absolute name", editManifest(func(m map[string]any) {
			m["parts"].([]any)[0].(map[string]any)["name"] = "/etc/passwd"
		}), traces.ErrUnsafeName},
		{"rank outside world", editManifest(func(m map[string]any) { m["world_size"] = 4 }), traces.ErrInvalid},
		{"bad key component", editManifest(func(m map[string]any) { m["job"] = "a/b" }), traces.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeTestBundle(t)
			tc.damage(t, dir)
			_, err := traces.ReadDir(dir, 0)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			for _, other := range []error{traces.ErrSchemaVersion, traces.ErrMissingPart, traces.ErrChecksum, traces.ErrPartTooLarge, traces.ErrUnsafeName} {
				if other != tc.want && errors.Is(err, other) {
					t.Errorf("err %v also matches %v: errors must be distinct", err, other)
				}
			}
		})
	}
}

func TestUncommittedBundleIsNotACapture(t *testing.T) {
	dir := t.TempDir()
	w, err := traces.NewBundleWriter(dir, testManifest())
	must(t, err)
	gpu, _, _, _ := testTables()
	must(t, traces.WriteTable(w, traces.PartGPUSamples, gpu))
	if _, err := traces.ReadDir(dir, 0); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("reading a bundle without manifest: err = %v, want not-exist", err)
	}
}

func TestWriterRejectsBadNames(t *testing.T) {
	w, err := traces.NewBundleWriter(t.TempDir(), testManifest())
	must(t, err)
	for _, name := range []string{"../x", "a/../../b", "", "/abs", traces.ManifestName} {
		if err := w.WritePart(name, traces.MediaJSON, strings.NewReader("x")); err == nil {
			t.Errorf("WritePart(%q) succeeded, want error", name)
		}
	}
	must(t, w.WritePart("ok.json", traces.MediaJSON, strings.NewReader("x")))
	if err := w.WritePart("ok.json", traces.MediaJSON, strings.NewReader("x")); err == nil {
		t.Error("writing the same part twice succeeded")
	}
	m := testManifest()
	m.Host = "bad host"
	if _, err := traces.NewBundleWriter(t.TempDir(), m); !errors.Is(err, traces.ErrBadKey) {
		t.Errorf("bad host: err = %v, want ErrBadKey", err)
	}
}

func TestReadEventsReportsLine(t *testing.T) {
	in := `{"time_ns":1,"kind":"xid","gpu":0,"rank":-1,"code":79}` + "\n\n{oops\n"
	err := traces.ReadEvents(strings.NewReader(in), func(traces.Event) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("err = %v, want an error naming line 3", err)
	}
}

func FuzzDecodeManifest(f *testing.F) {
	good, _ := json.Marshal(func() traces.Manifest {
		m := testManifest()
		m.SchemaVersion = 1
		m.Parts = []traces.Part{{Name: "a.parquet", MediaType: traces.MediaParquet, Size: 3, SHA256: strings.Repeat("ab", 32)}}
		return m
	}())
	f.Add(good)
	f.Add([]byte(`{"schema_version":2}`))
	f.Add([]byte(`{"schema_version":1,"parts":[{"name":"../x"}]}`))
	f.Add([]byte(`{"schema_version":1e999}`))
	f.Add([]byte(strings.Repeat("[", 10000)))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := traces.DecodeManifest(bytes.NewReader(data))
		if err != nil {
			if m != nil {
				t.Fatal("manifest returned with an error")
			}
			return
		}
		// Whatever decodes must be safe to use as store keys and file names.
		if err := traces.KeyOf(m).Validate(); err != nil {
			t.Fatalf("accepted manifest with invalid key: %v", err)
		}
		for _, p := range m.Parts {
			if err := traces.ValidatePartName(p.Name); err != nil || strings.Contains("/"+p.Name+"/", "/../") {
				t.Fatalf("accepted unsafe part name %q", p.Name)
			}
		}
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := traces.DecodeManifest(bytes.NewReader(again)); err != nil {
			t.Fatalf("re-encoded manifest does not decode: %v", err)
		}
	})
}

// Every table says which capture, host and rank its rows are of, and which
// schema version it follows, so that a query over a whole store needs no
// file names; the bundle's own readers skip the identity columns unless
// asked for them.
func TestTablesDescribeThemselves(t *testing.T) {
	dir := t.TempDir()
	m := testManifest()
	m.GPUs = []traces.GPUInfo{{Index: 0, UUID: "GPU-abc0", Ranks: []int{8}}, {Index: 1, UUID: "GPU-abc1", Ranks: []int{8, 9}}}
	w, err := traces.NewBundleWriter(dir, m)
	must(t, err)
	gpu, nccl, steps, _ := testTables()
	must(t, traces.WriteTable(w, traces.PartGPUSamples, gpu))
	must(t, traces.WriteTable(w, traces.PartNCCLEvents, nccl))
	must(t, traces.WriteTable(w, traces.PartSteps, steps))
	_, err = w.Commit()
	must(t, err)
	want := traces.Identity{Cluster: "c1", Job: "job-7", Run: "run-a", Capture: "cap-1", Host: "gpu-node-3"}
	idCols := traces.Columns("cluster", "job", "run", "capture", "host", "rank", "gpu")
	rows, err := traces.ReadTableFile[traces.GPUSample](filepath.Join(dir, traces.PartGPUSamples), idCols)
	must(t, err)
	for _, r := range rows {
		wantRank := int32(8)
		if r.GPU == 1 {
			wantRank = -1 // shared by two ranks
		}
		if r.Identity != want || r.Rank != wantRank {
			t.Fatalf("gpu row identity %+v rank %d, want %+v rank %d", r.Identity, r.Rank, want, wantRank)
		}
	}
	if rows := readPart[traces.Step](t, dir, traces.PartSteps); rows[0].Identity != (traces.Identity{}) {
		t.Errorf("identity decoded without being asked for: %+v", rows[0].Identity)
	}
	for _, part := range []string{traces.PartGPUSamples, traces.PartNCCLEvents, traces.PartSteps} {
		f, err := os.Open(filepath.Join(dir, part))
		must(t, err)
		st, _ := f.Stat()
		pf, err := parquet.OpenFile(f, st.Size())
		must(t, err)
		if v, _ := pf.Lookup(traces.MetaSchemaVersion); v != strconv.Itoa(traces.SchemaVersion) {
			t.Errorf("%s: %s = %q", part, traces.MetaSchemaVersion, v)
		}
		if v, _ := pf.Lookup(traces.MetaTable); v != part {
			t.Errorf("%s: %s = %q", part, traces.MetaTable, v)
		}
		for _, col := range []string{"cluster", "job", "run", "capture", "host", "rank"} {
			leaf, ok := pf.Schema().Lookup(col)
			if !ok {
				t.Errorf("%s has no column %s", part, col)
				continue
			}
			if col != "rank" && leaf.Node.Encoding() == nil {
				t.Errorf("%s: column %s is not dictionary encoded", part, col)
			}
		}
		f.Close()
	}
}
