package traces

// The Parquet tables of a bundle. One row per sample or event; columns are
// typed and named so that DuckDB, Spark or Trino read the files in place.
// Times are Unix nanoseconds (UTC).
//
// Every table describes itself: its rows start with the Identity columns
// (cluster, job, run, capture, host) and carry a rank column, and its
// key-value metadata holds the schema version (MetaSchemaVersion) and the
// table's name. A query over a whole store needs no file names. A new row
// type embeds Identity first; WriteTable fills it (and any identify method
// the type has) from the bundle's manifest, so no writer sets it by hand.

// Identity names the capture a row belongs to. The columns are dictionary
// encoded: one value per part, so they cost a few bytes per file.
type Identity struct {
	Cluster string `parquet:"cluster,dict"`
	Job     string `parquet:"job,dict"`
	Run     string `parquet:"run,dict"`
	Capture string `parquet:"capture,dict"`
	Host    string `parquet:"host,dict"`
}

// identify sets the identity columns of a row from the bundle's manifest.
func (id *Identity) identify(m *Manifest) {
	*id = Identity{Cluster: m.Cluster, Job: m.Job, Run: m.Run, Capture: m.CaptureID, Host: m.Host}
}

// identified is a row type whose identity WriteTable fills in.
type identified interface{ identify(m *Manifest) }

// GPUSample is one row of gpu_samples.parquet: one device at one instant.
// NVML fields are always set; the DCGM profiling fields are meaningful only
// when ProfValid is true (DCGM missing, paused or not loaded otherwise).
type GPUSample struct {
	Identity
	TimeNs int64 `parquet:"time_ns,timestamp(nanosecond)"`
	GPU    int32 `parquet:"gpu"`
	// Rank is the global rank whose process uses the GPU, -1 when none or
	// several do; WriteTable fills it from the manifest.
	Rank int32  `parquet:"rank"`
	UUID string `parquet:"uuid,dict"`

	GPUUtil     float32 `parquet:"gpu_util"`      // percent, NVML
	MemCopyUtil float32 `parquet:"mem_copy_util"` // percent, NVML
	FBUsedMiB   int64   `parquet:"fb_used_mib"`
	FBFreeMiB   int64   `parquet:"fb_free_mib"`
	FBTotalMiB  int64   `parquet:"fb_total_mib"`
	PowerW      float32 `parquet:"power_w"`
	EnergyMJ    int64   `parquet:"energy_mj"` // total since driver load, counter
	GPUTempC    float32 `parquet:"gpu_temp_c"`
	MemTempC    float32 `parquet:"mem_temp_c"`
	SMClockMHz  int32   `parquet:"sm_clock_mhz"`
	MemClockMHz int32   `parquet:"mem_clock_mhz"`
	// ClockEventReasons is NVML's clock event (throttle) reason bit set.
	ClockEventReasons int64 `parquet:"clock_event_reasons"`
	PCIeTxBps         int64 `parquet:"pcie_tx_bps"` // bytes per second, NVML
	PCIeRxBps         int64 `parquet:"pcie_rx_bps"`
	NVLinkTxBps       int64 `parquet:"nvlink_tx_bps"`
	NVLinkRxBps       int64 `parquet:"nvlink_rx_bps"`
	ECCSingleBit      int64 `parquet:"ecc_sbe_total"`
	ECCDoubleBit      int64 `parquet:"ecc_dbe_total"`
	RemappedRows      int64 `parquet:"remapped_rows"`

	// DCGM profiling fields (1001-1012), ratios in [0,1] and bytes per second.
	ProfValid       bool    `parquet:"prof_valid"`
	GrEngineActive  float32 `parquet:"gr_engine_active"`
	SMActive        float32 `parquet:"sm_active"`
	SMOccupancy     float32 `parquet:"sm_occupancy"`
	TensorActive    float32 `parquet:"tensor_active"`
	DRAMActive      float32 `parquet:"dram_active"`
	FP64Active      float32 `parquet:"fp64_active"`
	FP32Active      float32 `parquet:"fp32_active"`
	FP16Active      float32 `parquet:"fp16_active"`
	ProfPCIeTxBps   int64   `parquet:"prof_pcie_tx_bps"`
	ProfPCIeRxBps   int64   `parquet:"prof_pcie_rx_bps"`
	ProfNVLinkTxBps int64   `parquet:"prof_nvlink_tx_bps"`
	ProfNVLinkRxBps int64   `parquet:"prof_nvlink_rx_bps"`
}

// identify fills the sample's identity and the rank using its GPU.
func (s *GPUSample) identify(m *Manifest) {
	s.Identity.identify(m)
	s.Rank = int32(m.GPURank(int(s.GPU)))
}

