package nccl

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/traces"
)

// pluginDatagram lays records out as loupe_wire.h does.
func pluginDatagram(lost uint64, recs ...pluginRecord) []byte {
	le := binary.LittleEndian
	b := make([]byte, pluginHeaderSize+len(recs)*pluginRecordSize)
	le.PutUint32(b, pluginMagic)
	le.PutUint16(b[4:], pluginVersion)
	le.PutUint16(b[6:], pluginRecordSize)
	le.PutUint32(b[8:], 77)
	le.PutUint32(b[12:], uint32(len(recs)))
	le.PutUint64(b[16:], lost)
	le.PutUint32(b[24:], 6)
	for i, p := range recs {
		r := b[pluginHeaderSize+i*pluginRecordSize:]
		le.PutUint64(r, p.commHash)
		for j, v := range []int64{p.seq, p.ncclSeq, p.hostStart, p.hostStop, p.gpuStart, p.gpuEnd, p.gpuWait, p.netWait, p.count} {
			le.PutUint64(r[8+8*j:], uint64(v))
		}
		for j, v := range []int32{p.tid, p.rank, p.nranks, p.peer} {
			le.PutUint32(r[80+4*j:], uint32(v))
		}
		r[96], r[97], r[98] = p.kind, p.nchannels, p.flags
		copy(r[100:120], p.op)
		copy(r[120:140], p.datatype)
		copy(r[140:156], p.algo)
		copy(r[156:168], p.proto)
	}
	return b
}

func TestParsePluginBatch(t *testing.T) {
	in := pluginRecord{commHash: 0xabc, seq: 5, ncclSeq: 2, hostStart: 100, hostStop: 130, gpuStart: 140, gpuEnd: 190,
		gpuWait: 3, netWait: 40, count: 1 << 20, tid: 9, rank: 1, nranks: 4, peer: -1, kind: pluginKindColl,
		nchannels: 2, flags: pluginFlagGPU, op: "AlltoAll", datatype: "ncclBfloat16", algo: "RING", proto: "SIMPLE"}
	b, err := parsePluginBatch(pluginDatagram(3, in), nil)
	if err != nil {
		t.Fatal(err)
	}
	if b.pid != 77 || b.lost != 3 || b.api != 6 || len(b.records) != 1 {
		t.Fatalf("batch %+v", b)
	}
	want := in
	want.op, want.datatype, want.api = "AllToAll", "bfloat16", 6
	if b.records[0] != want {
		t.Fatalf("record %+v, want %+v", b.records[0], want)
	}
	row := b.records[0].row()
	if row.Op != "AllToAll" || row.Bytes != 1<<20*2*4 || row.GPUStartNs != 140 || row.GPUEndNs != 190 || row.DurationNs != 30 ||
		row.Matched != traces.MatchPlugin || row.Source != traces.SourcePlugin || row.NetWaitNs != 40 || row.NChannels != 2 {
		t.Fatalf("row %+v", row)
	}
	for name, bad := range map[string][]byte{
		"short":       make([]byte, 10),
		"magic":       append([]byte{1, 2, 3, 4}, pluginDatagram(0)[4:]...),
		"truncated":   pluginDatagram(0, in)[:pluginHeaderSize+100],
		"record size": func() []byte { d := pluginDatagram(0, in); d[6] = 10; return d }(),
		"kind":        func() []byte { d := pluginDatagram(0, in); d[pluginHeaderSize+96] = 9; return d }(),
	} {
		if _, err := parsePluginBatch(bad, nil); err == nil {
			t.Errorf("%s datagram accepted", name)
		}
	}
}

// FuzzParsePluginBatch: datagrams come from any local process; whatever
// they hold, decoding must not panic, and what it accepts is well-formed.
func FuzzParsePluginBatch(f *testing.F) {
	f.Add(pluginDatagram(0, pluginRecord{kind: pluginKindColl, op: "AllReduce", datatype: "ncclFloat32"}))
	f.Add(pluginDatagram(7))
	f.Add([]byte("LPN1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := parsePluginBatch(data, make([]pluginRecord, 1))
		if err != nil {
			return
		}
		for _, r := range b.records {
			if r.kind != pluginKindColl && r.kind != pluginKindP2P {
				t.Fatalf("kind %d accepted", r.kind)
			}
			_ = r.row()
		}
	})
}

// The plugin's records join the probes' rows of the same calls; a lost
// record's row still takes the communicator's identity; a record with no
// row becomes one; a pending record is replaced by the final one.
func TestMergePlugin(t *testing.T) {
	probe := func(at int64, seq int64, count int64) traces.NCCLEvent {
		return traces.NCCLEvent{TimeNs: at, PID: 10, TID: 10, Rank: -1, NRanks: -1, Op: "AllReduce", Seq: seq, Count: count,
			Datatype: "float32", CommHandle: 0x99, GlobalRank: 3, Source: traces.SourceUprobe}
	}
	rows := []traces.NCCLEvent{probe(1000, 7, 8), probe(2000, 8, 16), probe(3000, 9, 8), probe(4000, 10, 8)}
	rec := func(start, seq, count int64) pluginRecord {
		return pluginRecord{pid: 10, tid: 10, commHash: 0xfeed, seq: seq, hostStart: start, count: count, rank: 3, nranks: 4,
			kind: pluginKindColl, op: "AllReduce", datatype: "float32", flags: pluginFlagGPU, gpuStart: start + 50, gpuEnd: start + 90, algo: "RING"}
	}
	recv := newPluginReceiver(16, metrics.NewSet())
	pending := rec(1010, 100, 8)
	pending.flags, pending.gpuEnd = pluginFlagGPU|pluginFlagPending, 0
	recv.add(10, pluginBatch{records: []pluginRecord{pending, rec(1010, 100, 8), rec(2005, 101, 16), rec(4003, 103, 8), rec(9000, 104, 8)}})
	if latest := recv.latestRows(); len(latest) != 1 || latest[0].Seq != 104 || latest[0].Source != traces.SourcePlugin {
		t.Fatalf("latest %+v, want the communicator's record 104", latest)
	}
	got := mergePlugin(rows, recv.between(0, 1e9), 0, 10000)
	if len(got) != 5 {
		t.Fatalf("%d rows, want 4 merged and one of the plugin's own: %+v", len(got), got)
	}
	for i, wantSeq := range []int64{100, 101, 102, 103} {
		e := got[i]
		if e.CommID != 0xfeed || e.Seq != wantSeq || e.Matched != traces.MatchPlugin {
			t.Errorf("row %d: comm %x seq %d matched %q, want feed %d plugin", i, e.CommID, e.Seq, e.Matched, wantSeq)
		}
	}
	if got[0].Source != traces.SourceBoth || got[0].GPUEndNs != 1100 || got[0].Algo != "RING" || got[0].Rank != 3 {
		t.Errorf("merged row %+v: want the final record's GPU times", got[0])
	}
	if got[2].Source != traces.SourceUprobe || got[2].GPUStartNs != 0 {
		t.Errorf("row without a record: %+v", got[2])
	}
	if e := got[4]; e.Source != traces.SourcePlugin || e.TimeNs != 9000 || e.CommHandle != 0 {
		t.Errorf("record without a row: %+v", e)
	}
	if s := strings.Join([]string{got[0].Datatype, got[4].Datatype}, ","); s != "float32,float32" {
		t.Errorf("datatypes %s", s)
	}
}
