package cpuprof

import (
	"encoding/binary"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/pprof/profile"

	"github.com/loupe-dev/loupe/traces"
)

// Window collects the samples of some processes between StartWindow and
// Stop. Its state is guarded by the profiler's mutex.
type Window struct {
	p       *Profiler
	all     bool
	pids    map[uint32]bool
	start   time.Time
	stopped bool
	// quiet windows (the continuous profile) note truncated stacks in
	// their comments only, not in the log.
	quiet bool

	frames  map[frame]uint64 // interned frames: frame -> location id
	list    []frame          // location id - 1 -> frame
	samples map[sampleKey]*sampleValue
	procs   map[uint32]*procStats
}

// sampleValue is what a window holds of one (process, stack): samples and
// the CPU time they stand for.
type sampleValue struct{ n, ns uint64 }

type sampleKey struct {
	pid   uint32
	comm  string
	stack string // location ids, 8 bytes each, leaf first
	// drained is when the kernel's counts were read (Unix ns): the samples
	// were taken in the drain interval before it, which puts them on a
	// capture's timeline (traces.ProfileTimeLabel).
	drained int64
}

// procStats is what a window knows about one process.
type procStats struct {
	labels    map[string]string
	samples   uint64            // samples whose user stack could be judged
	truncated uint64            // of those, stacks that reach no entry point
	stopsIn   map[string]uint64 // truncated stacks by the object of their outermost frame
	comm      string
}

func newWindow(p *Profiler, pids []int) *Window {
	w := &Window{
		p:       p,
		all:     len(pids) == 0,
		pids:    map[uint32]bool{},
		start:   time.Now(),
		frames:  map[frame]uint64{},
		samples: map[sampleKey]*sampleValue{},
		procs:   map[uint32]*procStats{},
	}
	for _, pid := range pids {
		w.pids[uint32(pid)] = true
	}
	return w
}

func (w *Window) wants(pid uint32) bool { return w.all || w.pids[pid] }

func (w *Window) add(pid uint32, comm string, st stack, count, ns uint64, drained int64, labeler func(int) map[string]string) {
	ps, ok := w.procs[pid]
	if !ok {
		ps = &procStats{stopsIn: map[string]uint64{}, comm: comm}
		if labeler != nil {
			ps.labels = labeler(int(pid))
		}
		w.procs[pid] = ps
	}
	if st.judged {
		ps.samples += count
		if st.truncated {
			ps.truncated += count
			ps.stopsIn[st.frames[len(st.frames)-1].Object] += count
		}
	}
	key := make([]byte, 0, 8*len(st.frames))
	for _, f := range st.frames {
		id, ok := w.frames[f]
		if !ok {
			w.list = append(w.list, f)
			id = uint64(len(w.list))
			w.frames[f] = id
		}
		key = binary.LittleEndian.AppendUint64(key, id)
	}
	k := sampleKey{pid: pid, comm: comm, stack: string(key), drained: drained}
	v := w.samples[k]
	if v == nil {
		v = &sampleValue{}
		w.samples[k] = v
	}
	v.n += count
	v.ns += ns
}

// Stop ends the window, first reading what the kernel sampled up to now,
// and returns its profile: sample types samples/count and cpu/nanoseconds,
// labels pid, comm and those of the Labeler (container, job, rank), and a
// comment for each process whose stacks look truncated. A second Stop
// returns an error.
func (w *Window) Stop() (*profile.Profile, error) {
	p := w.p
	p.mu.Lock()
	if w.stopped {
		p.mu.Unlock()
		return nil, fmt.Errorf("cpuprof: window already stopped")
	}
	w.stopped = true
	p.drainLocked()
	delete(p.windows, w)
	if len(p.windows) == 0 && p.cont != nil {
		p.setRateLocked(p.cfg.Continuous.Hz)
	}
	p.applyFilterLocked()
	p.mu.Unlock()
	return w.profile(time.Now()), nil
}

