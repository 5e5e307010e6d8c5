package capture

import (
	"fmt"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// WriteLogs writes a log-only bundle: events of log lines older than any
// capture window (the history of a log file the tailer found), with the
// window their own times span, and commits it for upload, so that the
// aggregator analyzes them as it does a capture (rebalances, XIDs, faults)
// instead of their being dropped for falling outside every window.
func (c *Capturer) WriteLogs(job, run string, events []traces.Event) (*traces.Manifest, error) {
	if len(events) == 0 {
		return nil, nil
	}
	first, last := events[0].TimeNs, events[0].TimeNs
	for _, e := range events {
		first, last = min(first, e.TimeNs), max(last, e.TimeNs)
	}
	start, end := time.Unix(0, first), time.Unix(0, last+1)
	req := Request{
		ID: "lh-" + start.UTC().Format("20060102T150405.000Z"), Job: job, Run: run,
		Trigger: traces.Trigger{Kind: traces.TriggerLogHistory, Reason: fmt.Sprintf("%d events from the history of log files", len(events))},
	}
	for _, f := range []struct{ name, v string }{{"id", req.ID}, {"job", job}, {"run", run}} {
		if err := traces.ValidateComponent(f.v); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, f.name, err)
		}
	}
	m := c.manifest(req, start, end)
	dir, err := c.spool.Begin(req.ID, c.cfg.Host)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	out, err := func() (*traces.Manifest, error) {
		bw, err := traces.NewBundleWriter(dir, m)
		if err != nil {
			return nil, err
		}
		if err := bw.WriteEvents(events); err != nil {
			return nil, err
		}
		return bw.Commit()
	}()
	if err == nil {
		err = c.spool.Commit(dir)
	}
	if err != nil {
		if aerr := c.spool.Abort(dir); aerr != nil {
			c.log.Warn("spool abort", "capture", req.ID, "err", aerr)
		}
		return nil, err
	}
	if c.notify != nil {
		c.notify.Notify()
	}
	return out, nil
}
