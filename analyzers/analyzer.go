// Package analyzers holds Loupe's pluggable capture analyzers. An Analyzer
// is a value, in the manner of golang.org/x/tools/go/analysis: a name, a doc,
// a version, the parts it needs and a run function. A new analyzer is a new
// file plus one line in the registry (All).
//
// Run executes a list of analyzers over one job capture in parallel. The
// analyzers read the capture's parts through the streaming helpers of this
// package (EachGPUSample, EachNCCLEvent, EachStep, EachStepSpan, EachEvent,
// ReadCPUProfile), which hand out one host and one batch of rows at a time,
// so that memory does not grow with the size of the capture.
package analyzers

import (
	"context"
	"io"
	"sync"

	"github.com/google/pprof/profile"

	"github.com/loupe-dev/loupe/traces"
)

// Analyzer describes one analysis of a job capture.
type Analyzer struct {
	// Name is a short identifier, stable across versions (e.g. "nccl-straggler").
	Name string
	// Doc says what the analyzer finds and how, first line a summary.
	Doc string
	// Version changes whenever the analyzer's results may change, so that
	// backfill knows what to re-run.
	Version string
	// Requires lists the part names (or traces.KinetoDir for Kineto traces)
	// the analyzer reads; it is skipped when a capture has none of them.
	Requires []string
	// Run analyzes the capture and reports findings through pass.Report.
	Run func(pass *Pass) error
}

// Pass is what one analyzer run sees.
type Pass struct {
	Context  context.Context
	Analyzer *Analyzer
	Input    *Input
	// Report records a finding. The runner fills in analyzer name and
	// version, lineage and the partial flag.
	Report func(traces.Finding)

	mu     sync.Mutex
	inputs map[string]struct{} // object keys read, for lineage
	cache  *tableCache         // tables shared with the run's other analyzers
	slots  chan struct{}       // the run's CPU slots; this pass holds one
}

// yield lets the analyzers waiting for a CPU slot run before this one goes
// on. The streaming helpers yield between hosts, so analyzers reading the
// same table move through the hosts together and share its decoded form.
func (p *Pass) yield() {
	if p.slots == nil {
		return
	}
	<-p.slots
	// A goroutine blocked on the slots, if any, has taken the freed one
	// (channel senders are served in order); queue behind it.
	p.slots <- struct{}{}
}

// wait blocks until ready is closed or the pass's context ends, giving up
// the pass's CPU slot meanwhile so that another analyzer can run.
func (p *Pass) wait(ready <-chan struct{}) error {
	select {
	case <-ready:
		return nil
	default:
	}
	if p.slots != nil {
		<-p.slots
		defer func() { p.slots <- struct{}{} }()
	}
	select {
	case <-ready:
		return nil
	case <-p.Context.Done():
		return p.Context.Err()
	}
}

// Input is one job capture: every host bundle that committed.
type Input struct {
	Hosts []Host
	// Partial is set when the capture is analyzed without every rank.
	Partial      bool
	MissingRanks []int
	// Kineto says how the Kineto analyzers read traces; nil means
	// DefaultKinetoOptions (HTA's definitions).
	Kineto *KinetoOptions
}

// KinetoOptions returns the options the Kineto analyzers use on in.
func (in *Input) KinetoOptions() KinetoOptions {
	if in.Kineto == nil {
		return DefaultKinetoOptions()
	}
	return *in.Kineto
}

// Host is one committed host bundle of the capture.
type Host struct {
	Manifest *traces.Manifest
	// Open opens a part by name. Implementations verify size and checksum
	// as the part is read, failing the read on a mismatch.
	Open func(ctx context.Context, name string) (io.ReadCloser, error)
	// Key returns the object key (or file path) of a part, for lineage.
	Key func(name string) string
	// Baseline, when set, returns the host's normal CPU profile: the
	// agent's continuous profiles of this job run from before the capture
	// window, merged, and the object keys they were read from. It returns
	// nil when the store holds none.
	Baseline func(ctx context.Context) (*profile.Profile, []string, error)
}

// Has reports whether the host's bundle holds the named part; for
// traces.KinetoDir, whether it holds any Kineto trace.
func (h *Host) Has(name string) bool {
	for _, p := range h.Manifest.Parts {
		if p.Name == name || name == traces.KinetoDir && len(p.Name) > len(name) && p.Name[:len(name)] == name {
			return true
		}
	}
	return false
}

// Seconds is the length of the host's capture window.
func (h *Host) Seconds() float64 {
	d := h.Manifest.End.Sub(h.Manifest.Start).Seconds()
	if d < 0 {
		return 0
	}
	return d
}

// GPURank returns the global rank that uses GPU index gpu on this host, or
// -1 when the manifest does not say or several ranks share the device.
func (h *Host) GPURank(gpu int) int { return h.Manifest.GPURank(gpu) }

// RankGPU returns the GPU index a rank uses on this host, or -1.
func (h *Host) RankGPU(rank int) int {
	for _, p := range h.Manifest.Processes {
		if p.Rank == rank && p.GPU >= 0 {
			return p.GPU
		}
	}
	for _, g := range h.Manifest.GPUs {
		for _, r := range g.Ranks {
			if r == rank {
				return g.Index
			}
		}
	}
	return -1
}

// Used records that the analyzer read the named part of host h, so that the
// findings it reports name that object in their lineage. The streaming
// helpers call it; an analyzer that opens parts itself calls it too.
func (p *Pass) Used(h *Host, name string) {
	if h.Key == nil {
		return
	}
	p.usedKeys(h.Key(name))
}

// usedKeys records object keys read outside the capture's own parts.
func (p *Pass) usedKeys(keys ...string) {
	p.mu.Lock()
	if p.inputs == nil {
		p.inputs = make(map[string]struct{})
	}
	for _, k := range keys {
		p.inputs[k] = struct{}{}
	}
	p.mu.Unlock()
}
