// Package gpu watches the host's NVIDIA GPUs for the agent.
//
// A Collector reads every device through NVML (go-nvml) and, when DCGM is
// present, the profiling fields 1001-1012 through go-dcgm. Samples go into a
// per-GPU ring buffer at a steady rate (1 Hz by default) that rises to the
// capture rate (10-100 Hz) while a capture window is open, so a capture can
// take its GPU samples table straight from the rings. XID, ECC and lost-GPU
// events are kept beside the samples.
//
// The package also serves the live view: dcgm-exporter compatible series
// (DCGM_FI_*) and the collector's own health (loupe_gpu_*, loupe_dcgm_*) in a
// VictoriaMetrics metrics.Set. A scrape only formats cached values; it never
// calls NVML or DCGM.
//
// A host without GPUs is a normal state: the Collector then has no devices
// and says why in loupe_gpu_unavailable. The simulator (Simulator) puts the
// same NVML code path on top of go-nvml's mock DGX H100 server, with values
// that move like a training job and problems that can be planted for demos.
package gpu
