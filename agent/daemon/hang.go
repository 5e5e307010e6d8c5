package daemon

import (
	"bytes"
	"encoding/json"
	"errors"

	"github.com/google/pprof/profile"

	"github.com/loupe-dev/loupe/agent/attribution"
	"github.com/loupe-dev/loupe/agent/capture"
	"github.com/loupe-dev/loupe/agent/hang"
	"github.com/loupe-dev/loupe/traces"
)

// onHang takes the capture of a hang (or of its recovery): the stall's
// history from the collectors' rings, the CPU profiler's stack sample of
// the communicator's processes right now, and the hang report. It is a
// capture of this host only: other hosts' ranks are not in it, so it
// announces no world size and the aggregator analyzes it as soon as it
// arrives.
func (d *Daemon) onHang(h *hang.Hang) {
	procs := d.processes(h.PIDs, func(attribution.Info) bool { return true })
	job := keyComponent(h.Job, d.cfg.DefaultJob)
	kind := traces.TriggerNCCLHang
	if h.Report.State == traces.HangStateRecovered {
		kind = traces.TriggerNCCLRecovered
	}
	lookback := min(d.cfg.Hang.Lookback, d.cfg.Capture.MaxDuration)
	st, err := d.capturer.Submit(capture.Request{
		ID: h.CaptureID(), Job: job, Run: d.runOfProcesses(procs), Processes: procs,
		Duration: d.cfg.Hang.StackSample, Lookback: lookback,
		Trigger: traces.Trigger{Kind: kind, Reason: h.Reason()},
		Report: func(bw *traces.BundleWriter, prof *profile.Profile) error {
			data, err := json.MarshalIndent(h.Finish(prof), "", " ")
			if err != nil {
				return err
			}
			return bw.WritePart(traces.PartNCCLHang, traces.MediaJSON, bytes.NewReader(data))
		},
	})
	if errors.Is(err, capture.ErrDuplicate) {
		return
	}
	if err != nil {
		d.log.Error("hang capture refused; the hang is only in the log", "job", job, "reason", h.Reason(), "err", err)
		return
	}
	d.log.Info("hang capture", "capture", st.ID, "job", job, "state", h.Report.State)
}
