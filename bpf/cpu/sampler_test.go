package cpu

import (
	"os"
	"slices"
	"syscall"
	"testing"
	"time"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("the eBPF sampler tests need root (CAP_BPF, CAP_PERFMON): run go test as root")
	}
	t.Skip("the eBPF sampler tests need root (CAP_BPF, CAP_PERFMON)")
}

//go:noinline
func spin(until time.Time) (n uint64) {
	for time.Now().Before(until) {
		for i := 0; i < 1000; i++ {
			n += uint64(i) * n
		}
	}
	return n
}

func TestSamplerSeesThisProcess(t *testing.T) {
	requireRoot(t)
	s, err := Load(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cpus, err := OnlineCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Attach(99, cpus); err != nil {
		t.Fatal(err)
	}
	if err := s.SetFilter(false, []uint32{uint32(os.Getpid())}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetEnabled(true); err != nil {
		t.Fatal(err)
	}
	cpu0 := selfCPU(t)
	spin(time.Now().Add(2 * time.Second))
	cpu := selfCPU(t) - cpu0

	var own, others, withUser uint64
	for range 2 { // both buffers
		lost, err := s.Drain(func(smp Sample) {
			if smp.PID != uint32(os.Getpid()) {
				others += smp.Count
				return
			}
			own += smp.Count
			if len(smp.User) > 0 {
				withUser += smp.Count
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		if lost != (Lost{}) {
			t.Errorf("lost samples: %v", lost)
		}
	}
	// The samples account for the CPU time this process got (the machine
	// may be busy), within 30%.
	if want := cpu.Seconds() * 99; own < 5 || float64(own) < 0.7*want || float64(own) > 1.3*want {
		t.Errorf("got %d samples of this process for %s of CPU time at 99 Hz, want %.0f ± 30%%", own, cpu, want)
	}
	if others != 0 {
		t.Errorf("pid filter let through %d samples of other processes", others)
	}
	if withUser*10 < own*9 {
		t.Errorf("only %d of %d samples carry a user stack", withUser, own)
	}
	// A second drain of the same buffer finds it empty.
	n := 0
	if _, err := s.Drain(func(Sample) { n++ }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Drain(func(Sample) { n++ }); err != nil {
		t.Fatal(err)
	}
	if err := s.SetEnabled(false); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Drain(func(Sample) {}); err == nil {
		t.Error("Drain after Close succeeded")
	}
}

// selfCPU returns this process's user+system CPU time.
func selfCPU(t testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func TestParseCPUList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
		err  bool
	}{
		{in: "0", want: []int{0}},
		{in: "0-3\n", want: []int{0, 1, 2, 3}},
		{in: "0-1,4,6-7", want: []int{0, 1, 4, 6, 7}},
		{in: "", err: true},
		{in: "3-1", err: true},
		{in: "a", err: true},
		{in: "0-", err: true},
		{in: "-1", err: true},
	} {
		got, err := ParseCPUList(tc.in)
		if (err != nil) != tc.err || !slices.Equal(got, tc.want) {
			t.Errorf("ParseCPUList(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func FuzzParseCPUList(f *testing.F) {
	for _, s := range []string{"0", "0-3", "0-1,4,6-7", "", "3-1", "0-99999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cpus, err := ParseCPUList(s)
		if err == nil && len(cpus) == 0 {
			t.Errorf("ParseCPUList(%q) returned no CPUs and no error", s)
		}
	})
}

// TestLostCounted fills tiny maps and checks that every kind of drop the
// program can see is counted rather than silent.
func TestLostCounted(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name   string
		opts   Options
		reason int
	}{
		// One stack: the second distinct stack finds the map full.
		{"stacks full", Options{StackEntries: 1}, LostStackFull},
		// One counts entry: the second distinct (process, stack) key finds the map full.
		{"counts full", Options{CountEntries: 1}, LostCountsFull},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Load(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			cpus, err := OnlineCPUs()
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Attach(999, cpus); err != nil {
				t.Fatal(err)
			}
			if err := s.SetFilter(true, nil); err != nil {
				t.Fatal(err)
			}
			if err := s.SetEnabled(true); err != nil {
				t.Fatal(err)
			}
			spin(time.Now().Add(500 * time.Millisecond))
			var kept uint64
			lost, err := s.Drain(func(smp Sample) { kept += smp.Count })
			if err != nil {
				t.Fatal(err)
			}
			if lost[tc.reason] == 0 {
				t.Errorf("no %s drops counted (lost %v, %d samples kept)", LostReasonNames[tc.reason], lost, kept)
			}
		})
	}
}
