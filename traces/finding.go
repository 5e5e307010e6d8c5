package traces

import (
	"fmt"
	"strings"
	"time"
)

// Severities of a finding, from most to least urgent.
const (
	SeverityCritical = "critical"
	SeverityWarning  = "warning"
	SeverityInfo     = "info"
)

// FindingsDir is the folder, beside a capture's host folders, where the
// aggregator stores the findings of that capture: .../<capture>/_findings/.
const FindingsDir = "_findings"

// Finding is one conclusion an analyzer drew from a capture. Findings are
// stored as JSON beside the capture they came from.
type Finding struct {
	// ID is stable across re-runs of the same analyzer version on the same
	// capture and scope, so that it can be used for dedup.
	ID              string   `json:"id"`
	Analyzer        string   `json:"analyzer"`
	AnalyzerVersion string   `json:"analyzer_version"`
	Title           string   `json:"title"`
	Severity        string   `json:"severity"`
	Scope           Scope    `json:"scope"`
	Evidence        []Metric `json:"evidence"`
	Impact          Impact   `json:"impact"`
	Recommendation  string   `json:"recommendation"`
	// Frames are the stack frames (function names or file:line) the finding
	// points at, such as the hottest data-loading frames; ownership rules
	// match them.
	Frames  []string  `json:"frames,omitempty"`
	Owners  []string  `json:"owners,omitempty"`
	Lineage Lineage   `json:"lineage"`
	Created time.Time `json:"created"`
	// Partial is set when the capture was analyzed without every rank.
	Partial      bool  `json:"partial,omitempty"`
	MissingRanks []int `json:"missing_ranks,omitempty"`
	// Simulated is set when the inputs came from simulated GPUs.
	Simulated bool `json:"simulated,omitempty"`
	// Targets are the GPUs and ranks the finding is about, each with its own
	// evidence, the most severe and costly first (at most MaxTargets), so
	// that the correlation step can join findings about the same place.
	Targets []Target `json:"targets,omitempty"`
	// RootCauses are the IDs of the root-cause findings that explain this
	// one (analyzer "root-cause"); the finding itself stays as it was.
	RootCauses []string `json:"root_causes,omitempty"`
	// Explains, on a root-cause finding, lists the IDs of the findings it
	// joins.
	Explains []string `json:"explains,omitempty"`
}

// MaxTargets bounds the targets a finding carries.
const MaxTargets = 64

// Target is one GPU or rank a finding is about. GPU and Rank are -1 when
// unknown.
type Target struct {
	Host     string `json:"host"`
	GPU      int    `json:"gpu"`
	Rank     int    `json:"rank"`
	Severity string `json:"severity"`
	// GPUSeconds is what this target lost (or cost the others).
	GPUSeconds float64  `json:"gpu_seconds"`
	Evidence   []Metric `json:"evidence"`
}

// Scope is what a finding is about: a whole job, or one host, GPU or rank of it.
// Unset numeric fields are -1.
type Scope struct {
	Cluster string `json:"cluster"`
	Job     string `json:"job"`
	Run     string `json:"run"`
	Capture string `json:"capture"`
	Host    string `json:"host,omitempty"`
	GPU     int    `json:"gpu"`
	Rank    int    `json:"rank"`
	Stream  string `json:"stream,omitempty"`
	// HostWide marks a finding about the host rather than the job: a GPU
	// whose samples the job's capture carried but that no process of the
	// job uses (Manifest.OwnsGPU). Its alert goes to the host's owners,
	// never to the job's.
	HostWide bool `json:"host_wide,omitempty"`
}

// String renders what the scope narrows to, e.g. "host h1, rank 3, gpu 3",
// or "job" when it is the whole job.
func (s Scope) String() string {
	var parts []string
	if s.Host != "" {
		parts = append(parts, "host "+s.Host)
	}
	if s.Rank >= 0 {
		parts = append(parts, fmt.Sprintf("rank %d", s.Rank))
	}
	if s.GPU >= 0 {
		parts = append(parts, fmt.Sprintf("gpu %d", s.GPU))
	}
	if s.Stream != "" {
		parts = append(parts, "stream "+s.Stream)
	}
	if len(parts) == 0 {
		return "job"
	}
	if s.HostWide {
		parts = append(parts, "host-wide: no process of the job uses it")
	}
	return strings.Join(parts, ", ")
}

// Metric is one evidence number.
type Metric struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit,omitempty"`
}

// Impact estimates what a finding costs.
type Impact struct {
	// GPUSeconds lost in the capture window.
	GPUSeconds float64 `json:"gpu_seconds"`
	// WindowShare is the share of the window's GPU time lost, in [0,1].
	WindowShare float64 `json:"window_share"`
}

// Lineage names what a finding was computed from.
type Lineage struct {
	// Inputs are the object keys of the parts read.
	Inputs []string `json:"inputs"`
	// AnalyzerVersions maps analyzer name to version for every analyzer of the run.
	AnalyzerVersions map[string]string `json:"analyzer_versions,omitempty"`
}
