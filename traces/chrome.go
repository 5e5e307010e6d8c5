package traces

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"time"

	"github.com/google/pprof/profile"
)

// Timeline is what one host bundle contributes to a Chrome trace export.
type Timeline struct {
	Manifest *Manifest
	Steps    []Step
	NCCL     []NCCLEvent
	GPU      []GPUSample
	Events   []Event
	// Kernels are the GPU kernels (and memory copies) of the bundle's
	// Kineto traces, on the Unix clock.
	Kernels []Span
	// CPU is the bundle's CPU profile; samples with a ProfileTimeLabel
	// are drawn per rank and drain interval.
	CPU *profile.Profile
}

// Span is one slice from another trace (a Kineto kernel) placed on the
// export's timeline.
type Span struct {
	Rank    int32
	Track   string // e.g. "stream 7"
	Name    string
	Cat     string
	StartNs int64 // Unix nanoseconds
	DurNs   int64
}

// chromeEvent is one record of the Chrome trace event format, which Perfetto
// and chrome://tracing open directly.
type chromeEvent struct {
	Name string         `json:"name"`
	Cat  string         `json:"cat,omitempty"`
	Ph   string         `json:"ph"`
	TS   float64        `json:"ts"` // microseconds since the export's origin
	Dur  *float64       `json:"dur,omitempty"`
	PID  int            `json:"pid"`
	TID  int            `json:"tid"`
	S    string         `json:"s,omitempty"`
	ID   int            `json:"id,omitempty"` // flow events
	BP   string         `json:"bp,omitempty"` // flow end binding point
	Args map[string]any `json:"args,omitempty"`
}

// Track ids inside each process of the export: counters, steps, CPU
// samples, then Kineto streams, then NCCL threads (by thread id).
const (
	tidCounter  = 0
	tidSteps    = 1
	tidCPU      = 2
	tidKernels  = 1000
	tidNCCLBase = 1_000_000
)

// flowOps are the NCCL calls that every rank of a communicator makes
// together, which the export links across ranks with flow events.
var flowOps = map[string]bool{"AllReduce": true, "AllGather": true, "ReduceScatter": true, "Broadcast": true, "Reduce": true, "AllToAll": true}

// ExportChrome writes the timelines of one or more host bundles as Chrome
// trace JSON: per rank a process with a "steps" track (ProfilerStep#N slices,
// as Kineto names them), a "cpu samples" track (the CPU profile per drain
// interval, its top functions in args), one track per Kineto stream (the
// GPU kernels) and one per NCCL-calling thread; per GPU a process with
// counter tracks (utilization, SM/tensor/DRAM activity, power, SM clock,
// throttle reasons) and instant markers for faults. Flow events link the
// calls of one collective (communicator and sequence number) across ranks
// in arrival order, so the arrow ends at the rank that arrived last. Times
// are relative to the earliest event (capture start or earlier), recorded
// in otherData, so no timestamp is negative. Events are written one at a
// time, so memory does not grow with the output beyond the flows' index.
func ExportChrome(w io.Writer, tls ...Timeline) error {
	bw := bufio.NewWriterSize(w, 256<<10)
	origin := earliest(tls)
	ex := &chromeExporter{w: bw, origin: origin, flows: map[flowKey][]flowPoint{}}
	bw.WriteString(`{"displayTimeUnit":"ms","otherData":`)
	other := map[string]any{"exporter": "loupe", "origin_unix_ns": origin}
	if len(tls) > 0 {
		m := tls[0].Manifest
		other["cluster"], other["job"], other["run"], other["capture_id"] = m.Cluster, m.Job, m.Run, m.CaptureID
	}
	ex.raw(other)
	bw.WriteString(`,"traceEvents":[`)
	pid := 0
	for _, tl := range tls {
		pid = ex.host(tl, pid)
	}
	ex.writeFlows()
	bw.WriteString("\n]}\n")
	if ex.err != nil {
		return fmt.Errorf("export chrome trace: %w", ex.err)
	}
	return bw.Flush()
}

// earliest is the export's origin: the earliest capture start or event.
func earliest(tls []Timeline) int64 {
	var o int64
	first := true
	at := func(ns int64) {
		if first || ns < o {
			o, first = ns, false
		}
	}
	for _, tl := range tls {
		at(tl.Manifest.Start.UnixNano())
		for _, s := range tl.Steps {
			at(s.StartNs)
		}
		for _, e := range tl.NCCL {
			at(e.TimeNs)
		}
		for _, g := range tl.GPU {
			at(g.TimeNs)
		}
		for _, e := range tl.Events {
			at(e.TimeNs)
		}
		for _, k := range tl.Kernels {
			at(k.StartNs)
		}
		if tl.CPU != nil {
			for _, s := range tl.CPU.Sample {
				if t, ok := sampleTime(s); ok {
					at(t - cpuInterval(tl.CPU, t))
				}
			}
		}
	}
	return o
}

