package analyzers

import (
	"fmt"

	"github.com/loupe-dev/loupe/traces"
)

// Thresholds of KinetoOverlap.
const (
	commShareMin = 0.05 // communication must take this share of the span to matter
	overlapWarn  = 0.5  // overlap ratio below which: warning
	overlapCrit  = 0.2
)

// KinetoOverlap is analyzer 6: communication/computation overlap.
var KinetoOverlap = &Analyzer{
	Name:    "kineto-comm-overlap",
	Version: "2",
	Doc: `communication/computation overlap per rank

From each rank's Kineto trace, as HolisticTraceAnalysis's get_comm_comp_overlap
computes it: the time computation kernels run while communication kernels
run, over the time communication kernels run. Communication kernels are NCCL's,
both ncclKernel_* and the ncclDevKernel_* names of NCCL 2.19+. A rank whose
communication takes at least 5% of its GPU span is flagged when less than
half of it overlaps computation (critical below 20%).

Impact: exposed communication time, during which no computation runs.`,
	Requires: kinetoRequires,
	Run:      runKinetoOverlap,
}

func runKinetoOverlap(pass *Pass) error {
	return eachKinetoRank(pass, func(r *KinetoRank) {
		o := r.Overlap
		if share(float64(o.Communication), float64(r.Temporal.Span)) < commShareMin {
			return
		}
		ratio := o.Ratio()
		sev := gradeBelow(ratio, overlapWarn, overlapCrit)
		if sev == "" {
			return
		}
		var commKernels int64
		for _, k := range r.Kernels {
			if k.Class == ClassCommunication {
				commKernels += k.Count
			}
		}
		exposed := o.Communication - o.Overlapped
		ev := []traces.Metric{
			metric("comp_comm_overlap_pctg", RoundPct(ratio), unitPercent),
			metric("communication_time", micros(o.Communication), unitMicros),
			metric("overlapped_time", micros(o.Overlapped), unitMicros),
			metric("exposed_communication_time", micros(exposed), unitMicros),
			metric("communication_share_of_span", share(float64(o.Communication), float64(r.Temporal.Span)), unitRatio),
			metric("communication_kernels", float64(commKernels), unitCount),
		}
		pass.Report(kinetoFinding(r,
			fmt.Sprintf("Only %.1f%% of communication overlaps computation on %s", 100*ratio, r.where()),
			sev, exposed, ev,
			"Communication runs with nothing to hide it. Overlap it with computation: bucketed gradient "+
				"all-reduce during backward (DDP bucket_cap_mb, FSDP backward_prefetch/forward_prefetch), "+
				"communication on its own stream, fewer and larger collectives; check that no synchronisation "+
				"waits for each collective right after it is issued."))
	})
}

// RoundPct is a ratio as a percentage with HTA's 2 decimals.
func RoundPct(r float64) float64 {
	return float64(int64(r*10000+0.5)) / 100
}
