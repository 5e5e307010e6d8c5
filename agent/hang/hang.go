// Package hang watches the NCCL collectives of this host's processes for
// hangs: a communicator whose ranks stopped completing collectives for
// Timeout while some of them had already entered a collective that others
// never reached. It then reports at once which ranks are inside that
// collective, which never arrived and where those are (inside an NCCL call
// or outside NCCL, with every thread's state), for the daemon to take a
// hang capture (with the CPU profiler's immediate stack sample, the GPU
// samples and the log faults of the stall), and it reports again when the
// communicator makes progress: a recovered job ends the incident.
//
// Progress is any collective or point-to-point call of the communicator
// entering or returning on the host (the NCCL uprobes), and any kernel of
// it ending on the GPU (the NCCL profiler plugin, when loaded). A rank
// arrived at a collective once its call returned (NCCL enqueued it); a
// rank blocked inside the call has not. A job that only slows down keeps
// making progress and is never reported. Communicators whose creation the
// agent missed are matched across ranks by call pattern, as captures are
// (traces.NCCLMatcher); streams of different jobs are never matched.
//
// Limits: a host only sees its own ranks, so the rank that never arrived
// is named by the agent on its host; a host whose ranks all wait inside
// the collective reports nothing. Ranks that legitimately wait longer than
// Timeout (one rank writing a checkpoint while the others sit in the next
// collective) need a longer Timeout.
package hang

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/google/pprof/profile"

	"github.com/loupe-dev/loupe/agent/nccl"
	"github.com/loupe-dev/loupe/traces"
)

// Config configures hang detection (the hang: section of the agent's YAML).
type Config struct {
	// Enabled turns hang detection on (it needs the NCCL tracer).
	Enabled bool `yaml:"enabled"`
	// Timeout is how long a communicator may make no progress, with some
	// ranks inside a collective the others never reached, before it is a
	// hang.
	Timeout time.Duration `yaml:"timeout"`
	// CheckInterval is how often communicators are checked.
	CheckInterval time.Duration `yaml:"check_interval"`
	// Lookback is how much history before the detection a hang capture
	// holds (GPU samples, NCCL calls, log faults).
	Lookback time.Duration `yaml:"lookback"`
	// StackSample is how long the CPU profiler samples the stuck processes
	// right after the detection.
	StackSample time.Duration `yaml:"stack_sample"`
	// ProcRoot is where the host's /proc is mounted.
	ProcRoot string `yaml:"-"`
}

// DefaultConfig works with no configuration.
func DefaultConfig() Config {
	return Config{Enabled: true, Timeout: 60 * time.Second, CheckInterval: time.Second, Lookback: 2 * time.Minute,
		StackSample: 2 * time.Second, ProcRoot: "/proc"}
}

// Validate checks the durations.
func (c Config) Validate() error {
	if c.Timeout < time.Second || c.CheckInterval <= 0 || c.CheckInterval > c.Timeout {
		return fmt.Errorf("hang.timeout %v must be at least 1s and hang.check_interval %v positive and at most the timeout", c.Timeout, c.CheckInterval)
	}
	if c.Lookback < 0 || c.StackSample <= 0 {
		return fmt.Errorf("hang.lookback %v must not be negative and hang.stack_sample %v must be positive", c.Lookback, c.StackSample)
	}
	return nil
}

// Source is the NCCL tracer as the detector sees it (nccl.Tracer): the
// probes' events live, the profiler plugin's latest word per communicator
// when asked.
type Source interface {
	Subscribe(buf int) (<-chan traces.NCCLEvent, func())
	InFlight() ([]nccl.InFlightCall, error)
	PluginLatest() []traces.NCCLEvent
}

// Hang is one detected hang, or a hung communicator's recovery.
type Hang struct {
	Job    string
	PIDs   []int
	Report traces.NCCLHang
}

