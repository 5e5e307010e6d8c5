package nccl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	bpfnccl "github.com/loupe-dev/loupe/bpf/nccl"
	"github.com/loupe-dev/loupe/traces"
)

// standIn is the stand-in libnccl.so.2 and the programs that call it, built
// once per test binary by gcc from testdata.
type standIn struct {
	lib    string // libnccl.so.2
	oldLib string // libnccl.so.2 without the functions older NCCL lacks
	notLib string // a libnccl.so.2 that is not NCCL at all
	rank   string // ncclrank, linked against lib
	rankDL string // ncclrank loading $LOUPE_NCCL_LIB with dlopen
}

var (
	buildOnce sync.Once
	built     standIn
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// need fails in CI and skips elsewhere when a real component is missing.
func need(t testing.TB, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(what)
	}
	t.Skip(what)
}

func buildStandIn(t testing.TB) standIn {
	t.Helper()
	need(t, os.Geteuid() == 0, "the NCCL uprobe tests load eBPF and need root (or CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE)")
	_, err := exec.LookPath("gcc")
	need(t, err == nil, "the NCCL uprobe tests build a stand-in libnccl with gcc: apt-get install gcc")
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "loupe-nccl-standin-"); buildErr != nil {
			return
		}
		src, _ := filepath.Abs("testdata")
		built = standIn{
			lib:    filepath.Join(buildDir, "libnccl.so.2"),
			oldLib: filepath.Join(buildDir, "old/libnccl.so.2"),
			notLib: filepath.Join(buildDir, "not/libnccl.so.2"),
			rank:   filepath.Join(buildDir, "ncclrank"),
			rankDL: filepath.Join(buildDir, "ncclrank-dl"),
		}
		for _, d := range []string{"old", "not"} {
			if buildErr = os.Mkdir(filepath.Join(buildDir, d), 0o755); buildErr != nil {
				return
			}
		}
		so := []string{"-shared", "-fPIC", "-O2", "-Wl,-soname,libnccl.so.2", "-o"}
		for _, args := range [][]string{
			append(so, built.lib, filepath.Join(src, "nccl.c")),
			append(so, built.oldLib, "-DSTANDIN_OLD_NCCL", filepath.Join(src, "nccl.c")),
			append(so, built.notLib, filepath.Join(src, "notnccl.c")),
			{"-O2", "-o", built.rank, filepath.Join(src, "ncclrank.c"), built.lib, "-Wl,-rpath," + buildDir},
			{"-O2", "-DUSE_DLOPEN", "-o", built.rankDL, filepath.Join(src, "ncclrank.c"), "-ldl"},
		} {
			out, err := exec.Command("gcc", append([]string{"-Wall", "-Werror"}, args...)...).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("gcc %s: %v\n%s", strings.Join(args, " "), err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

// startTracer runs a tracer (scanning every 20ms) until the test ends and
// checks that Run returns nil.
func startTracer(t testing.TB, set *metrics.Set) *Tracer {
	t.Helper()
	cfg := DefaultConfig()
	cfg.ScanInterval = 20 * time.Millisecond
	return startTracerConfig(t, cfg, set)
}

func startTracerConfig(t testing.TB, cfg Config, set *metrics.Set) *Tracer {
	t.Helper()
	tr, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), set)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return tr
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// probeFDs counts this process's perf event descriptors: one per attached
// uprobe, so it shows the kernel side of attach and detach.
func probeFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if target == "anon_inode:[perf_event]" {
			n++
		}
	}
	return n
}

// program is one run of a test program.
type program struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
}

func startProgram(t testing.TB, env []string, name string, args ...string) *program {
	t.Helper()
	p := &program{cmd: exec.Command(name, args...)}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout = &p.stdout
	p.cmd.Stderr = &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	})
	return p
}

func (p *program) wait(t testing.TB) {
	t.Helper()
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("%s: %v\n%s", p.cmd.Args, err, p.stderr.String())
	}
}