type chromeExporter struct {
	w      *bufio.Writer
	origin int64
	n      int
	err    error
	flows  map[flowKey][]flowPoint
	flowID int
}

// flowKey is one collective: the same communicator and sequence number on
// every rank.
type flowKey struct {
	comm uint64
	seq  int64
	op   string
}

// flowPoint is one rank's call of a collective: where its slice is.
type flowPoint struct {
	pid, tid int
	ts       float64
	rank     int32
}

func (ex *chromeExporter) raw(v any) {
	if ex.err != nil {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		ex.err = err
		return
	}
	_, ex.err = ex.w.Write(b)
}

func (ex *chromeExporter) emit(e chromeEvent) {
	if ex.n > 0 {
		ex.w.WriteByte(',')
	}
	ex.w.WriteByte('\n')
	ex.n++
	ex.raw(e)
}

func (ex *chromeExporter) us(ns int64) float64 { return float64(ns-ex.origin) / 1e3 }

func (ex *chromeExporter) meta(pid, tid int, kind, name string) {
	ex.emit(chromeEvent{Name: kind, Ph: "M", PID: pid, TID: tid, Args: map[string]any{"name": name}})
}

func (ex *chromeExporter) sortIndex(pid, idx int) {
	ex.emit(chromeEvent{Name: "process_sort_index", Ph: "M", PID: pid, Args: map[string]any{"sort_index": idx}})
}

// host writes one bundle's tracks using process ids after pid and returns
// the last id used.
func (ex *chromeExporter) host(tl Timeline, pid int) int {
	m := tl.Manifest
	sim := ""
	if m.Simulated {
		sim = " (simulated)"
	}
	rankPID := map[int32]int{}
	rankOf := func(r int32) int {
		if p, ok := rankPID[r]; ok {
			return p
		}
		pid++
		rankPID[r] = pid
		ex.meta(pid, 0, "process_name", fmt.Sprintf("%s rank %d", m.Host, r))
		ex.sortIndex(pid, int(r))
		ex.meta(pid, tidSteps, "thread_name", "steps")
		return pid
	}
	for _, s := range tl.Steps {
		d := float64(s.EndNs-s.StartNs) / 1e3
		ex.emit(chromeEvent{
			Name: "ProfilerStep#" + strconv.FormatInt(s.Iteration, 10), Cat: "step", Ph: "X",
			TS: ex.us(s.StartNs), Dur: &d, PID: rankOf(s.Rank), TID: tidSteps,
			Args: map[string]any{"source": s.Source, "pid": s.PID},
		})
	}
	ex.cpuSamples(tl, rankOf)
	ex.kernels(tl.Kernels, rankOf)
	named := map[[2]int]bool{}
	for _, e := range tl.NCCL {
		p := rankOf(e.Rank)
		tid := tidNCCLBase + int(e.TID)
		if !named[[2]int{p, tid}] {
			named[[2]int{p, tid}] = true
			ex.meta(p, tid, "thread_name", fmt.Sprintf("nccl (tid %d)", e.TID))
		}
		d := float64(max(e.DurationNs, 1000)) / 1e3
		if flowOps[e.Op] && e.Rank >= 0 {
			k := flowKey{e.CommID, e.Seq, e.Op}
			ex.flows[k] = append(ex.flows[k], flowPoint{pid: p, tid: tid, ts: ex.us(e.TimeNs), rank: e.Rank})
		}
		ex.emit(chromeEvent{
			Name: "nccl" + e.Op, Cat: "nccl", Ph: "X", TS: ex.us(e.TimeNs), Dur: &d, PID: p, TID: tid,
			Args: map[string]any{
				"comm_id": strconv.FormatUint(e.CommID, 16), "seq": e.Seq, "count": e.Count,
				"datatype": e.Datatype, "bytes": e.Bytes, "peer": e.Peer, "nranks": e.NRanks,
				"note": "host-side enqueue time, not GPU completion",
			},
		})
	}
	gpuPID := map[int32]int{}
	gpuOf := func(g int32) int {
		if p, ok := gpuPID[g]; ok {
			return p
		}
		pid++
		gpuPID[g] = pid
		ex.meta(pid, 0, "process_name", fmt.Sprintf("%s GPU %d%s", m.Host, g, sim))
		ex.sortIndex(pid, 1_000_000+int(g))
		return pid
	}
	samples := append([]GPUSample(nil), tl.GPU...)
	sort.SliceStable(samples, func(i, j int) bool { return samples[i].TimeNs < samples[j].TimeNs })
	for i := range samples {
		s := &samples[i]
		p, ts := gpuOf(s.GPU), ex.us(s.TimeNs)
		util := map[string]any{"gpu_util_pct": s.GPUUtil, "mem_copy_util_pct": s.MemCopyUtil}
		if s.ProfValid {
			util["sm_active_pct"] = s.SMActive * 100
			util["tensor_active_pct"] = s.TensorActive * 100
			util["dram_active_pct"] = s.DRAMActive * 100
		}
		ex.emit(chromeEvent{Name: "utilization", Ph: "C", TS: ts, PID: p, TID: tidCounter, Args: util})
		ex.emit(chromeEvent{Name: "power_w", Ph: "C", TS: ts, PID: p, Args: map[string]any{"power_w": s.PowerW}})
		ex.emit(chromeEvent{Name: "sm_clock_mhz", Ph: "C", TS: ts, PID: p, Args: map[string]any{"sm_clock_mhz": s.SMClockMHz}})
		ex.emit(chromeEvent{Name: "throttle", Ph: "C", TS: ts, PID: p, Args: map[string]any{
			"thermal": b2i(s.ClockEventReasons&(ClockEventSWThermalSlowdown|ClockEventHWThermalSlowdown|ClockEventHWSlowdown) != 0),
			"power":   b2i(s.ClockEventReasons&(ClockEventSWPowerCap|ClockEventHWPowerBrake) != 0),
		}})
	}
	for _, e := range tl.Events {
		p := 0
		if e.GPU >= 0 {
			p = gpuOf(int32(e.GPU))
		} else if e.Rank >= 0 {
			p = rankOf(int32(e.Rank))
		}
		name := e.Kind
		if e.Kind == EventXID {
			name = "XID " + strconv.FormatInt(e.Code, 10)
		}
		ex.emit(chromeEvent{Name: name, Cat: "fault", Ph: "i", S: "p", TS: ex.us(e.TimeNs), PID: p,
			Args: map[string]any{"message": e.Message, "code": e.Code}})
	}
	return pid
}

