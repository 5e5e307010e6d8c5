package analyzers

import (
	"strings"
	"testing"

	"github.com/loupe-dev/loupe/traces"
)

// gpuCase plants a pattern on GPU 0 of a two-GPU host (GPU 1 stays healthy)
// and states what the analyzer must find: nothing when sev is "".
type gpuCase struct {
	name     string
	plant    func(i int, s *traces.GPUSample) // GPU 0 only
	sev      string
	evidence map[string]float64
	lost     float64 // GPU-seconds
}

func runGPUCases(t *testing.T, a *Analyzer, cases []gpuCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := writeCapture(t, "", hostBundle{name: "h1", ranks: []int{4, 5}, samples: series(2, 100, func(i int, s *traces.GPUSample) {
				if s.GPU == 0 && c.plant != nil {
					c.plant(i, s)
				}
			})})
			fs := run(t, a, in)
			if c.sev == "" {
				if len(fs) != 0 {
					t.Fatalf("want no finding, got %+v", fs)
				}
				return
			}
			if len(fs) != 1 {
				t.Fatalf("want 1 finding, got %d: %+v", len(fs), fs)
			}
			f := fs[0]
			if f.Severity != c.sev {
				t.Errorf("severity %s, want %s", f.Severity, c.sev)
			}
			if f.Scope.Host != "h1" || f.Scope.GPU != 0 || f.Scope.Rank != 4 {
				t.Errorf("scope %+v, want h1 GPU 0 rank 4", f.Scope)
			}
			check(t, f, c.evidence)
			if !near(f.Impact.GPUSeconds, c.lost) || !near(f.Impact.WindowShare, c.lost/20) {
				t.Errorf("impact %+v, want %v GPU-s, share %v of 20 GPU-s", f.Impact, c.lost, c.lost/20)
			}
			if f.Recommendation == "" {
				t.Error("no recommendation")
			}
		})
	}
}

func TestSMUnderuse(t *testing.T) {
	runGPUCases(t, SMUnderuse, []gpuCase{
		{name: "critical", plant: func(i int, s *traces.GPUSample) { s.GPUUtil, s.SMActive = 100, 0.2 },
			sev:      traces.SeverityCritical,
			evidence: map[string]float64{"busy_share": 1, "gpu_util_mean_busy": 100, "sm_active_mean_busy": 0.2, "busy_seconds": 10, "gpus_profiled": 2},
			lost:     10 * 0.8},
		{name: "warning, busy half the time", plant: func(i int, s *traces.GPUSample) {
			if i%2 == 0 {
				s.GPUUtil, s.SMActive = 90, 0.4
			} else {
				s.GPUUtil, s.SMActive = 0, 0
			}
		},
			sev:      traces.SeverityWarning,
			evidence: map[string]float64{"busy_share": 0.5, "gpu_util_mean_busy": 90, "sm_active_mean_busy": 0.4, "busy_seconds": 5},
			lost:     5 * 0.6},
		{name: "healthy"},
		{name: "idle GPU is not underuse", plant: func(i int, s *traces.GPUSample) { s.GPUUtil, s.SMActive = 3, 0.01 }},
		{name: "no DCGM data", plant: func(i int, s *traces.GPUSample) { s.GPUUtil, s.SMActive, s.ProfValid = 100, 0, false }},
	})
}

func TestTensorUnderuse(t *testing.T) {
	runGPUCases(t, TensorUnderuse, []gpuCase{
		{name: "fp32 matmul without tensor cores", plant: func(i int, s *traces.GPUSample) {
			s.SMActive, s.TensorActive, s.FP32Active, s.FP16Active = 0.7, 0.01, 0.5, 0
		},
			sev:      traces.SeverityCritical,
			evidence: map[string]float64{"tensor_active_mean": 0.01, "fp32_active_mean": 0.5, "fp16_active_mean": 0, "sm_active_mean": 0.7, "computing_seconds": 10},
			lost:     10 * 0.5 * 0.5},
		{name: "some tensor use", plant: func(i int, s *traces.GPUSample) {
			s.SMActive, s.TensorActive, s.FP32Active, s.FP16Active = 0.7, 0.05, 0.2, 0.1
		},
			sev:      traces.SeverityWarning,
			evidence: map[string]float64{"tensor_active_mean": 0.05, "fp32_active_mean": 0.2, "fp16_active_mean": 0.1},
			lost:     10 * 0.3 * 0.5},
		{name: "healthy mixed precision"},
		{name: "low tensor but little FP math", plant: func(i int, s *traces.GPUSample) {
			s.SMActive, s.TensorActive, s.FP32Active, s.FP16Active = 0.7, 0.0, 0.05, 0.05
		}},
	})
}

