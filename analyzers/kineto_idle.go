package analyzers

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// Thresholds of KinetoIdle: the share of a rank's GPU span with nothing running.
const (
	idleShareWarn     = 0.10
	idleShareCrit     = 0.30
	idleStreamsListed = 4
)

// KinetoIdle is analyzer 4: why the GPU idles, per stream.
var KinetoIdle = &Analyzer{
	Name:    "kineto-idle-time",
	Version: "2",
	Doc: `GPU idle time broken down per CUDA stream into host wait, kernel wait and other

From each rank's Kineto trace, with HolisticTraceAnalysis's definitions
(get_idle_time_breakdown): on each stream, the gap before a kernel (memcpy,
memset) is host wait when that kernel's launch call started after the
previous kernel ended (the CPU did not enqueue work fast enough), kernel wait
when the gap is under 30 us (back-to-back launch overhead), other otherwise
(waiting on events, other streams, communication). A rank is flagged when its
GPU is idle (no stream busy) for at least 10% of its traced span (critical at
30%); the recommendation follows the dominant kind.

Impact: the rank's idle GPU time.`,
	Requires: kinetoRequires,
	Run:      runKinetoIdle,
}

// Kinds of idle gap, in StreamIdle.Gaps order.
var idleKinds = [3]string{"host_wait", "kernel_wait", "other"}

var idleAdvice = [3]string{
	"The GPU waits for the CPU to enqueue work: cut per-step Python and dispatch overhead " +
		"(torch.compile, CUDA graphs), move data loading and preprocessing off the training thread " +
		"(DataLoader workers, pin_memory, prefetching), and remove host synchronisations (.item(), .cpu(), prints) from the step.",
	"The GPU runs many short kernels back to back, paying launch latency between them: fuse them " +
		"(torch.compile, fused optimizers and fused attention kernels) or capture the step as a CUDA graph.",
	"Kernels wait on something other than the host: events from other streams, communication or " +
		"synchronisation. Check the communication overlap finding and remove stream/device synchronisations.",
}

func runKinetoIdle(pass *Pass) error {
	return eachKinetoRank(pass, func(r *KinetoRank) {
		b := r.Temporal
		frac := share(float64(b.Idle), float64(b.Span))
		sev := gradeAbove(frac, idleShareWarn, idleShareCrit)
		if sev == "" {
			return
		}
		var byKind [3]time.Duration
		for _, s := range r.Streams {
			byKind[0] += s.HostWait
			byKind[1] += s.KernelWait
			byKind[2] += s.Other
		}
		dominant := 0
		for k := range byKind {
			if byKind[k] > byKind[dominant] {
				dominant = k
			}
		}
		ev := []traces.Metric{
			metric("idle_time", micros(b.Idle), unitMicros),
			metric("idle_time_pctg", b.Pct(b.Idle), unitPercent),
			metric("kernel_time", micros(b.Span), unitMicros),
		}
		for k, d := range byKind {
			ev = append(ev, metric("streams "+idleKinds[k], micros(d), unitMicros))
		}
		streams := slices.Clone(r.Streams)
		slices.SortFunc(streams, func(a, b StreamIdle) int { return cmp.Compare(b.Idle(), a.Idle()) })
		for _, s := range streams[:min(len(streams), idleStreamsListed)] {
			for k, d := range [3]time.Duration{s.HostWait, s.KernelWait, s.Other} {
				ev = append(ev, metric(fmt.Sprintf("stream %d %s", s.Stream, idleKinds[k]), micros(d), unitMicros))
				if total := s.Idle(); total > 0 {
					ev = append(ev, metric(fmt.Sprintf("stream %d %s_ratio", s.Stream, idleKinds[k]), float64(d)/float64(total), unitRatio))
				}
			}
		}
		f := kinetoFinding(r, fmt.Sprintf("GPU idle %.1f%% of the time on %s, mostly %s", 100*frac, r.where(), idleKinds[dominant]),
			sev, b.Idle, ev, idleAdvice[dominant])
		if len(r.Streams) == 1 {
			f.Scope.Stream = fmt.Sprint(r.Streams[0].Stream)
		}
		pass.Report(f)
	})
}
