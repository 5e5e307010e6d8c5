package goodput

import (
	"time"

	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces"
)

// Window is one capture window of a run and the in-step badput its
// findings measured.
type Window struct {
	Start, End time.Time
	// Shares maps an in-step cause (data_stall, straggler_wait,
	// comm_exposed) to the share of the window's GPU time it took.
	Shares map[string]float64
	// Measured says which in-step causes the window could show.
	Measured map[string]bool
	// RankFLOPsPerStep is the mean operator FLOPs per step of the window's
	// Kineto traces (one rank each); 0 without flops.
	RankFLOPsPerStep float64
}

// Which analyzers measure which in-step cause, and what a capture needs
// for it (the analyzers' requirements).
var (
	causeAnalyzers = map[string][]string{
		traces.CauseDataStall: {analyzers.InputBound.Name},
		traces.CauseStraggler: {analyzers.NCCLStraggler.Name, analyzers.StepImbalance.Name},
		traces.CauseComm:      {analyzers.KinetoOverlap.Name},
	}
	causeParts = map[string][][]string{ // any of the lists, all parts of one
		traces.CauseDataStall: {{traces.PartCPUProfile, traces.PartGPUSamples}},
		traces.CauseStraggler: {{traces.PartNCCLEvents}, {traces.PartSteps}},
		traces.CauseComm:      {{traces.KinetoDir}},
	}
)

// WindowOf measures one capture window from its findings. parts counts,
// per part name, the host bundles holding it (traces.KinetoDir: the Kineto
// traces); nil when unknown, and then a cause counts as measured when a
// finding shows it.
//
// A window analyzer's share is its findings' Impact.WindowShare summed
// (their GPU-seconds over the window's); a cause measured by two analyzers
// takes the larger. Kineto findings are each about one rank's traced span,
// so kineto-comm-overlap's shares are summed and divided by the number of
// traces. The shares together are at most 1.
func WindowOf(start, end time.Time, parts map[string]int, fs []traces.Finding) Window {
	w := Window{Start: start, End: end, Shares: map[string]float64{}, Measured: map[string]bool{}}
	by := map[string]float64{}
	var flops float64
	var flopsN int
	for _, f := range fs {
		if f.Analyzer == analyzers.RootCause.Name {
			continue // a root cause restates the findings it joins
		}
		by[f.Analyzer] += f.Impact.WindowShare
		if f.Analyzer == analyzers.KinetoTemporal.Name {
			for _, m := range f.Evidence {
				if m.Name == analyzers.FLOPsPerStepMetric && m.Value > 0 {
					flops += m.Value
					flopsN++
				}
			}
		}
	}
	if flopsN > 0 {
		w.RankFLOPsPerStep = flops / float64(flopsN)
	}
	total := 0.0
	for _, cause := range inStepCauses {
		sh := 0.0
		for _, a := range causeAnalyzers[cause] {
			v := by[a]
			if cause == traces.CauseComm {
				v /= float64(max(1, parts[traces.KinetoDir]))
			}
			sh = max(sh, v)
		}
		sh = min(sh, 1-total)
		total += sh
		w.Shares[cause] = sh
		w.Measured[cause] = sh > 0
		if parts != nil {
			w.Measured[cause] = hasParts(parts, causeParts[cause])
		}
	}
	return w
}

func hasParts(parts map[string]int, options [][]string) bool {
	for _, all := range options {
		ok := true
		for _, p := range all {
			ok = ok && parts[p] > 0
		}
		if ok {
			return true
		}
	}
	return false
}
