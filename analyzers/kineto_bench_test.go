package analyzers

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"testing"
	"time"
)

// writeSyntheticKineto streams a realistic Kineto trace of about size bytes
// to w, laid out as torch.profiler writes it: header, the CPU section
// (ProfilerStep annotations and cpu_ops with their argument lists), then
// runtime launches interleaved with the GPU work they start: GEMMs and
// elementwise kernels on stream 7, NCCL collectives (ncclDevKernel_*) on
// stream 20, memcpys; every 64th launch is a CUDA graph launch of 4 kernels.
func writeSyntheticKineto(w io.Writer, rank int, size int64) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	const unitsPerStep = 2000
	// One unit is one CPU op, one launch and one kernel, plus the extras
	// averaged in; measure it once to size the trace.
	var probe bytes.Buffer
	for u := range 64 {
		cpuUnit(&probe, u, rank)
		gpuUnit(&probe, u, rank)
	}
	units := int(size * 64 / int64(probe.Len()))
	fmt.Fprintf(bw, `{
  "schemaVersion": 1,
  "deviceProperties": [{"id": 0, "name": "NVIDIA H100 80GB HBM3", "totalGlobalMem": 85029158912, "computeMajor": 9, "computeMinor": 0}],
  "distributedInfo": {"backend": "nccl", "rank": %d, "world_size": 8, "pg_count": 1, "pg_config": [], "nccl_version": "2.21.5"},
  "record_shapes": 1,
  "traceEvents": [
  {"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": "python"}}`, rank)
	for u := range units {
		if u%unitsPerStep == 0 {
			fmt.Fprintf(bw, `,
  {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#%d", "pid": 4242, "tid": 4242, "ts": %s, "dur": %s, "args": {"External id": %d}}`,
				u/unitsPerStep, usec(unitTs(u)), usec(unitsPerStep*unitLen), u)
		}
		cpuUnit(bw, u, rank)
	}
	for u := range units {
		gpuUnit(bw, u, rank)
	}
	bw.WriteString("\n  ],\n  \"traceName\": \"synthetic.pt.trace.json\", \"displayTimeUnit\": \"ms\", \"baseTimeNanoseconds\": 1700000000000000000\n}\n")
	return bw.Flush()
}

// unitLen is the time one unit takes, in ns.
const unitLen = 40_000

func unitTs(u int) int64 { return 1_000_000 + int64(u)*unitLen }

// usec formats ns as Kineto's microseconds with three decimals.
func usec(ns int64) string {
	return strconv.FormatInt(ns/1000, 10) + "." + fmt.Sprintf("%03d", ns%1000)
}

func cpuUnit(w io.Writer, u, rank int) {
	ts := unitTs(u)
	fmt.Fprintf(w, `,
  {
    "ph": "X", "cat": "cpu_op", "name": "aten::addmm", "pid": 4242, "tid": 4242,
    "ts": %s, "dur": 28.517,
    "args": {
      "External id": %d, "Record function id": 0, "Sequence number": %d, "Fwd thread id": 0, "Ev Idx": %d,
      "Input Dims": [[4096], [64, 1024], [1024, 4096], [], []], "Input type": ["float", "float", "float", "Scalar", "Scalar"],
      "Input Strides": [[1], [1024, 1], [1, 1024], [], []], "Concrete Inputs": ["", "", "", "1", "1"]
    }
  }`, usec(ts+500), u, u, u)
}

