package promtext

// RuntimeHelp describes the Go runtime and process families that
// VictoriaMetrics/metrics writes (metrics.WritePrometheus with process
// metrics, metrics.WriteProcessMetrics).
var RuntimeHelp = Help{
	"go_sched_latencies_seconds":          "Time goroutines spent runnable before they ran.",
	"go_mutex_wait_seconds_total":         "Time goroutines spent blocked on mutexes.",
	"go_gc_mark_assist_cpu_seconds_total": "CPU time goroutines spent assisting the garbage collector.",
	"go_gc_cpu_seconds_total":             "CPU time spent in the garbage collector.",
	"go_gc_pauses_seconds":                "Stop-the-world pauses of the garbage collector.",
	"go_scavenge_cpu_seconds_total":       "CPU time spent returning memory to the operating system.",
	"go_memlimit_bytes":                   "The Go runtime's soft memory limit (GOMEMLIMIT).",
	"go_memstats_alloc_bytes":             "Bytes of allocated heap objects.",
	"go_memstats_alloc_bytes_total":       "Bytes allocated for heap objects, cumulative.",
	"go_memstats_buck_hash_sys_bytes":     "Bytes of memory in profiling bucket hash tables.",
	"go_memstats_frees_total":             "Heap objects freed, cumulative.",
	"go_memstats_gc_cpu_fraction":         "Share of CPU time used by the garbage collector since the program started.",
	"go_memstats_gc_sys_bytes":            "Bytes of memory in garbage collection metadata.",
	"go_memstats_heap_alloc_bytes":        "Bytes of allocated heap objects.",
	"go_memstats_heap_idle_bytes":         "Bytes in idle (unused) heap spans.",
	"go_memstats_heap_inuse_bytes":        "Bytes in in-use heap spans.",
	"go_memstats_heap_objects":            "Allocated heap objects.",
	"go_memstats_heap_released_bytes":     "Bytes of physical memory returned to the operating system.",
	"go_memstats_heap_sys_bytes":          "Bytes of heap memory obtained from the operating system.",
	"go_memstats_last_gc_time_seconds":    "When the last garbage collection finished (Unix seconds).",
	"go_memstats_lookups_total":           "Pointer lookups by the runtime, cumulative.",
	"go_memstats_mallocs_total":           "Heap objects allocated, cumulative.",
	"go_memstats_mcache_inuse_bytes":      "Bytes of allocated mcache structures.",
	"go_memstats_mcache_sys_bytes":        "Bytes of memory obtained for mcache structures.",
	"go_memstats_mspan_inuse_bytes":       "Bytes of allocated mspan structures.",
	"go_memstats_mspan_sys_bytes":         "Bytes of memory obtained for mspan structures.",
	"go_memstats_next_gc_bytes":           "Heap size at which the next garbage collection starts.",
	"go_memstats_other_sys_bytes":         "Bytes of memory in other runtime allocations.",
	"go_memstats_stack_inuse_bytes":       "Bytes in stack spans.",
	"go_memstats_stack_sys_bytes":         "Bytes of stack memory obtained from the operating system.",
	"go_memstats_sys_bytes":               "Bytes of memory obtained from the operating system.",
	"go_cgo_calls_count":                  "Calls from Go to C, cumulative.",
	"go_cpu_count":                        "Logical CPUs usable by the process.",
	"go_gc_duration_seconds":              "Stop-the-world pause durations of the garbage collector, quantiles.",
	"go_gc_forced_count":                  "Garbage collections forced by the application, cumulative.",
	"go_gomaxprocs":                       "GOMAXPROCS: threads that can run Go code at once.",
	"go_goroutines":                       "Goroutines that currently exist.",
	"go_threads":                          "Operating system threads created by the runtime.",
	"go_info":                             "Always 1; the version label names the Go release the binary was built with.",
	"go_info_ext":                         "Always 1; labels name the compiler and GOOS/GOARCH the binary was built with.",

	"process_cpu_seconds_system_total":              "CPU time spent in the kernel on behalf of the process.",
	"process_cpu_seconds_total":                     "CPU time of the process, user and system.",
	"process_cpu_seconds_user_total":                "CPU time spent in user space.",
	"process_major_pagefaults_total":                "Page faults that needed disk I/O.",
	"process_minor_pagefaults_total":                "Page faults served without disk I/O.",
	"process_num_threads":                           "Operating system threads of the process.",
	"process_resident_memory_bytes":                 "Resident memory (RSS).",
	"process_start_time_seconds":                    "When the process started (Unix seconds).",
	"process_virtual_memory_bytes":                  "Virtual memory size.",
	"process_virtual_memory_peak_bytes":             "Peak virtual memory size.",
	"process_resident_memory_peak_bytes":            "Peak resident memory.",
	"process_resident_memory_anon_bytes":            "Resident anonymous memory (heap, stacks).",
	"process_resident_memory_file_bytes":            "Resident file-backed memory (binary, mapped files).",
	"process_resident_memory_shared_bytes":          "Resident shared memory.",
	"process_io_read_bytes_total":                   "Bytes read, including from the page cache.",
	"process_io_written_bytes_total":                "Bytes written, including to the page cache.",
	"process_io_read_syscalls_total":                "Read system calls.",
	"process_io_write_syscalls_total":               "Write system calls.",
	"process_io_storage_read_bytes_total":           "Bytes read from storage.",
	"process_io_storage_written_bytes_total":        "Bytes written to storage.",
	"process_pressure_cpu_waiting_seconds_total":    "Time some task of the process's cgroup waited for CPU (PSI).",
	"process_pressure_cpu_stalled_seconds_total":    "Time all tasks of the process's cgroup were stalled on CPU (PSI).",
	"process_pressure_io_waiting_seconds_total":     "Time some task of the process's cgroup waited for I/O (PSI).",
	"process_pressure_io_stalled_seconds_total":     "Time all tasks of the process's cgroup were stalled on I/O (PSI).",
	"process_pressure_memory_waiting_seconds_total": "Time some task of the process's cgroup waited for memory (PSI).",
	"process_pressure_memory_stalled_seconds_total": "Time all tasks of the process's cgroup were stalled on memory (PSI).",
	"process_cgroup_cpu_throttled_seconds_total":    "Time the process's cgroup was throttled by its CPU quota.",
}

// runtimeCounters are cumulative values (from /proc/<pid>/io) that
// VictoriaMetrics/metrics types as gauges; Write serves them as counters.
var runtimeCounters = map[string]bool{
	"process_io_read_bytes_total":            true,
	"process_io_written_bytes_total":         true,
	"process_io_read_syscalls_total":         true,
	"process_io_write_syscalls_total":        true,
	"process_io_storage_read_bytes_total":    true,
	"process_io_storage_written_bytes_total": true,
}

// RuntimeLintExcused are the runtime families whose names promtool
// flags; they keep VictoriaMetrics' names, which dashboards already use.
var RuntimeLintExcused = map[string]string{
	"go_cpu_count":       "a gauge named _count by VictoriaMetrics/metrics",
	"go_gc_forced_count": "a counter named _count by VictoriaMetrics/metrics",
	"go_cgo_calls_count": "a counter named _count by VictoriaMetrics/metrics",
}
