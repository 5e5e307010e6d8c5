package analyzers

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/loupe-dev/loupe/traces"
)

// RootCause is the correlation step that runs after the analyzers (Execute
// calls Correlate). It has no Run of its own and is not in All; its name
// and version go into the lineage like an analyzer's, so that backfill
// re-correlates when the rules change.
var RootCause = &Analyzer{
	Name:    "root-cause",
	Version: "1",
	Doc: `root causes: findings about the same rank or GPU of one capture joined into one explained finding

A straggler is a target of nccl-straggler (a rank that arrives last at
collectives) or of step-imbalance (a rank whose steps are slower than the
median rank's) at warning severity or above. For each straggler, the other findings of the same capture
(the same window) about the same host and rank or GPU are checked against
these rules, strongest first; the first that agrees names the root cause:

  failing GPU            hw-faults reports an XID, ECC, row-remapping or lost-GPU
                         fault on the straggler's GPU
  thermal straggler      throttle reports thermal throttling (0x20, 0x40) on it
  power-throttled        throttle reports power capping or a power brake on it
  straggler
  input-bound straggler  input-bound reports the straggler's GPU idle while its CPU
                         profile is dominated by data loading (kineto-idle-time's
                         host wait on that rank agrees too)

The joined finding is scoped to the straggler; its evidence is the chain of
numbers from each signal, prefixed by the analyzer that measured them; its
recommendation states the chain and the fix; its impact is the waiting the
straggler costs the other ranks (the larger of the two straggler
analyzers'). Its Explains lists the joined findings, and each of those names
it in RootCauses; they stay as they were otherwise. A straggler that no rule
explains, and a capture without stragglers, get no root-cause finding.`,
}

// A joinRule explains a straggler by another finding about its place.
type joinRule struct {
	cause, title string
	// agrees reports whether a finding (and its target about the
	// straggler's place) is this rule's evidence.
	agrees func(f *traces.Finding) bool
	// chain says, in words, what the evidence shows.
	chain func(ev map[string]float64, titles []string) string
	fix   string
}

// Analyzer names the rules read.
const (
	nameNCCLStraggler = "nccl-straggler"
	nameStepImbalance = "step-imbalance"
	nameThrottle      = "throttle"
	nameHWFaults      = "hw-faults"
	nameInputBound    = "input-bound"
	nameKinetoIdle    = "kineto-idle-time"
)

var joinRules = []joinRule{
	{
		cause: "failing-gpu", title: "Failing GPU: hardware faults on the GPU every rank waits for",
		agrees: func(f *traces.Finding) bool { return f.Analyzer == nameHWFaults },
		chain: func(_ map[string]float64, titles []string) string {
			return "its GPU reports " + strings.Join(titles, "; ")
		},
		fix: "Take the GPU out of service: drain the host (or exclude this GPU from the scheduler), reset it and run " +
			"dcgmi diag -r 3; replace it if the faults recur. Until then the whole job runs at the pace of this GPU, " +
			"and a fatal fault will stop it.",
	},
	{
		cause: "thermal-straggler", title: "Thermal straggler: a GPU slowed for heat holds up every collective",
		agrees: func(f *traces.Finding) bool {
			return f.Analyzer == nameThrottle && strings.HasPrefix(f.Title, "Thermal")
		},
		chain: func(ev map[string]float64, _ []string) string {
			return fmt.Sprintf("its GPU was thermally throttled %.0f%% of its busy time, at %.0f MHz against %.0f MHz on its peers (%.0f C on average)",
				100*ev[nameThrottle+": thermal_time_share"], ev[nameThrottle+": sm_clock_mean_throttled"],
				ev[nameThrottle+": sm_clock_reference"], ev[nameThrottle+": gpu_temp_mean_active"])
		},
		fix: "Fix this GPU's cooling: check its fans, the airflow and inlet temperature of the chassis and rack, and " +
			"blanking panels (nvidia-smi -q -d TEMPERATURE,PERFORMANCE shows the slowdown temperature); move the rank " +
			"to a healthy GPU meanwhile. Every rank waits for this one at each collective.",
	},
	{
		cause: "power-throttled-straggler", title: "Power-throttled straggler: a power-capped GPU holds up every collective",
		agrees: func(f *traces.Finding) bool {
			return f.Analyzer == nameThrottle && (strings.HasPrefix(f.Title, "Power") || strings.HasPrefix(f.Title, "Hardware power"))
		},
		chain: func(ev map[string]float64, _ []string) string {
			sh := max(ev[nameThrottle+": power_time_share"], ev[nameThrottle+": power-brake_time_share"])
			return fmt.Sprintf("its GPU was power-throttled %.0f%% of its busy time, at %.0f MHz against %.0f MHz on its peers",
				100*sh, ev[nameThrottle+": sm_clock_mean_throttled"], ev[nameThrottle+": sm_clock_reference"])
		},
		fix: "Compare this GPU's power limit with its peers' and the board default (nvidia-smi -q -d POWER) and restore it " +
			"(nvidia-smi -pl); for a power brake, check the PSUs and the BMC's event log. Every rank waits for this one.",
	},
	{
		cause: "input-bound-straggler", title: "Input-bound straggler: data loading starves the rank every other rank waits for",
		agrees: func(f *traces.Finding) bool { return f.Analyzer == nameInputBound },
		chain: func(ev map[string]float64, _ []string) string {
			return fmt.Sprintf("its GPU idled %.0f%% of the window (%.1f s) while %.0f%% of its CPU samples were in data loading",
				100*ev[nameInputBound+": gpu_idle_share"], ev[nameInputBound+": gpu_idle_seconds"], 100*ev[nameInputBound+": cpu_data_loading_share"])
		},
		fix: "Speed up this rank's input pipeline: raise DataLoader(num_workers=...), set pin_memory=True and " +
			"persistent_workers=True, raise prefetch_factor; decode and augment on the GPU (NVIDIA DALI), or preprocess " +
			"offline. Only this rank is slow, so also compare its host's free CPUs and contention with the others'.",
	},
}

