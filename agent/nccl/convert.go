package nccl

import (
	"fmt"
	"math"

	bpfnccl "github.com/loupe-dev/loupe/bpf/nccl"
	"github.com/loupe-dev/loupe/traces"
)

// datatypes are NCCL's ncclDataType_t values in order: name and size in bytes.
var datatypes = [...]struct {
	name string
	size int64
}{
	{"int8", 1}, {"uint8", 1}, {"int32", 4}, {"uint32", 4}, {"int64", 8}, {"uint64", 8},
	{"float16", 2}, {"float32", 4}, {"float64", 8}, {"bfloat16", 2},
	{"float8e4m3", 1}, {"float8e5m2", 1},
}

// datatype names an ncclDataType_t and gives its size; unknown values (a
// newer NCCL) get a numeric name and size 0, so bytes stay 0 rather than wrong.
func datatype(dt int32) (string, int64) {
	switch {
	case dt < 0:
		return "", 0
	case int(dt) < len(datatypes):
		return datatypes[dt].name, datatypes[dt].size
	}
	return fmt.Sprintf("type%d", dt), 0
}

// callBytes follows nccl-tests' size convention: the larger of the send and
// receive buffers of this rank. AllGather's receive buffer and
// ReduceScatter's send buffer are count x nranks elements, and so is each
// side of AllToAll; every other call moves count elements. When nranks is
// unknown (the communicator was created before the agent attached) those
// three report count elements.
func callBytes(op bpfnccl.Op, count uint64, size int64, nranks int32) int64 {
	b := int64(count) * size
	switch op {
	case bpfnccl.OpAllGather, bpfnccl.OpReduceScatter, bpfnccl.OpAllToAll:
		if nranks > 0 {
			b *= int64(nranks)
		}
	}
	return b
}

// record is an event as the in-memory buffer keeps it: 80 bytes where the
// Parquet row takes about 200; names and bytes are derived on the way out.
type record struct {
	timeNs     int64 // Unix ns
	durationNs int64
	commID     uint64
	handle     uint64
	count      int64
	seq        int64
	pid, tid   int32
	rank       int32
	nranks     int32
	peer       int32
	globalRank int32
	worldSize  int32
	datatype   int16 // ncclDataType_t; values beyond int16 saturate (unknown anyway)
	op         uint8
	source     uint8 // bpfnccl.IDSource
}

// newRecord keeps a probe record; wallOffset converts the kernel's
// CLOCK_MONOTONIC into Unix time.
func newRecord(ev *bpfnccl.Event, wallOffset int64, job procRank) record {
	return record{
		timeNs:     int64(ev.TimeNs) + wallOffset,
		durationNs: int64(ev.DurationNs),
		commID:     ev.CommID,
		handle:     ev.Comm,
		count:      int64(ev.Count),
		seq:        ev.Seq,
		pid:        int32(ev.PID),
		tid:        int32(ev.TID),
		rank:       ev.Rank,
		nranks:     ev.NRanks,
		peer:       ev.Peer,
		globalRank: job.rank,
		worldSize:  job.world,
		datatype:   int16(min(max(ev.Datatype, math.MinInt16), math.MaxInt16)),
		op:         uint8(min(ev.Op, math.MaxUint8)),
		source:     uint8(min(ev.Source, math.MaxUint8)),
	}
}

// matchedBy names how the probes found a communicator's id.
var matchedBy = map[bpfnccl.IDSource]string{bpfnccl.IDInit: traces.MatchInit, bpfnccl.IDSplit: traces.MatchSplit}

// row is the record as a Parquet row.
func (r *record) row() traces.NCCLEvent {
	op := bpfnccl.Op(r.op)
	name, size := datatype(int32(r.datatype))
	e := traces.NCCLEvent{
		TimeNs:     r.timeNs,
		DurationNs: r.durationNs,
		PID:        r.pid,
		TID:        r.tid,
		Rank:       r.rank,
		NRanks:     r.nranks,
		CommID:     r.commID,
		Op:         op.String(),
		Seq:        r.seq,
		Count:      r.count,
		Datatype:   name,
		Bytes:      callBytes(op, uint64(r.count), size, r.nranks),
		Peer:       r.peer,
		GlobalRank: r.globalRank,
		WorldSize:  r.worldSize,
		CommHandle: r.handle,
		Source:     traces.SourceUprobe,
	}
	if r.commID != 0 {
		e.Matched = matchedBy[bpfnccl.IDSource(r.source)]
	}
	if op == bpfnccl.OpCommSplit {
		e.Bytes = 0 // Count holds the split's key
	}
	return e
}
