package nccl

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"
	"golang.org/x/sys/unix"

	bpfnccl "github.com/loupe-dev/loupe/bpf/nccl"
	"github.com/loupe-dev/loupe/traces"
)

// The profiler plugin (plugin/loupe_profiler.c, loaded by NCCL through
// NCCL_PROFILER_PLUGIN) sends datagrams to PluginSocket: a header, then
// fixed-size records, all little-endian, laid out by plugin/loupe_wire.h.
// Each record is one collective or point-to-point call as NCCL's profiler
// API described it, reported once its kernel ended (or, flagged pending,
// after a few seconds without an end: a hang), with its communicator's
// commHash, the plugin's own count of the communicator's calls, host times
// (CLOCK_REALTIME), the kernel's start and end (NCCL's GPU timestamps
// converted to host time by the plugin), NCCL's algorithm, protocol and
// channels, and the time its network steps spent waiting for the GPU and
// for the network. The sender's pid comes from the kernel (SCM_CREDENTIALS,
// in the agent's pid namespace), not from the datagram.
const (
	pluginMagic      = 0x314e504c // "LPN1"
	pluginVersion    = 1
	pluginHeaderSize = 32
	pluginRecordSize = 168
	// pluginMaxDatagram bounds one datagram; the plugin sends at most 256
	// records (43 KiB) at a time.
	pluginMaxDatagram = 256 << 10
)

// Record kinds and flags.
const (
	pluginKindColl = 1
	pluginKindP2P  = 2

	pluginFlagGPU     = 1 // gpu_start_ns and gpu_end_ns are set
	pluginFlagPending = 2 // reported before the kernel ended
)

// pluginLag is how long after a call's entry the plugin may report it as
// started: grouped calls start when their group ends.
const pluginLag = 10_000_000_000 // 10 s, in ns

// pluginSlack allows for the two clocks (the probes' CLOCK_MONOTONIC
// converted to Unix time, the plugin's CLOCK_REALTIME).
const pluginSlack = 1_000_000 // 1 ms

// pluginRecord is one decoded plugin record.
type pluginRecord struct {
	commHash                     uint64
	seq, ncclSeq                 int64
	hostStart, hostStop          int64
	gpuStart, gpuEnd             int64
	gpuWait, netWait             int64
	count                        int64
	pid, tid, rank, nranks, peer int32
	kind, nchannels, flags       uint8
	op, datatype, algo, proto    string
	api                          uint32
}

// pluginBatch is one decoded datagram.
type pluginBatch struct {
	pid     uint32 // as the sender saw it (its pid namespace)
	lost    uint64
	api     uint32
	records []pluginRecord
}

// parsePluginBatch decodes one datagram, into scratch's storage when it is
// large enough (the receiver decodes every datagram into the same).
// A malformed one is an error saying what is wrong; nothing of it is kept.
func parsePluginBatch(b []byte, scratch []pluginRecord) (pluginBatch, error) {
	var out pluginBatch
	if len(b) < pluginHeaderSize {
		return out, fmt.Errorf("plugin datagram of %d bytes is shorter than its %d-byte header", len(b), pluginHeaderSize)
	}
	le := binary.LittleEndian
	if m := le.Uint32(b); m != pluginMagic {
		return out, fmt.Errorf("plugin datagram magic %#x, want %#x: not Loupe's NCCL profiler plugin", m, pluginMagic)
	}
	if v := le.Uint16(b[4:]); v != pluginVersion {
		return out, fmt.Errorf("plugin wire version %d, this agent reads %d: use the plugin built with this agent", v, pluginVersion)
	}
	size := int(le.Uint16(b[6:]))
	n := int(le.Uint32(b[12:]))
	if size < pluginRecordSize {
		return out, fmt.Errorf("plugin record size %d, want at least %d", size, pluginRecordSize)
	}
	if n*size != len(b)-pluginHeaderSize {
		return out, fmt.Errorf("plugin datagram says %d records of %d bytes but carries %d bytes", n, size, len(b)-pluginHeaderSize)
	}
	out.pid, out.lost, out.api = le.Uint32(b[8:]), le.Uint64(b[16:]), le.Uint32(b[24:])
	if cap(scratch) < n {
		scratch = make([]pluginRecord, n)
	}
	out.records = scratch[:n]
	for i := range out.records {
		r := b[pluginHeaderSize+i*size:]
		p := &out.records[i]
		p.commHash = le.Uint64(r)
		p.seq = int64(le.Uint64(r[8:]))
		p.ncclSeq = int64(le.Uint64(r[16:]))
		p.hostStart = int64(le.Uint64(r[24:]))
		p.hostStop = int64(le.Uint64(r[32:]))
		p.gpuStart = int64(le.Uint64(r[40:]))
		p.gpuEnd = int64(le.Uint64(r[48:]))
		p.gpuWait = int64(le.Uint64(r[56:]))
		p.netWait = int64(le.Uint64(r[64:]))
		p.count = int64(le.Uint64(r[72:]))
		p.tid = int32(le.Uint32(r[80:]))
		p.rank = int32(le.Uint32(r[84:]))
		p.nranks = int32(le.Uint32(r[88:]))
		p.peer = int32(le.Uint32(r[92:]))
		p.kind, p.nchannels, p.flags = r[96], r[97], r[98]
		p.op = intern(cString(r[100:120]), nameOp)
		p.datatype = intern(cString(r[120:140]), nameDatatype)
		p.algo = intern(cString(r[140:156]), nameAsSent)
		p.proto = intern(cString(r[156:168]), nameAsSent)
		p.api = out.api
		if p.kind != pluginKindColl && p.kind != pluginKindP2P {
			return pluginBatch{}, fmt.Errorf("plugin record %d: kind %d is neither a collective (1) nor point-to-point (2)", i, p.kind)
		}
	}
	return out, nil
}