// place is where a straggler is: host and rank, and its GPU when known.
type place struct {
	host      string
	rank, gpu int
}

// covers reports whether a finding target (or scope) at host, rank, gpu is
// about the place p.
func (p place) covers(host string, rank, gpu int) bool {
	return host == p.host && (rank >= 0 && rank == p.rank || gpu >= 0 && gpu == p.gpu)
}

// targetsOf are a finding's targets, or its scope as one target when it
// carries none (Kineto findings, records from before targets were kept).
func targetsOf(f *traces.Finding) []traces.Target {
	if len(f.Targets) > 0 {
		return f.Targets
	}
	if f.Scope.Host == "" || f.Scope.Rank < 0 && f.Scope.GPU < 0 {
		return nil
	}
	return []traces.Target{{Host: f.Scope.Host, GPU: f.Scope.GPU, Rank: f.Scope.Rank, Severity: f.Severity,
		GPUSeconds: f.Impact.GPUSeconds, Evidence: f.Evidence}}
}

// Correlate joins the findings of one capture into root causes (see
// RootCause's doc). It returns fs without any earlier root-cause findings
// or links, plus the new root-cause findings, with the links set; fs itself
// is not modified. It is idempotent, so the runner calls it again after
// merging a backfill with the findings it kept.
func Correlate(in *Input, fs []traces.Finding) []traces.Finding {
	out := make([]traces.Finding, 0, len(fs))
	for _, f := range fs {
		if f.Analyzer == RootCause.Name {
			continue
		}
		f.RootCauses = nil
		out = append(out, f)
	}
	// The stragglers, by place, with what each straggler analyzer says.
	type straggler struct {
		place
		findings []int // indexes into out
		targets  []traces.Target
	}
	var stragglers []*straggler
	byPlace := map[place]*straggler{}
	for i := range out {
		f := &out[i]
		if f.Analyzer != nameNCCLStraggler && f.Analyzer != nameStepImbalance {
			continue
		}
		for _, t := range targetsOf(f) {
			if t.Rank < 0 || traces.SeverityRank(t.Severity) < traces.SeverityRank(traces.SeverityWarning) {
				continue
			}
			p := place{t.Host, t.Rank, t.GPU}
			s := byPlace[p]
			if s == nil {
				s = &straggler{place: p}
				byPlace[p] = s
				stragglers = append(stragglers, s)
			}
			s.findings = append(s.findings, i)
			s.targets = append(s.targets, t)
		}
	}
	slices.SortFunc(stragglers, func(a, b *straggler) int {
		return cmp.Or(cmp.Compare(a.host, b.host), cmp.Compare(a.rank, b.rank))
	})
	window := windowGPUSeconds(in)
	base := captureScope(in)
	simulated := slices.ContainsFunc(in.Hosts, func(h Host) bool { return h.Manifest.Simulated })
	var joined []traces.Finding
	for _, s := range stragglers {
		for _, rule := range joinRules {
			var matched []int
			var evidence []traces.Target
			for i := range out {
				f := &out[i]
				if !rule.agrees(f) {
					continue
				}
				for _, t := range targetsOf(f) {
					if s.covers(t.Host, t.Rank, t.GPU) {
						matched = append(matched, i)
						evidence = append(evidence, t)
						break
					}
				}
			}
			if len(matched) == 0 {
				continue
			}
			if rule.cause == "input-bound-straggler" {
				// The Kineto trace's host wait on the same rank is a second witness.
				for i := range out {
					f := &out[i]
					if f.Analyzer == nameKinetoIdle && s.covers(f.Scope.Host, f.Scope.Rank, f.Scope.GPU) {
						matched = append(matched, i)
						evidence = append(evidence, targetsOf(f)[0])
					}
				}
			}
			first := &out[s.findings[0]]
			rc := explain(rule, s.place, out, append(slices.Clone(s.findings), matched...), append(slices.Clone(s.targets), evidence...))
			complete(&rc, RootCause, base, first.Lineage.AnalyzerVersions, in, simulated, first.Created)
			rc.Impact.WindowShare = share(rc.Impact.GPUSeconds, window)
			for _, i := range append(slices.Clone(s.findings), matched...) {
				if !slices.Contains(rc.Explains, out[i].ID) {
					rc.Explains = append(rc.Explains, out[i].ID)
				}
				if !slices.Contains(out[i].RootCauses, rc.ID) {
					out[i].RootCauses = append(out[i].RootCauses, rc.ID)
				}
			}
			joined = append(joined, rc)
			break
		}
	}
	out = append(out, joined...)
	slices.SortStableFunc(out, compareFindings)
	return out
}

