package cpuprof

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/loupe-dev/loupe/bpf/cpu"
)

// lookupRule is what the BPF unwinder does: the last row at or before pc.
func lookupRule(rows []cpu.Row, pc uint32) (cpu.Rule, bool) {
	i := sort.Search(len(rows), func(i int) bool { return rows[i].PC > pc })
	if i == 0 {
		return cpu.Rule{}, false
	}
	return cpu.DecodeRule(rows[i-1].Rule), true
}

// readelfRow is one row of `readelf -wF` (the decoded CFI table).
type readelfRow struct {
	loc           uint64
	cfa, rbp, ra  string
	fdeStart, end uint64
}

// readelfTable runs readelf -wF on path and returns every row of every FDE.
func readelfTable(t *testing.T, path string) []readelfRow {
	t.Helper()
	// readelf exits 1 when it finds no separate debug file; the table
	// is complete all the same.
	out, err := exec.Command(requireTool(t, "readelf"), "-wF", path).Output()
	if len(out) == 0 {
		t.Fatalf("readelf -wF %s: %v", path, err)
	}
	var rows []readelfRow
	var cols []string
	var start, end uint64
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 4 && f[3] == "FDE":
			cols = nil
			for _, x := range f {
				if rng, ok := strings.CutPrefix(x, "pc="); ok {
					a, b, _ := strings.Cut(rng, "..")
					start, _ = strconv.ParseUint(a, 16, 64)
					end, _ = strconv.ParseUint(b, 16, 64)
				}
			}
		case len(f) >= 4 && f[3] == "CIE":
			cols, start, end = nil, 0, 0
		case len(f) > 1 && f[0] == "LOC":
			cols = f
		case len(f) == len(cols) && len(cols) > 0 && end > 0 && len(f[0]) == 16:
			loc, err := strconv.ParseUint(f[0], 16, 64)
			if err != nil {
				continue
			}
			r := readelfRow{loc: loc, cfa: f[1], rbp: "u", ra: "u", fdeStart: start, end: end}
			for i, c := range cols {
				switch c {
				case "rbp":
					r.rbp = f[i]
				case "ra":
					r.ra = f[i]
				}
			}
			rows = append(rows, r)
		}
	}
	return rows
}

// TestUnwindRowsMatchReadelf compiles the CFI of real objects (the C
// library, the dynamic loader, a C++ program with exceptions) and checks
// every row against binutils' own decoding.
func TestUnwindRowsMatchReadelf(t *testing.T) {
	for _, path := range []string{"/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2", testProgram(t, "cppdeep-nofp")} {
		t.Run(path[strings.LastIndexByte(path, '/')+1:], func(t *testing.T) {
			ef, err := elf.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer ef.Close()
			rows, err := unwindRows(ef)
			if err != nil {
				t.Fatal(err)
			}
			want := readelfTable(t, path)
			if len(want) < 10 || len(rows) < 4 {
				t.Fatalf("%d readelf rows, %d compiled rows", len(want), len(rows))
			}
			bad := 0
			for _, w := range want {
				got, ok := lookupRule(rows, uint32(w.loc))
				if msg := ruleMismatch(got, ok, w); msg != "" {
					if bad++; bad <= 10 {
						t.Errorf("%#x (FDE %#x..%#x): %s", w.loc, w.fdeStart, w.end, msg)
					}
				}
			}
			if bad > 0 {
				t.Errorf("%d of %d rows differ", bad, len(want))
			}
			t.Logf("%d readelf rows, %d compiled rows", len(want), len(rows))
		})
	}
}

func ruleMismatch(got cpu.Rule, ok bool, w readelfRow) string {
	if !ok {
		return "no row"
	}
	if w.ra == "u" {
		if got.CFA != cpu.CFAEnd {
			return fmt.Sprintf("ra undefined, got %+v", got)
		}
		return ""
	}
	if w.ra == "exp" && w.cfa == "exp" && got.CFA == cpu.CFASignal {
		return "" // a signal trampoline (augmentation "S")
	}
	if w.ra != "c-8" {
		if got.CFA != cpu.CFANone {
			return fmt.Sprintf("ra %s, got %+v", w.ra, got)
		}
		return ""
	}
	var kind cpu.CFAKind
	var off int64
	switch {
	case strings.HasPrefix(w.cfa, "rsp+"):
		kind = cpu.CFARSP
		off, _ = strconv.ParseInt(w.cfa[4:], 10, 64)
	case strings.HasPrefix(w.cfa, "rbp+"):
		kind = cpu.CFARBP
		off, _ = strconv.ParseInt(w.cfa[4:], 10, 64)
	case w.cfa == "exp":
		if got.CFA != cpu.CFAPLT && got.CFA != cpu.CFANone {
			return fmt.Sprintf("cfa %s, got %+v", w.cfa, got)
		}
		return ""
	default:
		if got.CFA != cpu.CFANone {
			return fmt.Sprintf("cfa %s, got %+v", w.cfa, got)
		}
		return ""
	}
	if got.CFA != kind || int64(got.CFAOffset) != off {
		return fmt.Sprintf("cfa %s, got %+v", w.cfa, got)
	}
	if rbp, ok := strings.CutPrefix(w.rbp, "c"); ok {
		n, _ := strconv.ParseInt(rbp, 10, 64)
		if !got.FPSaved || int64(got.FPOffset) != n {
			return fmt.Sprintf("rbp %s, got %+v", w.rbp, got)
		}
	} else if got.FPSaved {
		return fmt.Sprintf("rbp %s, got %+v", w.rbp, got)
	}
	return ""
}

