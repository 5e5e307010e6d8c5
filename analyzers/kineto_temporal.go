package analyzers

import (
	"fmt"

	"github.com/loupe-dev/loupe/traces"
)

// FLOPsPerStepMetric names the evidence of a rank's operator FLOPs per
// profiler step in the temporal breakdown's findings.
const FLOPsPerStepMetric = "flops_per_step"

// KinetoTemporal is the temporal breakdown report.
var KinetoTemporal = &Analyzer{
	Name:    "kineto-temporal-breakdown",
	Version: "2",
	Doc: `temporal breakdown of each rank's GPU time: computation, communication, memory, idle

From each rank's Kineto trace, as HolisticTraceAnalysis's
get_temporal_breakdown computes it: the span from the first GPU event's start
to the last one's end; idle is the span minus the union of all GPU events;
computation is the union of computation kernels; the rest is non-computation,
split here into communication (NCCL kernels, ncclKernel_* and ncclDevKernel_*,
while no computation runs), memory (memcpy/memset while neither runs) and
other (synchronization). Times are whole microseconds rounded as HTA rounds
them, and GPU work launched in the last ProfilerStep is left out as HTA does.
One info finding per rank, its impact the idle time; a warning names each
trace that could not be read. A trace recorded with with_flops=True adds
flops_per_step: the operators' flops arguments summed over the trace, over
its ProfilerSteps (goodput's MFU reads it).`,
	Requires: kinetoRequires,
	Run:      runKinetoTemporal,
}

func runKinetoTemporal(pass *Pass) error {
	ranks, unread, err := kinetoRanks(pass)
	if err != nil {
		return err
	}
	if unread != nil {
		pass.Report(traces.Finding{
			Title:          "Kineto traces that could not be read",
			Severity:       traces.SeverityWarning,
			Scope:          traces.Scope{GPU: -1, Rank: -1},
			Evidence:       []traces.Metric{metric("traces_read", float64(len(ranks)), unitCount)},
			Recommendation: "The Kineto analyses left these traces out: " + unread.Error(),
		})
	}
	for _, r := range ranks {
		b := r.Temporal
		ev := []traces.Metric{
			metric("kernel_time", micros(b.Span), unitMicros),
			metric("idle_time", micros(b.Idle), unitMicros),
			metric("compute_time", micros(b.Compute), unitMicros),
			metric("non_compute_time", micros(b.NonCompute), unitMicros),
			metric("communication_time", micros(b.Communication), unitMicros),
			metric("memory_time", micros(b.Memory), unitMicros),
			metric("other_time", micros(b.Other), unitMicros),
			metric("idle_time_pctg", b.Pct(b.Idle), unitPercent),
			metric("compute_time_pctg", b.Pct(b.Compute), unitPercent),
			metric("non_compute_time_pctg", b.Pct(b.NonCompute), unitPercent),
			metric("communication_time_pctg", b.Pct(b.Communication), unitPercent),
			metric("memory_time_pctg", b.Pct(b.Memory), unitPercent),
			metric("gpu_events", float64(r.GPUEvents), unitCount),
		}
		if f := r.FLOPsPerStep(); f > 0 {
			ev = append(ev, metric(FLOPsPerStepMetric, f, "flop"))
		}
		title := fmt.Sprintf("Temporal breakdown, %s: %.1f%% compute, %.1f%% communication, %.1f%% memory, %.1f%% idle",
			r.where(), b.Pct(b.Compute), b.Pct(b.Communication), b.Pct(b.Memory), b.Pct(b.Idle))
		pass.Report(kinetoFinding(r, title, traces.SeverityInfo, b.Idle, ev,
			"Where idle time dominates, see the kineto-idle-time finding for its causes; where communication "+
				"dominates, see kineto-comm-overlap."))
	}
	return nil
}
