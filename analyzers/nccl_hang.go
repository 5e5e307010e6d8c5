package analyzers

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/loupe-dev/loupe/traces"
)

// NCCLHang turns an agent's hang report into a finding.
var NCCLHang = &Analyzer{
	Name:    "nccl-hang",
	Version: "1",
	Doc: `NCCL hangs: a communicator stalled with ranks missing from a collective

The agent watches collective progress per communicator; when its ranks make
no progress for hang.timeout while some of them entered a collective that
others never reached, it takes a hang capture at once with a report
(nccl_hang.json): which ranks are inside the collective, which never
arrived, and for those whether they are stuck inside an NCCL call or
outside NCCL, with their CPU stacks from a sample taken right then and
every thread's state. This analyzer makes one critical finding per report,
scoped to the (first) missing rank, naming the missing ranks and where they
are; its frames are the missing ranks' stacks, for the owners file. When
the communicator makes progress again, the agent's recovery capture gives
an info finding with the same subject (the hang's id): triage then marks
the incident resolved.

Impact: the job's GPUs idle for the stall: world size (or the ranks seen)
times the time since the last progress (until the recovery, for one).`,
	Requires: []string{traces.PartNCCLHang},
	Run:      runNCCLHang,
}

func runNCCLHang(pass *Pass) error {
	for i := range pass.Input.Hosts {
		h := &pass.Input.Hosts[i]
		if !h.Has(traces.PartNCCLHang) {
			continue
		}
		rc, err := h.Open(pass.Context, traces.PartNCCLHang)
		if err != nil {
			return partErr(h, traces.PartNCCLHang, err)
		}
		pass.Used(h, traces.PartNCCLHang)
		rep, err := traces.ReadNCCLHang(rc)
		rc.Close()
		if err != nil {
			return partErr(h, traces.PartNCCLHang, err)
		}
		reportHang(pass, h, &rep)
	}
	return nil
}

func reportHang(pass *Pass, h *Host, rep *traces.NCCLHang) {
	var missing, arrived []traces.NCCLHangRank
	for _, rk := range rep.Ranks {
		if rk.State == traces.HangRankMissing {
			missing = append(missing, rk)
		} else {
			arrived = append(arrived, rk)
		}
	}
	if len(missing) == 0 {
		return
	}
	end := rep.Detected
	if rep.State == traces.HangStateRecovered {
		end = rep.Recovered
	}
	stalled := max(end.Sub(rep.StalledSince).Seconds(), 0)
	gpus := max(rep.WorldSize, len(rep.Ranks))
	lost := stalled * float64(gpus)

	var names, places []string
	var frames []string
	for _, rk := range missing {
		names = append(names, strconv.Itoa(rk.Rank))
		places = append(places, fmt.Sprintf("rank %d %s", rk.Rank, hangPlace(rk)))
		frames = append(frames, rk.Stack...)
	}
	noun := "rank"
	if len(missing) > 1 {
		noun = "ranks"
	}
	call := fmt.Sprintf("collective %d", rep.Seq)
	if rep.Op != "" {
		call += " (" + rep.Op + ")"
	}
	title := fmt.Sprintf("NCCL hang: %s %s never arrived at %s; %d rank(s) wait inside it", noun, strings.Join(names, ","), call, len(arrived))
	sev := traces.SeverityCritical
	if rep.State == traces.HangStateRecovered {
		title = fmt.Sprintf("NCCL hang at %s recovered after %.0f s: %s %s arrived late", call, stalled, noun, strings.Join(names, ","))
		sev = traces.SeverityInfo
	}
	first := missing[0]
	out := traces.Finding{
		Title:    title,
		Severity: sev,
		Scope:    traces.Scope{Host: h.Manifest.Host, GPU: h.RankGPU(first.Rank), Rank: first.Rank},
		Subject:  rep.ID,
		Frames:   frames,
		Evidence: []traces.Metric{
			metric("collective_seq", float64(rep.Seq), unitCount),
			metric("ranks_missing", float64(len(missing)), unitCount),
			metric("ranks_inside_collective", float64(len(arrived)), unitCount),
			metric("stalled", stalled, "s"),
		},
		Impact: traces.Impact{GPUSeconds: lost, WindowShare: share(lost, windowGPUSeconds(pass.Input))},
		Recommendation: fmt.Sprintf("%s. The ranks that arrived wait inside %s for them. ", strings.Join(places, "; "), call) +
			hangAdvice(missing),
	}
	if rep.State == traces.HangStateRecovered {
		out.Evidence = append(out.Evidence, metric("recovered", 1, unitCount),
			metric("recovered_at", float64(rep.Recovered.UnixMilli())/1e3, "unix_s"))
	}
	pass.Report(out)
}

// hangPlace says where a missing rank is.
func hangPlace(rk traces.NCCLHangRank) string {
	switch {
	case rk.Exited:
		return "is gone: its process exited"
	case rk.InNCCL:
		s := "is stuck inside NCCL (" + rk.InCall + ")"
		if len(rk.Stack) > 0 {
			s += ", in " + strings.Join(rk.Stack[:min(len(rk.Stack), 4)], " < ")
		}
		return s
	case len(rk.Stack) > 0:
		return "is stuck outside NCCL, in " + strings.Join(rk.Stack[:min(len(rk.Stack), 4)], " < ")
	}
	for _, th := range rk.Threads {
		if th.PC != "" {
			return fmt.Sprintf("is stuck outside NCCL, asleep (%s) at %s", th.Syscall, th.PC)
		}
	}
	return "is stuck outside NCCL"
}

func hangAdvice(missing []traces.NCCLHangRank) string {
	for _, rk := range missing {
		if rk.Exited {
			return "A rank died: find its crash (the crash and out-of-memory incidents, its log) and restart the job from a checkpoint."
		}
		if rk.InNCCL {
			return "A rank is blocked in NCCL itself: check its network (NCCL_DEBUG=INFO, the NIC and switch counters) and whether it " +
				"calls the collectives in the same order as the others."
		}
	}
	return "The missing rank never called the collective: look at what its code does in the stack above (a data loader, I/O, a lock, " +
		"a branch only some ranks take). py-spy dump --pid on that rank shows its Python stack."
}