func TestRuleEncoding(t *testing.T) {
	for _, r := range []cpu.Rule{
		{CFA: cpu.CFARSP, CFAOffset: 8},
		{CFA: cpu.CFARSP, CFAOffset: 131071, FPSaved: true, FPOffset: -4096},
		{CFA: cpu.CFARBP, CFAOffset: 16, FPSaved: true, FPOffset: -16},
		{CFA: cpu.CFARBP, CFAOffset: -131072, FPSaved: true, FPOffset: 4088},
		{CFA: cpu.CFAPLT, CFAOffset: 11},
		{CFA: cpu.CFASignal},
		{CFA: cpu.CFAEnd},
	} {
		v, err := r.Encode()
		if err != nil {
			t.Errorf("%+v: %v", r, err)
			continue
		}
		if got := cpu.DecodeRule(v); got != r {
			t.Errorf("%+v encoded as %#x decodes to %+v", r, v, got)
		}
	}
	for _, r := range []cpu.Rule{
		{CFA: cpu.CFARSP, CFAOffset: 1 << 17},
		{CFA: cpu.CFARSP, FPSaved: true, FPOffset: 12},
		{CFA: cpu.CFARSP, FPSaved: true, FPOffset: 4096},
		{CFA: 9},
	} {
		if _, err := r.Encode(); err == nil {
			t.Errorf("%+v encoded without error", r)
		}
	}
}

// ehFrameELF wraps raw .eh_frame bytes in a minimal x86-64 ELF file.
func ehFrameELF(eh []byte, addr uint64) []byte { return sectionELF(".eh_frame", eh, addr) }

// sectionELF wraps one section's bytes in a minimal x86-64 ELF file.
func sectionELF(name string, eh []byte, addr uint64) []byte {
	shstr := []byte("\x00" + name + "\x00.shstrtab\x00")
	var b bytes.Buffer
	hdr := elf.Header64{
		Ident:     [16]byte{0x7f, 'E', 'L', 'F', 2, 1, 1},
		Type:      uint16(elf.ET_DYN),
		Machine:   uint16(elf.EM_X86_64),
		Version:   1,
		Shoff:     64 + uint64(len(eh)) + uint64(len(shstr)),
		Ehsize:    64,
		Shentsize: 64,
		Shnum:     3,
		Shstrndx:  2,
	}
	binary.Write(&b, binary.LittleEndian, hdr)
	b.Write(eh)
	b.Write(shstr)
	binary.Write(&b, binary.LittleEndian, elf.Section64{})
	binary.Write(&b, binary.LittleEndian, elf.Section64{Name: 1, Type: uint32(elf.SHT_PROGBITS), Flags: uint64(elf.SHF_ALLOC), Addr: addr, Off: 64, Size: uint64(len(eh))})
	binary.Write(&b, binary.LittleEndian, elf.Section64{Name: uint32(len(name) + 2), Type: uint32(elf.SHT_STRTAB), Off: 64 + uint64(len(eh)), Size: uint64(len(shstr))})
	return b.Bytes()
}

// FuzzUnwindRows feeds arbitrary .eh_frame contents (seeded with a real
// one) to the compiler: it must not panic, and its rows must be sorted.
func FuzzUnwindRows(f *testing.F) {
	if ef, err := elf.Open("/lib64/ld-linux-x86-64.so.2"); err == nil {
		if sec := ef.Section(".eh_frame"); sec != nil {
			if data, err := sec.Data(); err == nil {
				f.Add(data[:min(len(data), 4096)], sec.Addr)
			}
		}
		ef.Close()
	}
	f.Add([]byte{0x14, 0, 0, 0, 0, 0, 0, 0, 1, 'z', 'R', 0, 1, 0x78, 0x10, 1, 0x1b, 0x0c, 7, 8, 0x90, 1, 0, 0}, uint64(0x1000))
	f.Fuzz(func(t *testing.T, eh []byte, addr uint64) {
		ef, err := elf.NewFile(bytes.NewReader(ehFrameELF(eh, addr)))
		if err != nil {
			t.Skip()
		}
		rows, _ := unwindRows(ef)
		for i := 1; i < len(rows); i++ {
			if rows[i].PC <= rows[i-1].PC {
				t.Fatalf("rows not strictly sorted at %d: %#x after %#x", i, rows[i].PC, rows[i-1].PC)
			}
		}
	})
}
