package analyzers

import (
	"strconv"
	"strings"

	"github.com/google/pprof/profile"
	"github.com/loupe-dev/loupe/traces"
)

// Thresholds of InputBound.
const (
	inputIdleWarn    = 0.3 // share of a GPU's samples idle
	inputIdleCrit    = 0.5
	inputLoadWarn    = 0.3 // share of the rank's CPU samples in data loading
	inputLoadCrit    = 0.5
	inputMinSamples  = 20  // CPU samples a rank needs to be judged
	inputIdleUtil    = 10  // NVML gpu_util (percent) below which a GPU idles
	inputIdleSMActiv = 0.1 // DCGM sm_active below which a GPU idles
	// A stall window whose data-loading share rose this much (absolute)
	// and at least doubled against the rank's normal profile is flagged
	// even below inputLoadWarn.
	inputRise = 0.15
)

// DataLoadingFrames are the substrings that mark a stack frame (function
// name, source file or mapped binary) as data loading or preprocessing:
// PyTorch's DataLoader and its workers, collation, image, video and audio
// decoding, augmentation and array libraries, and dataset readers.
var DataLoadingFrames = []string{
	// PyTorch data loading
	"DataLoader", "_MultiProcessingDataLoaderIter", "_SingleProcessDataLoaderIter",
	"_worker_loop", "torch/utils/data/", "collate", "__getitem__", "pin_memory",
	// preprocessing and augmentation
	"torchvision/transforms", "torchvision.transforms", "albumentations", "PIL/", "PIL.", "_imaging",
	"cv2", "libopencv", "numpy/", "_multiarray_umath", "decode", "Decode",
	// codecs
	"libjpeg", "libturbojpeg", "libpng", "libwebp", "libavcodec", "libavformat", "libswscale", "decord", "librosa",
	// dataset readers and tokenizers
	"webdataset", "pyarrow", "datasets/", "tokenizers", "tokenize",
}

// InputBound finds ranks whose GPU waits while their CPUs prepare input.
var InputBound = &Analyzer{
	Name:    "input-bound",
	Version: "2",
	Doc: `CPU-bound input pipeline: the GPU idles while the CPUs load and preprocess data

A GPU sample is idle when sm_active < 0.1 (with DCGM profiling data) or
gpu_util < 10% (NVML only). In the host's CPU profile (cpu.pb.gz), a sample is
data loading when any frame of its stack matches DataLoadingFrames (function,
file or binary). Samples are attributed to a rank by their "rank" label, else
by their "pid" label through the manifest's processes; a host whose samples
carry neither is judged as a whole for each of its ranks. A rank is flagged
when its GPU is idle >= 30% of the time and data loading is >= 30% of its CPU
samples (warning), or >= 50% and >= 50% (critical); at least 20 CPU samples
are needed.

The rank's normal profile, the agent's continuous profiles of the job run
on that host from the 30 minutes before the window (cpu_continuous.pb.gz),
is compared with the window when the store has it: its data-loading share
is reported beside the window's, and a rank whose GPU idles >= 30% while
its data-loading share at least doubled against normal and rose by >= 15
points is flagged (warning) even below the 30% share: the input pipeline
slowed down during the window.

Impact: the GPU's idle seconds times the data-loading share of the CPU time.`,
	Requires: []string{traces.PartCPUProfile, traces.PartGPUSamples},
	Run:      runInputBound,
}

