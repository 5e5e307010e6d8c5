package analyzers

import (
	"strings"
)

// KernelClass is what a GPU event does, by HTA's name rules
// (hta/common/types.py), so that Loupe's breakdowns match HTA's.
type KernelClass uint8

// Kernel classes. Communication is tested first, then memory, then the
// names HTA excludes from computation; the rest is computation.
const (
	ClassComputation   KernelClass = iota // everything not matched below
	ClassCommunication                    // ^nccl (ncclKernel_* and NCCL 2.19+ ncclDevKernel_*), ^hccl, ^hip, or containing ncclKernel
	ClassMemory                           // ^Memcpy, ^Memset, ^dma
	ClassOther                            // synchronization and other non-kernel GPU events (e.g. "Stream Sync", "Stream Wait Event")
	numClasses
)

var classNames = [numClasses]string{"computation", "communication", "memory", "other"}

// String names the class as reports show it.
func (c KernelClass) String() string {
	if c < numClasses {
		return classNames[c]
	}
	return "unknown"
}

// ClassifyKernel returns the class of a GPU event by its name.
func ClassifyKernel(name string) KernelClass {
	if strings.HasPrefix(name, "nccl") || strings.HasPrefix(name, "hip") || strings.HasPrefix(name, "hccl") ||
		strings.Contains(name, "ncclKernel") {
		return ClassCommunication
	}
	// HTA's memory rule also names hipMemcpy/hipMemset, but its communication
	// rule (^hip) claims them first.
	if strings.HasPrefix(name, "Memcpy") || strings.HasPrefix(name, "Memset") || strings.HasPrefix(name, "dma") {
		return ClassMemory
	}
	if strings.Contains(name, "Memcpy") || strings.Contains(name, "Memset") || strings.Contains(name, "dma") ||
		strings.Contains(name, "Sync") || strings.HasPrefix(name, "Stream Wait Event") ||
		strings.HasPrefix(name, "cuda") && strings.Contains(name[4:], "LaunchKernel") {
		return ClassOther
	}
	for _, p := range [...]string{"runFunction", "job_exe", "packet", "pe_exe", "cpum_exe_subgraph", "collective_subgraph_execution"} {
		if strings.HasPrefix(name, p) {
			return ClassOther
		}
	}
	return ClassComputation
}

// LaunchAPI is the host call that put a GPU event on a stream.
type LaunchAPI uint8

// Launch APIs the launch-overhead analysis recognises. HTA itself only
// matches cudaLaunchKernel and cudaLaunchKernelExC (its issues #61, #271,
// #290); driver-API launches and CUDA graph launches are counted here too.
const (
	APINone LaunchAPI = iota
	APICudaLaunchKernel
	APICudaLaunchKernelExC
	APICuLaunchKernel
	APICuLaunchKernelEx
	APICudaGraphLaunch
	APICudaMemcpyAsync
	APICudaMemsetAsync
	numAPIs
)

var apiNames = [numAPIs]string{"", "cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel",
	"cuLaunchKernelEx", "cudaGraphLaunch", "cudaMemcpyAsync", "cudaMemsetAsync"}

// String is the API's function name.
func (a LaunchAPI) String() string {
	if a < numAPIs {
		return apiNames[a]
	}
	return "unknown"
}

// launchAPI maps a runtime or driver event name to its API, ignoring a
// CUPTI version suffix such as "_v7000" or "_ptsz".
func launchAPI(name []byte) LaunchAPI {
	n := string(name)
	if i := strings.Index(n, "_v"); i > 0 && strings.Trim(n[i+2:], "0123456789") == "" {
		n = n[:i]
	}
	n = strings.TrimSuffix(n, "_ptsz")
	for a := APICudaLaunchKernel; a < numAPIs; a++ {
		if n == apiNames[a] {
			return a
		}
	}
	return APINone
}

// kernelLaunch reports whether a is a kernel launch (rather than an
// asynchronous copy or set).
func (a LaunchAPI) kernelLaunch() bool { return a >= APICudaLaunchKernel && a <= APICudaGraphLaunch }

// isGPUCategory reports whether an event category is a GPU activity that
// occupies a stream (HTA's idle-time analysis keeps only these; "cuda_sync"
// and annotations are left out).
func isGPUCategory(cat []byte) bool {
	switch string(cat) {
	case "kernel", "Kernel", "gpu_memcpy", "Memcpy", "gpu_memset", "Memset":
		return true
	}
	return false
}

// profilerStep reports whether a CPU event marks a torch.profiler
// iteration: its name is "ProfilerStep#<n>".
func profilerStep(name []byte) (int64, bool) {
	const prefix = "ProfilerStep#"
	if len(name) <= len(prefix) || string(name[:len(prefix)]) != prefix {
		return 0, false
	}
	var n int64
	for _, c := range name[len(prefix):] {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int64(c-'0')
		if n > 1<<40 {
			break
		}
	}
	return n, true
}

// Matmul-class and tensor-core kernel name fragments, for KernelMix. cuBLAS,
// cuDNN and CUTLASS name their tensor-core kernels after the MMA shape or
// instruction (h884, s1688, 16816, tensorop, xmma, gmma); SIMT kernels
// (sgemm, simt) run on the FP pipes.
var (
	matmulFragments     = []string{"gemm", "Gemm", "GEMM", "gemv", "conv", "Conv", "cutlass", "cublas", "matmul", "attention", "Attention", "flash", "fmha", "xmma"}
	tensorCoreFragments = []string{"tensorop", "xmma", "gmma", "hmma", "HMMA", "884", "1688", "16816", "flash", "fmha", "_tc"}
)

func containsAny(s string, parts []string) bool {
	for _, p := range parts {
		if strings.Contains(s, p) {
			return true
		}
	}
	return false
}

// kinetoKernelMix gives TensorUnderuse each rank's kernel time by class.
func kinetoKernelMix(pass *Pass) ([]KernelMix, error) {
	ranks, _, err := kinetoRanks(pass)
	if err != nil {
		return nil, err
	}
	var out []KernelMix
	for _, r := range ranks {
		m := KernelMix{Host: r.Host, Rank: r.Rank}
		for _, k := range r.Kernels {
			if k.Class != ClassComputation && k.Class != ClassCommunication {
				continue
			}
			sec := k.Total.Seconds()
			m.Total += sec
			if k.Class == ClassComputation && containsAny(k.Name, matmulFragments) {
				m.Matmul += sec
				if containsAny(k.Name, tensorCoreFragments) {
					m.MatmulTensorCore += sec
				}
			}
		}
		out = append(out, m)
	}
	return out, nil
}

func init() { KernelMixSource = kinetoKernelMix }