func (w *Window) profile(end time.Time) *profile.Profile {
	hz := w.p.cfg.Hz
	if w == w.p.cont {
		hz = w.p.cfg.Continuous.Hz
	}
	period := int64(time.Second) / int64(hz)
	prof := &profile.Profile{
		SampleType: []*profile.ValueType{
			{Type: "samples", Unit: "count"},
			{Type: "cpu", Unit: "nanoseconds"},
		},
		DefaultSampleType: "cpu",
		PeriodType:        &profile.ValueType{Type: "cpu", Unit: "nanoseconds"},
		Period:            period,
		TimeNanos:         w.start.UnixNano(),
		DurationNanos:     end.Sub(w.start).Nanoseconds(),
	}
	prof.Comments = append(prof.Comments, fmt.Sprintf("loupe eBPF CPU profile: %d Hz per CPU, %s", hz, w.scope()))

	type objKey struct{ file, buildID string }
	type funcKey struct{ name, file string }
	mappings := map[objKey]*profile.Mapping{}
	funcs := map[funcKey]*profile.Function{}
	locs := make([]*profile.Location, len(w.list))
	for i, f := range w.list {
		m, ok := mappings[objKey{f.Object, f.BuildID}]
		if !ok {
			m = &profile.Mapping{ID: uint64(len(prof.Mapping) + 1), File: f.Object, BuildID: f.BuildID, Limit: ^uint64(0)}
			mappings[objKey{f.Object, f.BuildID}] = m
			prof.Mapping = append(prof.Mapping, m)
		}
		loc := &profile.Location{ID: uint64(i + 1), Mapping: m, Address: f.Address}
		if f.Function != "" {
			m.HasFunctions = true
			fn, ok := funcs[funcKey{f.Function, f.File}]
			if !ok {
				fn = &profile.Function{ID: uint64(len(prof.Function) + 1), Name: f.Function, SystemName: f.Function, Filename: f.File}
				funcs[funcKey{f.Function, f.File}] = fn
				prof.Function = append(prof.Function, fn)
			}
			loc.Line = []profile.Line{{Function: fn, Line: f.Line}}
			if f.Line != 0 {
				m.HasFilenames, m.HasLineNumbers = true, true
			}
		}
		locs[i] = loc
	}
	prof.Location = locs
	// pprof takes the first mapping for the main binary: put files before
	// [kernel.kallsyms], [vdso] and the like.
	sort.SliceStable(prof.Mapping, func(i, j int) bool {
		return !strings.HasPrefix(prof.Mapping[i].File, "[") && strings.HasPrefix(prof.Mapping[j].File, "[")
	})
	for i, m := range prof.Mapping {
		m.ID = uint64(i + 1)
	}

	keys := make([]sampleKey, 0, len(w.samples))
	for k := range w.samples {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { // deterministic output
		if keys[i].pid != keys[j].pid {
			return keys[i].pid < keys[j].pid
		}
		if keys[i].comm != keys[j].comm {
			return keys[i].comm < keys[j].comm
		}
		if keys[i].stack != keys[j].stack {
			return keys[i].stack < keys[j].stack
		}
		return keys[i].drained < keys[j].drained
	})
	for _, k := range keys {
		v := w.samples[k]
		s := &profile.Sample{
			Value: []int64{int64(v.n), int64(v.ns)},
			Label: map[string][]string{"pid": {strconv.Itoa(int(k.pid))}, "comm": {k.comm}},
		}
		if k.drained != 0 {
			s.NumLabel = map[string][]int64{traces.ProfileTimeLabel: {k.drained}}
			s.NumUnit = map[string][]string{traces.ProfileTimeLabel: {"nanoseconds"}}
		}
		for name, v := range w.procs[k.pid].labels {
			if v != "" && name != "pid" && name != "comm" {
				s.Label[name] = []string{v}
			}
		}
		for i := 0; i < len(k.stack); i += 8 {
			s.Location = append(s.Location, locs[binary.LittleEndian.Uint64([]byte(k.stack[i:]))-1])
		}
		prof.Sample = append(prof.Sample, s)
	}
	prof.Comments = append(prof.Comments, w.truncationNotes()...)
	return prof
}

func (w *Window) scope() string {
	if w.all {
		return "all processes"
	}
	pids := make([]int, 0, len(w.pids))
	for pid := range w.pids {
		pids = append(pids, int(pid))
	}
	sort.Ints(pids)
	s := make([]string, len(pids))
	for i, pid := range pids {
		s[i] = strconv.Itoa(pid)
	}
	return "pids " + strings.Join(s, ",")
}
