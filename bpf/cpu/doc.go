// Package cpu holds the eBPF CPU stack sampler and its thin Go loader: the C
// program (sampler.bpf.c), its bpf2go bindings (generated and committed so a
// plain go build needs no clang), and Sampler, which loads the program,
// attaches it to a CPU-clock perf event on each CPU and drains the in-kernel
// sample counts with raw stack addresses.
//
// The program unwinds user stacks without frame pointers, from unwind rows
// (per address range: how to find the caller's stack pointer and rbp) that
// user space compiles from each object's .eh_frame and loads with
// LoadTable, and per-process mapping lists given with SetProcess; it walks
// CPython's frame chain where the interpreter runs (PyOffsets) and reports
// processes it does not know yet through ReadEvent. Compiling the tables,
// symbolization and pprof output live in agent/cpuprof.
package cpu

// Regenerate the bindings with `go generate ./bpf/cpu` (needs clang, libbpf-dev
// and, to refresh vmlinux.h, bpftool):
//
//	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/cpu/vmlinux.h
//
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type sample_key -type row -type table -type mapping -type proc -type py_offsets Sampler sampler.bpf.c
