package hang

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/loupe-dev/loupe/agent/nccl"
	"github.com/loupe-dev/loupe/agent/nccl/nccltest"
	"github.com/loupe-dev/loupe/traces"
)

func TestMain(m *testing.M) {
	code := m.Run()
	nccltest.Cleanup()
	os.Exit(code)
}

// fakeSource feeds nothing by itself; tests call Observe. Its in-flight
// calls are what the probes would list.
type fakeSource struct {
	inflight []nccl.InFlightCall
	plugin   []traces.NCCLEvent
}

func (f *fakeSource) Subscribe(int) (<-chan traces.NCCLEvent, func()) { return nil, func() {} }
func (f *fakeSource) InFlight() ([]nccl.InFlightCall, error)          { return f.inflight, nil }
func (f *fakeSource) PluginLatest() []traces.NCCLEvent                { return f.plugin }

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// call is rank r's collective seq of a loop of two, at t0+ms, returning
// 10 µs later; id 0 is a communicator whose creation was missed (Seq from
// the agent's attach, here shifted by 3 per rank).
func call(r int32, id uint64, seq int64, ms int) traces.NCCLEvent {
	e := traces.NCCLEvent{TimeNs: t0.Add(time.Duration(ms) * time.Millisecond).UnixNano(), DurationNs: 10_000, PID: 1000 + r, TID: 1000 + r,
		Rank: r, NRanks: 4, CommID: id, Op: []string{"AllReduce", "AllGather"}[seq%2], Seq: seq, Count: 1 << 10, Datatype: "float32",
		GlobalRank: r, WorldSize: 4, CommHandle: 0x50, Matched: traces.MatchInit, Source: traces.SourceUprobe}
	if id == 0 {
		e.Seq, e.Matched, e.Rank, e.NRanks = seq-3*int64(r), "", -1, -1
	}
	return e
}

// feed plays iterations of 20 ms, two collectives each, on ranks, up to
// collective upTo (exclusive) for every rank but those in stop, which stop
// at stopAt.
func feed(d *Detector, id uint64, upTo int64, stop map[int32]int64) {
	for seq := int64(0); seq < upTo; seq++ {
		for r := range int32(4) {
			if at, ok := stop[r]; ok && seq >= at {
				continue
			}
			if id == 0 && seq < 3*int64(r) {
				continue // not attached yet
			}
			d.Observe(call(r, id, seq, int(seq)*10))
		}
	}
}

