package analyzers

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/logparse"
)

// LogOptions say how LogInput turns log events into host bundles.
type LogOptions struct {
	// Job names the capture (default "logs").
	Job string
	// DefaultHost holds the events whose lines named no host (plain files,
	// container logs); when empty, each pod (from a kubelet log path) or
	// else each file is a host of its own, named after it (one consumer pod
	// or one torchrun node per file).
	DefaultHost string
	// GPUsPerHost is how many GPUs each host is given, for the GPU time
	// the analyzers charge (rebalance pauses, lost GPUs); 0 charges none.
	GPUsPerHost int
}

// HostOf names the host bundle LogInput puts e in: the host its line
// named, else DefaultHost, else its pod, else its file (without .gz).
func (opts LogOptions) HostOf(e traces.Event) string {
	return sanitizeComponent(cmp.Or(e.Attrs[logparse.AttrHost], opts.DefaultHost, e.Attrs["pod"],
		strings.TrimSuffix(baseName(e.Attrs[logparse.AttrSource]), ".gz"), "local"))
}

// LogInput turns events parsed from logs users already have into one job
// capture, so that the analyzers (rebalance, hw-faults) and triage run with
// no agent and no store: one host bundle per host the lines name (journald
// and syslog prefixes carry it), each holding only events.jsonl, and a
// window common to all, from the first event to the last. Events keep
// their own timestamps.
func LogInput(events []traces.Event, opts LogOptions) (*Input, error) {
	if len(events) == 0 {
		return nil, fmt.Errorf("no events in the logs: no line was recognised (see the README's list of what the log parsers read)")
	}
	job := cmp.Or(opts.Job, "logs")
	if err := traces.ValidateComponent(job); err != nil {
		return nil, fmt.Errorf("job %q: %w", job, err)
	}
	byHost := map[string][]traces.Event{}
	first, last := events[0].TimeNs, events[0].TimeNs
	for _, e := range events {
		h := opts.HostOf(e)
		byHost[h] = append(byHost[h], e)
		first, last = min(first, e.TimeNs), max(last, e.TimeNs)
	}
	start, end := time.Unix(0, first).UTC(), time.Unix(0, last+1).UTC()
	in := &Input{}
	for _, name := range slices.Sorted(maps.Keys(byHost)) {
		evs := byHost[name]
		slices.SortStableFunc(evs, func(a, b traces.Event) int { return cmp.Compare(a.TimeNs, b.TimeNs) })
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		for _, e := range evs {
			if err := enc.Encode(e); err != nil {
				return nil, err
			}
		}
		data := buf.Bytes()
		m := &traces.Manifest{
			SchemaVersion: traces.SchemaVersion, CaptureID: "logs-" + start.Format("20060102T150405Z"),
			Cluster: "local", Job: job, Run: "offline", Host: name, Start: start, End: end,
			Trigger:      traces.Trigger{Kind: traces.TriggerLogHistory, Reason: "logs analyzed offline"},
			AgentVersion: "none",
			Parts:        []traces.Part{{Name: traces.PartEvents, MediaType: traces.MediaJSONL, Size: int64(len(data))}},
		}
		for i := range opts.GPUsPerHost {
			m.GPUs = append(m.GPUs, traces.GPUInfo{Index: i, UUID: fmt.Sprintf("offline-%s-%d", name, i)})
		}
		in.Hosts = append(in.Hosts, Host{
			Manifest: m,
			Key:      func(part string) string { return name + "/" + part },
			Open: func(ctx context.Context, part string) (io.ReadCloser, error) {
				if part != traces.PartEvents {
					return nil, fmt.Errorf("%w: %q", traces.ErrMissingPart, part)
				}
				return io.NopCloser(bytes.NewReader(data)), nil
			},
		})
	}
	return in, nil
}
