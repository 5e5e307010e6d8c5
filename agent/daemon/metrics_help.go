package daemon

import "github.com/loupe-dev/loupe/traces/promtext"

// metricsHelp is the HELP text of every metric family the agent serves,
// whichever package registers it (Go and process metrics come from
// promtext.RuntimeHelp). A new metric gets its line here, in the words of
// its README entry; TestMetricsHelp fails for a family that has none.
var metricsHelp = promtext.Help{
	// dcgm-exporter compatible, per GPU (labels gpu, UUID, device, modelName, Hostname, ...).
	"DCGM_FI_DEV_SM_CLOCK":                 "SM clock frequency (in MHz).",
	"DCGM_FI_DEV_MEM_CLOCK":                "Memory clock frequency (in MHz).",
	"DCGM_FI_DEV_MEMORY_TEMP":              "Memory temperature (in C).",
	"DCGM_FI_DEV_GPU_TEMP":                 "GPU temperature (in C).",
	"DCGM_FI_DEV_POWER_USAGE":              "Power draw (in W).",
	"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": "Total energy consumption since the driver was loaded (in mJ).",
	"DCGM_FI_DEV_PCIE_TX_THROUGHPUT":       "PCIe transmit throughput (in KB/s), from NVML.",
	"DCGM_FI_DEV_PCIE_RX_THROUGHPUT":       "PCIe receive throughput (in KB/s), from NVML.",
	"DCGM_FI_DEV_GPU_UTIL":                 "GPU utilization (in %): share of time a kernel ran, not how busy the SMs were.",
	"DCGM_FI_DEV_MEM_COPY_UTIL":            "Memory utilization (in %): share of time device memory was read or written.",
	"DCGM_FI_DEV_FB_FREE":                  "Framebuffer memory free (in MiB).",
	"DCGM_FI_DEV_FB_USED":                  "Framebuffer memory used (in MiB).",
	"DCGM_FI_DEV_FB_TOTAL":                 "Framebuffer memory total (in MiB).",
	"DCGM_FI_DEV_CLOCKS_EVENT_REASONS":     "Current clock event (throttle) reasons, NVML's bit mask (32 software thermal, 64 hardware thermal, 4 power cap).",
	"DCGM_FI_DEV_ECC_SBE_AGG_TOTAL":        "Single-bit ECC errors since the counters were last cleared.",
	"DCGM_FI_DEV_ECC_DBE_AGG_TOTAL":        "Double-bit ECC errors since the counters were last cleared.",
	"DCGM_FI_DEV_XID_ERRORS":               "Value of the last XID error seen on the GPU (0: none).",
	"DCGM_FI_PROF_GR_ENGINE_ACTIVE":        "Ratio of time the graphics engine was active (DCGM profiling).",
	"DCGM_FI_PROF_SM_ACTIVE":               "Ratio of cycles an SM had at least one warp assigned (DCGM profiling).",
	"DCGM_FI_PROF_SM_OCCUPANCY":            "Ratio of resident warps to the SMs' maximum (DCGM profiling).",
	"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE":      "Ratio of cycles the tensor pipes were active (DCGM profiling).",
	"DCGM_FI_PROF_DRAM_ACTIVE":             "Ratio of cycles the device memory interface was active (DCGM profiling).",
	"DCGM_FI_PROF_PIPE_FP64_ACTIVE":        "Ratio of cycles the FP64 pipes were active (DCGM profiling).",
	"DCGM_FI_PROF_PIPE_FP32_ACTIVE":        "Ratio of cycles the FP32 pipes were active (DCGM profiling).",
	"DCGM_FI_PROF_PIPE_FP16_ACTIVE":        "Ratio of cycles the FP16 pipes were active (DCGM profiling).",
	"DCGM_FI_PROF_PCIE_TX_BYTES":           "PCIe transmit rate, header and payload (in bytes/s, DCGM profiling).",
	"DCGM_FI_PROF_PCIE_RX_BYTES":           "PCIe receive rate, header and payload (in bytes/s, DCGM profiling).",
	"DCGM_FI_PROF_NVLINK_TX_BYTES":         "NVLink transmit rate (in bytes/s, DCGM profiling).",
	"DCGM_FI_PROF_NVLINK_RX_BYTES":         "NVLink receive rate (in bytes/s, DCGM profiling).",

	// dcgm-exporter's default counters beyond the samples.
	"DCGM_FI_DEV_PCIE_REPLAY_COUNTER":         "PCIe replays (retries) since the driver was loaded.",
	"DCGM_FI_DEV_ENC_UTIL":                    "Video encoder utilization (in %).",
	"DCGM_FI_DEV_DEC_UTIL":                    "Video decoder utilization (in %).",
	"DCGM_FI_DEV_FB_RESERVED":                 "Framebuffer memory the driver reserves (in MiB).",
	"DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL":      "NVLink data sent and received over all links since the driver was loaded (in bytes).",
	"DCGM_FI_DEV_VGPU_LICENSE_STATUS":         "vGPU license status: 1 licensed, 0 not (vGPUs only).",
	"DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS":   "Memory rows remapped for correctable errors.",
	"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": "Memory rows remapped for uncorrectable errors.",
	"DCGM_FI_DEV_ROW_REMAP_FAILURE":           "1 when a memory row remapping failed.",

	// The agent itself.
	"loupe_agent_info":                   "Always 1; labels name the agent's version, host and cluster.",
	"loupe_agent_start_time_seconds":     "When the agent started (Unix seconds).",
	"loupe_collector_up":                 "1 when the collector runs, 0 when it could not start (the log says why).",
	"loupe_captures_in_progress":         "Captures waiting for their window or being written.",
	"loupe_latency_points_dropped_total": "Request latency values dropped because the ring of recent values was full.",

	// GPUs.
	"loupe_gpu_devices":                   "NVIDIA GPUs the agent samples (0 on a host without GPUs).",
	"loupe_gpu_unavailable":               "1 with the reason when the agent found no usable GPU (e.g. driver_library_not_found).",
	"loupe_gpu_lost":                      "1 when the GPU fell off the bus or stopped answering NVML.",
	"loupe_gpu_samples_total":             "GPU samples taken, all devices together.",
	"loupe_gpu_missed_ticks_total":        "Sampling ticks skipped because sampling fell behind.",
	"loupe_gpu_sampling_lag_seconds":      "How late the last sampling tick ran.",
	"loupe_gpu_sampling_duration_seconds": "How long the last sampling pass over every device took.",
	"loupe_gpu_sampling_hz":               "Current GPU sampling rate (1 Hz steady, higher inside a capture window).",
	"loupe_gpu_collector_errors_total":    "Failed GPU reads by source (nvml, dcgm, events).",
	"loupe_gpu_events_total":              "GPU events seen by kind (xid, ecc, gpu_lost).",
	"loupe_dcgm_available":                "1 when the DCGM profiling fields are collected; the reason label says why not.",
	"loupe_dcgm_profiling_paused":         "1 while DCGM profiling is paused (for Nsight) through the agent's API.",

	// CPU profiles (eBPF).
	"loupe_cpuprof_samples_total":               "CPU stack samples taken by the eBPF profiler.",
	"loupe_cpuprof_lost_samples_total":          "CPU stack samples lost, by reason.",
	"loupe_cpuprof_unwind_processes_total":      "Processes described to the BPF unwinder (maps, unwind tables, interpreter).",
	"loupe_cpuprof_unwind_tables_full_total":    "Objects left without unwind rows because the rows map was full; their frames follow frame pointers.",
	"loupe_cpuprof_unwind_rows":                 "Unwind rows in the kernel map.",
	"loupe_cpuprof_unwind_rows_capacity":        "Capacity of the kernel map of unwind rows (cpu.unwind_rows).",
	"loupe_cpuprof_unwind_mappings":             "Executable mappings of described processes in the kernel map.",
	"loupe_cpuprof_unwind_mappings_capacity":    "Capacity of the kernel map of process mappings (cpu.unwind_mappings).",
	"loupe_cpuprof_unwind_processes_full_total": "Processes left undescribed because the mappings map was full; their stacks follow frame pointers.",
	"loupe_cpuprof_python_unsupported_total":    "CPython interpreters whose version has no known frame layout (native frames only).",

	// NCCL (eBPF uprobes).
	"loupe_nccl_events_total":                    "NCCL calls seen, by operation.",
	"loupe_nccl_lost_events_total":               "NCCL calls lost because the kernel ring buffer was full.",
	"loupe_nccl_load_events_total":               "Exec and dynamic-loader events that made the agent look at a process's libraries.",
	"loupe_nccl_plugin_events_total":             "Collective and point-to-point records received from the NCCL profiler plugin.",
	"loupe_nccl_plugin_lost_events_total":        "Records the NCCL profiler plugins dropped (queue full, no agent, agent busy), as they report.",
	"loupe_nccl_plugin_bad_datagrams_total":      "Datagrams on the plugin socket that were not valid plugin batches.",
	"loupe_nccl_hangs_total":                     "NCCL hangs detected (one hang capture each).",
	"loupe_nccl_hang_recoveries_total":           "Hung communicators that made progress again.",
	"loupe_nccl_subscriber_dropped_events_total": "NCCL calls a slow reader of the live stream did not get.",
	"loupe_nccl_attached_processes":              "Processes whose libnccl has the uprobes attached.",
	"loupe_nccl_tracked_communicators":           "NCCL communicators the eBPF program tracks.",

	// Kineto (dynolog-compatible daemon).
	"loupe_kineto_processes":              "PyTorch processes registered over Kineto's IPC.",
	"loupe_kineto_ipc_messages_total":     "Kineto IPC messages received, by type.",
	"loupe_kineto_ipc_malformed_total":    "Kineto IPC messages that could not be parsed.",
	"loupe_kineto_ipc_reply_errors_total": "Kineto IPC replies that could not be sent.",
	"loupe_kineto_rpc_requests_total":     "dyno CLI requests on the RPC port, by function.",
	"loupe_kineto_rpc_rejected_total":     "dyno CLI requests refused, by reason.",
	"loupe_kineto_traces_triggered_total": "Kineto traces requested from PyTorch processes.",

	// Steps.
	"loupe_step_time_seconds": "Step (iteration) time per rank over the recent window, quantiles 0.5 and 0.99.",
	"loupe_step_time_cv":      "Coefficient of variation of the recent step times per rank.",
	"loupe_step_iteration":    "Latest iteration seen per rank.",
	"loupe_steps_total":       "Steps seen per rank, by source (marker, kineto, nccl).",

	// Logs.
	"loupe_logtail_files":                        "Log files being followed.",
	"loupe_logtail_lines_total":                  "Log lines read.",
	"loupe_logtail_lines_truncated_total":        "Log lines cut at the line length limit.",
	"loupe_logtail_events_total":                 "Events (faults, rebalances) recognised in logs.",
	"loupe_logtail_events_dropped_total":         "Log events dropped because the ring of recent events was full.",
	"loupe_logtail_history_events_dropped_total": "Oldest historical log events (of files found after start-up) dropped because more than logs.max_events waited to ship.",
	"loupe_logtail_rotations_total":              "Log rotations and truncations followed.",
	"loupe_logtail_errors_total":                 "Errors reading log files.",

	// Spool and upload.
	"loupe_spool_entries":           "Committed captures waiting in the spool for upload.",
	"loupe_spool_bytes":             "Bytes in the spool.",
	"loupe_spool_evicted_total":     "Captures evicted from the spool to stay under spool_max_bytes.",
	"loupe_spool_quarantined_total": "Spool entries that failed their checksums and were moved to quarantine.",
	"loupe_upload_bytes_total":      "Bytes uploaded to the store.",
	"loupe_upload_parts_total":      "Parts uploaded to the store.",
	"loupe_upload_captures_total":   "Captures uploaded and committed in the store.",
	"loupe_upload_errors_total":     "Failed uploads (retried with backoff).",
	"loupe_upload_retries_total":    "Upload retries.",
	"loupe_upload_duration_seconds": "Time to upload one capture.",
}
