package nccl

import (
	"fmt"

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

// toRow turns a probe record into a Parquet row; wallOffset converts the
// kernel's CLOCK_MONOTONIC into Unix time.
func toRow(ev *bpfnccl.Event, wallOffset int64) traces.NCCLEvent {
	name, size := datatype(ev.Datatype)
	return traces.NCCLEvent{
		TimeNs:     int64(ev.TimeNs) + wallOffset,
		DurationNs: int64(ev.DurationNs),
		PID:        int32(ev.PID),
		TID:        int32(ev.TID),
		Rank:       ev.Rank,
		NRanks:     ev.NRanks,
		CommID:     ev.CommID,
		Op:         ev.Op.String(),
		Seq:        ev.Seq,
		Count:      int64(ev.Count),
		Datatype:   name,
		Bytes:      callBytes(ev.Op, ev.Count, size, ev.NRanks),
		Peer:       ev.Peer,
	}
}
