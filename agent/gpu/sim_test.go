package gpu

import (
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

const thermal = traces.ClockEventSWThermalSlowdown | traces.ClockEventHWThermalSlowdown

func TestSimulatorPlantedProblems(t *testing.T) {
	opts := SimOptions{
		ThrottledGPUs: []int{2},
		LostGPUs:      []SimEvent{{GPU: 6, After: 700 * time.Millisecond}},
		XIDs:          []SimXID{{GPU: 6, Code: 79, After: 600 * time.Millisecond}},
		PIDs:          []int{4242},
	}
	sim := NewSimulator(8, opts)
	cfg := testConfig()
	cfg.Interval = 100 * time.Millisecond
	c, set := start(t, cfg, sim.Interface(), sim)
	if !c.Simulated() {
		t.Fatal("Simulated() = false")
	}
	end, _ := c.BeginCapture()
	defer end()
	// The XID (at 600 ms) and the loss (at 700 ms) come through different
	// paths (event set, sampling), so either may be recorded first.
	kinds := func() map[string]int {
		m := map[string]int{}
		for _, e := range c.Events(time.Time{}, time.Now()) {
			if e.GPU == 6 {
				m[e.Kind] += 1
			}
			if e.Kind == traces.EventXID && e.Code != 79 {
				t.Errorf("XID code %d, want 79", e.Code)
			}
		}
		return m
	}
	eventually(t, "XID 79 and the loss of GPU 6", func() bool {
		k := kinds()
		return k[traces.EventXID] == 1 && k[traces.EventGPULost] == 1
	})
	if n := len(c.Events(time.Time{}, time.Now())); n != 2 {
		t.Errorf("%d events, want 2 (XID and loss on GPU 6)", n)
	}
	samples := c.Samples(time.Time{}, time.Now())
	var hot, cool []traces.GPUSample
	for _, s := range samples {
		switch s.GPU {
		case 2:
			hot = append(hot, s)
		case 3:
			cool = append(cool, s)
		}
		if !s.ProfValid || s.SMActive < 0 || s.SMActive > 1 || s.TensorActive > s.SMActive+0.01 {
			t.Fatalf("implausible simulated profiling fields: %+v", s)
		}
	}
	if len(hot) < 20 || len(cool) < 20 {
		t.Fatalf("%d and %d samples of GPUs 2 and 3, want >= 20 each at 100 Hz", len(hot), len(cool))
	}
	for _, s := range hot {
		if s.ClockEventReasons&thermal != thermal || s.SMClockMHz >= 1500 || s.GPUTempC < slowdownAtC {
			t.Fatalf("throttled GPU sample without thermal slowdown: temp %v C, SM %d MHz, reasons %#x", s.GPUTempC, s.SMClockMHz, s.ClockEventReasons)
		}
	}
	for _, s := range cool {
		if s.ClockEventReasons&thermal != 0 || s.GPUTempC > 80 {
			t.Fatalf("healthy GPU sample with thermal trouble: temp %v C, reasons %#x", s.GPUTempC, s.ClockEventReasons)
		}
	}
	procs := c.Processes()
	if len(procs) != 7 || procs[0].PID != 4242 || procs[0].UsedMemoryBytes < 60<<30 {
		t.Errorf("processes = %+v, want pid 4242 on the 7 GPUs not lost", procs)
	}
	_ = set
}

func TestSimulatorMovesLikeTraining(t *testing.T) {
	sim := NewSimulator(2, SimOptions{})
	g := sim.gpus[0]
	var minU, maxU, minP, maxP float64 = 100, 0, 1e9, 0
	var nvlinkSeen, idleSeen bool
	energy := g.energyMJ
	// Two steps of model time, every 10 ms, without waiting for them.
	g.mu.Lock()
	for at := sim.start; at.Before(sim.start.Add(time.Duration(2 * stepSeconds * float64(time.Second)))); at = at.Add(10 * time.Millisecond) {
		g.advance(at)
		st := g.st
		minU, maxU = min(minU, st.util), max(maxU, st.util)
		minP, maxP = min(minP, st.powerW), max(maxP, st.powerW)
		nvlinkSeen = nvlinkSeen || st.nvlinkBs > 1e11
		idleSeen = idleSeen || st.reasons&traces.ClockEventGPUIdle != 0
		if at.After(sim.start) && g.energyMJ <= energy {
			t.Fatalf("energy did not grow at %v", at.Sub(sim.start))
		}
		energy = g.energyMJ
	}
	g.mu.Unlock()
	// Within two steps: compute near full, the input pipeline near idle,
	// an all-reduce on NVLink, power following the work.
	if maxU < 60 || minU > 15 {
		t.Errorf("utilization stayed within %.0f..%.0f %%, want a step pattern", minU, maxU)
	}
	if maxP-minP < 150 {
		t.Errorf("power stayed within %.0f..%.0f W, want it to follow the steps", minP, maxP)
	}
	if !nvlinkSeen || !idleSeen {
		t.Errorf("nvlink burst seen %v, idle clocks seen %v; want both in two steps", nvlinkSeen, idleSeen)
	}
	// Readings through NVML move with wall time.
	g2 := NewSimulator(1, SimOptions{}).gpus[0]
	e1, _ := g2.GetTotalEnergyConsumption()
	time.Sleep(20 * time.Millisecond)
	g2.GetUtilizationRates() // starts a new round, as a sample does
	e2, _ := g2.GetTotalEnergyConsumption()
	if e2 <= e1 {
		t.Errorf("energy did not grow: %d -> %d mJ", e1, e2)
	}
}

func TestSimulatedProfilingPause(t *testing.T) {
	sim := NewSimulator(1, SimOptions{})
	c, _ := start(t, testConfig(), sim.Interface(), sim)
	eventually(t, "profiling fields", func() bool {
		s := c.Samples(time.Time{}, time.Now())
		return len(s) > 0 && s[len(s)-1].ProfValid
	})
	if err := c.PauseProfiling(true); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	eventually(t, "samples while paused", func() bool { return len(c.Samples(paused, time.Now())) >= 2 })
	for _, s := range c.Samples(paused, time.Now()) {
		if s.ProfValid {
			t.Fatalf("profiling fields while paused: %+v", s)
		}
	}
	if err := c.PauseProfiling(false); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	eventually(t, "profiling fields again", func() bool {
		s := c.Samples(resumed, time.Now())
		return len(s) > 0 && s[len(s)-1].ProfValid
	})
}

// A starved GPU idles (as the input-bound analyzer counts idle: SM active
// under 0.1) for most of every step; a fed one computes most of it.
func TestSimulatorStarvedGPU(t *testing.T) {
	sim := NewSimulator(2, SimOptions{StarvedGPUs: []int{1}})
	idleShare := func(g *simGPU) float64 {
		g.mu.Lock()
		defer g.mu.Unlock()
		idle, n := 0, 0
		// Ten steps of model time, every 10 ms, before the checkpoint pause.
		for at := sim.start; at.Before(sim.start.Add(time.Duration(10 * stepSeconds * float64(time.Second)))); at = at.Add(10 * time.Millisecond) {
			g.advance(at)
			if g.st.smActive < 0.1 {
				idle++
			}
			n++
		}
		return float64(idle) / float64(n)
	}
	if got := idleShare(sim.gpus[1]); got < 0.6 || got > 0.75 {
		t.Errorf("starved GPU idles %.2f of the time, want about two thirds", got)
	}
	if got := idleShare(sim.gpus[0]); got > 0.15 {
		t.Errorf("fed GPU idles %.2f of the time, want about a tenth", got)
	}
}
