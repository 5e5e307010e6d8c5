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
	// ProfTimeNs is when DCGM took the profiling values (0 when unknown):
	// rows with the same time repeat one DCGM sample.
	ProfTimeNs int64 `parquet:"prof_time_ns,timestamp(nanosecond)"`
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

// NCCLEvent is one row of nccl_events.parquet: one NCCL call of one
// process, seen by a uprobe on its host API, by NCCL's profiler plugin, or
// by both (merged). TimeNs is when the call entered NCCL, which is enqueue
// time, not GPU completion; GPUStartNs and GPUEndNs, when the plugin
// reported them, are when the collective's kernel ran. Arrival skew across
// ranks for the same (CommID, Seq) is what exposes a straggler.
type NCCLEvent struct {
	Identity
	TimeNs int64 `parquet:"time_ns,timestamp(nanosecond)"`
	// DurationNs is how long the host-side call took (entry to return).
	DurationNs int64 `parquet:"duration_ns"`
	PID        int32 `parquet:"pid"`
	TID        int32 `parquet:"tid"`
	// Rank and NRanks are the process's rank in the communicator and the
	// communicator's size; -1 when unknown (its creation was not seen).
	Rank   int32 `parquet:"rank"`
	NRanks int32 `parquet:"nranks"`
	// CommID is the same on every rank of one communicator, on every host;
	// Matched says where it comes from. 0 when unknown.
	CommID uint64 `parquet:"comm_id"`
	// Op is the NCCL function without its prefix: AllReduce, AllGather,
	// ReduceScatter, Broadcast, Reduce, AllToAll, Send, Recv, GroupStart,
	// GroupEnd, CommInitRank, CommSplit, ...
	Op string `parquet:"op,dict"`
	// Seq numbers the collectives of one communicator, and apart from them
	// its Send/Recv calls; a collective has the same Seq on every rank when
	// Matched is set. Until matched, it counts the calls this process was
	// seen making.
	Seq      int64  `parquet:"seq"`
	Count    int64  `parquet:"count"`
	Datatype string `parquet:"datatype,dict"`
	Bytes    int64  `parquet:"bytes"`
	// Peer is the peer rank of Send/Recv and the root of Broadcast/Reduce; -1 otherwise.
	Peer int32 `parquet:"peer"`
	// GlobalRank is the process's rank in the job, from its launcher's
	// environment (RANK, OMPI_COMM_WORLD_RANK, PMI_RANK, SLURM_PROCID), and
	// WorldSize the job's number of ranks; -1 when the launcher set none.
	// Stragglers and hangs are named by global rank. Rows written before
	// these columns existed have Source "": see JobRank.
	GlobalRank int32 `parquet:"global_rank"`
	WorldSize  int32 `parquet:"world_size"`
	// CommHandle is the ncclComm_t pointer in this process: with the host
	// and PID it names one communicator of one process.
	CommHandle uint64 `parquet:"comm_handle"`
	// Matched says how CommID and Seq were found: MatchInit, MatchSplit,
	// MatchPlugin, MatchPattern, or "" when not matched across ranks.
	Matched string `parquet:"matched,dict"`
	// Source is SourceUprobe, SourcePlugin or SourceBoth.
	Source string `parquet:"source,dict"`
	// GPUStartNs and GPUEndNs bound the collective's kernel on this rank's
	// GPU (Unix ns, NCCL's kernel timestamps converted to host time by the
	// plugin); 0 when unknown.
	GPUStartNs int64 `parquet:"gpu_start_ns,timestamp(nanosecond)"`
	GPUEndNs   int64 `parquet:"gpu_end_ns,timestamp(nanosecond)"`
	// Algo, Proto and NChannels are what NCCL chose (RING, TREE, ...; LL,
	// LL128, SIMPLE); empty and 0 when unknown.
	Algo      string `parquet:"algo,dict"`
	Proto     string `parquet:"proto,dict"`
	NChannels int32  `parquet:"nchannels"`
	// GPUWaitNs and NetWaitNs split the time NCCL's proxy spent on this
	// collective's network steps: waiting for the GPU (data to send not yet
	// produced, received data not yet consumed) and waiting for the network
	// (peer credits, sends and receives in flight). 0 without network steps
	// or without the plugin.
	GPUWaitNs int64 `parquet:"gpu_wait_ns"`
	NetWaitNs int64 `parquet:"net_wait_ns"`
}

// How an NCCLEvent's CommID and Seq were found (NCCLEvent.Matched).
const (
	// MatchInit: the communicator's init call was seen; CommID hashes its
	// ncclUniqueId and Seq counts from its creation.
	MatchInit = "init"
	// MatchSplit: ncclCommSplit of a known parent was seen; CommID mixes
	// the parent's id, the number of the split and the color.
	MatchSplit = "split"
	// MatchPlugin: NCCL's profiler plugin reported the call; CommID is
	// NCCL's own commHash and Seq the plugin's count of the communicator's
	// collectives since its creation.
	MatchPlugin = "plugin"
	// MatchPattern: the creation was missed; the calls of each process and
	// communicator handle were aligned with the other ranks' by their order
	// of op, count and datatype and by arrival time (NCCLMatcher).
	MatchPattern = "pattern"
)

// Where an NCCLEvent comes from (NCCLEvent.Source).
const (
	SourceUprobe = "uprobe"
	SourcePlugin = "plugin"
	SourceBoth   = "uprobe+plugin"
)

// JobRank is the rank to name this call's process by: its global rank when
// the launcher set one, else its rank in the communicator (-1 when neither
// is known). Rows from before GlobalRank existed (Source "") read 0 there,
// which is not a rank, so they fall back to Rank.
func (e *NCCLEvent) JobRank() int32 {
	if e.Source == "" || e.GlobalRank < 0 {
		return e.Rank
	}
	return e.GlobalRank
}

// IsCollective reports whether the row is a collective: a call every rank
// of the communicator makes, in the same order.
func (e *NCCLEvent) IsCollective() bool { return ncclCollectives[e.Op] }

var ncclCollectives = map[string]bool{
	"AllReduce": true, "AllGather": true, "ReduceScatter": true,
	"Broadcast": true, "Reduce": true, "AllToAll": true,
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
	Identity
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
