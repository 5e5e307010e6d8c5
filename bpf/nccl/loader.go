// Package nccl holds the eBPF programs that watch libnccl's host API through
// uprobes, their bpf2go-generated bindings and a thin loader. Which files and
// processes to attach to is decided by agent/nccl.
//
// The programs read arguments with the x86-64 System V calling convention,
// so the package is built for amd64 only.
package nccl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
)

// Op identifies the NCCL function behind an Event. The values are shared
// with nccl.bpf.c (enum nccl_op).
type Op uint32

// The probed NCCL functions.
const (
	OpCommInitRank       Op = 1
	OpCommInitRankConfig Op = 2
	OpCommInitAll        Op = 3
	OpAllReduce          Op = 4
	OpAllGather          Op = 5
	OpReduceScatter      Op = 6
	OpBroadcast          Op = 7
	OpReduce             Op = 8
	OpAllToAll           Op = 9
	OpSend               Op = 10
	OpRecv               Op = 11
	OpGroupStart         Op = 12
	OpGroupEnd           Op = 13
)

var opNames = [...]string{
	OpCommInitRank:       "CommInitRank",
	OpCommInitRankConfig: "CommInitRankConfig",
	OpCommInitAll:        "CommInitAll",
	OpAllReduce:          "AllReduce",
	OpAllGather:          "AllGather",
	OpReduceScatter:      "ReduceScatter",
	OpBroadcast:          "Broadcast",
	OpReduce:             "Reduce",
	OpAllToAll:           "AllToAll",
	OpSend:               "Send",
	OpRecv:               "Recv",
	OpGroupStart:         "GroupStart",
	OpGroupEnd:           "GroupEnd",
}

// String is the NCCL function name without its "nccl" prefix, as stored in
// traces.NCCLEvent.Op.
func (o Op) String() string {
	if int(o) < len(opNames) && opNames[o] != "" {
		return opNames[o]
	}
	return fmt.Sprintf("Op(%d)", uint32(o))
}

// Ops lists every probed function's Op, in code order.
func Ops() []Op {
	ops := make([]Op, 0, len(opNames)-1)
	for o := OpCommInitRank; o <= OpGroupEnd; o++ {
		ops = append(ops, o)
	}
	return ops
}

// IsInit reports whether o creates communicators.
func (o Op) IsInit() bool { return o >= OpCommInitRank && o <= OpCommInitAll }

// IsCollective reports whether o is a collective on one communicator.
func (o Op) IsCollective() bool { return o >= OpAllReduce && o <= OpAllToAll }

// IsP2P reports whether o is a point-to-point call.
func (o Op) IsP2P() bool { return o == OpSend || o == OpRecv }

// Event is one NCCL call as the return probe reports it.
type Event struct {
	TimeNs     uint64 // CLOCK_MONOTONIC at entry
	DurationNs uint64 // entry to return
	Comm       uint64 // ncclComm_t handle; 0 for group calls
	CommID     uint64 // hash of the ncclUniqueId; 0 when the init was not seen
	Count      uint64
	Seq        int64 // per communicator (collectives and Send/Recv apart); -1 when not numbered
	PID        uint32
	TID        uint32
	Rank       int32 // -1 when the communicator's init was not seen
	NRanks     int32
	Peer       int32 // Send/Recv peer, Broadcast/Reduce root; -1 otherwise
	Datatype   int32 // ncclDataType_t; -1 when the call has none
	RedOp      int32 // ncclRedOp_t; -1 when the call has none
	Result     int32 // ncclResult_t returned
	Op         Op
}

// EventSize is the size of one ring buffer record (struct event).
const EventSize = 88

// ParseEvent decodes one ring buffer record into ev.
func ParseEvent(b []byte, ev *Event) error {
	if len(b) < EventSize {
		return fmt.Errorf("nccl ring buffer record is %d bytes, want %d: agent and eBPF object out of step", len(b), EventSize)
	}
	le := binary.LittleEndian
	ev.TimeNs = le.Uint64(b[0:])
	ev.DurationNs = le.Uint64(b[8:])
	ev.Comm = le.Uint64(b[16:])
	ev.CommID = le.Uint64(b[24:])
	ev.Count = le.Uint64(b[32:])
	ev.Seq = int64(le.Uint64(b[40:]))
	ev.PID = le.Uint32(b[48:])
	ev.TID = le.Uint32(b[52:])
	ev.Rank = int32(le.Uint32(b[56:]))
	ev.NRanks = int32(le.Uint32(b[60:]))
	ev.Peer = int32(le.Uint32(b[64:]))
	ev.Datatype = int32(le.Uint32(b[68:]))
	ev.RedOp = int32(le.Uint32(b[72:]))
	ev.Result = int32(le.Uint32(b[76:]))
	ev.Op = Op(le.Uint32(b[80:]))
	return nil
}

// Probe is one NCCL function and the program that handles its entry.
type Probe struct {
	Symbol  string
	Op      Op
	Program *ebpf.Program
}

