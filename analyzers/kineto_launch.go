package analyzers

import (
	"fmt"

	"github.com/loupe-dev/loupe/traces"
)

// Thresholds of KinetoLaunch.
const (
	launchMinCalls   = 10  // fewer matched launches say nothing
	shortShareWarn   = 0.2 // share of launches that are short kernels
	shortShareCrit   = 0.5
	delayOutlierWarn = 0.05 // share of launches that are launch-delay outliers
	delayOutlierCrit = 0.2
)

// KinetoLaunch is analyzer 5: kernel launch overhead.
var KinetoLaunch = &Analyzer{
	Name:    "kineto-launch-overhead",
	Version: "2",
	Doc: `kernel launch overhead: many short kernels and launch-delay outliers

From each rank's Kineto trace, every launch call is matched to the GPU work it
started by correlation id: by default the calls HTA counts (cudaLaunchKernel,
cudaLaunchKernelExC, cudaMemcpyAsync, cudaMemsetAsync), so that the numbers
are HTA's; with KinetoOptions.ExtendedLaunchAPIs (analyze --launch-apis
extended) also cuLaunchKernel, cuLaunchKernelEx and cudaGraphLaunch, one call
of which starts many kernels, which HTA misses. As in
HolisticTraceAnalysis's get_cuda_kernel_launch_stats: a short kernel ran for
less time than its launch call took (at most 50 us); a runtime outlier is a
launch call over 50 us; a launch-delay outlier started more than 100 us after
its launch call returned. A rank is flagged when short kernels are at least
20% of its launches (critical 50%) or delay outliers at least 5% (critical
20%), over at least 10 launches.

Impact: the launch time not covered by the short kernels plus the delay of
the outliers, at most the rank's idle GPU time.`,
	Requires: kinetoRequires,
	Run:      runKinetoLaunch,
}

func runKinetoLaunch(pass *Pass) error {
	return eachKinetoRank(pass, func(r *KinetoRank) {
		l := r.Launch
		if l.Launches < launchMinCalls {
			return
		}
		n := float64(l.Launches)
		shortShare, outlierShare := float64(l.ShortKernels)/n, float64(l.DelayOutliers)/n
		sev := worse(gradeAbove(shortShare, shortShareWarn, shortShareCrit), gradeAbove(outlierShare, delayOutlierWarn, delayOutlierCrit))
		if sev == "" {
			return
		}
		ev := []traces.Metric{
			metric("launches", n, unitCount),
			metric("short_kernels", float64(l.ShortKernels), unitCount),
			metric("short_kernel_share", shortShare, unitRatio),
			metric("runtime_outliers", float64(l.RuntimeOutliers), unitCount),
			metric("launch_delay_outliers", float64(l.DelayOutliers), unitCount),
			metric("launch_delay_outlier_share", outlierShare, unitRatio),
			metric("mean_launch_delay", micros(l.MeanDelay()), unitMicros),
			metric("max_launch_delay", micros(l.MaxDelay), unitMicros),
			metric("launch_cpu_time", micros(l.CPUTime), unitMicros),
			metric("unmatched_launch_calls", float64(l.UnmatchedCalls), unitCount),
		}
		for a := APICudaLaunchKernel; a < numAPIs; a++ {
			if c := l.ByAPI[a.String()]; c > 0 {
				ev = append(ev, metric("launches "+a.String(), float64(c), unitCount))
			}
		}
		lost := min(max(l.ShortCPUTime-l.ShortGPUTime, 0)+l.OutlierDelay, r.Temporal.Idle)
		var title, rec string
		if shortShare >= shortShareWarn {
			title = fmt.Sprintf("%.0f%% of kernels on %s are shorter than their launch", 100*shortShare, r.where())
			rec = "The GPU finishes kernels faster than the CPU launches them. Fuse small operations " +
				"(torch.compile), batch work into fewer, larger kernels, or capture the step as a CUDA graph " +
				"(torch.compile mode=\"reduce-overhead\", torch.cuda.graphs) so that one launch starts many kernels."
		} else {
			title = fmt.Sprintf("%.1f%% of kernels on %s start over %v after their launch", 100*outlierShare, r.where(), DefaultKinetoOptions().LaunchDelayCutoff)
			rec = "Kernels queue long behind earlier work or wait for a free stream slot: look for host " +
				"synchronisations that drain the queue, oversubscribed streams, or memory copies serialising with compute."
		}
		pass.Report(kinetoFinding(r, title, sev, lost, ev, rec))
	})
}

// worse is the more severe of two grades ("" for none).
func worse(a, b string) string {
	if a == "" || b != "" && severityRank[b] < severityRank[a] {
		return b
	}
	return a
}
