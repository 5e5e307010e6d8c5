//go:build amd64

package nccl

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
)

// The hand-written decoder must follow the C layout that bpf2go saw.
func TestEventLayout(t *testing.T) {
	if got := binary.Size(ncclEvent{}); got != EventSize {
		t.Fatalf("struct event is %d bytes in the object, EventSize is %d", got, EventSize)
	}
	want := ncclEvent{TimeNs: 1, DurationNs: 2, Comm: 3, CommId: 4, Count: 5, Seq: -6, Pid: 7, Tid: 8,
		Rank: 9, Nranks: 10, Peer: -11, Datatype: 12, Redop: 13, Result: 14, Op: uint32(OpReduce), Flags: uint32(IDSplit)}
	b, err := binary.Append(nil, binary.LittleEndian, &want)
	if err != nil {
		t.Fatal(err)
	}
	var ev Event
	if err := ParseEvent(b, &ev); err != nil {
		t.Fatal(err)
	}
	got := Event{1, 2, 3, 4, 5, -6, 7, 8, 9, 10, -11, 12, 13, 14, OpReduce, IDSplit}
	if ev != got {
		t.Fatalf("decoded %+v, want %+v", ev, got)
	}
	if err := ParseEvent(b[:EventSize-1], &ev); err == nil {
		t.Fatal("short record accepted")
	}
}

func TestOpsMatchObject(t *testing.T) {
	gen := map[Op]ncclNcclOp{
		OpCommInitRank: ncclNcclOpOP_COMM_INIT_RANK, OpCommInitRankConfig: ncclNcclOpOP_COMM_INIT_RANK_CONFIG,
		OpCommInitAll: ncclNcclOpOP_COMM_INIT_ALL, OpAllReduce: ncclNcclOpOP_ALL_REDUCE,
		OpAllGather: ncclNcclOpOP_ALL_GATHER, OpReduceScatter: ncclNcclOpOP_REDUCE_SCATTER,
		OpBroadcast: ncclNcclOpOP_BROADCAST, OpReduce: ncclNcclOpOP_REDUCE, OpAllToAll: ncclNcclOpOP_ALL_TO_ALL,
		OpSend: ncclNcclOpOP_SEND, OpRecv: ncclNcclOpOP_RECV, OpGroupStart: ncclNcclOpOP_GROUP_START,
		OpGroupEnd: ncclNcclOpOP_GROUP_END, OpCommInitRankScalable: ncclNcclOpOP_COMM_INIT_RANK_SCALABLE,
		OpCommSplit: ncclNcclOpOP_COMM_SPLIT,
	}
	if len(gen) != len(Ops()) {
		t.Fatalf("%d ops in Go, %d in the object", len(Ops()), len(gen))
	}
	for o, g := range gen {
		if uint32(o) != uint32(g) {
			t.Errorf("%v = %d in Go, %d in the object", o, o, g)
		}
	}
}

// Load verifies every program in the kernel.
func TestLoad(t *testing.T) {
	needRoot(t)
	o, err := Load(0)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	ops := map[Op]bool{}
	for _, p := range o.Probes {
		if p.Program == nil || (p.Op != 0) != (p.Return != nil) {
			t.Errorf("%s: entry %v, return %v", p.Symbol, p.Program, p.Return)
		}
		ops[p.Op] = true
	}
	for _, op := range Ops() {
		if !ops[op] {
			t.Errorf("no probe reports %v", op)
		}
	}
	if n, err := o.Lost(); err != nil || n != 0 {
		t.Fatalf("Lost() = %d, %v", n, err)
	}
	if _, err := Load(3000); err == nil {
		t.Fatal("ring size 3000 accepted")
	}
	if got, err := o.InFlight(); err != nil || len(got) != 0 {
		t.Fatalf("InFlight() = %v, %v with no NCCL process", got, err)
	}
}

// The exec hook and the loader probe send a MapEvent record for this test's
// children: a program that execs, and its dynamic loader at startup.
func TestLoadRecords(t *testing.T) {
	needRoot(t)
	o, err := Load(0)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	l, err := o.AttachExec()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	loader, err := filepath.EvalSymlinks("/lib64/ld-linux-x86-64.so.2")
	if err != nil {
		t.Fatal(err)
	}
	ex, err := link.OpenExecutable(loader)
	if err != nil {
		t.Fatal(err)
	}
	up, err := ex.Uprobe(LoaderSymbol, o.LoaderProbe(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	rd, err := ringbuf.NewReader(o.MapEvents())
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	cmd := exec.Command("/bin/true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	child := uint32(cmd.Process.Pid)
	seen := map[MapKind]bool{}
	rd.SetDeadline(time.Now().Add(5 * time.Second))
	for !seen[MapExec] || !seen[MapLoader] {
		rec, err := rd.Read()
		if err != nil {
			t.Fatalf("records for pid %d: %v, then %v", child, seen, err)
		}
		var ld MapEvent
		if err := ParseMapEvent(rec.RawSample, &ld); err != nil {
			t.Fatal(err)
		}
		if ld.PID == child {
			seen[ld.Kind] = true
		}
	}
	// A traced process's dlopen calls send nothing; once it is no longer
	// traced, they do.
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("the loader probe test runs python3 to call dlopen: install python3")
	}
	cmd = exec.Command(py, "-u", "-c", "import ctypes, sys\nprint('ready')\nfor name in sys.stdin: ctypes.CDLL(name.strip()); print('ok')")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	out := bufio.NewScanner(stdout)
	out.Scan() // ready
	pid := uint32(cmd.Process.Pid)
	loaderRecords := func(within time.Duration) int {
		n := 0
		rd.SetDeadline(time.Now().Add(within))
		for {
			rec, err := rd.Read()
			if err != nil {
				return n
			}
			var ld MapEvent
			if ParseMapEvent(rec.RawSample, &ld) == nil && ld.PID == pid && ld.Kind == MapLoader {
				n++
			}
		}
	}
	loaderRecords(200 * time.Millisecond) // its startup's
	if err := o.SetTraced(pid, true); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(stdin, "libm.so.6")
	out.Scan()
	if n := loaderRecords(200 * time.Millisecond); n != 0 {
		t.Fatalf("%d loader records from a traced process", n)
	}
	if err := o.SetTraced(pid, false); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(stdin, "libz.so.1")
	out.Scan()
	if n := loaderRecords(time.Second); n == 0 {
		t.Fatal("no loader record for a dlopen once untraced")
	}
	if err := ParseMapEvent(make([]byte, MapEventSize-1), &MapEvent{}); err == nil {
		t.Fatal("short record accepted")
	}
}

func TestLoadKindsMatchObject(t *testing.T) {
	if MapExec != MapKind(ncclLoadKindLOAD_EXEC) || MapLoader != MapKind(ncclLoadKindLOAD_LOADER) {
		t.Fatal("MapKind values differ from enum load_kind")
	}
	if IDInit != IDSource(ncclCommIdSourceCOMM_ID_INIT) || IDSplit != IDSource(ncclCommIdSourceCOMM_ID_SPLIT) {
		t.Fatal("IDSource values differ from enum comm_id_source")
	}
	if got := binary.Size(ncclLoad{}); got != MapEventSize {
		t.Fatalf("struct load is %d bytes in the object, MapEventSize is %d", got, MapEventSize)
	}
}

// needRoot fails in CI and skips elsewhere without the privileges to load
// eBPF.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("loading eBPF needs root (or CAP_BPF+CAP_PERFMON); run the tests as root")
		}
		t.Skip("loading eBPF needs root")
	}
}