func touch(t testing.TB, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// collect reads events until want have arrived.
func collect(t testing.TB, ch <-chan traces.NCCLEvent, want int) []traces.NCCLEvent {
	t.Helper()
	var got []traces.NCCLEvent
	timeout := time.After(20 * time.Second)
	for len(got) < want {
		select {
		case ev := <-ch:
			got = append(got, ev)
		case <-timeout:
			t.Fatalf("got %d of %d events", len(got), want)
		}
	}
	return got
}

func tracedPIDs(tr *Tracer) map[int]string {
	out := map[int]string{}
	for _, p := range tr.Processes() {
		out[p.PID] = p.Library
	}
	return out
}

func metricsText(set *metrics.Set) string {
	var b bytes.Buffer
	set.WritePrometheus(&b)
	return b.String()
}

// The stand-in library's calls, made by four processes with one slow rank,
// reach user space with every argument right; the arrival skew names the
// slow rank; the periodicity of the calls gives the iterations; the probes
// go when the processes do.
func TestTracerRanks(t *testing.T) {
	s := buildStandIn(t)
	set := metrics.NewSet()
	baseFDs := probeFDs(t)
	tr := startTracer(t, set)
	ch, cancelSub := tr.Subscribe(1 << 16)
	defer cancelSub()

	const nranks, iters, slow = 4, 12, 2
	dir := t.TempDir()
	began := time.Now()
	var procs []*program
	pidRank := map[int32]int32{}
	for r := range nranks {
		p := startProgram(t, nil, s.rank, "ranks", dir, strconv.Itoa(r), strconv.Itoa(nranks), strconv.Itoa(iters),
			strconv.Itoa(slow), "4000")
		procs = append(procs, p)
		pidRank[int32(p.cmd.Process.Pid)] = int32(r)
	}
	waitFor(t, "the tracer to find every rank", func() bool {
		traced := tracedPIDs(tr)
		for pid := range pidRank {
			if traced[int(pid)] != s.lib {
				return false
			}
		}
		return true
	})
	if probeFDs(t) <= baseFDs {
		t.Fatal("no uprobe descriptors after attaching")
	}
	touch(t, filepath.Join(dir, "go"))

	const perRank = 3 + iters*(7+4)
	events := collect(t, ch, nranks*perRank)
	ended := time.Now()

	// While the processes live, their communicators are known.
	comms := tr.Comms()
	if len(comms) != 3*nranks {
		t.Fatalf("Comms() = %+v, want %d", comms, 3*nranks)
	}

	byPID := map[int32][]traces.NCCLEvent{}
	for _, ev := range events {
		byPID[ev.PID] = append(byPID[ev.PID], ev)
		if _, ok := pidRank[ev.PID]; !ok {
			t.Fatalf("event from unknown pid: %+v", ev)
		}
		if ev.TID != ev.PID {
			t.Errorf("tid %d in single-threaded pid %d", ev.TID, ev.PID)
		}
		if ev.TimeNs < began.UnixNano() || ev.TimeNs > ended.UnixNano() {
			t.Errorf("%s at %v, outside the run %v..%v", ev.Op, time.Unix(0, ev.TimeNs), began, ended)
		}
		if ev.Op != "GroupStart" && ev.DurationNs < 5000 {
			t.Errorf("%s took %d ns; the stand-in spins 5 us", ev.Op, ev.DurationNs)
		}
	}
	var ids [3]uint64
	for pid, evs := range byPID {
		ids = checkRank(t, evs, pidRank[pid], nranks, iters, ids)
	}
	id0 := ids[0]
	for _, c := range comms {
		if c.Rank != pidRank[c.PID] || c.NRanks != nranks || !slices.Contains(ids[:], c.CommID) {
			t.Errorf("comm %+v: want rank %d of %d in one of %x", c, pidRank[c.PID], nranks, ids)
		}
		if c.CommID == id0 && c.Collectives != 7*iters {
			t.Errorf("comm %+v: want %d collectives", c, 7*iters)
		}
	}

	// The slow rank is the one everyone waits for.
	var mine []RankSkew
	for _, sk := range Skew(events) {
		if sk.CommID == id0 {
			mine = append(mine, sk)
		}
	}
	for _, sk := range mine {
		t.Logf("rank %d: mean lag %v, max %v, last in %d of %d", sk.Rank, time.Duration(sk.MeanLagNs),
			time.Duration(sk.MaxLagNs), sk.LastArrivals, sk.Collectives)
	}
	if len(mine) != nranks {
		t.Fatalf("skew for %d ranks, want %d: %+v", len(mine), nranks, mine)
	}
	if mine[0].Rank != slow || mine[0].Collectives != 7*iters || mine[0].MeanLagNs < int64(time.Millisecond) ||
		mine[0].LastArrivals < 7*iters*9/10 {
		t.Errorf("straggler %+v, want rank %d late by over 1ms in most of %d collectives", mine[0], slow, 7*iters)
	}
	for _, sk := range mine[1:] {
		if sk.MeanLagNs*2 > mine[0].MeanLagNs {
			t.Errorf("rank %d lags %d ns on average, too close to the straggler's %d", sk.Rank, sk.MeanLagNs, mine[0].MeanLagNs)
		}
	}

	// Iterations from periodicity start at each iteration's first call.
	steps := DetectIterations(events)
	perPID := map[int32][]traces.Step{}
	for _, st := range steps {
		perPID[st.PID] = append(perPID[st.PID], st)
	}
	for pid, evs := range byPID {
		firstOfIter := map[int64]int64{} // seq of the first AllReduce -> time
		for _, ev := range evs {
			if ev.CommID == id0 && ev.Seq%7 == 0 {
				firstOfIter[ev.Seq/7] = ev.TimeNs
			}
		}
		got := perPID[pid]
		if len(got) != iters-1 {
			t.Fatalf("pid %d: %d steps, want %d (the last iteration has no successor)", pid, len(got), iters-1)
		}
		for i, st := range got {
			if st.Rank != pidRank[pid] || st.StartNs != firstOfIter[int64(i)] || st.EndNs != firstOfIter[int64(i+1)] {
				t.Errorf("pid %d step %d = %+v, want rank %d from %d to %d", pid, i, st, pidRank[pid],
					firstOfIter[int64(i)], firstOfIter[int64(i+1)])
			}
		}
	}

	if got := tr.Events(began, ended.Add(time.Second)); len(got) != len(events) {
		t.Errorf("Events() kept %d events, want %d", len(got), len(events))
	}

	// ncclCommDestroy (called before the programs wait to exit) drops the
	// kernel's state of the communicators.
	waitFor(t, "ncclCommDestroy to forget the communicators", func() bool {
		return strings.Contains(metricsText(set), "loupe_nccl_tracked_communicators 0")
	})

	// Exit: the processes drop out, the probes go, the state is forgotten.
	touch(t, filepath.Join(dir, "exit"))
	for _, p := range procs {
		p.wait(t)
	}
	waitFor(t, "detach after exit", func() bool {
		tr.scanMu.Lock()
		defer tr.scanMu.Unlock()
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return len(tr.files) == 0 && len(tr.comms) == 0
	})
	if n := len(tr.Processes()); n != 0 {
		t.Errorf("%d processes still listed", n)
	}
	if n := probeFDs(t); n != baseFDs {
		t.Errorf("%d uprobe descriptors remain after detach, want %d", n, baseFDs)
	}
	text := metricsText(set)
	for _, want := range []string{
		"loupe_nccl_attached_processes 0",
		fmt.Sprintf(`loupe_nccl_events_total{op="AllReduce"} %d`, nranks*2*iters),
		fmt.Sprintf(`loupe_nccl_events_total{op="Send"} %d`, nranks*iters),
		"loupe_nccl_lost_events_total 0",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q:\n%s", want, text)
		}
	}
}

