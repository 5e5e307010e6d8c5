//go:build amd64

package nccl

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
)

// Objects are the programs and maps loaded into the kernel.
type Objects struct {
	objs  ncclObjects
	multi bool
	// Probes lists every probed function with its programs.
	Probes []Probe
}

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
	o := &Objects{multi: true}
	err = spec.LoadAndAssign(&o.objs, nil)
	if err != nil && !errors.Is(err, os.ErrPermission) {
		// A kernel before 6.6 has no uprobe_multi links: load the two
		// dispatch programs as plain uprobes, unused.
		for _, name := range []string{ncclProgEntryMulti, ncclProgReturnMulti} {
			spec.Programs[name].AttachType = ebpf.AttachNone
		}
		o.multi = false
		err = spec.LoadAndAssign(&o.objs, nil)
	}
	if err != nil {
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
		{"ncclCommInitRank", OpCommInitRank, p.CommInitRank, p.CommInitRankRet},
		{"ncclCommInitRankConfig", OpCommInitRankConfig, p.CommInitRankConfig, p.CommInitRankConfigRet},
		{"ncclCommInitRankScalable", OpCommInitRankScalable, p.CommInitRankScalable, p.CommInitRankScalableRet},
		{"ncclCommInitAll", OpCommInitAll, p.CommInitAll, p.CommInitAllRet},
		{"ncclCommSplit", OpCommSplit, p.CommSplit, p.CommSplitRet},
		{"ncclAllReduce", OpAllReduce, p.AllReduce, p.AllReduceRet},
		{"ncclAllGather", OpAllGather, p.AllGather, p.AllGatherRet},
		{"ncclReduceScatter", OpReduceScatter, p.ReduceScatter, p.ReduceScatterRet},
		{"ncclBroadcast", OpBroadcast, p.Broadcast, p.BroadcastRet},
		{"ncclReduce", OpReduce, p.Reduce, p.ReduceRet},
		// NCCL spells this one with a lower-case "to".
		{"ncclAlltoAll", OpAllToAll, p.AllToAll, p.AllToAllRet},
		{"ncclSend", OpSend, p.Send, p.SendRet},
		{"ncclRecv", OpRecv, p.Recv, p.RecvRet},
		{"ncclGroupStart", OpGroupStart, p.GroupStart, p.GroupStartRet},
		{"ncclGroupEnd", OpGroupEnd, p.GroupEnd, p.GroupEndRet},
		// Entry only: they drop the communicator's state and send nothing.
		{"ncclCommDestroy", 0, p.CommDestroy, nil},
		{"ncclCommAbort", 0, p.CommDestroy, nil},
	}
	return o, nil
}

// Multi returns the programs for one uprobe_multi link of every entry
// probe and one of every return probe, with Probe.Cookie as each
// function's attach cookie; ok is false on kernels without such links
// (before 6.6), where each Probe is attached on its own.
func (o *Objects) Multi() (entry, ret *ebpf.Program, ok bool) {
	return o.objs.ncclPrograms.EntryMulti, o.objs.ncclPrograms.ReturnMulti, o.multi
}

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

// CommCount is how many communicators the probes track, over all processes.
func (o *Objects) CommCount() (int, error) {
	var (
		key ncclCommKey
		val ncclCommInfo
		n   int
	)
	it := o.objs.ncclMaps.Comms.Iterate()
	for it.Next(&key, &val) {
		n++
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("counting NCCL communicators: %w", err)
	}
	return n, nil
}

// InFlight returns the calls that have entered an NCCL function and not
// returned, as of now: for each, the entry's record with DurationNs 0.
// A thread blocked inside NCCL stays listed; so, until evicted, does the
// entry of a thread that died inside a call, so callers match pids they
// know to be alive.
func (o *Objects) InFlight() ([]Event, error) {
	var (
		key ncclInflightKey
		val ncclInflight
		out []Event
	)
	it := o.objs.ncclMaps.Inflight.Iterate()
	for it.Next(&key, &val) {
		e := val.Ev
		out = append(out, Event{
			TimeNs: e.TimeNs, Comm: e.Comm, CommID: e.CommId, Count: e.Count, Seq: e.Seq, PID: e.Pid, TID: e.Tid,
			Rank: e.Rank, NRanks: e.Nranks, Peer: e.Peer, Datatype: e.Datatype, RedOp: e.Redop, Op: Op(e.Op), Source: IDSource(e.Flags),
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("listing NCCL calls in flight: %w", err)
	}
	return out, nil
}

// Close unloads the programs and maps.
func (o *Objects) Close() error { return o.objs.Close() }

// MapEvents is the ring buffer of MapEvent records: exec and dynamic loader events.
func (o *Objects) MapEvents() *ebpf.Map { return o.objs.ncclMaps.Loads }

// LoaderProbe is the program for a uprobe on a dynamic loader's
// LoaderSymbol.
func (o *Objects) LoaderProbe() *ebpf.Program { return o.objs.ncclPrograms.DlDebugState }

// AttachExec attaches the program that sends a MapEvent record at every exec
// (a raw tracepoint: no tracefs needed).
func (o *Objects) AttachExec() (link.Link, error) {
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sched_process_exec", Program: o.objs.ncclPrograms.ProcessExec})
	if err != nil {
		return nil, fmt.Errorf("attaching the exec hook (raw tracepoint sched_process_exec): %w", err)
	}
	return l, nil
}

// SetTraced tells the loader probe that pid is traced already (or, with
// false, no longer), so its dlopen calls send nothing.
func (o *Objects) SetTraced(pid uint32, traced bool) error {
	m := o.objs.ncclMaps.Traced
	if !traced {
		if err := m.Delete(pid); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forgetting traced pid %d: %w", pid, err)
		}
		return nil
	}
	if err := m.Put(pid, uint8(1)); err != nil {
		return fmt.Errorf("marking pid %d traced: %w", pid, err)
	}
	return nil
}
