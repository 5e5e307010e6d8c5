package analyzers

import (
	"maps"
	"slices"

	"github.com/loupe-dev/loupe/traces"
)

// Thresholds of StepImbalance: a rank's mean step time over the median rank's.
const (
	stepRatioWarn = 1.10
	stepRatioCrit = 1.25
	stepMinSteps  = 3 // steps a rank needs to be judged
)

// StepImbalance finds ranks whose training steps take longer than the others'.
var StepImbalance = &Analyzer{
	Name:    "step-imbalance",
	Version: "1",
	Doc: `step-time imbalance across ranks

From steps.parquet: each rank's mean step time (end - start, over steps of
positive length; ranks with fewer than 3 steps are not judged) is compared
with the median of all ranks' means. A rank at >= 1.10x the median is a
warning, >= 1.25x critical; the slowest ranks are named. Needs two ranks.

Impact: in synchronous training every rank waits for the slowest at the
next collective, so per step each rank loses (slowest mean - its mean); the
impact is that summed over ranks and their steps.`,
	Requires: []string{traces.PartSteps},
	Run:      runStepImbalance,
}

func runStepImbalance(pass *Pass) error {
	type acc struct {
		host  *Host
		n     int
		sumNs float64
	}
	ranks := map[int32]*acc{}
	err := EachStep(pass, func(h *Host, s *traces.Step) error {
		if s.EndNs <= s.StartNs {
			return nil
		}
		a := ranks[s.Rank]
		if a == nil {
			a = &acc{host: h}
			ranks[s.Rank] = a
		}
		a.n++
		a.sumNs += float64(s.EndNs - s.StartNs)
		return nil
	})
	if err != nil {
		return err
	}
	means := map[int32]float64{}
	for r, a := range ranks {
		if a.n >= stepMinSteps {
			means[r] = a.sumNs / float64(a.n) / 1e9
		}
	}
	if len(means) < 2 {
		return nil
	}
	sorted := slices.Sorted(maps.Values(means))
	median := sorted[len(sorted)/2]
	if len(sorted)%2 == 0 {
		median = (sorted[len(sorted)/2-1] + median) / 2
	}
	slowest := sorted[len(sorted)-1]
	if median <= 0 || gradeAbove(slowest/median, stepRatioWarn, stepRatioCrit) == "" {
		return nil
	}
	var waited float64 // what every rank waits for the slowest, over its steps
	for r, m := range means {
		waited += (slowest - m) * float64(ranks[r].n)
	}
	f := finding{
		Title: "Step time imbalanced across ranks",
		Evidence: []traces.Metric{
			metric("ranks", float64(len(means)), unitCount),
			metric("median_rank_step", median*1e3, unitMs),
			metric("slowest_rank_step", slowest*1e3, unitMs),
			metric("slowest_over_median", slowest/median, unitRatio),
			metric("rank_wait_total", waited, unitGPUSec),
		},
		Recommendation: "The slow ranks set the pace of every synchronous step. Compare a slow rank with a median one: " +
			"its GPU (throttle, hw-faults findings), its input pipeline (input-bound), its share of the work " +
			"(uneven sequence lengths or experts: balance by tokens, not samples), and its host (CPU contention, NUMA placement).",
	}
	// The wait is charged to the slow ranks in proportion to their excess.
	var excess float64
	for _, m := range means {
		if gradeAbove(m/median, stepRatioWarn, stepRatioCrit) != "" {
			excess += m - median
		}
	}
	for _, r := range slices.Sorted(maps.Keys(means)) {
		m := means[r]
		sev := gradeAbove(m/median, stepRatioWarn, stepRatioCrit)
		if sev == "" {
			continue
		}
		h := ranks[r].host
		f.Targets = append(f.Targets, target{
			Host: h, GPU: h.RankGPU(int(r)), Rank: int(r), Severity: sev,
			Lost: waited * (m - median) / excess,
			Evidence: []traces.Metric{
				metric("mean_step", m*1e3, unitMs),
				metric("over_median", m/median, unitRatio),
				metric("steps", float64(ranks[r].n), unitCount),
			},
		})
	}
	f.report(pass)
	return nil
}