func TestMemoryBound(t *testing.T) {
	runGPUCases(t, MemoryBound, []gpuCase{
		{name: "critical", plant: func(i int, s *traces.GPUSample) {
			if i < 60 {
				s.DRAMActive, s.SMActive = 0.8, 0.3
			}
		},
			sev:      traces.SeverityCritical,
			evidence: map[string]float64{"memory_bound_share": 0.6, "dram_active_mean_bound": 0.8, "sm_active_mean_bound": 0.3, "memory_bound_seconds": 6},
			lost:     6 * 0.7},
		{name: "warning", plant: func(i int, s *traces.GPUSample) {
			if i < 30 {
				s.DRAMActive, s.SMActive = 0.9, 0.1
			}
		},
			sev:      traces.SeverityWarning,
			evidence: map[string]float64{"memory_bound_share": 0.3, "memory_bound_seconds": 3},
			lost:     3 * 0.9},
		{name: "DRAM busy but SMs busy too", plant: func(i int, s *traces.GPUSample) { s.DRAMActive, s.SMActive = 0.8, 0.7 }},
		{name: "rarely", plant: func(i int, s *traces.GPUSample) {
			if i < 10 {
				s.DRAMActive, s.SMActive = 0.8, 0.3
			}
		}},
	})
}

func TestThrottle(t *testing.T) {
	// Half the samples are idle with power cap set: they must be ignored,
	// so shares are of the 50 active samples.
	idleHalf := func(i int, s *traces.GPUSample) bool {
		if i >= 50 {
			s.GPUUtil, s.ClockEventReasons, s.SMClockMHz = 0, traces.ClockEventGPUIdle|traces.ClockEventSWPowerCap, 345
			return true
		}
		return false
	}
	runGPUCases(t, Throttle, []gpuCase{
		{name: "power cap 40% of active time", plant: func(i int, s *traces.GPUSample) {
			if !idleHalf(i, s) && i < 20 {
				s.ClockEventReasons, s.SMClockMHz = traces.ClockEventSWPowerCap, 1485
			}
		},
			sev:      traces.SeverityCritical,
			evidence: map[string]float64{"power_time_share": 0.4, "power_seconds": 2, "sm_clock_mean_throttled": 1485, "sm_clock_max": 1980},
			lost:     20 * 0.1 * (1 - 1485.0/1980)},
		{name: "thermal 10%", plant: func(i int, s *traces.GPUSample) {
			if !idleHalf(i, s) && i < 5 {
				s.ClockEventReasons, s.SMClockMHz, s.GPUTempC = traces.ClockEventSWThermalSlowdown, 1650, 88
			}
		},
			sev:      traces.SeverityWarning,
			evidence: map[string]float64{"thermal_time_share": 0.1, "sm_clock_mean_throttled": 1650},
			lost:     5 * 0.1 * (1 - 1650.0/1980)},
		{name: "HW slowdown is critical at 6%", plant: func(i int, s *traces.GPUSample) {
			if !idleHalf(i, s) && i < 3 {
				s.ClockEventReasons, s.SMClockMHz = traces.ClockEventHWSlowdown, 990
			}
		},
			sev:      traces.SeverityCritical,
			evidence: map[string]float64{"hw-slowdown_time_share": 0.06},
			lost:     3 * 0.1 * 0.5},
		// Throttled for its whole active time: measured against its peer
		// (GPU 1 at 1980 MHz), not against its own throttled maximum.
		{name: "thermal all window", plant: func(i int, s *traces.GPUSample) {
			if !idleHalf(i, s) {
				s.ClockEventReasons, s.SMClockMHz = traces.ClockEventHWThermalSlowdown, 1485
			}
		},
			sev:      traces.SeverityCritical,
			evidence: map[string]float64{"thermal_time_share": 1, "sm_clock_max": 1485, "sm_clock_reference": 1980},
			lost:     50 * 0.1 * (1 - 1485.0/1980)},
		{name: "only while idle", plant: func(i int, s *traces.GPUSample) { idleHalf(i, s) }},
		{name: "brief power cap under 5%", plant: func(i int, s *traces.GPUSample) {
			if !idleHalf(i, s) && i < 2 {
				s.ClockEventReasons = traces.ClockEventSWPowerCap
			}
		}},
	})
}

