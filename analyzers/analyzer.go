// Package analyzers holds Loupe's pluggable capture analyzers. An Analyzer
// is a value, in the manner of golang.org/x/tools/go/analysis: a name, a doc,
// a version, the parts it needs and a run function. A new analyzer is a new
// file plus one line in the registry (All).
package analyzers

import (
	"context"
	"io"

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
}

// Input is one job capture: every host bundle that committed.
type Input struct {
	Hosts []Host
	// Partial is set when the capture is analyzed without every rank.
	Partial      bool
	MissingRanks []int
}

// Host is one committed host bundle of the capture.
type Host struct {
	Manifest *traces.Manifest
	// Open opens a part by name. Implementations verify size and checksum
	// as the part is read, failing the read on a mismatch.
	Open func(ctx context.Context, name string) (io.ReadCloser, error)
	// Key returns the object key (or file path) of a part, for lineage.
	Key func(name string) string
}
