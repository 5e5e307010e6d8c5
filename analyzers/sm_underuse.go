package analyzers

import "github.com/loupe-dev/loupe/traces"

// Thresholds of SMUnderuse.
const (
	smBusyUtil      = 80   // NVML gpu_util (percent) at which NVML calls the GPU busy
	smBusyMinShare  = 0.25 // share of the profiled samples that must be busy
	smActiveWarn    = 0.5  // mean SM active while busy below which: warning
	smActiveCrit    = 0.25 // ... and critical
	smMinProfSample = 10   // fewer DCGM samples than this are not judged
)

// SMUnderuse finds GPUs that NVML reports busy while their SMs mostly idle.
var SMUnderuse = &Analyzer{
	Name:    "sm-underuse",
	Version: "1",
	Doc: `low SM activity behind high "GPU utilization"

NVML's gpu_util is the share of time any kernel was running, however few SMs
it used, so it reads 100% for a GPU running one tiny kernel after another.
DCGM's sm_active (field 1002) is the share of SMs with work. Among samples
with valid DCGM profiling data, a GPU is flagged when gpu_util >= 80% in at
least 25% of them and the mean sm_active over those busy samples is below
0.5 (warning) or 0.25 (critical). At least 10 profiled samples are needed.

Impact: the busy seconds times (1 - mean sm_active): SM time left idle while
the GPU looked fully used.`,
	Requires: []string{traces.PartGPUSamples},
	Run:      runSMUnderuse,
}

func runSMUnderuse(pass *Pass) error {
	type acc struct {
		busy         int
		smSum, utSum float64
	}
	gpus, err := eachProfiledGPU(pass, func(a *acc, s *traces.GPUSample) {
		if s.GPUUtil >= smBusyUtil {
			a.busy++
			a.smSum += float64(s.SMActive)
			a.utSum += float64(s.GPUUtil)
		}
	})
	if err != nil {
		return err
	}
	f := finding{
		Title: `Low SM activity behind high "GPU utilization"`,
		Recommendation: "NVML's utilization counts a GPU busy whenever any kernel runs, however small. " +
			"Here most SMs sit idle: give each kernel more work (larger batch or micro-batch), fuse small kernels " +
			"(torch.compile), capture the step in CUDA graphs to remove launch gaps, and remove host synchronisation " +
			"(.item(), .cpu(), torch.cuda.synchronize()) from the training loop. The kernel launch and idle-time " +
			"analyzers of a Kineto capture show which kernels are too small.",
	}
	profiled := 0
	for _, k := range sortedKeys(pass.Input, gpus) {
		a := gpus[k]
		if a.prof >= smMinProfSample {
			profiled++
		}
		if a.prof < smMinProfSample || a.v.busy == 0 || float64(a.v.busy)/float64(a.prof) < smBusyMinShare {
			continue
		}
		sm := a.v.smSum / float64(a.v.busy)
		sev := gradeBelow(sm, smActiveWarn, smActiveCrit)
		if sev == "" {
			continue
		}
		busySec := float64(a.v.busy) * a.perSample()
		f.Targets = append(f.Targets, target{
			Host: k.host, GPU: int(k.gpu), Rank: k.host.GPURank(int(k.gpu)), Severity: sev,
			Lost: busySec * (1 - sm),
			Evidence: []traces.Metric{
				metric("busy_share", float64(a.v.busy)/float64(a.prof), unitRatio),
				metric("gpu_util_mean_busy", a.v.utSum/float64(a.v.busy), unitPercent),
				metric("sm_active_mean_busy", sm, unitRatio),
				metric("busy_seconds", busySec, unitSeconds),
			},
		})
	}
	f.Evidence = []traces.Metric{metric("gpus_profiled", float64(profiled), unitCount)}
	f.report(pass)
	return nil
}