// newDetector runs with a /proc of its own where the fake ranks' pids
// exist.
func newDetector(t *testing.T, src Source, jobOf func(int) string) (*Detector, *[]*Hang, *time.Time) {
	cfg := DefaultConfig()
	cfg.Timeout = 5 * time.Second
	cfg.ProcRoot = t.TempDir()
	for pid := 1000; pid < 1004; pid++ {
		if err := os.Mkdir(filepath.Join(cfg.ProcRoot, strconv.Itoa(pid)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var got []*Hang
	d := New(cfg, src, jobOf, func(h *Hang) { got = append(got, h) }, nil, nil)
	now := t0
	d.now = func() time.Time { return now }
	return d, &got, &now
}

// Rank 2 stops before collective 40 while the others enter it and more:
// nothing until the timeout, then one hang naming rank 2 missing and the
// others arrived; a call of rank 2 later ends it.
func TestDetectorHangAndRecovery(t *testing.T) {
	for _, tt := range []struct {
		name string
		id   uint64
	}{{"known communicator", 0xc0ffee}, {"creation missed, matched by pattern", 0}} {
		t.Run(tt.name, func(t *testing.T) {
			src := &fakeSource{inflight: []nccl.InFlightCall{{PID: 1002, TID: 1002, Op: "CommInitRank", Seq: -1, Since: t0}}}
			d, _, now := newDetector(t, src, nil)
			feed(d, tt.id, 44, map[int32]int64{2: 40})
			last := t0.Add(430 * time.Millisecond)
			*now = last.Add(4 * time.Second)
			if hs := d.Check(); len(hs) != 0 {
				t.Fatalf("hang before the timeout: %+v", hs[0].Report)
			}
			*now = last.Add(6 * time.Second)
			hs := d.Check()
			if len(hs) != 1 {
				t.Fatalf("%d hangs after the timeout, want 1", len(hs))
			}
			r := hs[0].Report
			if r.State != traces.HangStateHung || r.Seq != 40 || r.Op != "AllReduce" || r.WorldSize != 4 || len(r.Ranks) != 4 ||
				!r.StalledSince.Equal(last.Add(10*time.Microsecond)) || r.CommID == 0 {
				t.Fatalf("report %+v", r)
			}
			for _, rk := range r.Ranks {
				want := traces.HangRankArrived
				if rk.Rank == 2 {
					want = traces.HangRankMissing
					if !rk.InNCCL || !strings.HasPrefix(rk.InCall, "CommInitRank since") || rk.LastSeq != 39 {
						t.Errorf("rank 2: %+v, want stuck inside NCCL's CommInitRank after collective 39", rk)
					}
				}
				if rk.State != want {
					t.Errorf("rank %d: %s, want %s", rk.Rank, rk.State, want)
				}
			}
			if reason := hs[0].Reason(); !strings.Contains(reason, "rank 2 inside NCCL") || !strings.Contains(reason, "collective 40") {
				t.Errorf("reason %q", reason)
			}
			*now = now.Add(time.Minute)
			if hs := d.Check(); len(hs) != 0 {
				t.Fatal("the same hang reported twice")
			}
			d.Observe(call(2, tt.id, 40, 70_000))
			hs = d.Check()
			if len(hs) != 1 || hs[0].Report.State != traces.HangStateRecovered || hs[0].Report.ID != r.ID || hs[0].CaptureID() == (&Hang{Report: r}).CaptureID() {
				t.Fatalf("recovery %+v", hs)
			}
		})
	}
}

// A rank that died before the collective is named as gone.
func TestDetectorRankExited(t *testing.T) {
	d, _, now := newDetector(t, &fakeSource{}, nil)
	feed(d, 9, 30, map[int32]int64{2: 20})
	if err := os.Remove(filepath.Join(d.cfg.ProcRoot, "1002")); err != nil {
		t.Fatal(err)
	}
	*now = t0.Add(time.Minute)
	hs := d.Check()
	if len(hs) != 1 || !hs[0].Report.Ranks[2].Exited || hs[0].Report.Ranks[2].InNCCL ||
		!strings.Contains(hs[0].Reason(), "rank 2 (its process exited) never arrived at collective 20") {
		t.Fatalf("hangs %+v", hs)
	}
}

// A job whose rank 2 only slows down keeps making progress: no hang; nor
// for ranks that all stopped at the same collective (a finished job).
func TestDetectorNoHang(t *testing.T) {
	d, _, now := newDetector(t, &fakeSource{}, nil)
	for seq := range int64(100) {
		for r := range int32(4) {
			ms := int(seq) * 10
			if r == 2 {
				ms = int(seq) * 40 // four times slower, and everyone waits
			}
			d.Observe(call(r, 7, seq, ms))
		}
		*now = t0.Add(time.Duration(seq) * 40 * time.Millisecond)
		if hs := d.Check(); len(hs) != 0 {
			t.Fatalf("a slow job hung: %+v", hs[0].Report)
		}
	}
	*now = now.Add(time.Hour)
	if hs := d.Check(); len(hs) != 0 {
		t.Fatalf("a finished job hung: %+v", hs[0].Report)
	}
}

// Two jobs with the same loop on one host, their communicators' creation
// missed: the matcher works per job, so one job's hang does not take the
// other's ranks along.
func TestDetectorJobsApart(t *testing.T) {
	d, _, now := newDetector(t, &fakeSource{}, func(pid int) string {
		if pid >= 1002 {
			return "b"
		}
		return "a"
	})
	feed(d, 0, 30, map[int32]int64{1: 25}) // in job a, rank 1 stops
	*now = t0.Add(time.Minute)
	hs := d.Check()
	if len(hs) != 1 || hs[0].Job != "a" || len(hs[0].Report.Ranks) != 2 {
		t.Fatalf("hangs %+v, want one in job a with its 2 ranks", hs)
	}
}

// Finish takes each rank's hottest stack from the CPU profile and tells a
// rank spinning in libnccl from one outside it.
func TestFinishStacks(t *testing.T) {
	nccl := &profile.Mapping{ID: 1, File: "/usr/lib/libnccl.so.2"}
	app := &profile.Mapping{ID: 2, File: "/opt/train"}
	fn := func(id uint64, name string, m *profile.Mapping) *profile.Location {
		return &profile.Location{ID: id, Mapping: m, Line: []profile.Line{{Function: &profile.Function{ID: id, Name: name}}}}
	}
	spin, poll, main := fn(1, "stuck_outside_nccl", app), fn(2, "ncclProxyProgress", nccl), fn(3, "main", app)
	prof := &profile.Profile{Sample: []*profile.Sample{
		{Location: []*profile.Location{spin, main}, Value: []int64{9}, Label: map[string][]string{"pid": {"1002"}}},
		{Location: []*profile.Location{main}, Value: []int64{1}, Label: map[string][]string{"pid": {"1002"}}},
		{Location: []*profile.Location{poll, main}, Value: []int64{5}, Label: map[string][]string{"pid": {"1001"}}},
	}}
	h := &Hang{Report: traces.NCCLHang{Ranks: []traces.NCCLHangRank{{Rank: 1, PID: 1001}, {Rank: 2, PID: 1002}, {Rank: 3, PID: 1003}}}}
	r := h.Finish(prof)
	if got := strings.Join(r.Ranks[1].Stack, "<"); got != "stuck_outside_nccl<main" || r.Ranks[1].InNCCL {
		t.Errorf("rank 2: stack %q in NCCL %v", got, r.Ranks[1].InNCCL)
	}
	if !r.Ranks[0].InNCCL || r.Ranks[2].Stack != nil || h.Report.Ranks[0].Stack != nil {
		t.Errorf("ranks %+v; the detector's report must stay as it was", r.Ranks)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Config{{Timeout: 0, CheckInterval: time.Second, StackSample: time.Second},
		{Timeout: time.Minute, CheckInterval: 0, StackSample: time.Second},
		{Timeout: time.Minute, CheckInterval: time.Second}} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

// A job traced by the profiler plugin alone (no probes on its processes):
// each communicator's latest record, read at every check, shows rank 2
// behind and the others' kernels of the next collective started, not
// ended.
func TestDetectorPluginOnly(t *testing.T) {
	src := &fakeSource{}
	d, _, now := newDetector(t, src, nil)
	for r := range int32(4) {
		seq, end := int64(45), int64(0)
		if r == 2 {
			seq, end = 39, t0.Add(time.Second).UnixNano()
		}
		src.plugin = append(src.plugin, traces.NCCLEvent{TimeNs: t0.UnixNano(), PID: 1000 + r, Rank: r, NRanks: 4, CommID: 0xabc,
			Op: "AllReduce", Seq: seq, Count: 8, Datatype: "float32", GlobalRank: r, WorldSize: 4, Matched: traces.MatchPlugin,
			Source: traces.SourcePlugin, GPUStartNs: t0.Add(time.Millisecond).UnixNano(), GPUEndNs: end})
	}
	*now = t0.Add(2 * time.Second)
	if hs := d.Check(); len(hs) != 0 {
		t.Fatal("hang before the timeout")
	}
	*now = t0.Add(time.Minute)
	hs := d.Check()
	if len(hs) != 1 || hs[0].Report.Seq != 40 || hs[0].Report.CommID != 0xabc {
		t.Fatalf("hangs %+v", hs)
	}
	rk := hs[0].Report.Ranks[0]
	if rk.State != traces.HangRankArrived || !strings.Contains(rk.GPU, "kernel of collective 45 (AllReduce) started at") || !strings.HasSuffix(rk.GPU, "not ended") {
		t.Errorf("rank 0 %+v: want its kernel of collective 45 started, not ended", rk)
	}
}