// Objects are the programs and maps loaded into the kernel.
type Objects struct {
	objs ncclObjects
	// Probes lists the entry program of every probed function; every one of
	// them also needs Return as its uretprobe.
	Probes []Probe
}

// DefaultRingBytes is the default size of the event ring buffer: about
// 47000 records of slack while user space catches up.
const DefaultRingBytes = 4 << 20

// Load loads the programs and maps into the kernel with a ring buffer of
// ringBytes (a power of two, at least one page; 0 means DefaultRingBytes).
// Without the needed privileges the error says which capabilities are missing.
func Load(ringBytes int) (*Objects, error) {
	if ringBytes == 0 {
		ringBytes = DefaultRingBytes
	}
	if ringBytes < os.Getpagesize() || ringBytes&(ringBytes-1) != 0 {
		return nil, fmt.Errorf("nccl ring buffer size %d: must be a power of two of at least %d bytes", ringBytes, os.Getpagesize())
	}
	// On kernels >= 5.11 BPF memory is charged to the memory cgroup and the
	// memlock limit does not apply; EPERM from raising it (no
	// CAP_SYS_RESOURCE) is harmless there, so the error is only reported
	// when loading fails too.
	memlockErr := rlimit.RemoveMemlock()

	spec, err := loadNccl()
	if err != nil {
		return nil, fmt.Errorf("reading the embedded NCCL eBPF object: %w", err)
	}
	spec.Maps[ncclMapEvents].MaxEntries = uint32(ringBytes)
	o := &Objects{}
	if err := spec.LoadAndAssign(&o.objs, nil); err != nil {
		if errors.Is(err, os.ErrPermission) {
			err = fmt.Errorf("loading the NCCL eBPF programs was refused (%w): the agent needs CAP_BPF and CAP_PERFMON "+
				"(or CAP_SYS_ADMIN on kernels before 5.8) to load uprobes, and CAP_SYS_PTRACE plus host PID visibility to read "+
				"other processes' /proc/<pid>/maps; grant them or set nccl.enabled: false", err)
			if memlockErr != nil {
				err = fmt.Errorf("%w (raising RLIMIT_MEMLOCK also failed: %v; kernels before 5.11 need CAP_SYS_RESOURCE)", err, memlockErr)
			}
			return nil, err
		}
		return nil, fmt.Errorf("loading the NCCL eBPF programs: %w", err)
	}
	p := &o.objs.ncclPrograms
	o.Probes = []Probe{
		{"ncclCommInitRank", OpCommInitRank, p.CommInitRank},
		{"ncclCommInitRankConfig", OpCommInitRankConfig, p.CommInitRankConfig},
		{"ncclCommInitAll", OpCommInitAll, p.CommInitAll},
		{"ncclAllReduce", OpAllReduce, p.AllReduce},
		{"ncclAllGather", OpAllGather, p.AllGather},
		{"ncclReduceScatter", OpReduceScatter, p.ReduceScatter},
		{"ncclBroadcast", OpBroadcast, p.Broadcast},
		{"ncclReduce", OpReduce, p.Reduce},
		// NCCL spells this one with a lower-case "to".
		{"ncclAlltoAll", OpAllToAll, p.AllToAll},
		{"ncclSend", OpSend, p.Send},
		{"ncclRecv", OpRecv, p.Recv},
		{"ncclGroupStart", OpGroupStart, p.GroupStart},
		{"ncclGroupEnd", OpGroupEnd, p.GroupEnd},
	}
	return o, nil
}

// Return is the uretprobe program shared by every probed function.
func (o *Objects) Return() *ebpf.Program { return o.objs.NcclReturn }

// Events is the ring buffer of Event records.
func (o *Objects) Events() *ebpf.Map { return o.objs.ncclMaps.Events }

// Lost is how many records were dropped because the ring buffer was full,
// summed over CPUs, since Load.
func (o *Objects) Lost() (uint64, error) {
	var perCPU []uint64
	if err := o.objs.ncclMaps.Lost.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("reading the NCCL lost-record counter: %w", err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// ForgetPIDs drops the communicator state of processes that exited, so that
// a recycled PID starts afresh.
func (o *Objects) ForgetPIDs(gone map[uint32]bool) error {
	var (
		key  ncclCommKey
		val  ncclCommInfo
		dead []ncclCommKey
	)
	it := o.objs.ncclMaps.Comms.Iterate()
	for it.Next(&key, &val) {
		if gone[key.Pid] {
			dead = append(dead, key)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("listing NCCL communicators: %w", err)
	}
	for i := range dead {
		if err := o.objs.ncclMaps.Comms.Delete(&dead[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forgetting NCCL communicator of pid %d: %w", dead[i].Pid, err)
		}
	}
	return nil
}

// Close unloads the programs and maps.
func (o *Objects) Close() error { return o.objs.Close() }