// CaptureID names the capture of this report: unique per hang and state.
func (h *Hang) CaptureID() string {
	return fmt.Sprintf("%s-%s-%s", traces.TriggerNCCLHang, h.Report.State, strings.TrimPrefix(h.Report.ID, "hang-")[:12])
}

// Reason is the sentence a capture's trigger carries.
func (h *Hang) Reason() string {
	r := &h.Report
	var missing, arrived []string
	for _, rk := range r.Ranks {
		name := "rank " + strconv.Itoa(rk.Rank)
		if rk.State == traces.HangRankMissing {
			where := "outside NCCL"
			switch {
			case rk.Exited:
				where = "(its process exited)"
			case rk.InNCCL:
				where = "inside NCCL (" + rk.InCall + ")"
			}
			missing = append(missing, name+" "+where)
		} else {
			arrived = append(arrived, strconv.Itoa(rk.Rank))
		}
	}
	if r.State == traces.HangStateRecovered {
		return fmt.Sprintf("NCCL communicator %x recovered at %s after stalling at collective %d for %v", r.CommID,
			r.Recovered.UTC().Format(time.RFC3339), r.Seq, r.Recovered.Sub(r.StalledSince).Round(time.Second))
	}
	return fmt.Sprintf("NCCL hang: %s never arrived at collective %d (%s) of communicator %x, which ranks %s entered; no progress for %v",
		strings.Join(missing, ", "), r.Seq, r.Op, r.CommID, strings.Join(arrived, ","), r.Detected.Sub(r.StalledSince).Round(time.Second))
}

// Finish adds the stack sample taken right after the detection: each
// rank's hottest on-CPU stack, and whether it runs NCCL's code.
func (h *Hang) Finish(prof *profile.Profile) traces.NCCLHang {
	r := h.Report
	r.Ranks = slices.Clone(r.Ranks)
	if prof == nil {
		return r
	}
	for i := range r.Ranks {
		rk := &r.Ranks[i]
		st, inNCCL := hottestStack(prof, rk.PID)
		rk.Stack = st
		if inNCCL && !rk.InNCCL {
			rk.InNCCL, rk.InCall = true, "running NCCL code"
		}
	}
	return r
}

// hottestStack is the pid's stack with the most samples, leaf first, and
// whether it passes through libnccl.
func hottestStack(prof *profile.Profile, pid int) ([]string, bool) {
	want := strconv.Itoa(pid)
	var best *profile.Sample
	for _, s := range prof.Sample {
		if len(s.Label["pid"]) == 0 || s.Label["pid"][0] != want || len(s.Value) == 0 {
			continue
		}
		if best == nil || s.Value[0] > best.Value[0] {
			best = s
		}
	}
	if best == nil {
		return nil, false
	}
	var out []string
	inNCCL := false
	for _, loc := range best.Location {
		if loc.Mapping != nil && strings.Contains(filepath.Base(loc.Mapping.File), "libnccl") {
			inNCCL = true
		}
		name := fmt.Sprintf("%#x", loc.Address)
		if len(loc.Line) > 0 && loc.Line[0].Function != nil {
			name = loc.Line[0].Function.Name
		}
		out = append(out, name)
	}
	return out, inNCCL
}

// Detector watches communicators. Create it with New and Run it.
type Detector struct {
	cfg   Config
	src   Source
	jobOf func(pid int) string
	on    func(*Hang)
	log   *slog.Logger
	now   func() time.Time

	hangs, recoveries *metrics.Counter

	mu      sync.Mutex
	streams map[streamKey]*stream
	open    map[string]*episode // by communicator key
}

type streamKey struct {
	pid    int32
	handle uint64 // ncclComm_t; for plugin-only processes, the commHash
}

// recentCalls is how many of a stream's latest collectives are kept for
// matching communicators whose creation was missed.
const recentCalls = 64

