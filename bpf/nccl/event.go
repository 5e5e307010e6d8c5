// Package nccl holds the eBPF programs that watch libnccl's host API through
// uprobes, their bpf2go-generated bindings and a thin loader. Which files and
// processes to attach to is decided by agent/nccl.
//
// The programs read arguments with the x86-64 System V calling convention,
// so the package is built for amd64 only.
package nccl

import (
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"
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
	// OpCommInitRankScalable is ncclCommInitRankScalable (NCCL >= 2.23).
	OpCommInitRankScalable Op = 14
	// OpCommSplit is ncclCommSplit: Peer is the color, Count the key.
	OpCommSplit Op = 15
)

// IDSource says how an Event's CommID was found (enum comm_id_source).
type IDSource uint32

// The ways a communicator's id is known.
const (
	// IDUnknown: the communicator was created before the probes attached.
	IDUnknown IDSource = 0
	// IDInit: an init call was seen; CommID hashes the ncclUniqueId.
	IDInit IDSource = 1
	// IDSplit: ncclCommSplit of a known parent was seen; CommID mixes the
	// parent's id, the number of that split and the color.
	IDSplit IDSource = 2
)

var opNames = [...]string{
	OpCommInitRank:         "CommInitRank",
	OpCommInitRankConfig:   "CommInitRankConfig",
	OpCommInitAll:          "CommInitAll",
	OpAllReduce:            "AllReduce",
	OpAllGather:            "AllGather",
	OpReduceScatter:        "ReduceScatter",
	OpBroadcast:            "Broadcast",
	OpReduce:               "Reduce",
	OpAllToAll:             "AllToAll",
	OpSend:                 "Send",
	OpRecv:                 "Recv",
	OpGroupStart:           "GroupStart",
	OpGroupEnd:             "GroupEnd",
	OpCommInitRankScalable: "CommInitRankScalable",
	OpCommSplit:            "CommSplit",
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
	for o := OpCommInitRank; o <= OpCommSplit; o++ {
		ops = append(ops, o)
	}
	return ops
}

// IsInit reports whether o creates communicators.
func (o Op) IsInit() bool {
	return o >= OpCommInitRank && o <= OpCommInitAll || o == OpCommInitRankScalable || o == OpCommSplit
}

// IsCollective reports whether o is a collective on one communicator.
func (o Op) IsCollective() bool { return o >= OpAllReduce && o <= OpAllToAll }

// IsP2P reports whether o is a point-to-point call.
func (o Op) IsP2P() bool { return o == OpSend || o == OpRecv }

// Event is one NCCL call as the return probe reports it.
type Event struct {
	TimeNs     uint64 // CLOCK_MONOTONIC at entry
	DurationNs uint64 // entry to return
	Comm       uint64 // ncclComm_t handle; 0 for group calls
	CommID     uint64 // equal on every rank of the communicator; 0 when its creation was not seen
	Count      uint64 // elements; the key for CommSplit
	Seq        int64  // per communicator (collectives and Send/Recv apart); -1 when not numbered
	PID        uint32
	TID        uint32
	Rank       int32 // -1 when the communicator's init was not seen
	NRanks     int32
	Peer       int32 // Send/Recv peer, Broadcast/Reduce root, CommSplit color; -1 otherwise
	Datatype   int32 // ncclDataType_t; -1 when the call has none
	RedOp      int32 // ncclRedOp_t; -1 when the call has none
	Result     int32 // ncclResult_t returned
	Op         Op
	Source     IDSource // how CommID was found
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
	ev.Source = IDSource(le.Uint32(b[84:]))
	return nil
}

// Probe is one NCCL function and the programs for its entry (uprobe) and
// its return (uretprobe). Op and Return are zero for functions that only
// maintain state (ncclCommDestroy, ncclCommAbort).
type Probe struct {
	Symbol  string
	Op      Op
	Program *ebpf.Program
	Return  *ebpf.Program
}

// Cookie is the probe's attach cookie in the uprobe_multi links: its Op,
// or CookieCommDestroy for the entry-only functions.
func (p *Probe) Cookie() uint64 {
	if p.Op == 0 {
		return CookieCommDestroy
	}
	return uint64(p.Op)
}

// CookieCommDestroy is the attach cookie of ncclCommDestroy and
// ncclCommAbort (COOKIE_COMM_DESTROY).
const CookieCommDestroy = 100

// DefaultRingBytes is the default size of the event ring buffer: about
// 47000 records of slack while user space catches up.
const DefaultRingBytes = 4 << 20

// MapKind says why a process may have mapped new libraries (enum load_kind).
type MapKind uint32

// Why a MapEvent record was sent.
const (
	// MapExec: the process exec'd; its binary and dynamic loader are mapped.
	MapExec MapKind = 1
	// MapLoader: its dynamic loader called _dl_debug_state (startup,
	// dlopen or dlclose).
	MapLoader MapKind = 2
)

// MapEvent is a process that may just have mapped libraries.
type MapEvent struct {
	PID  uint32
	Kind MapKind
}

// MapEventSize is the size of one MapEvent record (struct load).
const MapEventSize = 8

// ParseMapEvent decodes one record of the loads ring buffer.
func ParseMapEvent(b []byte, l *MapEvent) error {
	if len(b) < MapEventSize {
		return fmt.Errorf("nccl load record is %d bytes, want %d: agent and eBPF object out of step", len(b), MapEventSize)
	}
	l.PID = binary.LittleEndian.Uint32(b)
	l.Kind = MapKind(binary.LittleEndian.Uint32(b[4:]))
	return nil
}

// LoaderSymbol is the dynamic loader's function the loader probe goes on.
const LoaderSymbol = "_dl_debug_state"
