package goodput

import (
	"context"
	"errors"

	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces"
)

// ErrNoHistory reports a capture without a step history, whose run's
// goodput cannot be computed from it.
var ErrNoHistory = errors.New("no host bundle has a step history (step_history.parquet)")

// FromCapture computes the goodput of a capture's run: the step history
// its hosts carry (the run from its first step up to the capture), the
// checkpoint events of its events.jsonl, the process start times of its
// manifests and of earlier ones (a restarted run's first processes are
// gone by its latest capture), and the windows of the run's captures.
func FromCapture(ctx context.Context, in *analyzers.Input, earlier []*traces.Manifest, windows []Window, opt Options) (*traces.Goodput, error) {
	r := &Run{Windows: windows}
	for i := range in.Hosts {
		m := in.Hosts[i].Manifest
		r.Cluster, r.Job, r.Run, r.Capture = m.Cluster, m.Job, m.Run, m.CaptureID
		r.Manifests = append(r.Manifests, m)
	}
	r.Manifests = append(r.Manifests, earlier...)
	if !has(in, traces.PartStepHistory) {
		return nil, ErrNoHistory
	}
	// A pass of its own: no other analyzer shares these reads.
	pass := &analyzers.Pass{Context: ctx, Input: in}
	err := analyzers.EachStepSpan(pass, func(_ *analyzers.Host, s *traces.StepSpan) error {
		r.Add(s)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if has(in, traces.PartEvents) {
		err = analyzers.EachEvent(pass, func(_ *analyzers.Host, e *traces.Event) error {
			if e.Kind == traces.EventCheckpoint {
				r.Checkpoints = append(r.Checkpoints, Checkpoint{TimeNs: e.TimeNs, Rank: e.Rank})
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	g := Compute(r, opt)
	if g == nil {
		return nil, ErrNoHistory
	}
	return g, nil
}

func has(in *analyzers.Input, part string) bool {
	for i := range in.Hosts {
		if in.Hosts[i].Has(part) {
			return true
		}
	}
	return false
}