// Clock event reason bits (NVML's nvmlClocksEventReason*).
const (
	ClockEventGPUIdle           = 0x1
	ClockEventAppClocksSetting  = 0x2
	ClockEventSWPowerCap        = 0x4
	ClockEventHWSlowdown        = 0x8
	ClockEventSyncBoost         = 0x10
	ClockEventSWThermalSlowdown = 0x20
	ClockEventHWThermalSlowdown = 0x40
	ClockEventHWPowerBrake      = 0x80
)

// NCCLEvent is one row of nccl_events.parquet: one host-side NCCL API call
// seen by a uprobe. TimeNs is when the call entered NCCL, which is enqueue
// time, not GPU completion. Arrival skew across ranks for the same (CommID,
// Seq) is what exposes a straggler.
type NCCLEvent struct {
	Identity
	TimeNs int64 `parquet:"time_ns,timestamp(nanosecond)"`
	// DurationNs is how long the host-side call took (entry to return).
	DurationNs int64 `parquet:"duration_ns"`
	PID        int32 `parquet:"pid"`
	TID        int32 `parquet:"tid"`
	Rank       int32 `parquet:"rank"`
	NRanks     int32 `parquet:"nranks"`
	// CommID is a hash of the communicator's ncclUniqueId: the same on every
	// rank of one communicator, on every host.
	CommID uint64 `parquet:"comm_id"`
	// Op is the NCCL function without its prefix: AllReduce, AllGather,
	// ReduceScatter, Broadcast, Reduce, AllToAll, Send, Recv, GroupStart,
	// GroupEnd, CommInitRank.
	Op string `parquet:"op,dict"`
	// Seq numbers the collectives of one communicator from 0, per process.
	Seq      int64  `parquet:"seq"`
	Count    int64  `parquet:"count"`
	Datatype string `parquet:"datatype,dict"`
	Bytes    int64  `parquet:"bytes"`
	// Peer is the peer rank of Send/Recv and the root of Broadcast/Reduce; -1 otherwise.
	Peer int32 `parquet:"peer"`
}

// Step sources, in order of preference.
const (
	StepSourceMarker = "marker"
	StepSourceKineto = "kineto"
	StepSourceNCCL   = "nccl"
)

// Step is one row of steps.parquet: one training iteration of one rank.
type Step struct {
	Identity
	Rank      int32  `parquet:"rank"`
	PID       int32  `parquet:"pid"`
	Iteration int64  `parquet:"iteration"`
	StartNs   int64  `parquet:"start_ns,timestamp(nanosecond)"`
	EndNs     int64  `parquet:"end_ns,timestamp(nanosecond)"`
	Source    string `parquet:"source,dict"`
}

// StepSpan is one row of step_history.parquet, the run's step history from
// its first step: one step of one rank at full resolution (Steps == 1), or,
// past the full-resolution head, Steps consecutive steps of that rank merged
// into one row. Rows are never merged across a PID change or an iteration
// that goes back (a restarted process), so restarts stay visible.
type StepSpan struct {
	Rank           int32 `parquet:"rank"`
	PID            int32 `parquet:"pid"`
	FirstIteration int64 `parquet:"first_iteration"`
	Steps          int32 `parquet:"steps"`
	// StartNs is the start of the first step, EndNs the end of the last.
	StartNs int64 `parquet:"start_ns,timestamp(nanosecond)"`
	EndNs   int64 `parquet:"end_ns,timestamp(nanosecond)"`
	// MinNs and MaxNs are the shortest and longest step covered.
	MinNs  int64  `parquet:"min_ns"`
	MaxNs  int64  `parquet:"max_ns"`
	Source string `parquet:"source,dict"`
}

// MeanNs is the mean step time the span covers.
func (s StepSpan) MeanNs() int64 {
	if s.Steps <= 0 {
		return 0
	}
	return (s.EndNs - s.StartNs) / int64(s.Steps)
}

// Event kinds in events.jsonl.
const (
	EventXID          = "xid"
	EventECC          = "ecc"
	EventGPULost      = "gpu_lost"
	EventNCCLWatchdog = "nccl_watchdog" // a collective timed out
	EventNCCLError    = "nccl_error"    // NCCL failed otherwise (system, internal, remote error)
	EventCUDAError    = "cuda_error"
	EventOOM          = "oom"
	EventCrash        = "crash"
	EventRebalance    = "rebalance"
	EventLatency      = "latency"
	EventNote         = "note"
	// EventCheckpoint is a checkpoint save the job reported (Attrs "phase":
	// start or end when known); goodput counts a long step holding one as
	// checkpointing.
	EventCheckpoint = "checkpoint"
)

// Event is one line of events.jsonl: a fault or notable event on the host.
type Event struct {
	TimeNs  int64             `json:"time_ns"`
	Kind    string            `json:"kind"`
	GPU     int               `json:"gpu"` // -1 when not tied to a device
	PID     int               `json:"pid,omitempty"`
	Rank    int               `json:"rank"` // -1 when unknown
	Code    int64             `json:"code,omitempty"`
	Message string            `json:"message,omitempty"`
	Attrs   map[string]string `json:"attrs,omitempty"`
}