func cString(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return b
}

// interned maps the few names the plugin sends, as sent, to the one copy
// of their row form: decoding a record allocates no strings.
var interned sync.Map // (kind, raw) -> string

type internKey struct {
	kind nameKind
	raw  string
}

// nameKind says how a sent name becomes a row's.
type nameKind int

const (
	nameAsSent   nameKind = iota // algorithms, protocols
	nameOp                       // ncclFuncToString's: AlltoAll is AllToAll
	nameDatatype                 // ncclDatatypeToString's: ncclFloat32 is float32
)

// intern returns the row form of raw, kept once; at most a few thousand
// distinct names are kept, as a misbehaving sender could send any.
func intern(raw []byte, kind nameKind) string {
	if v, ok := interned.Load(internKey{kind, string(raw)}); ok {
		return v.(string)
	}
	s := string(raw)
	switch kind {
	case nameOp:
		if s == "AlltoAll" {
			s = "AllToAll"
		}
	case nameDatatype:
		s = strings.ToLower(strings.TrimPrefix(s, "nccl"))
	}
	if internedCount.Add(1) < 4096 {
		interned.Store(internKey{kind, string(raw)}, s)
	}
	return s
}

var internedCount atomic.Int64

// row is the record as a Parquet row on its own (Source plugin).
func (p *pluginRecord) row() traces.NCCLEvent {
	e := traces.NCCLEvent{
		TimeNs: p.hostStart, DurationNs: max(p.hostStop-p.hostStart, 0), PID: p.pid, TID: p.tid,
		Rank: p.rank, NRanks: p.nranks, CommID: p.commHash, Op: p.op, Seq: p.seq, Count: p.count,
		Datatype: p.datatype, Peer: p.peer, GlobalRank: -1, WorldSize: -1,
		Matched: traces.MatchPlugin, Source: traces.SourcePlugin,
	}
	if op, ok := opNamed[p.op]; ok {
		_, size := datatypeNamed(p.datatype)
		e.Bytes = callBytes(op, uint64(max(p.count, 0)), size, p.nranks)
	}
	p.addGPU(&e)
	return e
}

// addGPU puts what only the plugin knows into e.
func (p *pluginRecord) addGPU(e *traces.NCCLEvent) {
	if p.flags&pluginFlagGPU != 0 {
		e.GPUStartNs, e.GPUEndNs = p.gpuStart, p.gpuEnd
	}
	e.Algo, e.Proto, e.NChannels = p.algo, p.proto, int32(p.nchannels)
	e.GPUWaitNs, e.NetWaitNs = p.gpuWait, p.netWait
}

var opNamed = func() map[string]bpfnccl.Op {
	m := map[string]bpfnccl.Op{}
	for _, op := range bpfnccl.Ops() {
		m[op.String()] = op
	}
	return m
}()

func datatypeNamed(name string) (int32, int64) {
	for i, d := range datatypes {
		if d.name == name {
			return int32(i), d.size
		}
	}
	return -1, 0
}

// latestKey names one communicator's collectives, or its p2p calls, in
// one process.
type latestKey struct {
	pid  int32
	comm uint64
	kind uint8
}

// maxLatest bounds the communicators whose latest record is kept.
const maxLatest = 1 << 14

// pluginReceiver receives the plugin's datagrams and keeps the recent
// records.
type pluginReceiver struct {
	records, lost, bad *metrics.Counter

	mu       sync.Mutex
	recent   *ring[pluginRecord]
	latest   map[latestKey]pluginRecord // each communicator's latest record
	lastLost map[int32]uint64           // per sender: the plugin's own count of drops
	conn     *net.UnixConn
	path     string
}