// checkRank checks one rank's calls against what ncclrank issues, and
// that the ids of the communicators made by ncclCommInitRank, ...Config and
// ...Scalable agree with the other ranks' (0 when not yet known).
func checkRank(t *testing.T, evs []traces.NCCLEvent, rank, nranks int32, iters int, ids [3]uint64) [3]uint64 {
	t.Helper()
	for _, ev := range evs {
		if i := slices.Index([]string{"CommInitRank", "CommInitRankConfig", "CommInitRankScalable"}, ev.Op); i >= 0 {
			if ev.Rank != rank || ev.NRanks != nranks {
				t.Fatalf("init %+v, want rank %d of %d", ev, rank, nranks)
			}
			ids[i] = sameID(t, ev, ids[i])
		}
	}
	id0, id1 := ids[0], ids[1]
	if id0 == 0 || id1 == 0 || ids[2] == 0 || id0 == id1 || id1 == ids[2] || id0 == ids[2] {
		t.Fatalf("rank %d: communicator ids %x", rank, ids)
	}
	type want struct {
		op       string
		count    int64
		datatype string
		bytes    int64
		peer     int32
	}
	n := int64(nranks)
	body := []want{
		{"AllReduce", 1 << 20, "float32", 4 << 20, -1},
		{"AllReduce", 1 << 18, "bfloat16", 1 << 19, -1},
		{"AllGather", 4096, "float16", 4096 * 2 * n, -1},
		{"ReduceScatter", 2048, "float32", 2048 * 4 * n, -1},
		{"Broadcast", 100, "int64", 800, 0},
		{"Reduce", 300, "float64", 2400, nranks - 1},
		{"AllToAll", 64, "int32", 64 * 4 * n, -1},
	}
	var coll, p2p, groups []traces.NCCLEvent
	for _, ev := range evs {
		switch {
		case ev.CommID == id0 && !strings.HasPrefix(ev.Op, "CommInit"):
			coll = append(coll, ev)
		case ev.CommID == id1 && !strings.HasPrefix(ev.Op, "CommInit"):
			p2p = append(p2p, ev)
		case ev.Op == "GroupStart" || ev.Op == "GroupEnd":
			groups = append(groups, ev)
		}
	}
	slicesSortByTime(coll)
	slicesSortByTime(p2p)
	if len(coll) != 7*iters || len(p2p) != 2*iters || len(groups) != 2*iters {
		t.Fatalf("rank %d: %d collectives, %d p2p, %d group calls; want %d, %d, %d",
			rank, len(coll), len(p2p), len(groups), 7*iters, 2*iters, 2*iters)
	}
	for i, ev := range coll {
		w := body[i%len(body)]
		if ev.Op != w.op || ev.Count != w.count || ev.Datatype != w.datatype || ev.Bytes != w.bytes ||
			ev.Peer != w.peer || ev.Seq != int64(i) || ev.Rank != rank || ev.NRanks != nranks {
			t.Fatalf("rank %d call %d = %+v, want %+v seq %d", rank, i, ev, w, i)
		}
	}
	for i, ev := range p2p {
		op, peer := "Send", (rank+1)%nranks
		if i%2 == 1 {
			op, peer = "Recv", (rank+nranks-1)%nranks
		}
		if ev.Op != op || ev.Peer != peer || ev.Count != 10 || ev.Datatype != "uint8" || ev.Bytes != 10 ||
			ev.Seq != int64(i) || ev.Rank != rank {
			t.Fatalf("rank %d p2p call %d = %+v, want %s to %d seq %d", rank, i, ev, op, peer, i)
		}
	}
	for _, ev := range groups {
		if ev.CommID != 0 || ev.Seq != -1 || ev.Bytes != 0 {
			t.Fatalf("group call %+v", ev)
		}
	}
	return ids
}

