package cpuprof

import (
	"bytes"
	"debug/elf"
	"debug/gosym"
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseMapsLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		want mapping
		err  bool
	}{
		{
			line: "55d4c3a00000-55d4c3a22000 r-xp 00002000 08:01 1234                       /usr/bin/foo",
			want: mapping{start: 0x55d4c3a00000, end: 0x55d4c3a22000, offset: 0x2000, exec: true, path: "/usr/bin/foo"},
		},
		{
			line: "7f00-8f00 rw-p 00000000 00:00 0 ",
			want: mapping{start: 0x7f00, end: 0x8f00},
		},
		{
			line: "7f00-8f00 r-xp 00000000 00:00 0",
			want: mapping{start: 0x7f00, end: 0x8f00, exec: true},
		},
		{
			line: "1000-2000 r-xp 00000000 fd:00 77 /opt/my app/lib x.so (deleted)",
			want: mapping{start: 0x1000, end: 0x2000, exec: true, path: "/opt/my app/lib x.so (deleted)"},
		},
		{line: "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]",
			want: mapping{start: 0xffffffffff600000, end: 0xffffffffff601000, exec: true, path: "[vsyscall]"}},
		{line: "zz-2000 r-xp 0 0 0 /x", err: true},
		{line: "2000-1000 r-xp 0 0 0 /x", err: true},
		{line: "1000-2000 r-xp", err: true},
		{line: "1000 r-xp 0 0 0 /x", err: true},
		{line: "1000-2000 r 0 0 0 /x", err: true},
	} {
		got, err := parseMapsLine(tc.line)
		if (err != nil) != tc.err || (!tc.err && got != tc.want) {
			t.Errorf("parseMapsLine(%q) = %+v, %v; want %+v, error %v", tc.line, got, err, tc.want, tc.err)
		}
	}
}

func TestFindMapping(t *testing.T) {
	maps, err := parseMaps("1000-2000 r-xp 0 0:0 0 /a\n2000-3000 rw-p 0 0:0 0 /a\n5000-6000 r-xp 0 0:0 0 \n")
	if err != nil {
		t.Fatal(err)
	}
	if len(maps) != 2 {
		t.Fatalf("parseMaps kept %d mappings, want the 2 executable ones", len(maps))
	}
	for _, tc := range []struct {
		addr uint64
		want int
		ok   bool
	}{{0xfff, 0, false}, {0x1000, 0, true}, {0x1fff, 0, true}, {0x2000, 0, false}, {0x5abc, 1, true}, {0x6000, 0, false}} {
		got, ok := findMapping(maps, tc.addr)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("findMapping(%#x) = %d, %v; want %d, %v", tc.addr, got, ok, tc.want, tc.ok)
		}
	}
	if !maps[1].anonymous() || maps[0].anonymous() {
		t.Error("anonymous() wrong")
	}
}

