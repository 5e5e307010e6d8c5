package traces

import (
	"errors"
	"slices"
	"strings"
	"time"
)

// SchemaVersion is the bundle format version this package writes and reads.
const SchemaVersion = 1

// ManifestName is the name of the manifest object inside a capture's host
// folder. It is written last and is the commit marker of the capture.
const ManifestName = "manifest.json"

// Standard part names. Kineto traces are stored under KinetoDir, one file per
// traced process, gzip-compressed as produced by Kineto.
const (
	PartGPUSamples = "gpu_samples.parquet"
	PartNCCLEvents = "nccl_events.parquet"
	PartSteps      = "steps.parquet"
	PartCPUProfile = "cpu.pb.gz"
	// PartContinuousProfile is the always-on CPU profile of one interval
	// (pprof, labels pid, comm, container, pod, job, rank), in a bundle of
	// its own whose capture id is a ContinuousCaptureID.
	PartContinuousProfile = "cpu_continuous.pb.gz"
	PartEvents            = "events.jsonl"
	KinetoDir             = "kineto/"
)

// PartStepHistory is the run's step history from its first step (StepSpan
// rows), so that analyzers judge the start of the run, not only the window.
const PartStepHistory = "step_history.parquet"

// Media types of the parts.
const (
	MediaParquet = "application/vnd.apache.parquet"
	MediaPprof   = "application/vnd.google.protobuf+pprof"
	MediaJSONL   = "application/jsonl"
	MediaKineto  = "application/json+gzip"
	MediaJSON    = "application/json"
)

// Limits a reader enforces on outside data.
const (
	// MaxManifestSize bounds the manifest a reader will decode.
	MaxManifestSize = 4 << 20
	// MaxParts bounds the number of parts one manifest may list.
	MaxParts = 4096
	// DefaultMaxPartSize bounds a single part unless the reader is told otherwise.
	DefaultMaxPartSize int64 = 8 << 30
)

// ProfileTimeLabel is the numeric label of a CPU profile sample that says
// when its samples were read from the kernel (Unix nanoseconds): they were
// taken in the agent's drain interval (about a second) before it. It puts
// CPU samples on a capture's timeline (ExportChrome).
const ProfileTimeLabel = "time_ns"

// Trigger kinds.
const (
	TriggerStableIteration = "stable-iteration"
	TriggerOnDemand        = "on-demand"
	// TriggerNCCLHang: the agent saw a communicator stall with some ranks
	// inside a collective the others never reached; the capture holds the
	// stall's history and a PartNCCLHang report.
	TriggerNCCLHang = "nccl-hang"
	// TriggerNCCLRecovered: a hung communicator made progress again.
	TriggerNCCLRecovered = "nccl-hang-recovered"
	// TriggerContinuous marks a continuous profile bundle: no capture
	// window, nothing to analyze on its own.
	TriggerContinuous = "continuous"
	// TriggerLogHistory: a log-only bundle of events from log lines older
	// than any capture window (a log file found with history, or logs
	// analyzed offline).
	TriggerLogHistory = "log-history"
)

// Manifest describes one host's share of one capture. It is stored as
// manifest.json next to the parts it lists.
type Manifest struct {
	SchemaVersion int    `json:"schema_version"`
	CaptureID     string `json:"capture_id"`
	Cluster       string `json:"cluster"`
	Job           string `json:"job"`
	Run           string `json:"run"`
	Host          string `json:"host"`
	// Ranks are the global ranks of the job's processes on this host.
	Ranks []int `json:"ranks"`
	// WorldSize is the job's total number of ranks; the aggregator waits for
	// all of them before it analyzes the capture.
	WorldSize    int       `json:"world_size"`
	Start        time.Time `json:"start"`
	End          time.Time `json:"end"`
	Trigger      Trigger   `json:"trigger"`
	AgentVersion string    `json:"agent_version"`
	// Simulated is true when any data in the bundle comes from simulated GPUs.
	Simulated bool `json:"simulated,omitempty"`
	// DriverVersion is the host's NVIDIA driver and CUDAVersion the CUDA
	// version it supports, as NVML reports them; empty when unknown.
	DriverVersion string `json:"driver_version,omitempty"`
	CUDAVersion   string `json:"cuda_version,omitempty"`
	// GPUs describes the devices whose samples the bundle carries: those the
	// job's processes use, or, when the capture matched no process, every
	// GPU of the host, which the job is then not known to own (OwnsGPU).
	GPUs []GPUInfo `json:"gpus,omitempty"`
	// Processes are the processes the capture covered.
	Processes []Process `json:"processes,omitempty"`
	Parts     []Part    `json:"parts"`
	// Notes are human-readable remarks about gaps in the capture, for
	// example a Kineto trace without distributedInfo or a missing collector.
	Notes []string `json:"notes,omitempty"`
}