// A problem on every GPU of several hosts is one job-wide finding that names
// the worst GPUs, not one finding per GPU.
func TestJobWideFindingGroupsTargets(t *testing.T) {
	underused := func(i int, s *traces.GPUSample) {
		s.GPUUtil, s.SMActive = 100, 0.1+0.05*float32(s.GPU)
	}
	in := writeCapture(t, "",
		hostBundle{name: "h1", ranks: []int{0, 1}, samples: series(2, 100, underused)},
		hostBundle{name: "h2", ranks: []int{2, 3}, samples: series(2, 100, underused)},
	)
	fs := run(t, SMUnderuse, in)
	if len(fs) != 1 {
		t.Fatalf("want 1 finding, got %d", len(fs))
	}
	f := fs[0]
	if f.Scope.Host != "" || f.Scope.GPU != -1 || f.Scope.Rank != -1 || f.Scope.Job != "train" {
		t.Errorf("scope %+v, want the whole job", f.Scope)
	}
	// GPU 0 of each host: 10 s x 0.9 lost, GPU 1: 10 s x 0.85.
	check(t, f, map[string]float64{"targets_affected": 4, "h1 gpu 0 rank 0: sm_active_mean_busy": 0.1, "h2 gpu 1 rank 3: sm_active_mean_busy": 0.15})
	if want := 2*9 + 2*8.5; !near(f.Impact.GPUSeconds, want) || !near(f.Impact.WindowShare, want/40) {
		t.Errorf("impact %+v, want %v GPU-s of 40", f.Impact, want)
	}
}

// Kernel names from Kineto traces (through KernelMixSource) flag a rank
// whose matmuls miss the tensor cores, and corroborate a GPU DCGM flagged.
func TestTensorUnderuseKernelMix(t *testing.T) {
	prev := KernelMixSource
	defer func() { KernelMixSource = prev }()
	in := writeCapture(t, "", hostBundle{name: "h1", ranks: []int{4, 5}, samples: series(2, 100, func(i int, s *traces.GPUSample) {
		if s.GPU == 0 {
			s.SMActive, s.TensorActive, s.FP32Active, s.FP16Active = 0.7, 0.01, 0.5, 0
		}
	})})
	KernelMixSource = func(pass *Pass) ([]KernelMix, error) {
		h := &pass.Input.Hosts[0]
		return []KernelMix{
			{Host: h, Rank: 4, Total: 10, Matmul: 8, MatmulTensorCore: 0},   // corroborates GPU 0
			{Host: h, Rank: 5, Total: 10, Matmul: 6, MatmulTensorCore: 1},   // only Kineto sees it
			{Host: h, Rank: 6, Total: 10, Matmul: 6, MatmulTensorCore: 5.5}, // tensor cores in use
		}, nil
	}
	fs := run(t, TensorUnderuse, in)
	if len(fs) != 1 {
		t.Fatalf("want 1 finding, got %+v", fs)
	}
	f := fs[0]
	check(t, f, map[string]float64{
		"targets_affected":                             2,
		"h1 gpu 0 rank 4: tensor_active_mean":          0.01,
		"h1 gpu 0 rank 4: matmul_kernel_share":         0.8,
		"h1 gpu 1 rank 5: matmul_kernel_share":         0.6,
		"h1 gpu 1 rank 5: matmul_kernel_seconds":       6,
		"h1 gpu 1 rank 5: tensor_core_share_of_matmul": 1.0 / 6,
	})
	// DCGM: 10 s x 0.5 FP x 0.5; Kineto: 5 non-tensor-core matmul seconds x 0.5.
	if want := 2.5 + 2.5; !near(f.Impact.GPUSeconds, want) || f.Scope.Host != "h1" || f.Scope.GPU != -1 {
		t.Errorf("impact %+v scope %+v, want %v GPU-s on host h1", f.Impact, f.Scope, want)
	}
}

// A bundle that carries a GPU no process of the job uses (a capture that
// matched no process carries the host's GPUs): the throttled GPU the job
// uses is the job's finding, the other throttled GPU a host-wide one.
func TestHostWideGPU(t *testing.T) {
	in := writeCapture(t, "", hostBundle{name: "h1", ranks: []int{4}, samples: series(2, 100, func(i int, s *traces.GPUSample) {
		if i < 50 {
			s.ClockEventReasons, s.SMClockMHz, s.GPUTempC = traces.ClockEventSWThermalSlowdown, 1400, 90
		}
	})})
	fs := run(t, Throttle, in)
	if len(fs) != 2 {
		t.Fatalf("want 2 findings (job GPU 0, host GPU 1), got %+v", fs)
	}
	for _, f := range fs {
		switch f.Scope.GPU {
		case 0:
			if f.Scope.HostWide || f.Scope.Rank != 4 {
				t.Errorf("GPU 0 finding scope %+v, want rank 4's, not host-wide", f.Scope)
			}
		case 1:
			if !f.Scope.HostWide || f.Scope.Rank != -1 || !strings.Contains(f.Recommendation, "No process of this job uses the GPU") {
				t.Errorf("GPU 1 finding scope %+v (%q), want host-wide with no rank", f.Scope, f.Recommendation)
			}
			if got := f.Scope.String(); !strings.Contains(got, "host-wide") {
				t.Errorf("scope renders %q", got)
			}
		default:
			t.Errorf("finding on GPU %d", f.Scope.GPU)
		}
	}
}
