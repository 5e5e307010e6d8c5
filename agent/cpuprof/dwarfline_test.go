package cpuprof

import (
	"bytes"
	"debug/dwarf"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// dwarfOracle maps every row address of an object's line table to its line
// with the standard library's decoder (which needs the whole .debug_info,
// fine in a test).
func dwarfOracle(t *testing.T, ef *elf.File) map[uint64]srcLine {
	t.Helper()
	d, err := ef.DWARF()
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]srcLine{}
	r := d.Reader()
	for {
		e, err := r.Next()
		if err != nil || e == nil {
			break
		}
		if e.Tag != dwarf.TagCompileUnit {
			r.SkipChildren()
			continue
		}
		lr, err := d.LineReader(e)
		if err != nil || lr == nil {
			continue
		}
		var le dwarf.LineEntry
		var prev *dwarf.LineEntry
		for {
			if err := lr.Next(&le); err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
				break
			}
			// The last row at an address wins, as lookup answers.
			if prev != nil && !prev.EndSequence && prev.Address < le.Address {
				out[prev.Address] = srcLine{prev.File.Name, int64(prev.Line)}
			}
			cp := le
			prev = &cp
		}
	}
	return out
}

// TestLineTableMatchesDebugDWARF decodes the line programs of real objects
// (a C program in DWARF 5 and 4, and a CPython library) and compares every
// row address with debug/dwarf's answer.
func TestLineTableMatchesDebugDWARF(t *testing.T) {
	paths := []string{testProgram(t, "cdeep-g"), testProgram(t, "cdeep-dwarf4")}
	if home, err := os.UserHomeDir(); err == nil {
		if libs, _ := filepath.Glob(filepath.Join(home, ".pyenv/versions/3.11.*/lib/libpython3.11.so.1.0")); len(libs) > 0 {
			paths = append(paths, libs[0])
		}
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			ef, err := elf.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer ef.Close()
			lt, err := newLineTable(ef)
			if err != nil || lt == nil {
				t.Fatalf("newLineTable: %v, %v", lt, err)
			}
			want := dwarfOracle(t, ef)
			if len(want) < 10 {
				t.Fatalf("only %d rows in the oracle", len(want))
			}
			addrs := make([]uint64, 0, len(want))
			for a := range want {
				addrs = append(addrs, a)
			}
			slices.Sort(addrs)
			bad := 0
			for _, addr := range addrs {
				w := want[addr]
				got, ok := lt.lookup(addr)
				// DWARF 4 names files relative to the unit's directory,
				// which only .debug_info knows.
				if !ok || got.line != w.line || !strings.HasSuffix(w.file, got.file) {
					if bad++; bad <= 5 {
						t.Errorf("%#x: %v %v, want %v", addr, got, ok, w)
					}
				}
			}
			if bad > 0 {
				t.Errorf("%d of %d addresses differ", bad, len(want))
			}
		})
	}
}

// TestDebugInfoFile symbolizes a stripped binary whose DWARF lives in a
// debuginfo file found by build id, as distributions ship them.
func TestDebugInfoFile(t *testing.T) {
	objcopy := requireTool(t, "objcopy")
	full := testProgram(t, "cdeep-g")
	dir := t.TempDir()
	stripped := filepath.Join(dir, "cdeep-stripped")
	if b, err := exec.Command(objcopy, "--strip-debug", full, stripped).CombinedOutput(); err != nil {
		t.Fatalf("objcopy --strip-debug: %v\n%s", err, b)
	}
	ef, err := elf.Open(full)
	if err != nil {
		t.Fatal(err)
	}
	id := buildID(ef)
	ef.Close()
	debugDir := filepath.Join(dir, "debug")
	debug := filepath.Join(debugDir, ".build-id", id[:2], id[2:]+".debug")
	os.MkdirAll(filepath.Dir(debug), 0o755)
	if b, err := exec.Command(objcopy, "--only-keep-debug", full, debug).CombinedOutput(); err != nil {
		t.Fatalf("objcopy --only-keep-debug: %v\n%s", err, b)
	}
	f, err := os.Open(stripped)
	if err != nil {
		t.Fatal(err)
	}
	o, err := openObject(f, stripped)
	if err != nil {
		t.Fatal(err)
	}
	defer o.close()
	var inner uint64
	for _, s := range o.syms {
		if name, _ := o.symbolize(s.addr); name == "deep_inner" {
			inner = s.addr
		}
	}
	if inner == 0 {
		t.Fatal("no deep_inner in the stripped binary's symbols")
	}
	l, ok := o.sourceLine(inner+8, []string{filepath.Join(dir, "nowhere"), debugDir})
	if !ok || filepath.Base(l.file) != "cdeep.c" || l.line < 14 || l.line > 20 {
		t.Errorf("deep_inner+8: %v %v, want a line of deep_inner in cdeep.c", l, ok)
	}
}

func FuzzLineTable(f *testing.F) {
	f.Add([]byte{0x20, 0, 0, 0, 5, 0, 8, 0, 0x10, 0, 0, 0, 1, 1, 1, 0xfb, 14, 13, 0, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0}, uint64(0x1234))
	f.Fuzz(func(t *testing.T, line []byte, pc uint64) {
		ef, err := elf.NewFile(bytes.NewReader(sectionELF(".debug_line", line, 0)))
		if err != nil {
			t.Skip()
		}
		lt, err := newLineTable(ef)
		if err != nil || lt == nil {
			return
		}
		lt.lookup(pc)
	})
}
