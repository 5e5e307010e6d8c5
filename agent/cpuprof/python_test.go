package cpuprof

import (
	"bufio"
	"debug/dwarf"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"
	"github.com/google/pprof/profile"

	"github.com/loupe-dev/loupe/bpf/cpu"
)

// pythonVersions are the CPython versions whose frames the unwinder walks;
// the tests run each one from ~/.pyenv/versions, unmodified.
var pythonVersions = []string{"3.9", "3.10", "3.11", "3.12", "3.13"}

// pyenvPython finds the pyenv build of a CPython version (its newest patch
// release there).
func pyenvPython(t testing.TB, version string) string {
	t.Helper()
	home, _ := os.UserHomeDir()
	matches, _ := filepath.Glob(filepath.Join(home, ".pyenv/versions", version+".*", "bin", "python"+version))
	if len(matches) > 0 {
		return matches[len(matches)-1]
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("no CPython %s under ~/.pyenv/versions: install it (pyenv install %s)", version, version)
	}
	t.Skipf("no CPython %s under ~/.pyenv/versions", version)
	return ""
}

// buildPyExt builds testdata/pyext.c as the loupeburn module for python
// into a fresh directory and returns it.
func buildPyExt(t testing.TB, python string) string {
	t.Helper()
	inc, err := exec.Command(python, "-c", "import sysconfig; print(sysconfig.get_paths()['include'])").Output()
	if err != nil {
		t.Fatalf("%s: finding its headers: %v", python, err)
	}
	dir := t.TempDir()
	cmd := exec.Command(requireTool(t, "gcc"), "-O2", "-fomit-frame-pointer", "-shared", "-fPIC",
		"-I"+strings.TrimSpace(string(inc)), "-o", filepath.Join(dir, "loupeburn.so"), "testdata/pyext.c")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the test extension for %s: %v\n%s", python, err, b)
	}
	return dir
}

// markedLines returns the line numbers of the "# MARK" comments of a file.
func markedLines(t testing.TB, path string) map[string]int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for n := int64(1); sc.Scan(); n++ {
		if _, mark, ok := strings.Cut(sc.Text(), "  # "); ok && strings.ToUpper(mark) == mark {
			out[mark] = n
		}
	}
	return out
}

// pyFrame is a frame as the tests compare them.
type pyFrame struct {
	name, file string
	line       int64
}

func (f pyFrame) String() string {
	return fmt.Sprintf("%s (%s:%d)", f.name, filepath.Base(f.file), f.line)
}

func sampleFrames(s *profile.Sample) []pyFrame {
	var out []pyFrame
	for _, loc := range s.Location {
		f := pyFrame{name: fmt.Sprintf("%#x@%s", loc.Address, filepath.Base(loc.Mapping.File))}
		if len(loc.Line) > 0 {
			f.name, f.file, f.line = loc.Line[0].Function.Name, loc.Line[0].Function.Filename, loc.Line[0].Line
		}
		out = append(out, f)
	}
	return out
}