// kernels writes Kineto kernel slices on one track per stream of their
// rank. Slices of one stream must not overlap for Perfetto; a kernel that
// starts before the previous one ended (clock rounding) cuts it short.
func (ex *chromeExporter) kernels(spans []Span, rankOf func(int32) int) {
	type track struct {
		rank int32
		name string
	}
	byTrack := map[track][]Span{}
	var order []track
	for _, k := range spans {
		tr := track{k.Rank, k.Track}
		if _, ok := byTrack[tr]; !ok {
			order = append(order, tr)
		}
		byTrack[tr] = append(byTrack[tr], k)
	}
	tids := map[int32]int{}
	for _, tr := range order {
		ks := byTrack[tr]
		sort.SliceStable(ks, func(i, j int) bool { return ks[i].StartNs < ks[j].StartNs })
		p := rankOf(tr.rank)
		tid := tidKernels + tids[tr.rank]
		tids[tr.rank]++
		ex.meta(p, tid, "thread_name", "kineto "+tr.name)
		for i, k := range ks {
			end := k.StartNs + max(k.DurNs, 0)
			if i+1 < len(ks) && ks[i+1].StartNs < end {
				end = ks[i+1].StartNs
			}
			d := float64(end-k.StartNs) / 1e3
			ex.emit(chromeEvent{Name: k.Name, Cat: k.Cat, Ph: "X", TS: ex.us(k.StartNs), Dur: &d, PID: p, TID: tid})
		}
	}
}