// stream is one process's calls on one communicator.
type stream struct {
	key      streamKey
	job      string
	rank     int32
	world    int32
	commID   uint64
	matched  string
	last     traces.NCCLEvent // latest collective
	hasLast  bool
	activity time.Time // latest call entry or return, or kernel end
	recent   []traces.NCCLEvent
	gpu      string // the plugin's latest word on its kernels
	plugin   bool   // fed by the plugin alone (no probes on the process)
}

// episode is an open hang.
type episode struct {
	hang     *Hang
	detected time.Time
}

// New returns a detector that calls on for every hang and recovery (from
// its Run goroutine). jobOf names a process's job.
func New(cfg Config, src Source, jobOf func(pid int) string, on func(*Hang), logger *slog.Logger, set *metrics.Set) *Detector {
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if logger == nil {
		logger = slog.Default()
	}
	if set == nil {
		set = metrics.NewSet()
	}
	return &Detector{
		cfg: cfg, src: src, jobOf: jobOf, on: on, log: logger.With("component", "hang"), now: time.Now,
		hangs:      set.GetOrCreateCounter("loupe_nccl_hangs_total"),
		recoveries: set.GetOrCreateCounter("loupe_nccl_hang_recoveries_total"),
		streams:    map[streamKey]*stream{},
		open:       map[string]*episode{},
	}
}

// Run follows the tracer's events and checks the communicators every
// CheckInterval until ctx ends.
func (d *Detector) Run(ctx context.Context) error {
	ch, cancel := d.src.Subscribe(1 << 14)
	defer cancel()
	tick := time.NewTicker(d.cfg.CheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-ch:
			if !ok {
				return nil
			}
			d.Observe(e)
		case <-tick.C:
			for _, h := range d.Check() {
				d.on(h)
			}
		}
	}
}

// Observe records one NCCL call.
func (d *Detector) Observe(e traces.NCCLEvent) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.observeLocked(e)
}

func (d *Detector) observeLocked(e traces.NCCLEvent) {
	plugin := e.Source == traces.SourcePlugin
	k := streamKey{e.PID, e.CommHandle}
	if plugin {
		k.handle = e.CommID
	}
	if k.handle == 0 {
		return // group calls
	}
	s := d.streams[k]
	if s == nil {
		if plugin && d.probedLocked(e.PID) {
			d.notePluginLocked(e)
			return
		}
		s = &stream{key: k, rank: e.JobRank(), world: e.WorldSize, plugin: plugin}
		if d.jobOf != nil {
			s.job = d.jobOf(int(e.PID))
		}
		d.streams[k] = s
	}
	end := time.Unix(0, e.TimeNs+e.DurationNs)
	if e.GPUEndNs > 0 {
		end = time.Unix(0, max(e.TimeNs+e.DurationNs, e.GPUEndNs))
	}
	if end.After(s.activity) {
		s.activity = end
	}
	if !e.IsCollective() || e.Seq < 0 {
		return
	}
	if e.CommID != 0 && e.Matched != traces.MatchPattern {
		s.commID, s.matched = e.CommID, e.Matched
	}
	newer := !s.hasLast || e.Seq > s.last.Seq
	if newer {
		s.last, s.hasLast = e, true
	}
	if !plugin || newer { // the plugin's latest record comes again at every check
		s.recent = append(s.recent, e)
	}
	if len(s.recent) > 2*recentCalls {
		s.recent = append(s.recent[:0], s.recent[len(s.recent)-recentCalls:]...)
	}
	if plugin {
		s.gpu = gpuState(e)
	}
}

// probedLocked reports whether the probes see the process: then its
// plugin records only say what its GPU does.
func (d *Detector) probedLocked(pid int32) bool {
	for k, s := range d.streams {
		if k.pid == pid && !s.plugin {
			return true
		}
	}
	return false
}