// TestPythonFrames profiles each unmodified CPython 3.9-3.13, no
// PYTHONPERFSUPPORT, running a pure-Python hot loop and a C extension
// called from Python: the hot function and its caller are named with file
// and line, and a stack in the extension reads C function, then the Python
// function that called it, then its caller.
func TestPythonFrames(t *testing.T) {
	requireRoot(t)
	script, err := filepath.Abs("testdata/pyburn.py")
	if err != nil {
		t.Fatal(err)
	}
	lines := markedLines(t, script)
	for _, version := range pythonVersions {
		t.Run(version, func(t *testing.T) {
			python := pyenvPython(t, version)
			ext := buildPyExt(t, python)
			cmd := exec.Command(python, script, ext)
			for _, kv := range os.Environ() {
				if !strings.HasPrefix(kv, "PYTHON") {
					cmd.Env = append(cmd.Env, kv)
				}
			}
			cmd.Stderr = os.Stderr
			if line := runCmd(t, cmd, true); line != "ready" {
				t.Fatalf("%s %s: first line %q", python, script, line)
			}
			pid := cmd.Process.Pid
			prof := capture(t, Config{Hz: 99}, []int{pid})
			hot := pyFrame{"hot_python_loop", script, lines["HOT"]}
			outer := pyFrame{"outer_python", script, lines["CALLS_HOT"]}
			callsC := pyFrame{"calls_c", script, lines["CALLS_C"]}
			outerC := pyFrame{"outer_python", script, lines["CALLS_CALLS_C"]}
			var total, inHot, inC, named int64
			for _, s := range samplesOf(prof, pid) {
				fs := sampleFrames(s)
				n := s.Value[0]
				total += n
				// 3.9 and 3.10 call each Python function through C,
				// so native frames sit between Python ones.
				// The sample may fall on the loop's for line or its body.
				i := indexFrame(fs, hot)
				if i < 0 {
					i = indexFrame(fs, pyFrame{hot.name, hot.file, lines["LOOP"]})
				}
				if i >= 0 && nextPython(fs, i) == outer {
					inHot += n
				}
				if i := indexName(fs, "loupe_c_spin"); i >= 0 {
					if j := indexFrame(fs[i:], callsC); j > 0 && nextPython(fs, i+j) == outerC {
						inC += n
					}
				}
				if indexName(fs, "outer_python") >= 0 {
					named += n
				}
			}
			t.Logf("%d samples: %d in hot_python_loop < outer_python, %d in loupe_c_spin < ... < calls_c < outer_python\n%s", total, inHot, inC, topFrames(prof, pid))
			if total < minSamples {
				t.Fatalf("%d samples, want >= %d", total, minSamples)
			}
			if inHot == 0 || inC == 0 {
				t.Errorf("want samples in %v called from %v and in loupe_c_spin (C) called from %v called from %v", hot, outer, callsC, outerC)
			}
			if share := float64(named) / float64(total); share < 0.8 {
				t.Errorf("outer_python in %.0f%% of the samples, want >= 80%%", 100*share)
			}
		})
	}
}

// nextPython returns the first Python frame (one with a source file) after
// fs[i].
func nextPython(fs []pyFrame, i int) pyFrame {
	for _, f := range fs[i+1:] {
		if strings.HasSuffix(f.file, ".py") {
			return f
		}
	}
	return pyFrame{}
}

func indexFrame(fs []pyFrame, f pyFrame) int {
	for i, x := range fs {
		if x == f {
			return i
		}
	}
	return -1
}

func indexName(fs []pyFrame, name string) int {
	for i, x := range fs {
		if x.name == name {
			return i
		}
	}
	return -1
}

// topFrames renders the most common stacks of pid, with positions.
func topFrames(prof *profile.Profile, pid int) string {
	counts := map[string]int64{}
	for _, s := range samplesOf(prof, pid) {
		fs := sampleFrames(s)
		var parts []string
		for _, f := range fs[:min(8, len(fs))] {
			parts = append(parts, f.String())
		}
		counts[strings.Join(parts, " < ")] += s.Value[0]
	}
	var sb strings.Builder
	for k, v := range counts {
		if v > 1 {
			fmt.Fprintf(&sb, "%4d %s\n", v, k)
		}
	}
	return sb.String()
}

// libpython finds the shared library of a pyenv CPython build.
func libpython(t testing.TB, version string) string {
	t.Helper()
	python := pyenvPython(t, version)
	lib := filepath.Join(filepath.Dir(filepath.Dir(python)), "lib", "libpython"+version+".so.1.0")
	if _, err := os.Stat(lib); err != nil {
		t.Skipf("%s: no %s (a static build)", python, lib)
	}
	return lib
}

// structOffsets reads the byte offset of dotted member paths of named
// structs from DWARF ("pyruntimestate.interpreters.head"); a path whose
// struct or member is missing is left out.
func structOffsets(t testing.TB, d *dwarf.Data, paths []string) map[string]uint64 {
	t.Helper()
	want := map[string]bool{}
	for _, p := range paths {
		s, _, _ := strings.Cut(p, ".")
		want[s] = true
	}
	types := map[string]*dwarf.StructType{}
	r := d.Reader()
	for len(types) < len(want) {
		e, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if e == nil {
			break
		}
		if e.Tag != dwarf.TagStructType {
			continue
		}
		name, _ := e.Val(dwarf.AttrName).(string)
		if !want[name] || types[name] != nil {
			r.SkipChildren()
			continue
		}
		if _, ok := e.Val(dwarf.AttrByteSize).(int64); !ok { // a declaration
			r.SkipChildren()
			continue
		}
		ty, err := d.Type(e.Offset)
		if err != nil {
			t.Fatal(err)
		}
		types[name] = ty.(*dwarf.StructType)
		r.SkipChildren()
	}
	out := map[string]uint64{}
	for _, p := range paths {
		parts := strings.Split(p, ".")
		st := types[parts[0]]
		var off uint64
		for i, member := range parts[1:] {
			if st == nil {
				break
			}
			var found *dwarf.StructField
			for _, f := range st.Field {
				if f.Name == member {
					found = f
				}
			}
			if found == nil {
				st = nil
				break
			}
			off += uint64(found.ByteOffset)
			if i == len(parts)-2 {
				out[p] = off
				break
			}
			ty := found.Type
			for {
				if td, ok := ty.(*dwarf.TypedefType); ok {
					ty = td.Type
					continue
				}
				break
			}
			st, _ = ty.(*dwarf.StructType)
		}
	}
	return out
}

