package cpu

import (
	"errors"
	"math/rand/v2"
	"os"
	"testing"
)

func TestPool(t *testing.T) {
	p := newPool(100)
	rnd := rand.New(rand.NewPCG(1, 2))
	owner := make([]int, 100) // which live segment holds each entry, -1 free
	for i := range owner {
		owner[i] = -1
	}
	var live []segment
	for step := 0; step < 5000; step++ {
		if len(live) > 0 && rnd.IntN(2) == 0 {
			i := rnd.IntN(len(live))
			s := live[i]
			p.free(s)
			for j := s.first; j < s.first+s.count; j++ {
				owner[j] = -1
			}
			live = append(live[:i], live[i+1:]...)
			continue
		}
		n := uint32(1 + rnd.IntN(20))
		s, ok := p.alloc(n)
		if !ok {
			free := 0
			for _, o := range owner {
				if o < 0 {
					free++
				}
			}
			if uint32(free) >= n && len(p.spans) == 1 {
				t.Fatalf("step %d: %d free in one span, alloc(%d) failed", step, free, n)
			}
			continue
		}
		for j := s.first; j < s.first+s.count; j++ {
			if owner[j] >= 0 {
				t.Fatalf("step %d: entry %d handed out twice", step, j)
			}
			owner[j] = step
		}
		live = append(live, s)
	}
	for _, s := range live {
		p.free(s)
	}
	if p.used != 0 || len(p.spans) != 1 || p.spans[0] != (segment{0, 100}) {
		t.Errorf("after freeing everything: used %d, spans %v", p.used, p.spans)
	}
}

func TestUnwindMaps(t *testing.T) {
	requireRoot(t)
	s, err := Load(Options{UnwindRows: 16, UnwindTables: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rule, _ := Rule{CFA: CFARSP, CFAOffset: 8}.Encode()
	rows := []Row{{0x1000, rule}, {0x1010, rule}}
	a, err := s.LoadTable(rows)
	if err != nil {
		t.Fatal(err)
	}
	// What the program reads is what was written through the mapping.
	for i, want := range rows {
		var got SamplerRow
		if err := s.objs.Rows.Lookup(a.First+uint32(i), &got); err != nil || got.Pc != want.PC || got.Rule != want.Rule {
			t.Errorf("row %d: %+v, %v; want %+v", i, got, err, want)
		}
	}
	if _, err := s.LoadTable(make([]Row, 15)); !errors.Is(err, ErrFull) {
		t.Errorf("loading 15 rows into 14 free: %v, want ErrFull", err)
	}
	b, err := s.LoadTable(rows)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadTable(rows); !errors.Is(err, ErrFull) {
		t.Errorf("a third table of two: %v, want ErrFull", err)
	}
	if u := s.Usage(); u.Rows != 4 || u.Tables != 2 {
		t.Errorf("usage %+v, want 4 rows in 2 tables", u)
	}
	if err := s.FreeTable(a); err != nil {
		t.Fatal(err)
	}
	if err := s.FreeTable(b); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadTable(make([]Row, 16)); err != nil {
		t.Errorf("loading 16 rows after freeing all: %v", err)
	}
	// A process the program never reported cannot be described.
	err = s.SetProcess(uint32(os.Getpid()), Process{Mappings: []Mapping{{Start: 0x1000, End: 0x2000, Table: NoTable}}})
	if !errors.Is(err, ErrGone) {
		t.Errorf("describing an unreported process: %v, want ErrGone", err)
	}
	if u := s.Usage(); u.Mappings != 0 {
		t.Errorf("%d mappings held after a failed describe", u.Mappings)
	}
	// A profiler stopping while it describes a process.
	s.Close()
	if _, err := s.LoadTable(rows); !errors.Is(err, ErrClosed) {
		t.Errorf("LoadTable after Close: %v, want ErrClosed", err)
	}
	if err := s.SetProcess(uint32(os.Getpid()), Process{}); !errors.Is(err, ErrClosed) {
		t.Errorf("SetProcess after Close: %v, want ErrClosed", err)
	}
}

func TestPythonFrame(t *testing.T) {
	v := uint64(pyFrameBit) | 1234<<47 | 0x7f12_3456_7890
	code, lasti, ok := PythonFrame(v)
	if !ok || code != 0x7f12_3456_7890 || lasti != 1234 {
		t.Errorf("PythonFrame(%#x) = %#x, %d, %v", v, code, lasti, ok)
	}
	if _, _, ok := PythonFrame(0x7f12_3456_7890); ok {
		t.Error("a native address decoded as a Python frame")
	}
}
