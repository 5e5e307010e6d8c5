package analyzers

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// jobLife is what a projection knows of the job beyond the window: its GPU
// count, when its run began and where that came from.
type jobLife struct {
	gpus int
	// gpuSeconds is the window's GPU time over the job's GPUs, the
	// denominator of a recurring problem's share.
	gpuSeconds float64
	start      time.Time
	startFrom  string
	end        time.Time
	// note says why a better run start was not used, if one was tried.
	note string
	// inputs are the parts read for the run start, for lineage.
	inputs []string
}

// hostJobGPUs counts the GPUs of h the job uses: the devices its ranks run
// on, else one per rank, else the host's devices (at least one, as the
// window's GPU time counts a GPU-less host).
func hostJobGPUs(h *Host) int {
	n := 0
	for _, g := range h.Manifest.GPUs {
		if len(g.Ranks) > 0 {
			n++
		}
	}
	switch {
	case n > 0:
		return n
	case len(h.Manifest.Ranks) > 0:
		return len(h.Manifest.Ranks)
	}
	return max(len(h.Manifest.GPUs), 1)
}

// lifeOf reads the run's start from the step history (the earliest step
// of any rank), else the processes' start times, else the capture itself.
func lifeOf(ctx context.Context, in *Input) jobLife {
	var l jobLife
	ranks, world := 0, 0
	for i := range in.Hosts {
		h := &in.Hosts[i]
		g := hostJobGPUs(h)
		l.gpus += g
		l.gpuSeconds += h.Seconds() * float64(g)
		ranks += len(h.Manifest.Ranks)
		world = max(world, h.Manifest.WorldSize)
		if e := h.Manifest.End; e.After(l.end) {
			l.end = e
		}
	}
	// A partial capture lacks hosts: the job has the GPUs of all its ranks.
	if in.Partial && ranks > 0 && world > ranks {
		l.gpus = int(math.Round(float64(l.gpus) * float64(world) / float64(ranks)))
	}
	earliest := func(t time.Time, from string) {
		if !t.IsZero() && (l.start.IsZero() || t.Before(l.start)) {
			l.start, l.startFrom = t, from
		}
	}
	buf := make([]traces.StepSpan, batchRows)
	for i := range in.Hosts {
		h := &in.Hosts[i]
		if !h.Has(traces.PartStepHistory) {
			continue
		}
		err := scanTable(ctx, h, traces.PartStepHistory, buf, func(rows []traces.StepSpan) error {
			for _, r := range rows {
				if r.StartNs > 0 {
					earliest(time.Unix(0, r.StartNs), traces.RunStartStepHistory)
				}
			}
			return nil
		}, traces.Columns("start_ns"))
		if err != nil {
			l.note = fmt.Sprintf("step history unreadable (%v)", err)
			l.start, l.startFrom = time.Time{}, ""
			break
		}
		if h.Key != nil {
			l.inputs = append(l.inputs, h.Key(traces.PartStepHistory))
		}
	}
	if l.start.IsZero() {
		for i := range in.Hosts {
			for _, p := range in.Hosts[i].Manifest.Processes {
				earliest(p.Started, traces.RunStartProcessStart)
			}
		}
	}
	if l.start.IsZero() || l.start.After(l.end) {
		l.start, l.startFrom = time.Time{}, ""
		for i := range in.Hosts {
			earliest(in.Hosts[i].Manifest.Start, traces.RunStartCapture)
		}
	}
	return l
}

// project fills in f's projection over the job's life. A finding whose
// analyzer marked its cost as one-off keeps that; any other problem is
// taken to cost the job its share of the window for as long as it runs:
// the window's GPU-seconds lost over the window's time on the job's GPUs,
// or the share the analyzer measured on ScopeGPUs of them.
func project(f *traces.Finding, l jobLife) {
	p := f.Impact.Projected
	if p == nil {
		p = &traces.Projection{}
	}
	p.GPUs, p.RunStart, p.RunStartFrom = l.gpus, l.start.UTC(), l.startFrom
	p.RunHours = max(l.end.Sub(l.start).Hours(), 0)
	from := map[string]string{
		traces.RunStartStepHistory:  "the step history's first step",
		traces.RunStartProcessStart: "the processes' start times",
		traces.RunStartCapture:      "the capture window only: the run's start is unknown",
	}[l.startFrom]
	if l.note != "" {
		from += "; " + l.note
	}
	if p.OneOff {
		p.GPUHoursRun = p.OneOffGPUSeconds * float64(max(p.Occurrences, 1)) / 3600
		// Paid so far within the first day at most, then at most that
		// much for every further day.
		p.GPUHoursPerDay = p.GPUHoursRun * 24 / max(p.RunHours, 24)
		p.Share = share(p.GPUHoursRun, float64(l.gpus)*p.RunHours)
		p.Basis = fmt.Sprintf("projection: a one-off cost of %.2f GPU-hours paid %d time(s) in the run's %.1f h so far (run start from %s); per day, assuming it recurs no more often than that",
			p.OneOffGPUSeconds/3600, max(p.Occurrences, 1), p.RunHours, from)
	} else {
		switch {
		case p.ScopeGPUs > 0 && l.gpus > 0:
			p.Share = min(p.Share*float64(p.ScopeGPUs)/float64(l.gpus), 1)
		case l.gpuSeconds > 0:
			p.Share = share(f.Impact.GPUSeconds, l.gpuSeconds)
		default:
			p.Share = f.Impact.WindowShare
		}
		p.GPUHoursPerDay = p.Share * float64(l.gpus) * 24
		p.GPUHoursRun = p.Share * float64(l.gpus) * p.RunHours
		p.Basis = fmt.Sprintf("projection: the window's loss, %.1f %% of %d GPUs, assumed to hold for the run's %.1f h so far (run start from %s) and for every day it runs",
			100*p.Share, l.gpus, p.RunHours, from)
	}
	f.Impact.Projected = p
}
