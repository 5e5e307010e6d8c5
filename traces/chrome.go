package traces

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
)

// Timeline is what one host bundle contributes to a Chrome trace export.
type Timeline struct {
	Manifest *Manifest
	Steps    []Step
	NCCL     []NCCLEvent
	GPU      []GPUSample
	Events   []Event
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
	Args map[string]any `json:"args,omitempty"`
}

// Track ids inside each process of the export.
const (
	tidSteps   = 1
	tidCounter = 0
)

// ExportChrome writes the timelines of one or more host bundles as Chrome
// trace JSON: per rank a process with a "steps" track (ProfilerStep#N slices,
// as Kineto names them) and one track per NCCL-calling thread; per GPU a
// process with counter tracks (utilization, SM/tensor/DRAM activity, power,
// SM clock, throttle reasons) and instant markers for faults. Times are
// relative to the earliest capture start, which is recorded in otherData.
// Events are written one at a time, so memory does not grow with the output.
func ExportChrome(w io.Writer, tls ...Timeline) error {
	bw := bufio.NewWriterSize(w, 256<<10)
	var origin int64
	for i, tl := range tls {
		if s := tl.Manifest.Start.UnixNano(); i == 0 || s < origin {
			origin = s
		}
	}
	ex := &chromeExporter{w: bw, origin: origin}
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
	bw.WriteString("\n]}\n")
	if ex.err != nil {
		return fmt.Errorf("export chrome trace: %w", ex.err)
	}
	return bw.Flush()
}

type chromeExporter struct {
	w      *bufio.Writer
	origin int64
	n      int
	err    error
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
	named := map[[2]int]bool{}
	for _, e := range tl.NCCL {
		p := rankOf(e.Rank)
		tid := int(e.TID) + 2 // keep clear of the steps track
		if !named[[2]int{p, tid}] {
			named[[2]int{p, tid}] = true
			ex.meta(p, tid, "thread_name", fmt.Sprintf("nccl (tid %d)", e.TID))
		}
		d := float64(max(e.DurationNs, 1000)) / 1e3
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

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