// TestPyLayoutsMatchDWARF checks the per-version layout table (and what
// the 3.13 debug offsets say) against the DWARF of the real builds.
func TestPyLayoutsMatchDWARF(t *testing.T) {
	for _, version := range pythonVersions {
		t.Run(version, func(t *testing.T) {
			lib := libpython(t, version)
			f, err := os.Open(lib)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			ef, err := elf.NewFile(f)
			if err != nil {
				t.Fatal(err)
			}
			py, ok, err := findPython(ef, f, lib)
			if err != nil || !ok {
				t.Fatalf("findPython(%s) = %v, %v", lib, ok, err)
			}
			d, err := ef.DWARF()
			if err != nil {
				t.Skipf("%s has no DWARF: %v", lib, err)
			}
			l := py.layout
			if fmt.Sprintf("%d.%d", l.major, l.minor) != version {
				t.Fatalf("layout of %d.%d for %s", l.major, l.minor, version)
			}
			frame, code := "_PyInterpreterFrame", "PyCodeObject"
			checks := map[string]uint64{
				"pyruntimestate.interpreters.head": uint64(l.bpf.RuntimeInterpHead),
				"_ts.next":                         uint64(l.bpf.TstateNext),
				"_ts.thread_id":                    uint64(l.bpf.TstateThreadID),
				code + ".co_firstlineno":           l.codeFirstLine,
				code + ".co_filename":              l.codeFilename,
				code + ".co_name":                  l.codeName,
			}
			switch version {
			case "3.9", "3.10":
				checks["_is.tstate_head"] = uint64(l.bpf.InterpThreadsHead)
				checks["_ts.frame"] = uint64(l.bpf.TstateFrame)
				checks["_frame.f_back"] = uint64(l.bpf.FrameBack)
				checks["_frame.f_code"] = uint64(l.bpf.FrameCode)
				checks["_frame.f_lasti"] = uint64(l.bpf.FrameLasti)
			default:
				checks["_is.threads.head"] = uint64(l.bpf.InterpThreadsHead)
				checks[frame+".previous"] = uint64(l.bpf.FrameBack)
				checks[code+".co_qualname"] = l.codeQualname
				checks[code+".co_linetable"] = l.codeLineTable
				checks[code+".co_code_adaptive"] = uint64(l.bpf.CodeAdaptive)
			}
			switch version {
			case "3.9":
				checks[code+".co_lnotab"] = l.codeLineTable
			case "3.10":
				checks[code+".co_linetable"] = l.codeLineTable
			case "3.11":
				checks["_ts.cframe"] = uint64(l.bpf.TstateFrame)
				checks["_PyCFrame.current_frame"] = uint64(l.bpf.CFrameCurrent)
				checks[frame+".f_code"] = uint64(l.bpf.FrameCode)
				checks[frame+".prev_instr"] = uint64(l.bpf.FrameLasti)
				checks[frame+".is_entry"] = uint64(l.bpf.FrameEntry)
			case "3.12":
				checks["_ts.cframe"] = uint64(l.bpf.TstateFrame)
				checks["_PyCFrame.current_frame"] = uint64(l.bpf.CFrameCurrent)
				checks[frame+".f_code"] = uint64(l.bpf.FrameCode)
				checks[frame+".prev_instr"] = uint64(l.bpf.FrameLasti)
				checks[frame+".owner"] = uint64(l.bpf.FrameEntry)
			default:
				checks["_ts.current_frame"] = uint64(l.bpf.TstateFrame)
				checks[frame+".f_executable"] = uint64(l.bpf.FrameCode)
				checks[frame+".instr_ptr"] = uint64(l.bpf.FrameLasti)
				checks[frame+".owner"] = uint64(l.bpf.FrameEntry)
			}
			var paths []string
			for p := range checks {
				paths = append(paths, p)
			}
			got := structOffsets(t, d, paths)
			for p, want := range checks {
				off, ok := got[p]
				if !ok {
					t.Errorf("%s: not in the DWARF of %s", p, lib)
				} else if off != want {
					t.Errorf("%s: DWARF says %d, the layout %d", p, off, want)
				}
			}
		})
	}
}

