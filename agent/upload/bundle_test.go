package upload_test

import (
	"bytes"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/loupe-dev/loupe/agent/spool/spooltest"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
	"github.com/loupe-dev/loupe/traces/store/miniotest"
)

// TestBundleRoundTripThroughMinIO follows a real bundle (Parquet tables, a
// pprof profile, JSON-lines events) from the bundle writer through the spool
// and the uploader into MinIO, then reads it back from the store alone and
// checks the tables, profile and events are what was written.
func TestBundleRoundTripThroughMinIO(t *testing.T) {
	srv := miniotest.Start(t)
	r := newRig(t, srv.Store(t))
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC).UnixNano()
	var samples []traces.GPUSample
	for i := range 500 {
		samples = append(samples, traces.GPUSample{TimeNs: t0 + int64(i)*1e7, GPU: int32(i % 8), UUID: "GPU-sim", GPUUtil: float32(i % 100), SMActive: 0.5, ProfValid: true})
	}
	steps := []traces.Step{{Rank: 0, PID: 42, Iteration: 7, StartNs: t0, EndNs: t0 + 1e9, Source: "marker"}}
	events := []traces.Event{{TimeNs: t0, Kind: traces.EventXID, GPU: 3, Rank: -1, Code: 79, Message: "GPU has fallen off the bus"}}
	fn := &profile.Function{ID: 1, Name: "train_step"}
	loc := &profile.Location{ID: 1, Address: 0x1000, Line: []profile.Line{{Function: fn}}}
	prof := &profile.Profile{
		SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"}},
		Sample:     []*profile.Sample{{Location: []*profile.Location{loc}, Value: []int64{19}}},
		Location:   []*profile.Location{loc}, Function: []*profile.Function{fn},
		TimeNanos: t0, DurationNanos: 30e9, PeriodType: &profile.ValueType{Type: "cpu", Unit: "nanoseconds"}, Period: 52631578,
	}

	m := spooltest.Manifest("rt1", "host-a")
	dir, err := r.sp.Begin(m.CaptureID, m.Host)
	if err != nil {
		t.Fatal(err)
	}
	bw, err := traces.NewBundleWriter(dir, m)
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{
		traces.WriteTable(bw, traces.PartGPUSamples, samples),
		traces.WriteTable(bw, traces.PartSteps, steps),
		bw.WriteProfile(prof),
		bw.WriteEvents(events),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := bw.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := r.sp.Commit(dir); err != nil {
		t.Fatal(err)
	}
	if err := r.up.Drain(ctx); err != nil {
		t.Fatal(err)
	}

	// Read back from the store only.
	key := traces.KeyOf(&m)
	got, err := traces.DecodeManifest(bytes.NewReader(fetch(t, r.st, key.Object(traces.ManifestName))))
	if err != nil {
		t.Fatal(err)
	}
	part := func(name string) []byte {
		p, ok := got.Part(name)
		if !ok {
			t.Fatalf("manifest lists no %s", name)
		}
		b, err := io.ReadAll(traces.VerifyReader(p, bytes.NewReader(fetch(t, r.st, key.Object(name))), 0))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return b
	}
	b := part(traces.PartGPUSamples)
	for i := range samples { // the writer fills in the rank using each GPU
		samples[i].Rank = int32(m.GPURank(int(samples[i].GPU)))
	}
	gotSamples, err := traces.ReadTable[traces.GPUSample](bytes.NewReader(b), int64(len(b)))
	if err != nil || !reflect.DeepEqual(gotSamples, samples) {
		t.Errorf("GPU samples differ after the round trip (%d rows back, %v)", len(gotSamples), err)
	}
	b = part(traces.PartSteps)
	gotSteps, err := traces.ReadTable[traces.Step](bytes.NewReader(b), int64(len(b)))
	if err != nil || !reflect.DeepEqual(gotSteps, steps) {
		t.Errorf("steps = %+v, %v; want %+v", gotSteps, err, steps)
	}
	gotProf, err := traces.ReadProfile(bytes.NewReader(part(traces.PartCPUProfile)))
	if err != nil || gotProf.String() != prof.String() {
		t.Errorf("profile differs after the round trip (%v):\n%s\nwant\n%s", err, gotProf, prof)
	}
	var gotEvents []traces.Event
	if err := traces.ReadEvents(bytes.NewReader(part(traces.PartEvents)), func(e traces.Event) error {
		gotEvents = append(gotEvents, e)
		return nil
	}); err != nil || !reflect.DeepEqual(gotEvents, events) {
		t.Errorf("events = %+v, %v; want %+v", gotEvents, err, events)
	}
}

func fetch(t *testing.T, st store.Store, key string) []byte {
	t.Helper()
	rc, _, err := st.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