// OwnsGPU reports whether the bundle's job uses GPU index gpu: a process
// of the job runs on it. A GPU whose samples the bundle carries but that
// no process of the job uses is the host's, and so are findings about it:
// an alert about it must not go to the job.
func (m *Manifest) OwnsGPU(gpu int) bool {
	for _, g := range m.GPUs {
		if g.Index == gpu && len(g.Ranks) > 0 {
			return true
		}
	}
	for _, p := range m.Processes {
		if p.Uses(gpu) {
			return true
		}
	}
	return false
}

// GPURank returns the global rank that uses GPU index gpu, or -1 when the
// manifest does not say or several ranks share the device.
func (m *Manifest) GPURank(gpu int) int {
	for _, g := range m.GPUs {
		if g.Index == gpu && len(g.Ranks) == 1 {
			return g.Ranks[0]
		}
	}
	rank := -1
	for _, p := range m.Processes {
		if p.Uses(gpu) {
			if rank >= 0 && rank != p.Rank {
				return -1
			}
			rank = p.Rank
		}
	}
	return rank
}

// Uses reports whether the process uses GPU index gpu.
func (p *Process) Uses(gpu int) bool {
	return gpu >= 0 && (p.GPU == gpu || slices.Contains(p.GPUs, gpu))
}

// Trigger says why a capture was taken.
type Trigger struct {
	Kind   string `json:"kind"`
	Reason string `json:"reason"`
	// StartIteration and Iterations are set for iteration-bounded captures.
	StartIteration int64 `json:"start_iteration,omitempty"`
	Iterations     int64 `json:"iterations,omitempty"`
}

// GPUInfo identifies one device and what runs on it.
type GPUInfo struct {
	Index     int    `json:"index"`
	UUID      string `json:"uuid"`
	Name      string `json:"name"`
	PCIBusID  string `json:"pci_bus_id,omitempty"`
	MIG       bool   `json:"mig,omitempty"`
	Pod       string `json:"pod,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Container string `json:"container,omitempty"`
	// Ranks are the global ranks whose processes use this GPU.
	Ranks []int `json:"ranks,omitempty"`
}

// Process is one process the capture covered.
type Process struct {
	PID       int    `json:"pid"`
	Comm      string `json:"comm,omitempty"`
	Rank      int    `json:"rank"`
	LocalRank int    `json:"local_rank"`
	GPU       int    `json:"gpu"` // -1 when unknown
	// GPUs lists every GPU the process uses when it uses more than one
	// (GPU is the first of them).
	GPUs      []int  `json:"gpus,omitempty"`
	Container string `json:"container,omitempty"`
	Pod       string `json:"pod,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	// Started is when the process started, when known; a projection of a
	// finding falls back on it for the run's start.
	Started time.Time `json:"started,omitzero"`
	// Image is the container image the process runs, as its container
	// runtime names it; NCCLVersion the version of the libnccl it maps.
	Image       string `json:"image,omitempty"`
	NCCLVersion string `json:"nccl_version,omitempty"`
}

// Software is what a job ran on, summed up over its manifests: the
// container images, driver, CUDA and NCCL versions. A field lists the
// distinct values seen, sorted and joined by ", "; empty when unknown.
type Software struct {
	Image  string `json:"image,omitempty"`
	Driver string `json:"driver,omitempty"`
	CUDA   string `json:"cuda,omitempty"`
	NCCL   string `json:"nccl,omitempty"`
}

// SoftwareOf sums up the software of the manifests of one job.
func SoftwareOf(ms ...*Manifest) Software {
	var images, drivers, cudas, nccls []string
	add := func(list *[]string, v string) {
		if v != "" && !slices.Contains(*list, v) {
			*list = append(*list, v)
		}
	}
	for _, m := range ms {
		add(&drivers, m.DriverVersion)
		add(&cudas, m.CUDAVersion)
		for _, p := range m.Processes {
			add(&images, p.Image)
			add(&nccls, p.NCCLVersion)
		}
	}
	join := func(list []string) string {
		slices.Sort(list)
		return strings.Join(list, ", ")
	}
	return Software{Image: join(images), Driver: join(drivers), CUDA: join(cudas), NCCL: join(nccls)}
}

// Part is one file of a bundle.
type Part struct {
	// Name is a relative slash-separated path inside the host folder.
	Name      string `json:"name"`
	MediaType string `json:"media_type"`
	Size      int64  `json:"size"`
	// SHA256 is the lowercase hex digest of the part's bytes as stored.
	SHA256 string `json:"sha256"`
}

// Errors a reader returns; each is wrapped with the detail of what failed.
var (
	ErrSchemaVersion = errors.New("unknown bundle schema version")
	ErrMissingPart   = errors.New("part listed in manifest is missing")
	ErrChecksum      = errors.New("part checksum mismatch")
	ErrPartTooLarge  = errors.New("part exceeds size limit")
	ErrUnsafeName    = errors.New("part name escapes its folder")
	ErrInvalid       = errors.New("invalid manifest")
)