func runInputBound(pass *Pass) error {
	type gpuAcc struct {
		span
		idle int
	}
	gpus := map[gpuKey]*gpuAcc{}
	err := EachGPUSample(pass, func(h *Host, s *traces.GPUSample) error {
		k := gpuKey{h, s.GPU}
		a := gpus[k]
		if a == nil {
			a = &gpuAcc{}
			gpus[k] = a
		}
		a.add(s.TimeNs)
		if s.ProfValid && s.SMActive < inputIdleSMActiv || !s.ProfValid && s.GPUUtil < inputIdleUtil {
			a.idle++
		}
		return nil
	})
	if err != nil {
		return err
	}
	f := finding{
		Title: "Input pipeline starves the GPU (CPU-bound data loading)",
		Recommendation: "The GPU waits for batches that the CPUs are still decoding and transforming. Raise " +
			"DataLoader(num_workers=...) towards the cores available per rank, set pin_memory=True and " +
			"persistent_workers=True, raise prefetch_factor; move decoding and augmentation to the GPU (NVIDIA DALI, " +
			"torchvision.io.decode_jpeg(device=\"cuda\"), GPU transforms); or preprocess once offline into a " +
			"ready-to-train format (WebDataset shards, pre-tokenised arrays).",
	}
	for i := range pass.Input.Hosts {
		h := &pass.Input.Hosts[i]
		p, err := ReadCPUProfile(pass, h)
		if err != nil {
			return err
		}
		if p == nil {
			continue
		}
		load := profileLoad(h, p)
		var normal map[int]cpuLoad
		bp, err := ReadBaselineProfile(pass, h)
		if err != nil {
			return err
		}
		if bp != nil {
			normal = profileLoad(h, bp)
		}
		for _, rank := range h.Manifest.Ranks {
			c, b := load[rank], normal[rank]
			if len(load) == 1 {
				c = load[-1] // no sample names its rank: judge the host as a whole
			}
			if len(normal) == 1 {
				b = normal[-1]
			}
			g := gpus[gpuKey{h, int32(h.RankGPU(rank))}]
			if c.total < inputMinSamples || g == nil || g.n == 0 {
				continue
			}
			idle, dl := float64(g.idle)/float64(g.n), c.loading/c.total
			hasNormal := b.total >= inputMinSamples
			bdl := 0.0
			if hasNormal {
				bdl = b.loading / b.total
			}
			sev := ""
			switch {
			case idle >= inputIdleCrit && dl >= inputLoadCrit:
				sev = traces.SeverityCritical
			case idle >= inputIdleWarn && dl >= inputLoadWarn:
				sev = traces.SeverityWarning
			case hasNormal && idle >= inputIdleWarn && dl-bdl >= inputRise && dl >= 2*bdl:
				sev = traces.SeverityWarning
			default:
				continue
			}
			idleSec := float64(g.idle) * g.perSample()
			ev := []traces.Metric{
				metric("gpu_idle_share", idle, unitRatio),
				metric("gpu_idle_seconds", idleSec, unitSeconds),
				metric("cpu_data_loading_share", dl, unitRatio),
				metric("cpu_samples", c.total, unitCount),
			}
			if hasNormal {
				ev = append(ev, metric("cpu_data_loading_share_normal", bdl, unitRatio), metric("cpu_samples_normal", b.total, unitCount))
			}
			f.Targets = append(f.Targets, target{Host: h, GPU: h.RankGPU(rank), Rank: rank, Severity: sev, Lost: idleSec * dl, Evidence: ev})
		}
	}
	f.report(pass)
	return nil
}

// cpuLoad is one rank's CPU samples, and how many of them load data.
type cpuLoad struct{ total, loading float64 }

// profileLoad splits a CPU profile by rank (key -1: the whole host).
func profileLoad(h *Host, p *profile.Profile) map[int]cpuLoad {
	vi := valueIndex(p)
	pidRank := map[int64]int{}
	for _, pr := range h.Manifest.Processes {
		pidRank[int64(pr.PID)] = pr.Rank
	}
	isLoad := map[*profile.Location]bool{}
	loading := func(s *profile.Sample) bool {
		for _, loc := range s.Location {
			v, ok := isLoad[loc]
			if !ok {
				v = locationLoads(loc)
				isLoad[loc] = v
			}
			if v {
				return true
			}
		}
		return false
	}
	out := map[int]cpuLoad{}
	for _, s := range p.Sample {
		if vi >= len(s.Value) {
			continue
		}
		v := float64(s.Value[vi])
		l := 0.0
		if loading(s) {
			l = v
		}
		add := func(r int) {
			c := out[r]
			c.total += v
			c.loading += l
			out[r] = c
		}
		add(-1)
		if r := sampleRank(s, pidRank); r >= 0 {
			add(r)
		}
	}
	return out
}

// valueIndex picks the sample value to weigh by: sample counts if present,
// else CPU time, else the last value.
func valueIndex(p *profile.Profile) int {
	for _, want := range []string{"samples", "cpu"} {
		for i, st := range p.SampleType {
			if st.Type == want {
				return i
			}
		}
	}
	return len(p.SampleType) - 1
}

// sampleRank is the rank a sample belongs to, from its labels, or -1.
func sampleRank(s *profile.Sample, pidRank map[int64]int) int {
	if v, ok := s.NumLabel["rank"]; ok && len(v) > 0 {
		return int(v[0])
	}
	if v, ok := s.Label["rank"]; ok && len(v) > 0 {
		if r, err := strconv.Atoi(v[0]); err == nil {
			return r
		}
	}
	pid := int64(-1)
	if v, ok := s.NumLabel["pid"]; ok && len(v) > 0 {
		pid = v[0]
	} else if v, ok := s.Label["pid"]; ok && len(v) > 0 {
		pid, _ = strconv.ParseInt(v[0], 10, 64)
	}
	if r, ok := pidRank[pid]; ok {
		return r
	}
	return -1
}

// locationLoads reports whether any frame of loc matches DataLoadingFrames.
func locationLoads(loc *profile.Location) bool {
	names := make([]string, 0, 2*len(loc.Line)+1)
	if loc.Mapping != nil {
		names = append(names, loc.Mapping.File)
	}
	for _, ln := range loc.Line {
		if ln.Function != nil {
			names = append(names, ln.Function.Name, ln.Function.Filename)
		}
	}
	for _, n := range names {
		for _, pat := range DataLoadingFrames {
			if strings.Contains(n, pat) {
				return true
			}
		}
	}
	return false
}
