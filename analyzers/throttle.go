package analyzers

import "github.com/loupe-dev/loupe/traces"

// Thresholds of Throttle: share of a GPU's active samples with the reason set.
const (
	throttleWarn = 0.05
	throttleCrit = 0.25
)

// throttleClass groups clock event reasons that share a cause and a fix.
type throttleClass struct {
	name, title string
	bits        int64
	// hardware classes are critical from the warning threshold on: the board
	// or its surroundings are at fault, not the workload.
	hardware bool
	advice   string
}

var throttleClasses = []throttleClass{
	{"power", "Power throttling", traces.ClockEventSWPowerCap, false,
		"The GPU runs at its power limit (SW power cap, 0x4). Check the limit against the board default " +
			"(nvidia-smi -q -d POWER); restore it with nvidia-smi -pl if it was lowered; otherwise this is " +
			"expected for power-heavy kernels and the loss is the price of the cap."},
	{"power-brake", "Hardware power brake", traces.ClockEventHWPowerBrake, true,
		"An external power brake (HW power brake slowdown, 0x80) is asserted: the chassis or PSU signals " +
			"over-current or power loss. Check PSUs and power cabling and the BMC's event log; drain the host if it recurs."},
	{"thermal", "Thermal throttling", traces.ClockEventSWThermalSlowdown | traces.ClockEventHWThermalSlowdown, false,
		"The GPU is slowed for heat (SW thermal 0x20, HW thermal 0x40). Compare gpu_temp_c with the slowdown " +
			"temperature (nvidia-smi -q -d TEMPERATURE); check fans, airflow, inlet temperature and blanking panels, " +
			"and whether one GPU runs hotter than its neighbours (heatsink or thermal paste)."},
	{"hw-slowdown", "Hardware slowdown", traces.ClockEventHWSlowdown, true,
		"HW slowdown (0x8) halves clocks or more; it is set for HW thermal or power-brake events and by the board's " +
			"own protection. Drain the host and run dcgmi diag -r 3; check PSU and thermals."},
}

// Throttle finds GPUs whose clocks were held down by power or heat.
var Throttle = &Analyzer{
	Name:    "throttle",
	Version: "2",
	Doc: `thermal and power throttling from NVML clock event reasons

NVML's clock event reason bits say why clocks are below maximum. Samples where
the GPU is idle (reason 0x1, or gpu_util 0) are ignored: an idle GPU lowers
its clocks by design. For each class (power cap 0x4; power brake 0x80;
thermal 0x20|0x40; HW slowdown 0x8) the share of a GPU's active samples with
a bit of that class set is its time share; one finding per class. A share
>= 5% is a warning, >= 25% critical; the hardware classes (0x8, 0x80) are
critical from 5% on.

Impact: over throttled samples, seconds x (1 - sm_clock / reference clock):
the clock cycles lost. The reference is the highest SM clock seen on any GPU
of the capture (a job's GPUs are one model), so that a GPU throttled for the
whole window is measured against its unthrottled peers, not against itself.`,
	Requires: []string{traces.PartGPUSamples},
	Run:      runThrottle,
}

func runThrottle(pass *Pass) error {
	type acc struct {
		span
		active   int
		maxClock int32
		hit      []int     // per class: active samples with a bit of the class set
		clocks   []float64 // per class: sum of sm clocks over those samples
		temp     float64   // gpu temperature summed over active samples
	}
	gpus := map[gpuKey]*acc{}
	err := EachGPUSample(pass, func(h *Host, s *traces.GPUSample) error {
		k := gpuKey{h, s.GPU}
		a := gpus[k]
		if a == nil {
			a = &acc{hit: make([]int, len(throttleClasses)), clocks: make([]float64, len(throttleClasses))}
			gpus[k] = a
		}
		a.add(s.TimeNs)
		a.maxClock = max(a.maxClock, s.SMClockMHz)
		if s.ClockEventReasons&traces.ClockEventGPUIdle != 0 || s.GPUUtil <= 0 {
			return nil
		}
		a.active++
		a.temp += float64(s.GPUTempC)
		for i, c := range throttleClasses {
			if s.ClockEventReasons&c.bits != 0 {
				a.hit[i]++
				a.clocks[i] += float64(s.SMClockMHz)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	keys := sortedKeys(pass.Input, gpus)
	var ref int32 // the highest SM clock of the capture: the unthrottled peers' clock
	for _, a := range gpus {
		ref = max(ref, a.maxClock)
	}
	for i, c := range throttleClasses {
		f := finding{Title: c.title, Recommendation: c.advice}
		for _, k := range keys {
			a := gpus[k]
			if a.active == 0 || a.hit[i] == 0 {
				continue
			}
			sh := float64(a.hit[i]) / float64(a.active)
			sev := gradeAbove(sh, throttleWarn, throttleCrit)
			if c.hardware && sev != "" {
				sev = traces.SeverityCritical
			}
			if sev == "" {
				continue
			}
			n := float64(a.hit[i])
			var lost float64
			if ref > 0 {
				lost = (n - a.clocks[i]/float64(ref)) * a.perSample()
			}
			f.Targets = append(f.Targets, target{
				Host: k.host, GPU: int(k.gpu), Rank: k.host.GPURank(int(k.gpu)), Severity: sev, Lost: lost,
				Evidence: []traces.Metric{
					metric(c.name+"_time_share", sh, unitRatio),
					metric(c.name+"_seconds", n*a.perSample(), unitSeconds),
					metric("sm_clock_mean_throttled", a.clocks[i]/n, unitMHz),
					metric("sm_clock_max", float64(a.maxClock), unitMHz),
					metric("sm_clock_reference", float64(ref), unitMHz),
					metric("gpu_temp_mean_active", a.temp/float64(a.active), "C"),
				},
			})
		}
		f.report(pass)
	}
	return nil
}
