//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
//
// CPU stack sampler. Attached to one software CPU-clock perf event per online
// CPU, it records the current thread's process id, thread name and its user
// and kernel stacks, and counts samples per distinct (tgid, comm, user stack,
// kernel stack) in the kernel, so user space only reads aggregated counts.
//
// Two map sets (counts0/stacks0 and counts1/stacks1) are used in turn: user
// space flips `buffer`, waits for in-flight samples to finish, then reads and
// clears the set the program no longer writes. Nothing is lost or counted
// twice while user space drains.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

// The kernel's default kernel.perf_event_max_stack, and the most frames a
// stack map entry can hold here.
#define MAX_STACK_DEPTH 127
#define TASK_COMM_LEN 16

// errno values returned by helpers (vmlinux.h carries no macros).
#define EFAULT 14
#define EEXIST 17
#define ENOMEM 12

// Why a sample was dropped; user space reports these as the reason label of
// loupe_cpuprof_lost_samples_total.
enum lost_reason {
	// bpf_get_stackid -EEXIST: another stack owns the hash bucket.
	LOST_STACK_COLLISION = 0,
	// bpf_get_stackid -ENOMEM: the stack map is full.
	LOST_STACK_FULL = 1,
	// The counts map is full.
	LOST_COUNTS_FULL = 2,
	// Any other helper error.
	LOST_OTHER = 3,
	LOST_REASONS = 4,
};

struct sample_key {
	__u32 tgid;
	// Negative when the sample has no such stack (a kernel thread has no
	// user stack; a sample taken in user mode has no kernel stack).
	__s32 user_stack_id;
	__s32 kernel_stack_id;
	char comm[TASK_COMM_LEN];
};

// Resized by the loader from the sampling rate, the CPU count and the drain
// interval.
#define STACK_MAP(name)                                                    \
	struct {                                                           \
		__uint(type, BPF_MAP_TYPE_STACK_TRACE);                    \
		__uint(key_size, sizeof(__u32));                           \
		__uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));       \
		__uint(max_entries, 4096);                                 \
	} name SEC(".maps")

#define COUNTS_MAP(name)                                                   \
	struct {                                                           \
		__uint(type, BPF_MAP_TYPE_HASH);                           \
		__type(key, struct sample_key);                            \
		__type(value, __u64);                                      \
		__uint(max_entries, 16384);                                \
	} name SEC(".maps")

STACK_MAP(stacks0);
STACK_MAP(stacks1);
COUNTS_MAP(counts0);
COUNTS_MAP(counts1);

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

// stack_lost maps a bpf_get_stackid error to a lost reason, or -1 when the
// error only means "no such stack".
static __always_inline int stack_lost(long id)
{
	if (id >= 0 || id == -EFAULT)
		return -1;
	if (id == -EEXIST)
		return LOST_STACK_COLLISION;
	if (id == -ENOMEM)
		return LOST_STACK_FULL;
	return LOST_OTHER;
}

static __always_inline int record(struct bpf_perf_event_data *ctx, struct sample_key *key,
				  void *stacks, void *counts)
{
	long kid = bpf_get_stackid(ctx, stacks, 0);
	long uid = bpf_get_stackid(ctx, stacks, BPF_F_USER_STACK);
	int reason = stack_lost(kid);
	if (reason < 0)
		reason = stack_lost(uid);
	if (reason >= 0) {
		count_lost(reason);
		return 0;
	}
	key->kernel_stack_id = kid;
	key->user_stack_id = uid;

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
	// The map arguments of bpf_get_stackid must be known to the verifier,
	// hence one call site per map set.
	if (buffer & 1)
		return record(ctx, &key, &stacks1, &counts1);
	return record(ctx, &key, &stacks0, &counts0);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
