package analyzers

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/loupe-dev/loupe/traces"
)

// A target is one GPU or rank an analyzer flagged. Several targets of one
// kind of problem become a single finding whose scope is the narrowest that
// covers them all (GPU, rank, host or job), so that a job-wide problem is one
// finding rather than one per GPU.
type target struct {
	Host     *Host
	GPU      int // -1 when the target is a rank without a known GPU
	Rank     int // -1 when unknown
	Severity string
	// Lost is the GPU-seconds the target lost to the problem.
	Lost float64
	// Evidence is about this target alone; in a finding with several targets
	// the worst few are listed, named by where they are.
	Evidence []traces.Metric
}

// maxListed bounds how many targets a multi-target finding names.
const maxListed = 5

// where names a target for humans: "host-1 gpu 3 rank 17".
func (t *target) where() string {
	s := t.Host.Manifest.Host
	if t.GPU >= 0 {
		s += fmt.Sprintf(" gpu %d", t.GPU)
	}
	if t.Rank >= 0 {
		s += fmt.Sprintf(" rank %d", t.Rank)
	}
	return s
}

// finding is the shape every analyzer of this package reports.
type finding struct {
	Title          string
	Targets        []target
	Evidence       []traces.Metric // about the whole finding
	Recommendation string
}

// report turns f into a traces.Finding: scope from its targets, severity
// the worst of theirs, impact their summed loss over the window's
// GPU-seconds. Targets on GPUs that no process of the job uses are the
// host's, not the job's: they become a second, host-wide finding.
func (f *finding) report(pass *Pass) {
	var job, host []target
	for _, t := range f.Targets {
		if t.GPU >= 0 && !t.Host.Manifest.OwnsGPU(t.GPU) {
			host = append(host, t)
		} else {
			job = append(job, t)
		}
	}
	f.reportTargets(pass, job, false)
	f.reportTargets(pass, host, true)
}

func (f *finding) reportTargets(pass *Pass, targets []target, hostWide bool) {
	if len(targets) == 0 {
		return
	}
	ts := slices.Clone(targets)
	slices.SortStableFunc(ts, func(a, b target) int {
		return cmp.Or(cmp.Compare(severityRank[a.Severity], severityRank[b.Severity]), cmp.Compare(b.Lost, a.Lost))
	})
	out := traces.Finding{
		Title:          f.Title,
		Severity:       ts[0].Severity,
		Scope:          scopeOf(ts),
		Recommendation: f.Recommendation,
	}
	if hostWide {
		out.Scope.HostWide = true
		out.Recommendation = "No process of this job uses the GPU: this is the host's problem, not the job's. " + f.Recommendation
	}
	var lost float64
	for _, t := range ts {
		lost += t.Lost
	}
	out.Impact = traces.Impact{GPUSeconds: lost, WindowShare: share(lost, windowGPUSeconds(pass.Input))}
	out.Evidence = append(out.Evidence, f.Evidence...)
	for _, t := range ts[:min(len(ts), traces.MaxTargets)] {
		out.Targets = append(out.Targets, traces.Target{
			Host: t.Host.Manifest.Host, GPU: t.GPU, Rank: t.Rank, Severity: t.Severity, GPUSeconds: t.Lost, Evidence: t.Evidence,
		})
	}
	if len(ts) == 1 {
		out.Evidence = append(out.Evidence, ts[0].Evidence...)
	} else {
		out.Evidence = append(out.Evidence, traces.Metric{Name: "targets_affected", Value: float64(len(ts))})
		for _, t := range ts[:min(len(ts), maxListed)] {
			for _, m := range t.Evidence {
				m.Name = t.where() + ": " + m.Name
				out.Evidence = append(out.Evidence, m)
			}
		}
	}
	pass.Report(out)
}