// notePluginLocked keeps the plugin's word on a probed process's kernels
// on its streams.
func (d *Detector) notePluginLocked(e traces.NCCLEvent) {
	for k, s := range d.streams {
		if k.pid == e.PID && !s.plugin {
			s.gpu = gpuState(e)
			if e.GPUEndNs > 0 && time.Unix(0, e.GPUEndNs).After(s.activity) {
				s.activity = time.Unix(0, e.GPUEndNs)
			}
		}
	}
}

func gpuState(e traces.NCCLEvent) string {
	switch {
	case e.GPUStartNs == 0:
		return fmt.Sprintf("kernel of collective %d (%s) not started when last reported", e.Seq, e.Op)
	case e.GPUEndNs == 0:
		return fmt.Sprintf("kernel of collective %d (%s) started at %s, not ended", e.Seq, e.Op,
			time.Unix(0, e.GPUStartNs).UTC().Format(time.RFC3339Nano))
	}
	return fmt.Sprintf("kernel of collective %d (%s) ended at %s", e.Seq, e.Op, time.Unix(0, e.GPUEndNs).UTC().Format(time.RFC3339Nano))
}

// member is a stream within a communicator, with its Seq aligned.
type member struct {
	s    *stream
	last int64
}

// Check looks at every communicator once and returns the new hangs and
// recoveries.
func (d *Detector) Check() []*Hang {
	plugin := d.src.PluginLatest()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range plugin {
		d.observeLocked(e)
	}
	now := d.now()
	d.dropIdleLocked(now)
	var out []*Hang
	for key, members := range d.communicatorsLocked() {
		var activity time.Time
		for _, m := range members {
			if m.s.activity.After(activity) {
				activity = m.s.activity
			}
		}
		if ep := d.open[key]; ep != nil {
			if activity.After(ep.hang.Report.StalledSince) {
				rep := ep.hang.Report
				rep.State, rep.Recovered = traces.HangStateRecovered, activity
				delete(d.open, key)
				d.recoveries.Inc()
				d.log.Info("hung NCCL communicator recovered", "comm", fmt.Sprintf("%x", rep.CommID), "seq", rep.Seq)
				out = append(out, &Hang{Job: ep.hang.Job, PIDs: ep.hang.PIDs, Report: rep})
			}
			continue
		}
		if now.Sub(activity) < d.cfg.Timeout {
			continue
		}
		low, high := members[0].last, members[0].last
		for _, m := range members[1:] {
			low, high = min(low, m.last), max(high, m.last)
		}
		if low == high {
			continue // stopped together: finished, or waiting on another host
		}
		h := d.hangLocked(key, members, low+1, activity, now)
		d.open[key] = &episode{hang: h, detected: now}
		d.hangs.Inc()
		d.log.Warn("NCCL hang", "reason", h.Reason())
		out = append(out, h)
	}
	return out
}

// idleFor is how long a stream is kept without activity (and not in an
// open hang): long enough for the slowest detection.
func (d *Detector) idleFor() time.Duration { return max(10*d.cfg.Timeout, 10*time.Minute) }

func (d *Detector) dropIdleLocked(now time.Time) {
	for k, s := range d.streams {
		if now.Sub(s.activity) > d.idleFor() {
			delete(d.streams, k)
		}
	}
}

// communicatorsLocked groups the streams into communicators by job: by
// known id, and by matching the others' recent calls.
func (d *Detector) communicatorsLocked() map[string][]member {
	byJob := map[string][]*stream{}
	for _, s := range d.streams {
		if s.hasLast {
			byJob[s.job] = append(byJob[s.job], s)
		}
	}
	out := map[string][]member{}
	for job, ss := range byJob {
		slices.SortFunc(ss, func(a, b *stream) int {
			return cmp.Or(cmp.Compare(a.key.pid, b.key.pid), cmp.Compare(a.key.handle, b.key.handle))
		})
		var m traces.NCCLMatcher
		unknown := false
		for _, s := range ss {
			unknown = unknown || s.commID == 0
			for i := range s.recent {
				m.Add("", &s.recent[i])
			}
		}
		if unknown {
			m.Match()
		}
		for _, s := range ss {
			last := s.last
			if s.commID == 0 {
				m.Apply("", &last)
				if last.CommID == 0 {
					continue // not matched to another rank
				}
			}
			key := job + "/" + strconv.FormatUint(last.CommID, 16)
			out[key] = append(out[key], member{s: s, last: last.Seq})
		}
	}
	for k, ms := range out {
		if len(ms) < 2 {
			delete(out, k)
		}
	}
	return out
}

