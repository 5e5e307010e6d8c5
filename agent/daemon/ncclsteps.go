package daemon

import (
	"context"
	"slices"
	"time"

	"github.com/loupe-dev/loupe/agent/nccl"
	"github.com/loupe-dev/loupe/traces"
)

// ncclSteps feeds iterations found in NCCL call periodicity to the step
// tracker, for jobs that neither post markers nor run Kineto (the tracker
// prefers those when they exist).
func (d *Daemon) ncclSteps(ctx context.Context) error {
	t := time.NewTicker(d.cfg.NCCL.StepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			d.feedNCCLSteps(now)
		}
	}
}

// feedNCCLSteps searches the recent NCCL calls for iterations. A process
// that also posts markers (or runs Kineto) keeps its job and rank, so the
// tracker files the NCCL steps beside the preferred ones instead of
// inventing a second job; otherwise the job comes from the environment, or
// is the default job.
func (d *Daemon) feedNCCLSteps(now time.Time) {
	d.fileNCCLSteps(d.nccl.Events(now.Add(-d.cfg.NCCL.StepLookback), now))
}

func (d *Daemon) fileNCCLSteps(events []traces.NCCLEvent) {
	found := nccl.DetectIterations(events)
	if len(found) == 0 {
		return
	}
	numberBySeq(found, events)
	type owner struct {
		job, run string
		rank     int
	}
	known := map[int32]owner{}
	for _, st := range d.tracker.Stats("") {
		if st.PID > 0 && st.Source != traces.StepSourceNCCL {
			known[int32(st.PID)] = owner{st.Job, st.Run, st.Rank}
		}
	}
	byPID := map[int32][]traces.Step{}
	for _, s := range found {
		byPID[s.PID] = append(byPID[s.PID], s)
	}
	for pid, ss := range byPID {
		o, ok := known[pid]
		if !ok {
			info := d.processInfo(int(pid))
			o = owner{jobName(info), d.runOf(int(pid), ""), info.Rank}
			if o.job == "" {
				o.job = d.cfg.DefaultJob
			}
		}
		for i := range ss {
			if ok || ss[i].Rank < 0 {
				ss[i].Rank = int32(o.rank)
			}
		}
		if err := d.tracker.AddSteps(o.job, o.run, ss); err != nil {
			d.log.Debug("nccl steps", "pid", pid, "err", err)
		}
	}
}

// numberBySeq renumbers steps found by periodicity so that every rank of a
// job, on every host, gives the same iteration the same number, whenever
// its agent started watching: a step's number is the sequence number of
// its first collective on that communicator divided by the collectives per
// iteration (the most common count in the batch). Collective sequence
// numbers match across the ranks of a communicator, so the numbers do too,
// and the stable-iteration trigger's start iterations line up across hosts.
// Steps whose boundary calls are not found keep their numbers.
func numberBySeq(found []traces.Step, events []traces.NCCLEvent) {
	type key struct {
		pid int32
		ns  int64
	}
	at := make(map[key]traces.NCCLEvent, len(events))
	for _, e := range events {
		k := key{e.PID, e.TimeNs}
		if _, dup := at[k]; !dup {
			at[k] = e
		}
	}
	byPID := map[int32][]int{}
	for i, s := range found {
		byPID[s.PID] = append(byPID[s.PID], i)
	}
	for pid, idx := range byPID {
		seq := make([]int64, len(idx))
		counts := map[int64]int{}
		for j, i := range idx {
			first, ok1 := at[key{pid, found[i].StartNs}]
			next, ok2 := at[key{pid, found[i].EndNs}]
			if !ok1 || !ok2 || first.CommID != next.CommID || next.Seq <= first.Seq {
				seq[j] = -1
				continue
			}
			seq[j] = first.Seq
			counts[next.Seq-first.Seq]++
		}
		var per int64
		for n, c := range counts {
			if c > counts[per] || (c == counts[per] && n < per) {
				per = n
			}
		}
		if per == 0 || slices.Contains(seq, -1) {
			continue // a partial renumbering could go backwards; keep them all as found
		}
		for j, i := range idx {
			found[i].Iteration = seq[j] / per
		}
	}
}
