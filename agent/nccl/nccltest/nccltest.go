// Package nccltest builds and runs the stand-in NCCL of agent/nccl/testdata
// for tests of the agent's NCCL parts: the stand-in libnccl.so.2 (real
// symbols and signatures, a simulated GPU stream, the profiler plugin
// interface), the multi-rank program ncclrank that calls it, and Loupe's
// NCCL profiler plugin, all compiled once per test binary with gcc.
package nccltest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// StandIn is where the built files are.
type StandIn struct {
	Lib    string // libnccl.so.2
	OldLib string // libnccl.so.2 without the functions older NCCL lacks
	NotLib string // a libnccl.so.2 that is not NCCL at all
	Rank   string // ncclrank, linked against Lib
	RankDL string // ncclrank loading $LOUPE_NCCL_LIB with dlopen
	Plugin string // libnccl-profiler-loupe.so, Loupe's profiler plugin
}

// Dir is the folder that holds every built file: the one pattern a tracer
// of these tests needs in nccl.Config.Libraries.
func (s StandIn) Dir() string { return filepath.Dir(s.Lib) }

var (
	once     sync.Once
	built    StandIn
	buildErr error
)

// Need fails in CI and skips elsewhere when a real component is missing.
func Need(t testing.TB, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(what)
	}
	t.Skip(what)
}

// Build compiles the stand-in once per test binary, into a folder that
// lives as long as the process (the programs of one test may outlive it).
// The tests need root for the eBPF probes, and gcc.
func Build(t testing.TB) StandIn {
	t.Helper()
	Need(t, os.Geteuid() == 0, "the NCCL uprobe tests load eBPF and need root (or CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE)")
	_, err := exec.LookPath("gcc")
	Need(t, err == nil, "the NCCL uprobe tests build a stand-in libnccl with gcc: apt-get install gcc")
	once.Do(func() { built, buildErr = build() })
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

func build() (StandIn, error) {
	_, self, _, _ := runtime.Caller(0)
	nccl := filepath.Dir(filepath.Dir(self))
	src, plugin := filepath.Join(nccl, "testdata"), filepath.Join(nccl, "plugin")
	dir, err := os.MkdirTemp("", "loupe-nccl-standin-")
	if err != nil {
		return StandIn{}, err
	}
	b := StandIn{
		Lib: filepath.Join(dir, "libnccl.so.2"), OldLib: filepath.Join(dir, "old/libnccl.so.2"), NotLib: filepath.Join(dir, "not/libnccl.so.2"),
		Rank: filepath.Join(dir, "ncclrank"), RankDL: filepath.Join(dir, "ncclrank-dl"), Plugin: filepath.Join(dir, "libnccl-profiler-loupe.so"),
	}
	for _, d := range []string{"old", "not"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			return StandIn{}, err
		}
	}
	so := []string{"-shared", "-fPIC", "-O2", "-Wl,-soname,libnccl.so.2", "-o"}
	// The programs keep frame pointers, so that CPU stacks of a stuck rank
	// reach main.
	prog := []string{"-O2", "-fno-omit-frame-pointer", "-o"}
	for _, args := range [][]string{
		append(so, b.Lib, filepath.Join(src, "nccl.c"), "-ldl", "-lpthread"),
		append(so, b.OldLib, "-DSTANDIN_OLD_NCCL", filepath.Join(src, "nccl.c"), "-ldl", "-lpthread"),
		append(so, b.NotLib, filepath.Join(src, "notnccl.c")),
		append(prog, b.Rank, filepath.Join(src, "ncclrank.c"), b.Lib, "-Wl,-rpath,"+dir),
		append(prog, b.RankDL, "-DUSE_DLOPEN", filepath.Join(src, "ncclrank.c"), "-ldl"),
		{"-shared", "-fPIC", "-O2", "-Wextra", "-o", b.Plugin, filepath.Join(plugin, "loupe_profiler.c"), "-lpthread"},
	} {
		out, err := exec.Command("gcc", append([]string{"-Wall", "-Werror"}, args...)...).CombinedOutput()
		if err != nil {
			return StandIn{}, fmt.Errorf("gcc %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return b, nil
}

// Program is one run of a test program; the test's cleanup kills it if it
// still runs.
type Program struct {
	Cmd            *exec.Cmd
	Stdout, Stderr bytes.Buffer
}

// Start runs name with args and env added to this process's environment.
func Start(t testing.TB, env []string, name string, args ...string) *Program {
	t.Helper()
	p := &Program{Cmd: exec.Command(name, args...)}
	p.Cmd.Env = append(os.Environ(), env...)
	p.Cmd.Stdout = &p.Stdout
	p.Cmd.Stderr = &p.Stderr
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.Cmd.ProcessState == nil {
			p.Cmd.Process.Kill()
			p.Cmd.Wait()
		}
	})
	return p
}

// Wait waits for the program and fails the test if it failed.
func (p *Program) Wait(t testing.TB) {
	t.Helper()
	if err := p.Cmd.Wait(); err != nil {
		t.Fatalf("%s: %v\n%s", p.Cmd.Args, err, p.Stderr.String())
	}
}

// Touch creates an empty file (ncclrank waits for DIR/go, DIR/exit, DIR/stop).
func Touch(t testing.TB, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Job is a multi-rank run of ncclrank with RANK and WORLD_SIZE set, as a
// launcher sets them, and NCCL_STANDIN_DIR shared by its ranks.
type Job struct {
	Dir   string
	Procs []*Program
}

// StartJob starts nranks processes of ncclrank MODE DIR RANK NRANKS ITERS
// SLOWRANK SLOW_US; env applies to every rank, rankEnv(r) (may be nil) to
// rank r.
func StartJob(t testing.TB, bin, mode string, nranks, iters, slow, slowUS int, env []string, rankEnv func(int) []string) *Job {
	t.Helper()
	j := &Job{Dir: t.TempDir()}
	for r := range nranks {
		e := append([]string{"RANK=" + strconv.Itoa(r), "WORLD_SIZE=" + strconv.Itoa(nranks), "NCCL_STANDIN_DIR=" + j.Dir}, env...)
		if rankEnv != nil {
			e = append(e, rankEnv(r)...)
		}
		j.Procs = append(j.Procs, Start(t, e, bin, mode, j.Dir, strconv.Itoa(r), strconv.Itoa(nranks),
			strconv.Itoa(iters), strconv.Itoa(slow), strconv.Itoa(slowUS)))
	}
	return j
}

// PIDs maps each rank's pid to its rank.
func (j *Job) PIDs() map[int32]int32 {
	out := map[int32]int32{}
	for r, p := range j.Procs {
		out[int32(p.Cmd.Process.Pid)] = int32(r)
	}
	return out
}

// Touch creates DIR/name for the job's ranks.
func (j *Job) Touch(t testing.TB, name string) { Touch(t, filepath.Join(j.Dir, name)) }

// Stop ends a job that runs until told (NCCLRANK_UNTIL_STOP) and waits.
func (j *Job) Stop(t testing.TB) {
	t.Helper()
	j.Touch(t, "stop")
	j.Touch(t, "exit")
	for _, p := range j.Procs {
		p.Wait(t)
	}
}

// Kill ends a job that cannot stop by itself (a hung rank).
func (j *Job) Kill() {
	for _, p := range j.Procs {
		if p.Cmd.ProcessState == nil {
			p.Cmd.Process.Kill()
			p.Cmd.Wait()
		}
	}
}

// Cleanup removes what Build compiled; call it from TestMain after the
// tests ran.
func Cleanup() {
	if built.Lib != "" {
		os.RemoveAll(filepath.Dir(built.Lib))
	}
}
