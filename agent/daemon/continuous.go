package daemon

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/google/pprof/profile"

	"github.com/loupe-dev/loupe/traces"
)

// writeContinuous puts one interval's continuous CPU profile into the
// spool, one bundle per job run (processes of no job go to the default
// job), so that the aggregator can show a job's, a host's or the fleet's
// CPU time over any time range. It is the profiler's sink.
func (d *Daemon) writeContinuous(prof *profile.Profile) {
	start := time.Unix(0, prof.TimeNanos).UTC().Truncate(time.Second)
	end := start.Add(time.Duration(prof.DurationNanos))
	type group struct{ job, run string }
	runs := map[string]string{} // by pid
	groups := map[group][]int{} // sample indexes
	for i, s := range prof.Sample {
		job := d.cfg.DefaultJob
		if v := s.Label["job"]; len(v) > 0 && v[0] != "" {
			job = keyComponent(v[0], d.cfg.DefaultJob)
		}
		pid := ""
		if v := s.Label["pid"]; len(v) > 0 {
			pid = v[0]
		}
		run, ok := runs[pid]
		if !ok {
			n, _ := strconv.Atoi(pid)
			run = d.runOf(n, d.cfg.DefaultRun)
			runs[pid] = run
		}
		g := group{job, run}
		groups[g] = append(groups[g], i)
	}
	keys := make([]group, 0, len(groups))
	for g := range groups {
		keys = append(keys, g)
	}
	slices.SortFunc(keys, func(a, b group) int { return cmp.Or(cmp.Compare(a.job, b.job), cmp.Compare(a.run, b.run)) })
	id := traces.ContinuousCaptureID(start, d.cfg.CPU.Continuous.Interval)
	for _, g := range keys {
		part := prof
		if len(keys) > 1 {
			// A copy keeps the samples in order; Compact drops what the
			// group's samples do not use.
			part = prof.Copy()
			samples := make([]*profile.Sample, 0, len(groups[g]))
			for _, i := range groups[g] {
				samples = append(samples, part.Sample[i])
			}
			part.Sample = samples
			part = part.Compact()
		}
		if err := d.commitContinuous(id, g.job, g.run, start, end, part); err != nil {
			d.log.Warn("continuous CPU profile not spooled", "job", g.job, "run", g.run, "capture", id, "err", err)
		}
	}
	d.uploader.Notify()
}

// commitContinuous writes one continuous profile bundle.
func (d *Daemon) commitContinuous(id, job, run string, start, end time.Time, prof *profile.Profile) error {
	m := traces.Manifest{
		CaptureID: id, Cluster: d.cfg.Cluster, Job: job, Run: run, Host: d.cfg.Host, Start: start, End: end,
		Trigger:      traces.Trigger{Kind: traces.TriggerContinuous, Reason: fmt.Sprintf("continuous CPU profile at %d Hz", d.cfg.CPU.Continuous.Hz)},
		AgentVersion: Version,
	}
	seen := map[string]bool{}
	ranks := map[int]bool{}
	for _, s := range prof.Sample {
		pid := first(s.Label["pid"])
		if seen[pid] {
			continue
		}
		seen[pid] = true
		p := traces.Process{Comm: first(s.Label["comm"]), Rank: -1, LocalRank: -1, GPU: -1,
			Container: first(s.Label["container"]), Pod: first(s.Label["pod"])}
		p.PID, _ = strconv.Atoi(pid)
		if r, err := strconv.Atoi(first(s.Label["rank"])); err == nil {
			p.Rank = r
			ranks[r] = true
		}
		m.Processes = append(m.Processes, p)
	}
	for r := range ranks {
		m.Ranks = append(m.Ranks, r)
	}
	slices.Sort(m.Ranks)
	slices.SortFunc(m.Processes, func(a, b traces.Process) int { return cmp.Compare(a.PID, b.PID) })
	dir, err := d.spool.Begin(id, d.cfg.Host)
	if err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			d.spool.Abort(dir)
		}
	}()
	bw, err := traces.NewBundleWriter(dir, m)
	if err != nil {
		return err
	}
	if err := bw.WriteProfileAs(traces.PartContinuousProfile, prof); err != nil {
		return err
	}
	if _, err := bw.Commit(); err != nil {
		return err
	}
	if err := d.spool.Commit(dir); err != nil {
		return err
	}
	committed = true
	return nil
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}