func sameID(t *testing.T, ev traces.NCCLEvent, known uint64) uint64 {
	t.Helper()
	if ev.CommID == 0 || (known != 0 && ev.CommID != known) {
		t.Fatalf("%s on rank %d: comm id %x, other ranks %x", ev.Op, ev.Rank, ev.CommID, known)
	}
	return ev.CommID
}

// A copy of the library inside a Python wheel's directory, loaded with
// dlopen after start, is found and traced; ncclCommInitAll's communicators
// get their ranks, and the group calls it makes inside are reported without
// losing the outer call.
func TestTracerWheelDlopen(t *testing.T) {
	s := buildStandIn(t)
	dir := t.TempDir()
	wheel := filepath.Join(dir, "venv/lib/python3.11/site-packages/nvidia/nccl/lib/libnccl.so.2")
	// The wheel's metadata names its version (the manifest's nccl_version).
	for _, d := range []string{filepath.Dir(wheel), filepath.Join(dir, "venv/lib/python3.11/site-packages/nvidia_nccl_cu12-2.21.5.dist-info")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	lib, err := os.ReadFile(s.lib)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wheel, lib, 0o755); err != nil {
		t.Fatal(err)
	}
	baseFDs := probeFDs(t)
	tr := startTracer(t, nil)
	ch, cancelSub := tr.Subscribe(1 << 12)
	defer cancelSub()

	const ndev, iters = 4, 5
	p := startProgram(t, []string{"LOUPE_NCCL_LIB=" + wheel}, s.rankDL, "initall", dir, strconv.Itoa(ndev), strconv.Itoa(iters))
	pid := p.cmd.Process.Pid
	waitFor(t, "the tracer to find the wheel's library", func() bool { return tracedPIDs(tr)[pid] == wheel })
	for _, p := range tr.Processes() {
		if p.PID == pid && p.Version != "2.21.5" {
			t.Errorf("traced process %+v: want the wheel's version 2.21.5", p)
		}
	}
	touch(t, filepath.Join(dir, "go"))
	// ncclCommInitAll's own nested group calls, then the loop's.
	events := collect(t, ch, ndev+2+iters*(ndev+2))

	var id uint64
	var initStart, initEnd int64
	seen := map[int32]int{}
	for _, ev := range events {
		if ev.Op == "CommInitAll" {
			initStart, initEnd = ev.TimeNs, ev.TimeNs+ev.DurationNs
		}
	}
	nested := 0
	for _, ev := range events {
		if (ev.Op == "GroupStart" || ev.Op == "GroupEnd") && ev.TimeNs > initStart && ev.TimeNs < initEnd {
			nested++
		}
		if int(ev.PID) != pid {
			t.Fatalf("event from pid %d, want %d", ev.PID, pid)
		}
		switch ev.Op {
		case "CommInitAll":
			if id == 0 {
				id = ev.CommID
			}
			if ev.CommID != id || id == 0 || ev.NRanks != ndev || ev.Seq != -1 {
				t.Fatalf("init %+v, want comm %x of %d ranks", ev, id, ndev)
			}
			seen[ev.Rank]++
		case "AllReduce":
			if ev.CommID != id || ev.Rank < 0 || ev.Rank >= ndev || ev.Bytes != 4096 {
				t.Fatalf("all-reduce %+v", ev)
			}
		}
	}
	if len(seen) != ndev {
		t.Fatalf("ranks initialised: %v, want 0..%d", seen, ndev-1)
	}
	if nested != 2 {
		t.Fatalf("%d group calls inside ncclCommInitAll, want 2", nested)
	}
	comms := tr.Comms()
	if len(comms) != ndev {
		t.Fatalf("Comms() = %+v, want %d", comms, ndev)
	}
	for i, c := range comms {
		if c.PID != int32(pid) || c.Rank != int32(i) || c.NRanks != ndev || c.CommID != id || c.Collectives != iters {
			t.Errorf("comm %d = %+v, want rank %d of %d with %d collectives", i, c, i, ndev, iters)
		}
	}

	touch(t, filepath.Join(dir, "exit"))
	p.wait(t)
	waitFor(t, "detach after exit", func() bool { return len(tr.Processes()) == 0 && probeFDs(t) == baseFDs })
}