func newPluginReceiver(capacity int, set *metrics.Set) *pluginReceiver {
	return &pluginReceiver{
		records:  set.GetOrCreateCounter("loupe_nccl_plugin_events_total"),
		lost:     set.GetOrCreateCounter("loupe_nccl_plugin_lost_events_total"),
		bad:      set.GetOrCreateCounter("loupe_nccl_plugin_bad_datagrams_total"),
		recent:   newRing[pluginRecord](capacity),
		latest:   map[latestKey]pluginRecord{},
		lastLost: map[int32]uint64{},
	}
}

// listenPlugin binds the plugin's socket: a unix datagram socket any local
// user may send to (the jobs run as their own users), with the senders'
// credentials passed along.
func listenPlugin(path string) (*net.UnixConn, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating the plugin socket's directory: %w", err)
	}
	if st, err := os.Lstat(path); err == nil && st.Mode()&fs.ModeSocket != 0 {
		os.Remove(path) // left by an agent that did not stop cleanly
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("binding %s (is another loupe-agent running?): %w", path, err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		conn.Close()
		return nil, fmt.Errorf("opening %s to the jobs' users: %w", path, err)
	}
	conn.SetReadBuffer(4 << 20)
	raw, err := conn.SyscallConn()
	if err == nil {
		err = raw.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("asking for the senders' credentials on %s: %w", path, err)
	}
	return conn, nil
}

// serve reads datagrams until conn is closed by stop.
func (r *pluginReceiver) serve(conn *net.UnixConn, log *slog.Logger) {
	r.mu.Lock()
	r.conn, r.path = conn, conn.LocalAddr().String()
	r.mu.Unlock()
	buf := make([]byte, pluginMaxDatagram)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	scratch := make([]pluginRecord, 256)
	for {
		n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			log.Warn("reading the NCCL profiler plugin's socket", "err", err)
			continue
		}
		pid, ok := senderPID(oob[:oobn])
		b, err := parsePluginBatch(buf[:n], scratch)
		if err == nil && !ok {
			err = errors.New("no sender credentials")
		}
		if err != nil {
			r.bad.Inc()
			log.Debug("dropping a datagram on the NCCL profiler plugin's socket", "err", err)
			continue
		}
		r.add(pid, b)
	}
}

func senderPID(oob []byte) (int32, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, false
	}
	for i := range msgs {
		if cred, err := unix.ParseUnixCredentials(&msgs[i]); err == nil {
			return cred.Pid, true
		}
	}
	return 0, false
}

func (r *pluginReceiver) add(pid int32, b pluginBatch) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if prev := r.lastLost[pid]; b.lost > prev {
		r.lost.Add(int(b.lost - prev))
	}
	r.lastLost[pid] = b.lost
	if len(r.lastLost) > 4096 {
		clear(r.lastLost) // senders come and go; the counts restart at worst
	}
	if len(r.latest) > maxLatest {
		clear(r.latest)
	}
	for i := range b.records {
		p := &b.records[i]
		p.pid = pid
		r.recent.add(*p)
		k := latestKey{pid, p.commHash, p.kind}
		if old, ok := r.latest[k]; !ok || p.seq >= old.seq {
			r.latest[k] = *p
		}
	}
	r.records.Add(len(b.records))
}

// latestRows are each communicator's latest record, as rows.
func (r *pluginReceiver) latestRows() []traces.NCCLEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]traces.NCCLEvent, 0, len(r.latest))
	for _, p := range r.latest {
		out = append(out, p.row())
	}
	return out
}

// forget drops the latest records of processes that exited.
func (r *pluginReceiver) forget(gone map[uint32]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.latest {
		if gone[uint32(k.pid)] {
			delete(r.latest, k)
		}
	}
}

// between returns the records whose host start is in [from, to), without
// a pending record that a later one of the same call replaced.
func (r *pluginReceiver) between(from, to int64) []pluginRecord {
	r.mu.Lock()
	var out []pluginRecord
	for _, part := range [2][]pluginRecord{r.recent.buf[r.recent.next:], r.recent.buf[:r.recent.next]} {
		for _, p := range part {
			if p.hostStart >= from && p.hostStart < to {
				out = append(out, p)
			}
		}
	}
	r.mu.Unlock()
	type key struct {
		pid  int32
		comm uint64
		kind uint8
		seq  int64
	}
	last := map[key]int{}
	for i, p := range out {
		last[key{p.pid, p.commHash, p.kind, p.seq}] = i
	}
	kept := out[:0]
	for i, p := range out {
		if last[key{p.pid, p.commHash, p.kind, p.seq}] == i {
			kept = append(kept, p)
		}
	}
	slices.SortStableFunc(kept, func(a, b pluginRecord) int { return cmp.Compare(a.hostStart, b.hostStart) })
	return kept
}

// stop closes the socket and removes its file.
func (r *pluginReceiver) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn != nil {
		r.conn.Close()
		os.Remove(r.path)
		r.conn = nil
	}
}