// lineDump prints, for functions of some standard modules, the code
// object's first line, line table and the line of every instruction as
// the interpreter computes it.
const lineDump = `
import sys, json, dis, types
import argparse, json.decoder, textwrap, difflib
def codes(mod):
    stack = [v.__code__ for v in vars(mod).values() if isinstance(v, types.FunctionType)]
    for cls in [v for v in vars(mod).values() if isinstance(v, type)]:
        stack += [f.__code__ for f in vars(cls).values() if isinstance(f, types.FunctionType)]
    while stack:
        c = stack.pop()
        yield c
        stack += [k for k in c.co_consts if isinstance(k, types.CodeType)]
for mod in (argparse, json.decoder, textwrap, difflib):
    for c in codes(mod):
        n = len(c.co_code) // 2
        if sys.version_info >= (3, 11):
            lines = [p[0] or 0 for p in c.co_positions()]
            table = c.co_linetable
        elif sys.version_info >= (3, 10):
            lines = [0] * n
            for start, end, line in c.co_lines():
                for i in range(start // 2, end // 2):
                    lines[i] = line or 0
            table = c.co_linetable
        else:
            lines, starts, line = [], dict(dis.findlinestarts(c)), c.co_firstlineno
            for i in range(n):
                line = starts.get(2 * i, line)
                lines.append(line)
            table = c.co_lnotab
        print(json.dumps({"first": c.co_firstlineno, "table": table.hex(), "lines": lines}))
`

// TestLineTablesMatchCPython decodes the line tables of hundreds of real
// code objects of each version and compares every instruction's line with
// the interpreter's own answer.
func TestLineTablesMatchCPython(t *testing.T) {
	for _, version := range pythonVersions {
		t.Run(version, func(t *testing.T) {
			python := pyenvPython(t, version)
			out, err := exec.Command(python, "-c", lineDump).Output()
			if err != nil {
				t.Fatalf("%s: %v", python, err)
			}
			format := map[string]lineFormat{"3.9": lineLnotab, "3.10": lineTable310}[version]
			if version != "3.9" && version != "3.10" {
				format = lineLocations
			}
			codes, bad := 0, 0
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				var rec struct {
					First int64
					Table string
					Lines []int64
				}
				if err := json.Unmarshal([]byte(line), &rec); err != nil {
					t.Fatal(err)
				}
				tab, _ := hex.DecodeString(rec.Table)
				c := &pyCode{firstLine: rec.First, table: tab}
				codes++
				for i, want := range rec.Lines {
					lasti := uint32(i)
					if format == lineLnotab {
						lasti = uint32(2 * i) // 3.9's f_lasti counts bytes
					}
					if got := c.line(format, lasti); got != want {
						if bad++; bad <= 5 {
							t.Errorf("code object at line %d, instruction %d: line %d, CPython says %d", rec.First, i, got, want)
						}
						break
					}
				}
			}
			if codes < 100 {
				t.Errorf("only %d code objects", codes)
			}
			if bad > 0 {
				t.Errorf("%d of %d code objects decoded differently", bad, codes)
			}
		})
	}
}

func FuzzLineTables(f *testing.F) {
	f.Add([]byte{0x80, 0x00, 0xd8, 0x04}, int64(10), uint32(3))
	f.Add([]byte{2, 1, 4, 0x80, 6, 255}, int64(1), uint32(7))
	f.Fuzz(func(t *testing.T, tab []byte, first int64, lasti uint32) {
		c := &pyCode{firstLine: first, table: tab}
		for _, format := range []lineFormat{lineLnotab, lineTable310, lineLocations} {
			c.line(format, lasti)
		}
	})
}

func FuzzDebugOffsets(f *testing.F) {
	seed := make([]byte, debugOffsetsSize)
	copy(seed, "xdebugpy")
	binary.LittleEndian.PutUint64(seed[8:], 0x030d00f0)
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		if l, err := parseDebugOffsets(b); err == nil && l.minor != 13 {
			t.Errorf("accepted a layout of 3.%d", l.minor)
		}
	})
}

