package analyzers

import (
	"slices"

	"github.com/loupe-dev/loupe/traces"
)

// Thresholds of TensorUnderuse.
const (
	tensorComputingSM   = 0.3  // sm_active at which a sample counts as computing
	tensorComputeShare  = 0.25 // share of profiled samples that must be computing
	tensorFPBusy        = 0.2  // mean fp16+fp32 pipe activity that marks FP-heavy math
	tensorFPBusyCrit    = 0.4
	tensorActiveWarn    = 0.1 // mean tensor_active below which: warning
	tensorActiveCrit    = 0.02
	tensorMatmulShare   = 0.3 // Kineto: share of kernel time in matmul-class kernels
	tensorTCOfMatmulLow = 0.5 // Kineto: share of matmul time on tensor cores below which: flagged
	// tensorSpeedup is the speed-up assumed for FP-pipe math moved onto
	// tensor cores; 2x is conservative (tensor cores are 8-16x faster).
	tensorSpeedup = 2
)

// KernelMix is one rank's GPU kernel time by class, as measured from its
// Kineto trace. Seconds are summed kernel durations.
type KernelMix struct {
	Host *Host
	Rank int
	// Total is all kernel time; Matmul the time in matmul-class kernels
	// (GEMM, convolution, attention); MatmulTensorCore the part of Matmul in
	// kernels that use tensor cores.
	Total, Matmul, MatmulTensorCore float64
}

// KernelMixSource, when set, supplies kernel-class evidence from Kineto
// traces to TensorUnderuse. The Kineto analyzers set it; it returns no
// entries for a capture without Kineto traces.
var KernelMixSource func(pass *Pass) ([]KernelMix, error)

// TensorUnderuse finds GPUs doing matmul-class math without tensor cores.
var TensorUnderuse = &Analyzer{
	Name:    "tensor-underuse",
	Version: "1",
	Doc: `low tensor-core use in a job that spends its time in matmul-class work

From DCGM profiling samples where the GPU is computing (sm_active >= 0.3, in
at least 25% of the profiled samples): a GPU is flagged when its FP pipes are
busy (mean fp16_active + fp32_active >= 0.2) while its tensor cores are not
(mean tensor_active < 0.1 warning, < 0.02 critical with FP >= 0.4). That is
the signature of GEMMs in FP32 without TF32, or of shapes that miss the
tensor-core paths. When Kineto traces supply kernel classes (KernelMixSource),
a rank is also flagged when matmul-class kernels take >= 30% of its kernel
time and less than half of that time is in tensor-core kernels.

Impact: computing seconds x FP activity x (1 - 1/2), assuming only a 2x
speed-up from moving that math to tensor cores; for Kineto evidence, the
non-tensor-core matmul seconds x (1 - 1/2).`,
	Requires: []string{traces.PartGPUSamples, traces.KinetoDir},
	Run:      runTensorUnderuse,
}

func runTensorUnderuse(pass *Pass) error {
	type acc struct {
		computing              int
		tensor, fp16, fp32, sm float64
	}
	gpus, err := eachProfiledGPU(pass, func(a *acc, s *traces.GPUSample) {
		if s.SMActive >= tensorComputingSM {
			a.computing++
			a.tensor += float64(s.TensorActive)
			a.fp16 += float64(s.FP16Active)
			a.fp32 += float64(s.FP32Active)
			a.sm += float64(s.SMActive)
		}
	})
	if err != nil {
		return err
	}
	f := finding{
		Title: "Low tensor-core use in matmul-heavy work",
		Recommendation: "The math runs on the FP16/FP32 pipes instead of tensor cores. Train in mixed precision " +
			"(torch.autocast with bfloat16, or fp16 with a GradScaler); for FP32 models allow TF32 " +
			"(torch.backends.cuda.matmul.allow_tf32 = True, torch.backends.cudnn.allow_tf32 = True, or " +
			"torch.set_float32_matmul_precision(\"high\")); keep GEMM dimensions (hidden size, batch x sequence, " +
			"vocabulary) multiples of 8 (16 bytes) so cuBLAS picks tensor-core kernels.",
	}
	for _, k := range sortedKeys(pass.Input, gpus) {
		a := gpus[k]
		if a.prof < smMinProfSample || float64(a.v.computing)/float64(a.prof) < tensorComputeShare {
			continue
		}
		n := float64(a.v.computing)
		tensor, fp := a.v.tensor/n, (a.v.fp16+a.v.fp32)/n
		if fp < tensorFPBusy || tensor >= tensorActiveWarn {
			continue
		}
		sev := traces.SeverityWarning
		if tensor < tensorActiveCrit && fp >= tensorFPBusyCrit {
			sev = traces.SeverityCritical
		}
		sec := n * a.perSample()
		f.Targets = append(f.Targets, target{
			Host: k.host, GPU: int(k.gpu), Rank: k.host.GPURank(int(k.gpu)), Severity: sev,
			Lost: sec * fp * (1 - 1.0/tensorSpeedup),
			Evidence: []traces.Metric{
				metric("tensor_active_mean", tensor, unitRatio),
				metric("fp16_active_mean", a.v.fp16/n, unitRatio),
				metric("fp32_active_mean", a.v.fp32/n, unitRatio),
				metric("sm_active_mean", a.v.sm/n, unitRatio),
				metric("computing_seconds", sec, unitSeconds),
			},
		})
	}
	if KernelMixSource != nil {
		mixes, err := KernelMixSource(pass)
		if err != nil {
			return err
		}
		for _, m := range mixes {
			if m.Total <= 0 || m.Matmul/m.Total < tensorMatmulShare || m.MatmulTensorCore/m.Matmul >= tensorTCOfMatmulLow {
				continue
			}
			ev := []traces.Metric{
				metric("matmul_kernel_share", m.Matmul/m.Total, unitRatio),
				metric("tensor_core_share_of_matmul", m.MatmulTensorCore/m.Matmul, unitRatio),
				metric("matmul_kernel_seconds", m.Matmul, unitSeconds),
			}
			// Kernel names corroborate a GPU that DCGM already flagged.
			i := slices.IndexFunc(f.Targets, func(t target) bool { return t.Host == m.Host && t.Rank == m.Rank })
			if i >= 0 {
				f.Targets[i].Evidence = append(f.Targets[i].Evidence, ev...)
				continue
			}
			f.Targets = append(f.Targets, target{
				Host: m.Host, GPU: m.Host.RankGPU(m.Rank), Rank: m.Rank, Severity: traces.SeverityWarning,
				Lost: (m.Matmul - m.MatmulTensorCore) * (1 - 1.0/tensorSpeedup), Evidence: ev,
			})
		}
	}
	f.report(pass)
	return nil
}
