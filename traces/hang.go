package traces

import (
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// PartNCCLHang is the hang report in a hang capture: an NCCLHang as JSON.
const PartNCCLHang = "nccl_hang.json"

// States of an NCCLHang.
const (
	HangStateHung      = "hung"
	HangStateRecovered = "recovered"
)

// Places a rank of a hung communicator is in (NCCLHangRank.State).
const (
	// HangRankArrived: it entered the collective the others wait in.
	HangRankArrived = "arrived"
	// HangRankMissing: it never called that collective.
	HangRankMissing = "missing"
)

// NCCLHang is an agent's report of one communicator whose ranks stopped
// completing collectives while some of them had already entered the next
// one (Seq): taken at once, with where each of this host's ranks is. A
// report with State recovered says the communicator made progress again.
type NCCLHang struct {
	// ID is the same for the hang's report and its recovery: it names the
	// job, the communicator and the collective.
	ID      string `json:"id"`
	State   string `json:"state"`
	CommID  uint64 `json:"comm_id"`
	Matched string `json:"matched,omitempty"` // how CommID was found (NCCLEvent.Matched)
	// Seq is the collective some ranks entered and others never reached;
	// Op, Count and Datatype are the call as the arrived ranks made it.
	Seq      int64  `json:"seq"`
	Op       string `json:"op,omitempty"`
	Count    int64  `json:"count,omitempty"`
	Datatype string `json:"datatype,omitempty"`
	// StalledSince is the communicator's last progress on this host: a
	// call entered or returned, or a kernel that ended.
	StalledSince time.Time `json:"stalled_since"`
	Detected     time.Time `json:"detected"`
	Recovered    time.Time `json:"recovered,omitzero"`
	TimeoutNs    int64     `json:"timeout_ns"`
	// WorldSize is the job's number of ranks (-1 when unknown); Ranks are
	// the ranks of the communicator on this host.
	WorldSize int            `json:"world_size"`
	Ranks     []NCCLHangRank `json:"ranks"`
}

// NCCLHangRank is where one rank of a hung communicator is.
type NCCLHangRank struct {
	Rank  int    `json:"rank"` // global rank, -1 when unknown
	PID   int    `json:"pid"`
	State string `json:"state"` // HangRankArrived or HangRankMissing
	// LastSeq is the last collective it entered; LastCall when.
	LastSeq  int64     `json:"last_seq"`
	LastCall time.Time `json:"last_call"`
	// InNCCL is set when one of its threads is inside an NCCL call (the
	// probes saw it enter and not return) or runs NCCL's code; InCall
	// names the call.
	InNCCL bool   `json:"in_nccl"`
	InCall string `json:"in_call,omitempty"`
	// Exited is set when the process is gone: it died before the call.
	Exited bool `json:"exited,omitempty"`
	// GPU is what the profiler plugin last said of its kernels, when it is
	// loaded: "kernel of collective N started, not ended".
	GPU string `json:"gpu,omitempty"`
	// Stack is its hottest CPU stack in the sample taken at detection,
	// leaf first; empty when it did not run on a CPU then.
	Stack   []string         `json:"stack,omitempty"`
	Threads []NCCLHangThread `json:"threads,omitempty"`
}

// NCCLHangThread is one thread of a stuck process at detection.
type NCCLHangThread struct {
	TID  int    `json:"tid"`
	Name string `json:"name"`
	// State is the scheduler's (R running, S sleeping, D waiting on I/O).
	State   string `json:"state"`
	WChan   string `json:"wchan,omitempty"`
	Syscall string `json:"syscall,omitempty"`
	// PC is where its user code is (function+offset (file)) when it sleeps
	// in a system call; Kernel its kernel stack when readable.
	PC     string   `json:"pc,omitempty"`
	Kernel []string `json:"kernel,omitempty"`
}

// MaxNCCLHangSize bounds a hang report a reader decodes.
const MaxNCCLHangSize = 16 << 20

// ReadNCCLHang decodes and checks a hang report: its state and every
// rank's place must be known values. It reads at most MaxNCCLHangSize.
func ReadNCCLHang(r io.Reader) (NCCLHang, error) {
	var h NCCLHang
	data, err := io.ReadAll(io.LimitReader(r, MaxNCCLHangSize+1))
	if err != nil {
		return h, fmt.Errorf("reading %s: %w", PartNCCLHang, err)
	}
	if len(data) > MaxNCCLHangSize {
		return h, fmt.Errorf("%s is larger than %d bytes", PartNCCLHang, MaxNCCLHangSize)
	}
	if err := json.Unmarshal(data, &h); err != nil {
		return NCCLHang{}, fmt.Errorf("decoding %s: %w", PartNCCLHang, err)
	}
	if h.State != HangStateHung && h.State != HangStateRecovered {
		return NCCLHang{}, fmt.Errorf("%s: state %q is neither %q nor %q", PartNCCLHang, h.State, HangStateHung, HangStateRecovered)
	}
	if h.ID == "" {
		return NCCLHang{}, fmt.Errorf("%s: no id", PartNCCLHang)
	}
	for i, rk := range h.Ranks {
		if rk.State != HangRankArrived && rk.State != HangRankMissing {
			return NCCLHang{}, fmt.Errorf("%s: rank %d (entry %d): state %q is neither %q nor %q", PartNCCLHang, rk.Rank, i, rk.State,
				HangRankArrived, HangRankMissing)
		}
	}
	return h, nil
}
