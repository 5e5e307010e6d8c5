package analyzers

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// KinetoKernels is the kernel breakdown report.
var KinetoKernels = &Analyzer{
	Name:    "kineto-kernel-breakdown",
	Version: "2",
	Doc: `top GPU kernels by total time, per rank

From each rank's Kineto trace, as HolisticTraceAnalysis's
get_gpu_kernel_breakdown computes it: per kernel name the count, total, mean,
min, max and standard deviation of durations, for computation and
communication kernels (and memory copies); per class the top 10 names, the
names past 80% of the class's cumulative time pooled as "others". One info
finding per rank; its evidence lists each top kernel's total time.`,
	Requires: kinetoRequires,
	Run:      runKinetoKernels,
}

// Defaults of HTA's get_gpu_kernel_breakdown.
const (
	topKernelCount = 10
	topKernelRatio = 0.8
	othersName     = "others"
	// Templated kernel names run to kilobytes; findings show their start.
	maxNameInTitle    = 96
	maxNameInEvidence = 200
)

func runKinetoKernels(pass *Pass) error {
	return eachKinetoRank(pass, func(r *KinetoRank) {
		var ev []traces.Metric
		var top string
		var total time.Duration
		for _, c := range []KernelClass{ClassComputation, ClassCommunication, ClassMemory} {
			ks := TopKernels(r.Kernels, c, topKernelCount, topKernelRatio)
			var sum time.Duration
			for _, k := range ks {
				sum += k.Total
			}
			total += sum
			ev = append(ev, metric(c.String()+"_kernel_time", micros(sum), unitMicros))
			for _, k := range ks {
				if top == "" && k.Name != othersName {
					top = k.Name
				}
				name := c.String() + ": " + shortName(k.Name, maxNameInEvidence)
				ev = append(ev,
					metric(name, micros(k.Total), unitMicros),
					metric(name+" [count]", float64(k.Count), unitCount))
			}
		}
		if total == 0 {
			return
		}
		title := fmt.Sprintf("Kernel breakdown, %s: top kernel %s", r.where(), shortName(top, maxNameInTitle))
		pass.Report(kinetoFinding(r, title, traces.SeverityInfo, 0, ev,
			"Optimise the kernels at the top first: they bound what any speed-up can gain."))
	})
}

// TopKernels applies HTA's kernel-breakdown rule to the kernels of class c:
// sorted by total time, when there are more than num names, those beyond
// the first num or past the ratio quantile of the cumulative time are
// pooled into one "others" entry (whose Count is the names pooled and whose
// Min, Max and Std are over their totals, as HTA computes them).
func TopKernels(all []KernelStat, c KernelClass, num int, ratio float64) []KernelStat {
	var ks []KernelStat
	for _, k := range all {
		if k.Class == c {
			ks = append(ks, k)
		}
	}
	slices.SortStableFunc(ks, func(a, b KernelStat) int { return cmp.Compare(b.Total, a.Total) })
	if len(ks) <= num {
		return ks
	}
	cum := make([]float64, len(ks))
	var run float64
	for i, k := range ks {
		run += float64(k.Total)
		cum[i] = run
	}
	q := linearQuantile(cum, ratio)
	var keep []KernelStat
	var others KernelStat
	others.Name, others.Class = othersName, c
	for i, k := range ks {
		if i < num && cum[i] <= q {
			keep = append(keep, k)
			continue
		}
		others.add(int64(k.Total))
	}
	if others.Count > 1 {
		others.Std = math.Sqrt(others.m2 / float64(others.Count-1))
	}
	if others.Count > 0 {
		keep = append(keep, others)
	}
	return keep
}

func shortName(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