// hangLocked builds the report of a hang at collective seq.
func (d *Detector) hangLocked(key string, members []member, seq int64, stalled, now time.Time) *Hang {
	inflight, err := d.src.InFlight()
	if err != nil {
		d.log.Debug("no NCCL calls in flight for the hang report", "err", err)
	}
	h := &Hang{Job: members[0].s.job}
	id := sha256.Sum256([]byte(fmt.Sprintf("%s/%d", key, seq)))
	r := &h.Report
	r.ID = "hang-" + hex.EncodeToString(id[:12])
	r.State, r.Seq, r.StalledSince, r.Detected, r.TimeoutNs = traces.HangStateHung, seq, stalled, now, d.cfg.Timeout.Nanoseconds()
	r.WorldSize = -1
	for _, m := range members {
		s := m.s
		if r.CommID == 0 {
			r.CommID, r.Matched = s.commID, s.matched
			if s.commID == 0 {
				r.CommID, r.Matched = commOfKey(key), traces.MatchPattern
			}
		}
		r.WorldSize = max(r.WorldSize, int(s.world))
		rk := traces.NCCLHangRank{Rank: int(s.rank), PID: int(s.key.pid), LastSeq: m.last, LastCall: time.Unix(0, s.last.TimeNs), GPU: s.gpu}
		if m.last >= seq {
			rk.State = traces.HangRankArrived
			if r.Op == "" && m.last == seq {
				r.Op, r.Count, r.Datatype = s.last.Op, s.last.Count, s.last.Datatype
			}
		} else {
			rk.State = traces.HangRankMissing
		}
		for _, c := range inflight {
			if int(c.PID) == rk.PID {
				rk.InNCCL = true
				rk.InCall = fmt.Sprintf("%s since %s", c.Op, c.Since.UTC().Format(time.RFC3339Nano))
				if c.Comm == s.key.handle && c.Seq >= 0 {
					rk.InCall = fmt.Sprintf("%s (collective %d) since %s", c.Op, c.Seq+(m.last-s.last.Seq), c.Since.UTC().Format(time.RFC3339Nano))
				}
			}
		}
		if _, err := os.Stat(filepath.Join(d.cfg.ProcRoot, strconv.Itoa(rk.PID))); err != nil {
			rk.Exited, rk.InNCCL, rk.InCall = true, false, ""
		}
		rk.Threads = threads(d.cfg.ProcRoot, rk.PID)
		r.Ranks = append(r.Ranks, rk)
		h.PIDs = append(h.PIDs, rk.PID)
	}
	if r.Op == "" {
		// The arrived ranks are past seq; name the call from a recent one.
		for _, m := range members {
			for _, e := range m.s.recent {
				if e.Seq+(m.last-m.s.last.Seq) == seq {
					r.Op, r.Count, r.Datatype = e.Op, e.Count, e.Datatype
				}
			}
		}
	}
	slices.SortFunc(r.Ranks, func(a, b traces.NCCLHangRank) int { return cmp.Compare(a.Rank, b.Rank) })
	slices.Sort(h.PIDs)
	return h
}

// commOfKey is the matched id in a communicator key (job/id).
func commOfKey(key string) uint64 {
	_, id, _ := strings.Cut(key[strings.LastIndexByte(key, '/'):], "/")
	v, _ := strconv.ParseUint(id, 16, 64)
	return v
}