// mergePlugin joins the probes' rows (time-ordered) with the plugin's
// records of the same calls. The plugin numbers a communicator's calls
// (collectives, and point-to-point apart) from its creation, the probes
// from when they attached, so within one process the two numberings of one
// communicator differ by a constant. That offset, and which ncclComm_t
// handle a commHash is, come from a vote: each record's nearest row of the
// same process, op, count and datatype that entered NCCL before the record
// started (at most pluginLag before) proposes (handle, offset); the most
// proposed wins. Then each record joins the row of that handle whose Seq
// is the record's less the offset, if its op, count and datatype agree, so
// a lost record or row shifts nothing. A joined row takes the plugin's
// identity (commHash, Seq, Matched plugin) and GPU times; that handle's
// rows whose record was lost take the identity too. Records that join no
// row become rows of their own when they started within [from, to).
func mergePlugin(rows []traces.NCCLEvent, plugin []pluginRecord, from, to int64) []traces.NCCLEvent {
	type callKey struct {
		pid       int32
		op, dtype string
		count     int64
	}
	byCall := map[callKey][]int{} // row indexes in time order
	type seqKey struct {
		pid    int32
		handle uint64
		coll   bool
		seq    int64
	}
	bySeq := map[seqKey]int{}
	for i := range rows {
		e := &rows[i]
		if e.Seq < 0 || e.CommHandle == 0 || !(e.IsCollective() || e.Op == "Send" || e.Op == "Recv") {
			continue
		}
		k := callKey{e.PID, e.Op, e.Datatype, e.Count}
		byCall[k] = append(byCall[k], i)
		bySeq[seqKey{e.PID, e.CommHandle, e.IsCollective(), e.Seq}] = i
	}
	type commKind struct {
		pid  int32
		comm uint64
		coll bool
	}
	type proposal struct {
		handle uint64
		offset int64
	}
	votes := map[commKind]map[proposal]int{}
	for i := range plugin {
		p := &plugin[i]
		idx := byCall[callKey{p.pid, p.op, p.datatype, p.count}]
		j, _ := slices.BinarySearchFunc(idx, p.hostStart+pluginSlack+1, func(r int, t int64) int { return cmp.Compare(rows[r].TimeNs, t) })
		if j == 0 || rows[idx[j-1]].TimeNs < p.hostStart-pluginLag {
			continue
		}
		e := &rows[idx[j-1]]
		ck := commKind{p.pid, p.commHash, p.kind == pluginKindColl}
		if votes[ck] == nil {
			votes[ck] = map[proposal]int{}
		}
		votes[ck][proposal{e.CommHandle, p.seq - e.Seq}]++
	}
	won := map[commKind]proposal{}
	for ck, vs := range votes {
		var best proposal
		n := 0
		for pr, c := range vs {
			if c > n || c == n && (pr.handle < best.handle || pr.handle == best.handle && pr.offset < best.offset) {
				best, n = pr, c
			}
		}
		won[ck] = best
	}
	type stream struct {
		pid    int32
		handle uint64
	}
	identity := map[stream]struct {
		comm   uint64
		offset int64
	}{}
	joined := make([]bool, len(rows))
	var extra []traces.NCCLEvent
	for i := range plugin {
		p := &plugin[i]
		coll := p.kind == pluginKindColl
		pr, ok := won[commKind{p.pid, p.commHash, coll}]
		if ok {
			j, found := bySeq[seqKey{p.pid, pr.handle, coll, p.seq - pr.offset}]
			if e := &rows[j]; found && e.Op == p.op && e.Count == p.count && e.Datatype == p.datatype {
				if coll {
					identity[stream{e.PID, e.CommHandle}] = struct {
						comm   uint64
						offset int64
					}{p.commHash, pr.offset}
				}
				joined[j] = true
				e.CommID, e.Seq, e.Matched, e.Source = p.commHash, p.seq, traces.MatchPlugin, traces.SourceBoth
				if e.Rank < 0 {
					e.Rank, e.NRanks = p.rank, p.nranks
				}
				p.addGPU(e)
				continue
			}
		}
		if p.hostStart >= from && p.hostStart < to {
			extra = append(extra, p.row())
		}
	}
	for i := range rows {
		e := &rows[i]
		if id, ok := identity[stream{e.PID, e.CommHandle}]; ok && !joined[i] && e.IsCollective() {
			e.CommID, e.Seq, e.Matched = id.comm, e.Seq+id.offset, traces.MatchPlugin
		}
	}
	if len(extra) == 0 {
		return rows
	}
	rows = append(rows, extra...)
	slices.SortStableFunc(rows, func(a, b traces.NCCLEvent) int { return cmp.Compare(a.TimeNs, b.TimeNs) })
	return rows
}
