package daemon

import (
	"context"
	"strconv"
	"time"

	"github.com/loupe-dev/loupe/agent/api"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/logparse"
)

// Latency keeps an inference job's request latencies as latency events
// (Attrs job, value_seconds) until a capture takes those of its window;
// the warm-up analyzer reads them.
func (b backend) Latency(_ context.Context, r api.LatencyRequest) error {
	now := time.Now()
	evs := make([]traces.Event, len(r.Values))
	for i, v := range r.Values {
		at := v.Time
		if at.IsZero() {
			at = now
		}
		evs[i] = traces.Event{
			TimeNs: at.UnixNano(), Kind: traces.EventLatency, GPU: -1, Rank: r.Rank,
			Attrs: map[string]string{"job": r.Job, logparse.AttrValue: strconv.FormatFloat(v.Seconds, 'g', -1, 64)},
		}
	}
	b.d.latency.Add(evs...)
	return nil
}
