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
	Frames []string `json:"frames,omitempty"`
	// Subject names what the finding is about across captures when its
	// scope does not: a hang's id, so that the capture of its recovery
	// ends the incident the hang opened.
	Subject string    `json:"subject,omitempty"`
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
	// Projected is what the finding costs over the job's life, projected
	// from the window; nil in findings written before projections existed.
	Projected *Projection `json:"projected,omitempty"`
}

// Projection extrapolates a finding over the job's life. It is a
// projection, not a measurement: Basis says what it assumes.
type Projection struct {
	// GPUHoursPerDay is what the problem costs the job per day it runs.
	GPUHoursPerDay float64 `json:"gpu_hours_per_day"`
	// GPUHoursRun is what it has cost over the run so far.
	GPUHoursRun float64 `json:"gpu_hours_run"`
	// Share is the share of the job's GPU time the problem costs, in [0,1]
	// (for a one-off cost, the run's share so far).
	Share float64 `json:"share"`
	// GPUs is the job's GPU count.
	GPUs int `json:"gpus"`
	// ScopeGPUs, when an analyzer measured the share on fewer GPUs than
	// the job's (one rank's trace), is how many; the projection then
	// scales Share to the job.
	ScopeGPUs int `json:"scope_gpus,omitempty"`
	// RunStart is when the run began, according to RunStartFrom, and
	// RunHours how long it had run at the end of the capture.
	RunStart     time.Time `json:"run_start"`
	RunStartFrom string    `json:"run_start_from"`
	RunHours     float64   `json:"run_hours"`
	// OneOff is set for a cost paid once per occurrence (a warm-up), not a
	// share of every hour: then OneOffGPUSeconds is one occurrence's cost
	// and Occurrences how often the run paid it.
	OneOff           bool    `json:"one_off,omitempty"`
	OneOffGPUSeconds float64 `json:"one_off_gpu_seconds,omitempty"`
	Occurrences      int     `json:"occurrences,omitempty"`
	// Basis states the projection in words, with its assumptions.
	Basis string `json:"basis"`
}

// Where a projection's run start comes from, most reliable first.
const (
	RunStartStepHistory  = "step_history"
	RunStartProcessStart = "process_start"
	RunStartCapture      = "capture_window"
)

// RankValue is what findings are ranked by fleet-wide: the projected
// GPU-hours per day; 0 for findings stored without a projection, which
// then rank by their window GPU-seconds, after the others.
func (i Impact) RankValue() float64 {
	if i.Projected != nil {
		return i.Projected.GPUHoursPerDay
	}
	return 0
}

// Lineage names what a finding was computed from.
type Lineage struct {
	// Inputs are the object keys of the parts read.
	Inputs []string `json:"inputs"`
	// AnalyzerVersions maps analyzer name to version for every analyzer of the run.
	AnalyzerVersions map[string]string `json:"analyzer_versions,omitempty"`
}