func gpuUnit(w io.Writer, u, rank int) {
	ts := unitTs(u)
	corr := 10 * u
	api, graph := "cudaLaunchKernel", u%64 == 0
	if graph {
		api = "cudaGraphLaunch"
	}
	fmt.Fprintf(w, `,
  {"ph": "X", "cat": "cuda_runtime", "name": "%s", "pid": 4242, "tid": 4242, "ts": %s, "dur": 7.153, "args": {"External id": %d, "cbid": 211, "correlation": %d}}`,
		api, usec(ts+2000), u, corr)
	kernels := 1
	if graph {
		kernels = 4
	}
	start := ts + 12_000
	for k := range kernels {
		name, d := "void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_128x128_16x5_tn_align4>(cutlass_80_tensorop_s1688gemm_128x128_16x5_tn_align4::Params)", int64(14_250)
		if u%3 == 1 || k > 0 {
			name, d = "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&, at::native::GeluType)::{lambda()#1}::operator()() const::{lambda()#2}::operator()() const::{lambda(float)#1}, at::detail::Array<char*, 2> >(int, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&, at::native::GeluType)::{lambda()#1}::operator()() const::{lambda()#2}::operator()() const::{lambda(float)#1}, at::detail::Array<char*, 2>)", 3_100
		}
		fmt.Fprintf(w, `,
  {
    "ph": "X", "cat": "kernel", "name": "%s", "pid": 0, "tid": 7,
    "ts": %s, "dur": %s,
    "args": {
      "External id": %d, "queued": 0, "device": 0, "context": 1, "stream": 7, "correlation": %d, "registers per thread": 128,
      "shared memory": 81920, "blocks per SM": 1.2, "warps per SM": 4.8, "grid": [16, 8, 1], "block": [128, 1, 1], "est. achieved occupancy %%": 6
    }
  }`, name, usec(start), usec(d), u, corr)
		start += d + 500
	}
	if u%4 == 0 {
		fmt.Fprintf(w, `,
  {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 4242, "tid": 4243, "ts": %s, "dur": 5.210, "args": {"External id": %d, "cbid": 211, "correlation": %d}},
  {
    "ph": "X", "cat": "kernel", "name": "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "pid": 0, "tid": 20,
    "ts": %s, "dur": 60.000,
    "args": {
      "External id": %d, "queued": 0, "device": 0, "context": 1, "stream": 20, "correlation": %d, "registers per thread": 96,
      "shared memory": 0, "grid": [2, 1, 1], "block": [640, 1, 1], "Collective name": "allreduce", "In msg nelems": 1048576,
      "Out msg nelems": 1048576, "Group size": 8, "dtype": "Float", "Process Group Name": "0", "Process Group Ranks": "[0, 1, 2, 3, 4, 5, 6, 7]", "Rank": %d
    }
  }`, usec(ts+3000), u, corr+1, usec(ts+20_000), u, corr+1, rank)
	}
	if u%8 == 0 {
		fmt.Fprintf(w, `,
  {"ph": "X", "cat": "cuda_runtime", "name": "cudaMemcpyAsync", "pid": 4242, "tid": 4242, "ts": %s, "dur": 9.000, "args": {"External id": %d, "cbid": 41, "correlation": %d}},
  {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pinned -> Device)", "pid": 0, "tid": 7, "ts": %s, "dur": 4.000, "args": {"External id": %d, "device": 0, "context": 1, "stream": 7, "correlation": %d, "bytes": 1048576, "memory bandwidth (GB/s)": 262.1}}`,
			usec(ts+30_000), u, corr+2, usec(ts+34_000), u, corr+2)
	}
}

// synthetic writes a folder of n synthetic traces of size bytes each.
func synthetic(b *testing.B, n int, size int64) string {
	b.Helper()
	dir := b.TempDir()
	for r := range n {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("rank%d.1700000000.pt.trace.json", r)))
		if err != nil {
			b.Fatal(err)
		}
		if err := writeSyntheticKineto(f, r, size); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
	return dir
}

// heapPeak samples the live heap every few milliseconds until stop.
func heapPeak() (stop func() uint64) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
	var peak uint64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(sample)
			peak = max(peak, sample[0].Value.Uint64()+sample[1].Value.Uint64())
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		<-finished
		return peak
	}
}

func benchKinetoFolder(b *testing.B, n int, size int64) {
	dir := synthetic(b, n, size)
	in, err := KinetoFolderInput(dir)
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, p := range in.Hosts[0].Manifest.Parts {
		total += p.Size
	}
	runtime.GC()
	b.SetBytes(total)
	b.ResetTimer()
	var peak uint64
	var events int64
	for b.Loop() {
		// A fresh Input each time, as the aggregator gives each capture.
		in, _ := KinetoFolderInput(dir)
		stop := heapPeak()
		fs, err := Run(context.Background(), in, []*Analyzer{KinetoTemporal, KinetoKernels, KinetoIdle, KinetoLaunch, KinetoOverlap})
		peak = max(peak, stop())
		if err != nil || len(fs) == 0 {
			b.Fatalf("%d findings, %v", len(fs), err)
		}
		ranks, _, _ := kinetoRanks(&Pass{Context: context.Background(), Input: in})
		events = 0
		for _, r := range ranks {
			events += r.Events
		}
	}
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
	b.ReportMetric(float64(events)/float64(n), "events/trace")
}

// BenchmarkKinetoFolder analyzes a folder of 8 traces of 200 MB each with
// all five Kineto analyzers (one reading shared by them).
func BenchmarkKinetoFolder(b *testing.B) { benchKinetoFolder(b, 8, 200<<20) }

// BenchmarkKinetoTrace1GB analyzes one 1 GB trace; compare its peak heap
// with BenchmarkKinetoTrace200MB: memory does not grow with the trace.
func BenchmarkKinetoTrace1GB(b *testing.B) { benchKinetoFolder(b, 1, 1<<30) }

// BenchmarkKinetoTrace200MB is one trace of 200 MB.
func BenchmarkKinetoTrace200MB(b *testing.B) { benchKinetoFolder(b, 1, 200<<20) }
