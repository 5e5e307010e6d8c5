//go:build amd64

package nccl

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
)

// Objects are the programs and maps loaded into the kernel.
type Objects struct {
	objs ncclObjects
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
		{"ncclCommInitRank", OpCommInitRank, p.CommInitRank, p.CommInitRankRet},
		{"ncclCommInitRankConfig", OpCommInitRankConfig, p.CommInitRankConfig, p.CommInitRankConfigRet},
		{"ncclCommInitRankScalable", OpCommInitRankScalable, p.CommInitRankScalable, p.CommInitRankScalableRet},
		{"ncclCommInitAll", OpCommInitAll, p.CommInitAll, p.CommInitAllRet},
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

// Close unloads the programs and maps.
func (o *Objects) Close() error { return o.objs.Close() }