// Without the privileges to load eBPF, New says which capabilities are
// missing. The test binary runs itself as nobody to find out.
func TestNewUnprivileged(t *testing.T) {
	if os.Getenv("LOUPE_NCCL_UNPRIVILEGED_CHILD") == "1" {
		_, err := New(DefaultConfig(), nil, nil)
		fmt.Printf("ERR: %v\n", err)
		return
	}
	need(t, os.Geteuid() == 0, "switching to an unprivileged user needs root")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "loupe-nccl-unpriv-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin, _ := os.ReadFile(exe)
	copyExe := filepath.Join(dir, "nccl.test")
	if err := os.WriteFile(copyExe, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(copyExe, "-test.run=^TestNewUnprivileged$")
	cmd.Env = append(os.Environ(), "LOUPE_NCCL_UNPRIVILEGED_CHILD=1", "CI=")
	cmd.SysProcAttr = nobody()
	out, err := cmd.CombinedOutput()
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatal(err)
		}
	}
	text := string(out)
	t.Logf("unprivileged child: %s", strings.SplitN(text, "\n", 2)[0])
	if !strings.Contains(text, "ERR: nccl tracer: loading the NCCL eBPF programs was refused") ||
		!strings.Contains(text, "CAP_BPF") || !strings.Contains(text, "CAP_PERFMON") {
		t.Fatalf("unprivileged New() did not name the missing capabilities:\n%s", text)
	}
}

