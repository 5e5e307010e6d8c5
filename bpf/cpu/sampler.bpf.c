//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
//
// CPU stack sampler. Attached to one software CPU-clock perf event per online
// CPU, it records the current thread's process id, thread name and its user
// and kernel stacks, and counts samples per distinct (tgid, comm, user stack,
// kernel stack) in the kernel, so user space only reads aggregated counts.
//
// Stacks are stored in a hash map keyed by a 64-bit hash of their frames,
// not in a BPF stack trace map: a stack trace map has one slot per hash
// bucket and drops any stack whose bucket is taken (-EEXIST), which loses
// samples on a busy machine however large the map; a hash map chains.
//
// Two map sets (counts0/stacks0 and counts1/stacks1) are used in turn: user
// space flips `buffer`, waits for in-flight samples to finish, then reads and
// clears the set the program no longer writes. Nothing is lost or counted
// twice while user space drains.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

// The kernel's default kernel.perf_event_max_stack, and the most frames a
// stack holds here.
#define MAX_STACK_DEPTH 127
#define TASK_COMM_LEN 16

// errno values returned by helpers (vmlinux.h carries no macros).
#define EFAULT 14
#define EEXIST 17

// Why a sample was dropped; user space reports these as the reason label of
// loupe_cpuprof_lost_samples_total.
enum lost_reason {
	// The stacks map is full.
	LOST_STACK_FULL = 0,
	// The counts map is full.
	LOST_COUNTS_FULL = 1,
	// bpf_get_stack failed for another reason than "no such stack".
	LOST_STACK_ERROR = 2,
	LOST_REASONS = 3,
};

struct stack {
	__u64 ips[MAX_STACK_DEPTH]; // leaf first, zero-filled after the last frame
};

struct sample_key {
	__u32 tgid;
	__u32 pad;
	// Hashes of the stacks in the stacks map; 0 when the sample has no
	// such stack (a kernel thread has no user stack; a sample taken in
	// user mode has no kernel stack).
	__u64 user_stack;
	__u64 kernel_stack;
	char comm[TASK_COMM_LEN];
};

// Resized by the loader from the sampling rate, the CPU count and the drain
// interval.
#define STACKS_MAP(name)                                                   \
	struct {                                                           \
		__uint(type, BPF_MAP_TYPE_HASH);                           \
		__type(key, __u64);                                        \
		__type(value, struct stack);                               \
		__uint(max_entries, 4096);                                 \
	} name SEC(".maps")

#define COUNTS_MAP(name)                                                   \
	struct {                                                           \
		__uint(type, BPF_MAP_TYPE_HASH);                           \
		__type(key, struct sample_key);                            \
		__type(value, __u64);                                      \
		__uint(max_entries, 16384);                                \
	} name SEC(".maps")

STACKS_MAP(stacks0);
STACKS_MAP(stacks1);
COUNTS_MAP(counts0);
COUNTS_MAP(counts1);

// Per-CPU room for the two stacks of the sample being taken (too large
// for the 512-byte BPF stack).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct stack);
	__uint(max_entries, 2);
} scratch SEC(".maps");

// Process ids (tgids) to sample when filter_pids is set.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u8);
	__uint(max_entries, 4096);
} pids SEC(".maps");

// Dropped samples per reason, per CPU so the program never contends.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, LOST_REASONS);
} lost SEC(".maps");

// Set by user space while the program runs.
volatile __u32 enabled;
volatile __u32 filter_pids;
volatile __u32 buffer;

static __always_inline void count_lost(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&lost, &reason);
	if (n)
		*n += 1;
}

// stack_hash hashes the frames of st (a multiply-xorshift mix per frame);
// never 0, which means "no stack".
static __always_inline __u64 stack_hash(struct stack *st)
{
	__u64 h = 0x9e3779b97f4a7c15ULL;
	for (int i = 0; i < MAX_STACK_DEPTH; i++) {
		__u64 ip = st->ips[i];
		if (!ip)
			break;
		h ^= ip;
		h *= 0xff51afd7ed558ccdULL;
		h ^= h >> 33;
	}
	return h ? h : 1;
}

// take_stack reads one stack into scratch slot `slot` and stores it in
// `stacks`; it returns its hash, 0 when there is no such stack, or -1 when
// the sample must be dropped (the drop is counted).
static __always_inline long take_stack(struct bpf_perf_event_data *ctx, __u32 slot, __u64 flags,
				       void *stacks, __u64 *hash)
{
	struct stack *st = bpf_map_lookup_elem(&scratch, &slot);
	if (!st)
		return -1;
	long n = bpf_get_stack(ctx, st, sizeof(*st), flags);
	*hash = 0;
	if (n == -EFAULT || n == 0)
		return 0;
	if (n < 0) {
		count_lost(LOST_STACK_ERROR);
		return -1;
	}
	*hash = stack_hash(st);
	long err = bpf_map_update_elem(stacks, hash, st, BPF_NOEXIST);
	if (err && err != -EEXIST) {
		count_lost(LOST_STACK_FULL);
		return -1;
	}
	return 0;
}

static __always_inline int record(struct bpf_perf_event_data *ctx, struct sample_key *key,
				  void *stacks, void *counts)
{
	if (take_stack(ctx, 0, BPF_F_USER_STACK, stacks, &key->user_stack) < 0)
		return 0;
	if (take_stack(ctx, 1, 0, stacks, &key->kernel_stack) < 0)
		return 0;

	__u64 *n = bpf_map_lookup_elem(counts, key);
	if (n) {
		__sync_fetch_and_add(n, 1);
		return 0;
	}
	__u64 one = 1;
	long err = bpf_map_update_elem(counts, key, &one, BPF_NOEXIST);
	if (err == -EEXIST) {
		// Another CPU inserted the same key first.
		n = bpf_map_lookup_elem(counts, key);
		if (n) {
			__sync_fetch_and_add(n, 1);
			return 0;
		}
	}
	if (err)
		count_lost(LOST_COUNTS_FULL);
	return 0;
}

SEC("perf_event")
int sample(struct bpf_perf_event_data *ctx)
{
	if (!enabled)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if ((__u32)id == 0)
		return 0; // the idle task
	if (filter_pids && !bpf_map_lookup_elem(&pids, &tgid))
		return 0;

	struct sample_key key = {};
	key.tgid = tgid;
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	// Map arguments must be known to the verifier: one call site per set.
	if (buffer & 1)
		return record(ctx, &key, &stacks1, &counts1);
	return record(ctx, &key, &stacks0, &counts0);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
