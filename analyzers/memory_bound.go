package analyzers

import "github.com/loupe-dev/loupe/traces"

// Thresholds of MemoryBound.
const (
	memDRAMHigh  = 0.6  // dram_active at or above which DRAM is saturated
	memSMLow     = 0.4  // sm_active below which the SMs are starved
	memShareWarn = 0.25 // share of profiled samples memory-bound: warning
	memShareCrit = 0.5  // ... critical
)

// MemoryBound finds GPUs whose time goes to DRAM traffic, not math.
var MemoryBound = &Analyzer{
	Name:    "memory-bound",
	Version: "1",
	Doc: `memory-bandwidth bound GPUs: DRAM saturated while SMs starve

Among samples with valid DCGM profiling data, a sample is memory-bound when
dram_active (field 1005) >= 0.6 and sm_active (1002) < 0.4. A GPU is flagged
when at least 25% (warning) or 50% (critical) of its profiled samples are
memory-bound; at least 10 profiled samples are needed.

Impact: over the memory-bound samples, seconds x (1 - sm_active): SM time
spent waiting on memory.`,
	Requires: []string{traces.PartGPUSamples},
	Run:      runMemoryBound,
}

func runMemoryBound(pass *Pass) error {
	type acc struct {
		bound          int
		dram, sm, idle float64
	}
	gpus, err := eachProfiledGPU(pass, func(a *acc, s *traces.GPUSample) {
		if s.DRAMActive >= memDRAMHigh && s.SMActive < memSMLow {
			a.bound++
			a.dram += float64(s.DRAMActive)
			a.sm += float64(s.SMActive)
			a.idle += 1 - float64(s.SMActive)
		}
	})
	if err != nil {
		return err
	}
	f := finding{
		Title: "Memory-bandwidth bound: DRAM saturated while SMs starve",
		Recommendation: "The kernels move more bytes than they compute on. Fuse elementwise and normalisation ops " +
			"(torch.compile, fused optimizers such as torch.optim.AdamW(fused=True)), use fused attention " +
			"(scaled_dot_product_attention / FlashAttention), keep activations in bf16 to halve the bytes, raise the " +
			"batch size for more reuse per byte, and avoid layout copies (.contiguous(), transposes; channels_last for convolutions).",
	}
	for _, k := range sortedKeys(pass.Input, gpus) {
		a := gpus[k]
		if a.prof < smMinProfSample || a.v.bound == 0 {
			continue
		}
		sh := float64(a.v.bound) / float64(a.prof)
		sev := gradeAbove(sh, memShareWarn, memShareCrit)
		if sev == "" {
			continue
		}
		n := float64(a.v.bound)
		f.Targets = append(f.Targets, target{
			Host: k.host, GPU: int(k.gpu), Rank: k.host.GPURank(int(k.gpu)), Severity: sev,
			Lost: a.v.idle * a.perSample(),
			Evidence: []traces.Metric{
				metric("memory_bound_share", sh, unitRatio),
				metric("dram_active_mean_bound", a.v.dram/n, unitRatio),
				metric("sm_active_mean_bound", a.v.sm/n, unitRatio),
				metric("memory_bound_seconds", n*a.perSample(), unitSeconds),
			},
		})
	}
	f.report(pass)
	return nil
}