// A library from an older NCCL that lacks some functions gets the probes it
// can take; a file that only carries NCCL's name gets none and is not
// retried on every scan. Any process that maps them will do: here sleep(1)
// with the library preloaded.
func TestTracerPartialAndForeignLibraries(t *testing.T) {
	s := buildStandIn(t)
	baseFDs := probeFDs(t)
	tr := startTracer(t, nil)

	old := startProgram(t, []string{"LD_PRELOAD=" + s.oldLib}, "sleep", "30")
	waitFor(t, "the old library to be traced", func() bool { return tracedPIDs(tr)[old.cmd.Process.Pid] == s.oldLib })
	// 14 reporting functions less the 2 missing, entry and return, plus
	// the entry-only ncclCommDestroy and ncclCommAbort.
	if got, want := probeFDs(t)-baseFDs, 12*2+2; got != want {
		t.Errorf("%d probes on the old library, want %d", got, want)
	}

	foreign := startProgram(t, []string{"LD_PRELOAD=" + s.notLib}, "sleep", "30")
	waitFor(t, "the foreign library to be refused", func() bool {
		tr.scanMu.Lock()
		defer tr.scanMu.Unlock()
		return len(tr.failed) == 1 && tr.procs[foreign.cmd.Process.Pid] != nil
	})
	if _, ok := tracedPIDs(tr)[foreign.cmd.Process.Pid]; ok {
		t.Error("a library without NCCL's functions is listed as traced")
	}

	for _, p := range []*program{old, foreign} {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
	waitFor(t, "detach", func() bool { return len(tr.Processes()) == 0 && probeFDs(t) == baseFDs })
}

// Subscribers get every event until the channel is full, then lose (and
// count) the rest rather than stall the tracer; cancel and Close end them.
func TestSubscribe(t *testing.T) {
	need(t, os.Geteuid() == 0, "New loads eBPF and needs root")
	set := metrics.NewSet()
	tr, err := New(DefaultConfig(), slog.New(slog.NewTextHandler(io.Discard, nil)), set)
	if err != nil {
		t.Fatal(err)
	}
	small, cancelSmall := tr.Subscribe(2)
	big, _ := tr.Subscribe(10)
	gone, cancelGone := tr.Subscribe(10)
	cancelGone()
	cancelGone() // twice is harmless
	if _, open := <-gone; open {
		t.Fatal("cancelled channel still open")
	}
	for i := range 5 {
		tr.deliver(&bpfnccl.Event{Op: bpfnccl.OpAllReduce, Seq: int64(i), Datatype: 7, Count: 1})
	}
	if len(small) != 2 || len(big) != 5 {
		t.Fatalf("small holds %d, big %d; want 2 and 5", len(small), len(big))
	}
	if ev := <-big; ev.Op != "AllReduce" || ev.Seq != 0 || ev.Bytes != 4 {
		t.Fatalf("first event %+v", ev)
	}
	if !strings.Contains(metricsText(set), "loupe_nccl_subscriber_dropped_events_total 3") {
		t.Fatalf("drops not counted:\n%s", metricsText(set))
	}
	cancelSmall()
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	for range big {
	}
	late, _ := tr.Subscribe(1)
	if _, open := <-late; open {
		t.Fatal("Subscribe after Close gave an open channel")
	}
	if err := tr.Run(context.Background()); err == nil {
		t.Fatal("Run after Close succeeded")
	}
}

func TestNewBadConfig(t *testing.T) {
	cfg := DefaultConfig()
	cfg.RingBufferBytes = 3 << 20
	if _, err := New(cfg, nil, nil); err == nil || !strings.Contains(err.Error(), "nccl.ring_buffer_bytes") {
		t.Fatalf("New with a 3 MiB ring buffer: %v", err)
	}
}