// scopeOf is the narrowest scope covering every target.
func scopeOf(ts []target) traces.Scope {
	s := traces.Scope{GPU: -1, Rank: -1}
	h := ts[0].Host
	for _, t := range ts[1:] {
		if t.Host != h {
			return s
		}
	}
	s.Host = h.Manifest.Host
	if len(ts) == 1 {
		s.GPU, s.Rank = ts[0].GPU, ts[0].Rank
	}
	return s
}

// windowGPUSeconds is the capture window's GPU time: every host's window
// times the number of devices (or, failing that, ranks) it covers.
func windowGPUSeconds(in *Input) float64 {
	var total float64
	for i := range in.Hosts {
		h := &in.Hosts[i]
		total += h.Seconds() * float64(max(len(h.Manifest.GPUs), len(h.Manifest.Ranks), 1))
	}
	return total
}

// share is part/whole clamped to [0,1], and 0 for an empty whole.
func share(part, whole float64) float64 {
	if whole <= 0 {
		return 0
	}
	return min(max(part/whole, 0), 1)
}

// gradeAbove grades v against rising thresholds: "" below warn.
func gradeAbove(v, warn, crit float64) string {
	switch {
	case v >= crit:
		return traces.SeverityCritical
	case v >= warn:
		return traces.SeverityWarning
	}
	return ""
}

// gradeBelow grades v against falling thresholds: "" above warn.
func gradeBelow(v, warn, crit float64) string { return gradeAbove(-v, -warn, -crit) }

// metric builds one evidence number.
func metric(name string, v float64, unit string) traces.Metric {
	return traces.Metric{Name: name, Value: v, Unit: unit}
}

// Units of evidence numbers.
const (
	unitRatio   = "ratio"
	unitPercent = "percent"
	unitSeconds = "s"
	unitGPUSec  = "gpu_s"
	unitMs      = "ms"
	unitCount   = "count"
	unitMHz     = "MHz"
)

// gpuKey names one device of the capture.
type gpuKey struct {
	host *Host
	gpu  int32
}

// span converts sample counts of one device into seconds, from the spacing
// of its samples.
type span struct {
	first, last int64
	n           int
}

func (s *span) add(t int64) {
	if s.n == 0 || t < s.first {
		s.first = t
	}
	if s.n == 0 || t > s.last {
		s.last = t
	}
	s.n++
}

// perSample is the seconds one sample stands for.
func (s *span) perSample() float64 {
	if s.n < 2 {
		return 0
	}
	return float64(s.last-s.first) / 1e9 / float64(s.n-1)
}

// profiled is the per-GPU state of the DCGM-based analyzers: the spacing of
// all its samples, how many carried profiling fields, and the analyzer's own
// accumulator over those.
type profiled[V any] struct {
	span
	prof int
	v    V
}

// eachProfiledGPU streams the capture's GPU samples into one accumulator per
// device, calling fn for each sample that carries DCGM profiling fields.
func eachProfiledGPU[V any](pass *Pass, fn func(v *V, s *traces.GPUSample)) (map[gpuKey]*profiled[V], error) {
	gpus := map[gpuKey]*profiled[V]{}
	err := EachGPUSample(pass, func(h *Host, s *traces.GPUSample) error {
		k := gpuKey{h, s.GPU}
		a := gpus[k]
		if a == nil {
			a = &profiled[V]{}
			gpus[k] = a
		}
		a.add(s.TimeNs)
		if s.ProfValid {
			a.prof++
			fn(&a.v, s)
		}
		return nil
	})
	return gpus, err
}

// sortedKeys returns m's keys in host then GPU order, so that reports do not
// depend on map order.
func sortedKeys[V any](in *Input, m map[gpuKey]V) []gpuKey {
	order := make(map[*Host]int, len(in.Hosts))
	for i := range in.Hosts {
		order[&in.Hosts[i]] = i
	}
	keys := make([]gpuKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b gpuKey) int {
		return cmp.Or(cmp.Compare(order[a.host], order[b.host]), cmp.Compare(a.gpu, b.gpu))
	})
	return keys
}