// fakeMem is process memory for the code object reader: a byte slice at
// a base address.
type fakeMem struct {
	base uint64
	b    []byte
}

func (m fakeMem) ReadAt(p []byte, off int64) (int, error) {
	if uint64(off) < m.base || uint64(off)-m.base+uint64(len(p)) > uint64(len(m.b)) {
		return 0, io.EOF
	}
	return copy(p, m.b[uint64(off)-m.base:]), nil
}

func FuzzReadPyCode(f *testing.F) {
	f.Add(make([]byte, 512), uint64(0x1000))
	f.Fuzz(func(t *testing.T, mem []byte, addr uint64) {
		for _, l := range pyLayouts {
			readPyCode(fakeMem{0x1000, mem}, &l, addr, 0)
		}
	})
}

// TestDistributionPython profiles Debian's own interpreter (stripped, no
// frame pointers, libpython linked in) running numpy, a C extension from a
// distribution package: numpy's C code shows under the Python function
// that called it.
func TestDistributionPython(t *testing.T) {
	requireRoot(t)
	const python = "/usr/bin/python3"
	if err := exec.Command(python, "-c", "import numpy").Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s with numpy is needed: apt-get install python3-numpy (%v)", python, err)
		}
		t.Skipf("%s with numpy is needed: %v", python, err)
	}
	script := filepath.Join(t.TempDir(), "numpyburn.py")
	if err := os.WriteFile(script, []byte(`
import numpy as np
a = np.random.default_rng(1).random(1 << 20)
def sort_with_numpy():
    for _ in range(20):
        np.sort(a, kind="quicksort")
print("ready", flush=True)
while True:
    sort_with_numpy()
`), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd, line := run(t, true, python, script)
	if line != "ready" {
		t.Fatalf("first line %q", line)
	}
	pid := cmd.Process.Pid
	prof := capture(t, Config{Hz: 99}, []int{pid})
	var total, matched int64
	for _, s := range samplesOf(prof, pid) {
		fs := sampleFrames(s)
		total += s.Value[0]
		i := indexName(fs, "sort_with_numpy")
		inNumpy := false
		for _, f := range fs[:max(i, 0)] {
			inNumpy = inNumpy || strings.Contains(s.Location[indexFrame(fs, f)].Mapping.File, "_multiarray_umath")
		}
		if i > 0 && inNumpy && nextPython(fs, i).name == "<module>" {
			matched += s.Value[0]
		}
	}
	t.Logf("%d samples, %d in numpy under sort_with_numpy < <module>\n%s", total, matched, topFrames(prof, pid))
	if total < minSamples || float64(matched) < 0.5*float64(total) {
		t.Errorf("numpy code under sort_with_numpy < <module> in %d of %d samples, want >= 50%%", matched, total)
	}
}

// TestMissWithUnchangedMaps: a reported miss (code outside every known
// mapping) with the same maps marks the process stale instead of
// describing it again, as a stray address would make it do at every
// sample; once the process maps new code it is described again.
func TestMissWithUnchangedMaps(t *testing.T) {
	requireRoot(t)
	python := pyenvPython(t, "3.11")
	cmd := exec.Command(python, "-c", `import sys; sys.stdin.readline(); import ctypes; print("loaded", flush=True); sys.stdin.readline()`)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := runCmdPipe(t, cmd)
	pid := uint32(cmd.Process.Pid)
	set := metrics.NewSet()
	s, err := cpu.Load(cpu.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tr := newTracker(s, "/proc", testLogger(t), set, nil)
	if added, err := s.Track(pid); !added || err != nil {
		t.Fatalf("Track: %v, %v", added, err)
	}
	described := func() uint64 { return set.GetOrCreateCounter("loupe_cpuprof_unwind_processes_total").Get() }
	tr.describe(pid, false)
	tr.describe(pid, true) // the same maps: stale
	if n := described(); n != 1 || !tr.procs[pid].stale {
		t.Fatalf("described %d times, stale %v; want once and stale", n, tr.procs[pid].stale)
	}
	in.Write([]byte("\n"))
	if line, err := out.ReadString('\n'); err != nil || line != "loaded\n" {
		t.Fatalf("python said %q, %v", line, err)
	}
	tr.describe(pid, true) // ctypes mapped new code
	if n := described(); n != 2 || tr.procs[pid].stale {
		t.Errorf("after new code was mapped: described %d times, stale %v; want twice, not stale", n, tr.procs[pid].stale)
	}
}
