package goodput

import (
	"strings"

	"github.com/loupe-dev/loupe/traces"
)

// PeakFLOPS maps a GPU model, by a substring of its NVML name, to its peak
// dense BF16 (FP16 before Ampere) tensor-core throughput in FLOP/s, from
// NVIDIA's data sheets. The first match wins, so the more specific names
// come first.
var PeakFLOPS = []struct {
	Name  string
	FLOPS float64
}{
	{"GB200", 2500e12}, {"B200", 2250e12}, {"B100", 1750e12},
	{"GH200", 989e12}, {"H200", 989e12}, {"H100 NVL", 835e12}, {"H100 PCIe", 756e12}, {"H100", 989e12},
	{"H800", 989e12}, {"H20", 148e12},
	{"A100", 312e12}, {"A800", 312e12}, {"A30", 165e12}, {"A10", 125e12},
	{"L40S", 362e12}, {"L40", 181e12}, {"L4", 121e12},
	{"V100", 125e12}, {"T4", 65e12},
}

// modelPeak is the peak of the GPUs that run the job's ranks, the lowest
// when the models differ; 0 when no model is in PeakFLOPS.
func modelPeak(ms []*traces.Manifest) float64 {
	peak := 0.0
	for _, m := range ms {
		for _, g := range m.GPUs {
			if len(g.Ranks) == 0 {
				continue
			}
			for _, p := range PeakFLOPS {
				if strings.Contains(g.Name, p.Name) {
					if peak == 0 || p.FLOPS < peak {
						peak = p.FLOPS
					}
					break
				}
			}
		}
	}
	return peak
}
