package analyzers

import (
	"fmt"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// unitMicros is HTA's unit, used for Kineto evidence so numbers compare.
const unitMicros = "us"

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// rankName names a rank's trace for humans.
func (r *KinetoRank) where() string {
	if r.Rank >= 0 {
		return fmt.Sprintf("rank %d", r.Rank)
	}
	return r.Part
}

// kinetoFinding is a finding about one rank's trace: scoped to its host and
// rank, its impact the GPU time lost over the rank's traced GPU span, which
// is also the share of that one GPU the projection over the job's life
// starts from (the trace may cover less than the capture window).
func kinetoFinding(r *KinetoRank, title, severity string, lost time.Duration, ev []traces.Metric, rec string) traces.Finding {
	rankShare := share(float64(lost), float64(r.Temporal.Span))
	return traces.Finding{
		Title:    title,
		Severity: severity,
		Scope: traces.Scope{
			Host: r.Host.Manifest.Host,
			GPU:  r.Host.RankGPU(r.Rank),
			Rank: r.Rank,
		},
		Evidence: ev,
		Impact: traces.Impact{GPUSeconds: lost.Seconds(), WindowShare: rankShare,
			Projected: &traces.Projection{Share: rankShare, ScopeGPUs: 1}},
		Recommendation: rec,
	}
}

// kinetoRequires is what every Kineto analyzer needs.
var kinetoRequires = []string{traces.KinetoDir}

// eachKinetoRank runs fn over the capture's traces.
func eachKinetoRank(pass *Pass, fn func(r *KinetoRank)) error {
	ranks, _, err := kinetoRanks(pass)
	if err != nil {
		return err
	}
	for _, r := range ranks {
		fn(r)
	}
	return nil
}
