package daemon

import (
	"context"
	"time"
)

// shipLogHistory sends the history of log files the tailer found (lines
// older than any capture window) as log-only bundles, once each batch of
// such files has been read to its end.
func (d *Daemon) shipLogHistory(ctx context.Context) error {
	tick := time.NewTicker(d.cfg.Logs.PollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		evs := d.logs.History()
		if len(evs) == 0 {
			continue
		}
		m, err := d.capturer.WriteLogs(d.cfg.Logs.HistoryJob, d.cfg.DefaultRun, evs)
		if err != nil {
			d.log.Warn("log history not shipped; its events are dropped", "events", len(evs), "err", err)
			continue
		}
		d.log.Info("log history shipped as a log-only bundle", "capture", m.CaptureID, "events", len(evs),
			"from", m.Start, "to", m.End)
	}
}