// explain builds the root-cause finding of rule for the straggler at p
// from the findings at idx and their targets about p (targets[k] belongs
// to all[idx[k]]). The straggler findings come first.
func explain(rule joinRule, p place, all []traces.Finding, idx []int, targets []traces.Target) traces.Finding {
	rc := traces.Finding{
		Title: rule.title, Severity: traces.SeverityInfo,
		Scope: traces.Scope{Host: p.host, GPU: p.gpu, Rank: p.rank},
	}
	ev := map[string]float64{}
	var titles, straggling []string
	inputs := map[string]bool{}
	for k, i := range idx {
		f, t := &all[i], targets[k]
		if traces.SeverityRank(t.Severity) > traces.SeverityRank(rc.Severity) {
			rc.Severity = t.Severity
		}
		if rc.Scope.GPU < 0 && t.GPU >= 0 {
			rc.Scope.GPU = t.GPU
		}
		for _, m := range t.Evidence {
			m.Name = f.Analyzer + ": " + m.Name
			rc.Evidence = append(rc.Evidence, m)
			ev[m.Name] = m.Value
		}
		switch f.Analyzer {
		case nameNCCLStraggler:
			rc.Impact.GPUSeconds = max(rc.Impact.GPUSeconds, t.GPUSeconds)
			straggling = append(straggling, fmt.Sprintf("arrived last at %.0f%% of its collectives, making the other ranks wait %.1f GPU-s",
				100*ev[f.Analyzer+": arrived_last_share"], t.GPUSeconds))
		case nameStepImbalance:
			rc.Impact.GPUSeconds = max(rc.Impact.GPUSeconds, t.GPUSeconds)
			straggling = append(straggling, fmt.Sprintf("its mean step took %.1f ms, %.2fx the median rank's",
				ev[f.Analyzer+": mean_step"], ev[f.Analyzer+": over_median"]))
		default:
			titles = append(titles, f.Title)
		}
		for _, fr := range f.Frames {
			if !slices.Contains(rc.Frames, fr) {
				rc.Frames = append(rc.Frames, fr)
			}
		}
		for _, in := range f.Lineage.Inputs {
			inputs[in] = true
		}
	}
	for in := range inputs {
		rc.Lineage.Inputs = append(rc.Lineage.Inputs, in)
	}
	slices.Sort(rc.Lineage.Inputs)
	rc.Recommendation = fmt.Sprintf("Rank %d on %s %s; %s. Fix: %s",
		p.rank, p.host, strings.Join(straggling, " and "), rule.chain(ev, titles), rule.fix)
	return rc
}