func TestPerfMap(t *testing.T) {
	syms, bad := parsePerfMap("7f00 10 py::f:/a.py\n0x7f10 0x10 py::g:/b.py\nbroken\n7f20 0 zero\n7f08 4 inner name with spaces\n")
	if bad != 2 || len(syms) != 3 {
		t.Fatalf("parsed %d entries, %d bad; want 3 and 2: %+v", len(syms), bad, syms)
	}
	for _, tc := range []struct {
		addr uint64
		want string
	}{{0x7eff, ""}, {0x7f00, "py::f:/a.py"}, {0x7f09, "inner name with spaces"}, {0x7f0c, "py::f:/a.py"}, {0x7f1f, "py::g:/b.py"}, {0x7f20, ""}} {
		got, _ := lookupPerfMap(syms, tc.addr)
		if got != tc.want {
			t.Errorf("lookupPerfMap(%#x) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}

func TestKallsyms(t *testing.T) {
	text := "ffffffff81000000 T _stext\nffffffff81000100 t do_thing\nffffffff82000000 D some_data\nffffffffc0000000 t mod_fn\t[nvidia]\n"
	if n := sizeKallsyms(strings.NewReader(text)); n != (kallsymsSize{3, len("_stext") + len("do_thing") + len("mod_fn")}) {
		t.Errorf("size %+v", n)
	}
	syms, err := parseKallsyms(strings.NewReader(text), sizeKallsyms(strings.NewReader(text)))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr         uint64
		name, module string
	}{{0xffffffff81000050, "_stext", ""}, {0xffffffff81000100, "do_thing", ""}, {0xffffffffc0000010, "mod_fn", "nvidia"}} {
		got, ok := syms.lookup(tc.addr)
		if !ok || got.name != tc.name || got.module != tc.module {
			t.Errorf("lookupKsym(%#x) = %+v, want %s [%s]", tc.addr, got, tc.name, tc.module)
		}
	}
	if _, ok := syms.lookup(0x1000); ok {
		t.Error("address below the kernel named")
	}
	if _, err := parseKallsyms(strings.NewReader("0000000000000000 T _stext\n0000000000000000 t x\n"), kallsymsSize{}); err == nil || !strings.Contains(err.Error(), "kptr_restrict") {
		t.Errorf("hidden addresses: got %v, want an error naming kptr_restrict", err)
	}
	if _, err := parseKallsyms(strings.NewReader("garbage\n"), kallsymsSize{}); err == nil {
		t.Error("malformed kallsyms accepted")
	}
}

func TestDemangleName(t *testing.T) {
	for in, want := range map[string]string{
		"_ZN5loupe6Burner4burnEm":            "loupe::Burner::burn",
		"_ZNSt6vectorIiSaIiEE9push_backERKi": "std::vector<int, std::allocator<int> >::push_back",
		"burn_c":                             "burn_c",
		"_Znotmangled":                       "_Znotmangled",
	} {
		if got := demangleName(in); got != want {
			t.Errorf("demangleName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReachesRoot(t *testing.T) {
	for _, tc := range []struct {
		frames []frame
		want   bool
	}{
		{[]frame{{Function: "burn"}, {Function: "main"}, {Object: "/usr/lib/x86_64-linux-gnu/libc.so.6"}}, true},
		{[]frame{{Function: "main.work"}, {Function: "runtime.goexit"}}, true},
		{[]frame{{Function: "f"}, {Function: "start_thread"}, {Object: unknownObject}}, true},
		{[]frame{{Function: "burn", Object: "/app/bin"}}, false},
		{[]frame{{Function: "_PyEval_EvalFrameDefault", Object: "/usr/lib/libpython3.12.so"}, {Object: unknownObject}}, false},
		{nil, false},
	} {
		if got := reachesRoot(tc.frames); got != tc.want {
			t.Errorf("reachesRoot(%+v) = %v, want %v", tc.frames, got, tc.want)
		}
	}
}

func TestConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want Config
		err  bool
	}{
		{cfg: Config{}, want: DefaultConfig()},
		{cfg: Config{Hz: 99}, want: Config{Hz: 99, DrainInterval: time.Second}},
		{cfg: Config{Hz: 1000}, err: true},
		{cfg: Config{Hz: -1}, err: true},
		{cfg: Config{DrainInterval: time.Millisecond}, err: true},
		{cfg: Config{UnwindMappings: 4}, err: true},
		{cfg: Config{UnwindMappings: 1 << 23}, err: true},
	} {
		got := tc.cfg
		err := got.validate()
		if (err != nil) != tc.err || (!tc.err && (got.Hz != tc.want.Hz || got.DrainInterval != tc.want.DrainInterval ||
			got.UnwindMappings != DefaultConfig().UnwindMappings)) {
			t.Errorf("validate(%+v) = %+v, %v", tc.cfg, got, err)
		}
	}
}

func TestStackEntries(t *testing.T) {
	for _, tc := range []struct {
		hz, cpus int
		want     uint32
	}{{19, 2, 1024}, {99, 2, 1024}, {99, 8, 4096}, {999, 256, 16384}} {
		if got := stackEntries(tc.hz, tc.cpus, time.Second); got != tc.want {
			t.Errorf("stackEntries(%d Hz, %d CPUs) = %d, want %d", tc.hz, tc.cpus, got, tc.want)
		}
	}
}

//go:noinline
func symbolizeMe() {}

// TestSymbolizeSelf resolves this test binary's own code through
// /proc/self/maps and the ELF symbol table, without eBPF.
func TestSymbolizeSelf(t *testing.T) {
	s := newSymbolizer("/proc", slog.New(slog.DiscardHandler))
	defer s.close()
	s.beginDrain()
	pc := uint64(reflect.ValueOf(symbolizeMe).Pointer())
	f := s.user(uint32(os.Getpid()), pc, true)
	if f.Function != "github.com/loupe-dev/loupe/agent/cpuprof.symbolizeMe" || f.BuildID == "" {
		t.Errorf("symbolized %#x as %+v", pc, f)
	}
	if f := s.user(uint32(os.Getpid()), 1, true); f.Object != unknownObject || f.Function != "" {
		t.Errorf("unmapped address named %+v", f)
	}
}

func TestBuildIDAndSymbolsOfCBinary(t *testing.T) {
	path := testProgram(t, "cppburn")
	ef, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	syms, _ := ef.Symbols()
	i := slices.IndexFunc(syms, func(s elf.Symbol) bool { return s.Name == "_ZN5loupe6Burner4burnEm" })
	if i < 0 {
		t.Fatal("test program lacks its burn symbol")
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	o, err := openObject(f, path)
	if err != nil {
		t.Fatal(err)
	}
	defer o.close()
	if len(o.buildID) != 40 {
		t.Errorf("build id %q, want 20 bytes in hex", o.buildID)
	}
	fn, ok := o.symbolize(syms[i].Value + 3)
	if !ok || fn != "loupe::Burner::burn" {
		t.Errorf("symbolize(burn+3) = %q, %v", fn, ok)
	}
	if fn, ok := o.symbolize(syms[i].Value + syms[i].Size + 0x100000); ok {
		t.Errorf("address past every function named %q", fn)
	}
}

type nopCloser struct{ io.ReaderAt }

func (nopCloser) Close() error { return nil }

func FuzzOpenObject(f *testing.F) {
	if self, err := os.Executable(); err == nil {
		if b, err := os.ReadFile(self); err == nil {
			f.Add(b[:min(len(b), 1<<16)])
		}
	}
	if b, err := os.ReadFile("/bin/true"); err == nil {
		f.Add(b)
	}
	// A stripped Go binary, for the .gopclntab reader.
	if b, err := os.ReadFile(testProgram(f, "goburn-stripped")); err == nil {
		f.Add(b)
	}
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := openObject(nopCloser{bytes.NewReader(data)}, "fuzz")
		if err != nil {
			return
		}
		for _, pc := range []uint64{0, 0x1000, 0x401000, ^uint64(0)} {
			o.symbolize(pc)
			o.vaddr(pc)
		}
	})
}

func FuzzParseMaps(f *testing.F) {
	f.Add("55d4c3a00000-55d4c3a22000 r-xp 00002000 08:01 1234 /usr/bin/foo\n7f00-8f00 rw-p 00000000 00:00 0\n")
	f.Add("1-0 r-xp 0 0 0\n")
	f.Fuzz(func(t *testing.T, text string) {
		maps, err := parseMaps(text)
		if err != nil {
			return
		}
		for _, m := range maps {
			if !m.exec || m.end < m.start {
				t.Errorf("bad mapping %+v", m)
			}
		}
	})
}

func FuzzParsePerfMap(f *testing.F) {
	f.Add("7f00 10 py::f:/a.py\n0x7f10 0x10 g\n")
	f.Add("ffffffffffffffff 2 wrap\n")
	f.Fuzz(func(t *testing.T, text string) {
		syms, _ := parsePerfMap(text)
		for _, s := range syms {
			if name, ok := lookupPerfMap(syms, s.start); !ok || name == "" {
				t.Errorf("entry %+v not found by its own start", s)
			}
		}
	})
}

func FuzzParseKallsyms(f *testing.F) {
	f.Add("ffffffff81000000 T _stext\nffffffffc0000000 t mod_fn\t[nvidia]\n")
	f.Add("0 T x\n")
	f.Fuzz(func(t *testing.T, text string) {
		syms, err := parseKallsyms(strings.NewReader(text), sizeKallsyms(strings.NewReader(text)))
		if err != nil {
			return
		}
		for i, e := range syms.syms {
			if i > 0 && e.addr < syms.syms[i-1].addr {
				t.Fatal("kallsyms not sorted")
			}
			if got, ok := syms.lookup(e.addr); !ok || got.addr != e.addr {
				t.Errorf("lookup(%#x) = %+v", e.addr, got)
			}
		}
	})
}

func TestParseNSpid(t *testing.T) {
	for _, tc := range []struct {
		status string
		want   uint64
	}{
		{"Name:\tpython\nNSpid:\t4242\t17\nNSgid:\t1\n", 17},
		{"NSpid:\t4242\n", 4242},
		{"Name:\tx\n", 99},
		{"NSpid:\t\n", 99},
		{"NSpid:\tjunk\n", 99},
	} {
		if got := parseNSpid(tc.status, 99); got != tc.want {
			t.Errorf("parseNSpid(%q) = %d, want %d", tc.status, got, tc.want)
		}
	}
}

func FuzzParseNSpid(f *testing.F) {
	f.Add("NSpid:\t4242\t17\n")
	f.Fuzz(func(t *testing.T, status string) {
		if parseNSpid(status, 1) == 0 {
			t.Error("pid 0")
		}
	})
}

// TestGoFuncsMatchGosym checks the compact pclntab reader against
// debug/gosym on every function of a stripped Go binary.
func TestGoFuncsMatchGosym(t *testing.T) {
	path := testProgram(t, "goburn-stripped")
	ef, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	if _, err := ef.Symbols(); err == nil {
		t.Fatal("test binary is not stripped")
	}
	data, err := ef.Section(".gopclntab").Data()
	if err != nil {
		t.Fatal(err)
	}
	tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, ef.Section(".text").Addr))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	o, err := openObject(f, path)
	if err != nil {
		t.Fatal(err)
	}
	defer o.close()
	if o.gofuncs == nil {
		t.Fatal("no Go function table read from .gopclntab")
	}
	found := false
	for _, fn := range tab.Funcs {
		for _, pc := range []uint64{fn.Entry, fn.End - 1} {
			if got, ok := o.symbolize(pc); !ok || got != fn.Name {
				t.Fatalf("symbolize(%#x) = %q, %v; debug/gosym says %s", pc, got, ok, fn.Name)
			}
		}
		found = found || fn.Name == "main.burnGo"
	}
	if !found || len(tab.Funcs) < 100 {
		t.Errorf("checked %d functions, main.burnGo among them: %v", len(tab.Funcs), found)
	}
	if got, ok := o.symbolize(tab.Funcs[len(tab.Funcs)-1].End + 0x10000); ok {
		t.Errorf("address past the Go text named %q", got)
	}
}

// makePclntab builds a Go 1.20 .gopclntab holding functions with the
// given names, each 0x10 bytes long from textStart.
func makePclntab(textStart uint64, names []string) []byte {
	le := binary.LittleEndian
	var nametab []byte
	nameOffs := make([]uint32, len(names))
	for i, n := range names {
		nameOffs[i] = uint32(len(nametab))
		nametab = append(append(nametab, n...), 0)
	}
	const hdr = 8 + 8*8
	nfunc := len(names)
	funcsAt := hdr + len(nametab)
	funcRecs := 8*nfunc + 4 // functab, then the _func records
	b := make([]byte, funcsAt+funcRecs+8*nfunc)
	le.PutUint32(b, go120magic)
	b[6], b[7] = 1, 8
	for i, w := range []uint64{uint64(nfunc), 0, textStart, hdr, 0, 0, 0, uint64(funcsAt)} {
		le.PutUint64(b[8+8*i:], w)
	}
	copy(b[hdr:], nametab)
	for i := range nfunc {
		rec := funcRecs + 8*i
		le.PutUint32(b[funcsAt+8*i:], uint32(0x10*i))
		le.PutUint32(b[funcsAt+8*i+4:], uint32(rec))
		le.PutUint32(b[funcsAt+rec:], uint32(0x10*i))
		le.PutUint32(b[funcsAt+rec+4:], nameOffs[i])
	}
	le.PutUint32(b[funcsAt+8*nfunc:], uint32(0x10*nfunc))
	return b
}

func pclntabSection(data []byte) *elf.Section {
	return &elf.Section{SectionHeader: elf.SectionHeader{Name: ".gopclntab", Size: uint64(len(data))}}
}

func TestGoFuncs(t *testing.T) {
	data := makePclntab(0x401000, []string{"runtime.main", "main.main", "main.burnGo"})
	g, err := openGoFuncs(bytes.NewReader(data), pclntabSection(data), binary.LittleEndian, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		pc   uint64
		want string
	}{{0x400fff, ""}, {0x401000, "runtime.main"}, {0x40100f, "runtime.main"}, {0x401010, "main.main"}, {0x40102f, "main.burnGo"}, {0x401030, ""}} {
		got := ""
		if i, ok := g.lookup(tc.pc); ok {
			if got, err = g.name(i); err != nil {
				t.Fatal(err)
			}
		}
		if got != tc.want {
			t.Errorf("pc %#x: %q, want %q", tc.pc, got, tc.want)
		}
	}
	bad := append([]byte(nil), data...)
	binary.LittleEndian.PutUint32(bad, 0xfffffffa) // Go 1.16
	if _, err := openGoFuncs(bytes.NewReader(bad), pclntabSection(bad), binary.LittleEndian, 0); err == nil || !strings.Contains(err.Error(), "1.18") {
		t.Errorf("Go 1.16 table: %v", err)
	}
}

func FuzzGoFuncs(f *testing.F) {
	f.Add(makePclntab(0x401000, []string{"a", "main.b"}), uint64(0x401008))
	f.Add(makePclntab(0, []string{"x"}), uint64(0x1000))
	f.Fuzz(func(t *testing.T, data []byte, pc uint64) {
		g, err := openGoFuncs(bytes.NewReader(data), pclntabSection(data), binary.LittleEndian, 0x1000)
		if err != nil {
			return
		}
		if i, ok := g.lookup(pc); ok {
			g.name(i)
		}
	})
}