// cpuSamples writes the CPU profile's samples per rank and drain interval:
// one slice per interval named after its most sampled function, with the
// top functions and their sample counts in args.
func (ex *chromeExporter) cpuSamples(tl Timeline, rankOf func(int32) int) {
	if tl.CPU == nil {
		return
	}
	type cell struct {
		rank int32
		at   int64
	}
	funcs := map[cell]map[string]int64{}
	pidRank := map[string]int32{}
	for _, p := range tl.Manifest.Processes {
		pidRank[strconv.Itoa(p.PID)] = int32(p.Rank)
	}
	for _, s := range tl.CPU.Sample {
		at, ok := sampleTime(s)
		if !ok || len(s.Location) == 0 || len(s.Value) == 0 {
			continue
		}
		rank := int32(-1)
		if r, err := strconv.Atoi(first(s.Label["rank"])); err == nil {
			rank = int32(r)
		} else if r, ok := pidRank[first(s.Label["pid"])]; ok {
			rank = r
		}
		if rank < 0 {
			continue
		}
		c := cell{rank, at}
		if funcs[c] == nil {
			funcs[c] = map[string]int64{}
		}
		funcs[c][leafName(s)] += s.Value[0]
	}
	cells := make([]cell, 0, len(funcs))
	for c := range funcs {
		cells = append(cells, c)
	}
	sort.Slice(cells, func(i, j int) bool {
		return cells[i].rank < cells[j].rank || cells[i].rank == cells[j].rank && cells[i].at < cells[j].at
	})
	named := map[int32]bool{}
	prev := map[int32]int64{}
	for _, c := range cells {
		p := rankOf(c.rank)
		if !named[c.rank] {
			named[c.rank] = true
			ex.meta(p, tidCPU, "thread_name", "cpu samples")
		}
		from := c.at - cpuInterval(tl.CPU, c.at)
		if last, ok := prev[c.rank]; ok && from < last {
			from = last
		}
		prev[c.rank] = c.at
		type fn struct {
			name string
			n    int64
		}
		var top []fn
		var total int64
		for name, n := range funcs[c] {
			top = append(top, fn{name, n})
			total += n
		}
		sort.Slice(top, func(i, j int) bool { return top[i].n > top[j].n || top[i].n == top[j].n && top[i].name < top[j].name })
		args := map[string]any{"samples": total}
		for i, f := range top[:min(len(top), 5)] {
			args[fmt.Sprintf("top%d", i+1)] = fmt.Sprintf("%s (%d)", f.name, f.n)
		}
		d := float64(c.at-from) / 1e3
		ex.emit(chromeEvent{Name: top[0].name, Cat: "cpu", Ph: "X", TS: ex.us(from), Dur: &d, PID: p, TID: tidCPU, Args: args})
	}
}

// writeFlows links each collective's calls across ranks in arrival order:
// s at the first, t at the middle ones, f (bound to its enclosing slice)
// at the last, which is the rank the others waited for.
func (ex *chromeExporter) writeFlows() {
	keys := make([]flowKey, 0, len(ex.flows))
	for k, pts := range ex.flows {
		if len(pts) > 1 {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		return a.comm < b.comm || a.comm == b.comm && (a.seq < b.seq || a.seq == b.seq && a.op < b.op)
	})
	for _, k := range keys {
		pts := ex.flows[k]
		sort.SliceStable(pts, func(i, j int) bool { return pts[i].ts < pts[j].ts })
		ex.flowID++
		name := fmt.Sprintf("%s seq %d", k.op, k.seq)
		for i, pt := range pts {
			e := chromeEvent{Name: name, Cat: "nccl.collective", Ph: "t", TS: pt.ts, PID: pt.pid, TID: pt.tid, ID: ex.flowID}
			switch i {
			case 0:
				e.Ph = "s"
			case len(pts) - 1:
				e.Ph, e.BP = "f", "e"
				e.Args = map[string]any{"last_rank": pt.rank, "lag_us": pt.ts - pts[0].ts}
			}
			ex.emit(e)
		}
	}
}

// sampleTime is when a profile sample's counts were read, if it says.
func sampleTime(s *profile.Sample) (int64, bool) {
	v := s.NumLabel[ProfileTimeLabel]
	if len(v) == 0 || v[0] <= 0 {
		return 0, false
	}
	return v[0], true
}

// cpuInterval is the span of samples read at t: the agent's drain interval
// (a second), or less at the profile's start.
func cpuInterval(p *profile.Profile, t int64) int64 {
	d := int64(time.Second)
	if p.TimeNanos > 0 && t-p.TimeNanos < d {
		d = max(t-p.TimeNanos, 0)
	}
	return d
}

func leafName(s *profile.Sample) string {
	for _, l := range s.Location[0].Line {
		if l.Function != nil && l.Function.Name != "" {
			return l.Function.Name
		}
	}
	if m := s.Location[0].Mapping; m != nil {
		return fmt.Sprintf("%s+%#x", m.File, s.Location[0].Address)
	}
	return fmt.Sprintf("%#x", s.Location[0].Address)
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
