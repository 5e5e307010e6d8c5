package traces

import "time"

// GoodputName is the object, in a capture's FindingsDir, that holds the
// goodput of the capture's run as of that capture (computed from the step
// history the capture carries).
const GoodputName = "goodput.json"

// Badput causes: where a run's GPU time went when it did not go into
// productive training steps. Package analyzers/goodput defines each one.
const (
	CauseStartup    = "startup"
	CauseWarmup     = "warmup"
	CauseCheckpoint = "checkpoint"
	CauseDataStall  = "data_stall"
	CauseStraggler  = "straggler_wait"
	CauseComm       = "comm_exposed"
	CauseRestart    = "restart"
	CauseLostWork   = "lost_work"
	CauseIdle       = "idle_gpu"
)

// Causes lists every badput cause, in the order reports and charts use.
var Causes = []string{
	CauseStartup, CauseWarmup, CauseCheckpoint, CauseDataStall, CauseStraggler,
	CauseComm, CauseRestart, CauseLostWork, CauseIdle,
}

// Goodput is how one job run used its GPU time: wall time times GPUs, split
// into productive steps and badput by cause.
type Goodput struct {
	// Version is the version of the computation (analyzers/goodput.Version).
	Version string `json:"version"`
	Cluster string `json:"cluster"`
	Job     string `json:"job"`
	Run     string `json:"run"`
	// Capture is the capture whose step history this was computed from.
	Capture  string    `json:"capture"`
	Computed time.Time `json:"computed"`
	// Start and End bound the run's wall time: the first process start (or
	// step) to the last step seen.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Ranks is how many ranks (one GPU each) the step history covers;
	// IdleGPUs the devices allocated to the job that ran no rank.
	Ranks    int `json:"ranks"`
	IdleGPUs int `json:"idle_gpus,omitempty"`
	// GPUSeconds is the wall time times the GPUs; ProductiveGPUSeconds the
	// part of it that went into training steps.
	GPUSeconds           float64 `json:"gpu_seconds"`
	ProductiveGPUSeconds float64 `json:"productive_gpu_seconds"`
	// Goodput is ProductiveGPUSeconds over GPUSeconds.
	Goodput float64 `json:"goodput"`
	// ETTR, the effective training time ratio, counts in-step losses (data
	// stalls, straggler wait, exposed communication) as training time.
	ETTR float64 `json:"ettr"`
	// MFU is the model FLOPs utilization of the steady steps; zero when the
	// FLOPs per step are unknown. MFUSource says where they came from.
	MFU          float64 `json:"mfu,omitempty"`
	MFUSource    string  `json:"mfu_source,omitempty"`
	FLOPsPerStep float64 `json:"flops_per_step,omitempty"`
	PeakFLOPS    float64 `json:"peak_flops,omitempty"`
	// StepSeconds is the steady step time (the median over ranks of the
	// latest process's); Steps the iterations the run advanced.
	StepSeconds float64 `json:"step_seconds"`
	Steps       int64   `json:"steps"`
	// Restarts counts the times a rank's process restarted or its
	// iterations went back, on the rank that did so most.
	Restarts int `json:"restarts"`
	// Badput is every cause, in Causes order.
	Badput   []Badput        `json:"badput"`
	Timeline GoodputTimeline `json:"timeline"`
	Software Software        `json:"software"`
	// Windows counts the capture windows the in-step causes were measured in.
	Windows   int      `json:"windows"`
	Simulated bool     `json:"simulated,omitempty"`
	Notes     []string `json:"notes,omitempty"`
}

// Badput is the GPU time one cause took.
type Badput struct {
	Cause      string  `json:"cause"`
	GPUSeconds float64 `json:"gpu_seconds"`
	// Share is GPUSeconds over the run's GPUSeconds.
	Share float64 `json:"share"`
	// Measured is false when nothing the run produced could show the cause
	// (no NCCL events for straggler wait, say): zero then means unknown.
	Measured bool `json:"measured"`
}

// GoodputTimeline is the run's GPU time by bucket of wall time, for charts.
type GoodputTimeline struct {
	Start         time.Time `json:"start"`
	BucketSeconds float64   `json:"bucket_seconds"`
	// Productive holds the productive GPU-seconds of each bucket; Badput
	// each cause's.
	Productive []float64            `json:"productive"`
	Badput     map[string][]float64 `json:"badput"`
}

// LostGPUHours is the GPU time that went into badput, in hours.
func (g *Goodput) LostGPUHours() float64 {
	return max(0, g.GPUSeconds-g.ProductiveGPUSeconds) / 3600
}

// Cause returns the badput of one cause (zero when absent).
func (g *Goodput) Cause(name string) Badput {
	for _, b := range g.Badput {
		if b.Cause == name {
			return b
		}
	}
	return Badput{Cause: name}
}
