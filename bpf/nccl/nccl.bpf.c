//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Uprobes on libnccl's host API. One entry program per NCCL function reads
// that function's arguments (x86-64 System V calling convention); its return
// program finishes the call (duration, result, the communicator handle
// written by the init functions) and sends a fixed-size record to user space
// through a ring buffer.

#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

// Older libbpf headers (Debian 12) stop at the fifth argument register.
#ifndef PT_REGS_PARM6
#define PT_REGS_PARM6(x) ((x)->r9)
#endif

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// Operation codes; agent/nccl maps them to names. Keep in sync with ops.go.
enum nccl_op {
	OP_COMM_INIT_RANK = 1,
	OP_COMM_INIT_RANK_CONFIG = 2,
	OP_COMM_INIT_ALL = 3,
	OP_ALL_REDUCE = 4,
	OP_ALL_GATHER = 5,
	OP_REDUCE_SCATTER = 6,
	OP_BROADCAST = 7,
	OP_REDUCE = 8,
	OP_ALL_TO_ALL = 9,
	OP_SEND = 10,
	OP_RECV = 11,
	OP_GROUP_START = 12,
	OP_GROUP_END = 13,
	OP_COMM_INIT_RANK_SCALABLE = 14,
	OP_COMM_SPLIT = 15,
};

// The attach cookie of ncclCommDestroy and ncclCommAbort in the
// uprobe_multi link: entry only, no op of their own.
#define COOKIE_COMM_DESTROY 100

// How a communicator's comm_id was found (event.flags, comm_info.flags).
enum comm_id_source {
	COMM_ID_INIT = 1,  // an init call: hash of the ncclUniqueId
	COMM_ID_SPLIT = 2, // ncclCommSplit of a known parent: parent id, split number, color
};

#define NCCL_UNIQUE_ID_BYTES 128
// ncclResult_t of a non-blocking init that goes on in the background: the
// handle is valid already.
#define NCCL_IN_PROGRESS 7
// ncclCommSplit's color for ranks that get no new communicator.
#define NCCL_SPLIT_NOCOLOR -1
// ncclCommInitAll creates one communicator per device of one process; more
// than this many devices in a single call are not reported.
#define MAX_INIT_ALL 64

// One NCCL call as user space sees it. Layout is shared with agent/nccl
// (decode.go); all fields are naturally aligned, no implicit padding.
struct event {
	__u64 time_ns;     // CLOCK_MONOTONIC at entry
	__u64 duration_ns; // entry to return
	__u64 comm;        // ncclComm_t handle (0 for group calls)
	__u64 comm_id;     // equal on every rank; 0 when the creation was not seen
	__u64 count;       // ncclCommSplit: the key
	__s64 seq;         // per communicator; -1 when not numbered
	__u32 pid;
	__u32 tid;
	__s32 rank;        // -1 when the init was not seen
	__s32 nranks;
	__s32 peer;        // Send/Recv peer, Broadcast/Reduce root, ncclCommSplit color, else -1
	__s32 datatype;    // ncclDataType_t, -1 when none
	__s32 redop;       // ncclRedOp_t, -1 when none
	__s32 result;      // ncclResult_t returned
	__u32 op;
	__u32 flags; // enum comm_id_source of comm_id, 0 when unknown
};

// A call between its entry and its return. Keyed by thread and op, because
// NCCL calls its own API: ncclCommInitAll runs ncclGroupStart/End inside.
struct inflight_key {
	__u64 pid_tgid;
	__u32 op;
	__u32 _pad;
};

struct inflight {
	struct event ev;
	__u64 out; // ncclComm_t* out-parameter of the init functions
};

struct comm_key {
	__u32 pid;
	__u32 _pad;
	__u64 comm;
};

struct comm_info {
	__u64 comm_id;
	__s32 rank;
	__s32 nranks;
	__s64 seq;     // next collective sequence number
	__s64 p2p_seq; // next Send/Recv sequence number
	__u64 splits;  // ncclCommSplit calls on it so far: the same count on every rank
	__u32 flags;   // enum comm_id_source
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20); // user space may resize before load
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct inflight_key);
	__type(value, struct inflight);
} inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct comm_key);
	__type(value, struct comm_info);
} comms SEC(".maps");

// Records that could not be sent because the ring buffer was full.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

// A process that may just have mapped libraries: it exec'd, or its dynamic
// loader announced a change of its link map. User space reads its maps.
enum load_kind {
	LOAD_EXEC = 1,   // sched_process_exec: the binary and its loader are mapped
	LOAD_LOADER = 2, // the loader's _dl_debug_state: dlopen, dlclose or startup
};

struct load {
	__u32 pid;
	__u32 kind; // enum load_kind
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 << 10);
} loads SEC(".maps");

// Processes user space already traces (it fills this map): their loader
// calls need no look.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} traced SEC(".maps");

// When each process last sent a loader record: at most one a millisecond,
// since a Python start makes hundreds of dlopen calls.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} last_load SEC(".maps");

// Force BTF for the record and op types so bpf2go can generate its Go twin.
const struct event *unused_event __attribute__((unused));
const enum nccl_op *unused_op __attribute__((unused));
const enum comm_id_source *unused_source __attribute__((unused));
const struct load *unused_load __attribute__((unused));
const enum load_kind *unused_load_kind __attribute__((unused));

// Stack argument n (7th and later, counted from 1) at function entry: the
// return address is at sp, the first stack argument at sp+8.
static __always_inline __u64 stack_arg(struct pt_regs *ctx, int n)
{
	__u64 v = 0;
	bpf_probe_read_user(&v, sizeof(v), (void *)(PT_REGS_SP(ctx) + 8 * (n - 6)));
	return v;
}

static __always_inline void begin(struct inflight *in, __u32 op)
{
	__u64 id = bpf_get_current_pid_tgid();

	in->ev.time_ns = bpf_ktime_get_ns();
	in->ev.pid = id >> 32;
	in->ev.tid = (__u32)id;
	in->ev.op = op;
	in->ev.seq = -1;
	in->ev.rank = -1;
	in->ev.nranks = -1;
	in->ev.peer = -1;
	in->ev.datatype = -1;
	in->ev.redop = -1;
}

static __always_inline int save(struct inflight *in)
{
	struct inflight_key key = { .pid_tgid = bpf_get_current_pid_tgid(), .op = in->ev.op };

	bpf_map_update_elem(&inflight, &key, in, BPF_ANY);
	return 0;
}

// A collective or point-to-point call on comm: look the communicator up (or
// register it as unknown when its init happened before we attached) and take
// the next sequence number.
static __always_inline int comm_call(__u32 op, __u64 comm, __u64 count, __s32 datatype,
				     __s32 redop, __s32 peer)
{
	struct inflight in = {};
	struct comm_key key = {};
	struct comm_info *ci;

	begin(&in, op);
	in.ev.comm = comm;
	in.ev.count = count;
	in.ev.datatype = datatype;
	in.ev.redop = redop;
	in.ev.peer = peer;

	key.pid = in.ev.pid;
	key.comm = comm;
	ci = bpf_map_lookup_elem(&comms, &key);
	if (!ci) {
		struct comm_info fresh = { .rank = -1, .nranks = -1 };

		bpf_map_update_elem(&comms, &key, &fresh, BPF_NOEXIST);
		ci = bpf_map_lookup_elem(&comms, &key);
	}
	if (ci) {
		in.ev.comm_id = ci->comm_id;
		in.ev.flags = ci->flags;
		in.ev.rank = ci->rank;
		in.ev.nranks = ci->nranks;
		if (op == OP_SEND || op == OP_RECV)
			in.ev.seq = __sync_fetch_and_add(&ci->p2p_seq, 1);
		else
			in.ev.seq = __sync_fetch_and_add(&ci->seq, 1);
	}
	return save(&in);
}

// FNV-1a over the 128-byte ncclUniqueId: equal on every rank of one
// communicator, so ranks can be matched across hosts without shipping the id.
static __always_inline __u64 hash_unique_id(const void *uid)
{
	__u8 buf[NCCL_UNIQUE_ID_BYTES];
	__u64 h = 0xcbf29ce484222325ULL;

	if (bpf_probe_read_user(buf, sizeof(buf), uid))
		return 0;
	for (int i = 0; i < NCCL_UNIQUE_ID_BYTES; i++) {
		h ^= buf[i];
		h *= 0x100000001b3ULL;
	}
	return h ? h : 1;
}

// ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank)
// and ncclCommInitRankConfig(..., int rank, ncclConfig_t* config): the
// 128-byte id is passed by value, in memory on the stack, so it takes no
// register and rank is the third integer argument.
static __always_inline int init_rank(struct pt_regs *ctx, __u32 op)
{
	struct inflight in = {};

	begin(&in, op);
	in.out = PT_REGS_PARM1(ctx);
	in.ev.nranks = (__s32)PT_REGS_PARM2(ctx);
	in.ev.rank = (__s32)PT_REGS_PARM3(ctx);
	in.ev.comm_id = hash_unique_id((void *)(PT_REGS_SP(ctx) + 8));
	in.ev.flags = in.ev.comm_id ? COMM_ID_INIT : 0;
	return save(&in);
}

static __noinline int comm_init_rank_entry(struct pt_regs *ctx)
{
	return init_rank(ctx, OP_COMM_INIT_RANK);
}

static __noinline int comm_init_rank_config_entry(struct pt_regs *ctx)
{
	return init_rank(ctx, OP_COMM_INIT_RANK_CONFIG);
}

// ncclCommInitRankScalable(ncclComm_t* newcomm, int nranks, int myrank,
// int nId, ncclUniqueId* commIds, ncclConfig_t* config): every rank passes
// the same ids in the same order, so the first one identifies the
// communicator.
static __noinline int comm_init_rank_scalable_entry(struct pt_regs *ctx)
{
	struct inflight in = {};

	begin(&in, OP_COMM_INIT_RANK_SCALABLE);
	in.out = PT_REGS_PARM1(ctx);
	in.ev.nranks = (__s32)PT_REGS_PARM2(ctx);
	in.ev.rank = (__s32)PT_REGS_PARM3(ctx);
	if ((__s32)PT_REGS_PARM4(ctx) > 0)
		in.ev.comm_id = hash_unique_id((void *)PT_REGS_PARM5(ctx));
	in.ev.flags = in.ev.comm_id ? COMM_ID_INIT : 0;
	return save(&in);
}

// ncclCommInitAll(ncclComm_t* comm, int ndev, const int* devlist): one
// process owns every rank; the communicator id is made from the process and
// the call time, which is unique and shared by the ranks of this call.
static __noinline int comm_init_all_entry(struct pt_regs *ctx)
{
	struct inflight in = {};

	begin(&in, OP_COMM_INIT_ALL);
	in.out = PT_REGS_PARM1(ctx);
	in.ev.nranks = (__s32)PT_REGS_PARM2(ctx);
	in.ev.comm_id = (((__u64)in.ev.pid << 32) ^ in.ev.time_ns) * 0x9e3779b97f4a7c15ULL;
	in.ev.flags = COMM_ID_INIT;
	return save(&in);
}

// ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t *newcomm,
// ncclConfig_t *config): a collective call on the parent, so every rank
// counts the parent's splits alike. The child's id mixes the parent's id,
// that count and the color, as NCCL's own commHash does: equal on the ranks
// that share a color, different for every other group and split.
static __noinline int comm_split_entry(struct pt_regs *ctx)
{
	struct inflight in = {};
	struct comm_key key = {};
	struct comm_info *ci;
	__s32 color = (__s32)PT_REGS_PARM2(ctx);

	begin(&in, OP_COMM_SPLIT);
	in.out = PT_REGS_PARM4(ctx);
	in.ev.peer = color;
	in.ev.count = (__u64)(__s64)(__s32)PT_REGS_PARM3(ctx);
	key.pid = in.ev.pid;
	key.comm = PT_REGS_PARM1(ctx);
	ci = bpf_map_lookup_elem(&comms, &key);
	if (ci) {
		__u64 n = __sync_fetch_and_add(&ci->splits, 1);

		if (ci->comm_id && color != NCCL_SPLIT_NOCOLOR) {
			__u64 h = ci->comm_id ^ ((n + 1) * 0x9e3779b97f4a7c15ULL);

			h ^= ((__u64)(__u32)color + 1) * 0xc2b2ae3d27d4eb4fULL;
			h ^= h >> 33;
			h *= 0xff51afd7ed558ccdULL;
			h ^= h >> 33;
			in.ev.comm_id = h ? h : 1;
			in.ev.flags = COMM_ID_SPLIT;
		}
	}
	return save(&in);
}

// ncclAllReduce(sendbuff, recvbuff, count, datatype, op, comm, stream)
static __noinline int all_reduce_entry(struct pt_regs *ctx)
{
	return comm_call(OP_ALL_REDUCE, PT_REGS_PARM6(ctx), PT_REGS_PARM3(ctx),
			 (__s32)PT_REGS_PARM4(ctx), (__s32)PT_REGS_PARM5(ctx), -1);
}

// ncclAllGather(sendbuff, recvbuff, sendcount, datatype, comm, stream)
static __noinline int all_gather_entry(struct pt_regs *ctx)
{
	return comm_call(OP_ALL_GATHER, PT_REGS_PARM5(ctx), PT_REGS_PARM3(ctx),
			 (__s32)PT_REGS_PARM4(ctx), -1, -1);
}

// ncclReduceScatter(sendbuff, recvbuff, recvcount, datatype, op, comm, stream)
static __noinline int reduce_scatter_entry(struct pt_regs *ctx)
{
	return comm_call(OP_REDUCE_SCATTER, PT_REGS_PARM6(ctx), PT_REGS_PARM3(ctx),
			 (__s32)PT_REGS_PARM4(ctx), (__s32)PT_REGS_PARM5(ctx), -1);
}

// ncclBroadcast(sendbuff, recvbuff, count, datatype, root, comm, stream)
static __noinline int broadcast_entry(struct pt_regs *ctx)
{
	return comm_call(OP_BROADCAST, PT_REGS_PARM6(ctx), PT_REGS_PARM3(ctx),
			 (__s32)PT_REGS_PARM4(ctx), -1, (__s32)PT_REGS_PARM5(ctx));
}

// ncclReduce(sendbuff, recvbuff, count, datatype, op, root, comm, stream):
// comm is the 7th argument, on the stack.
static __noinline int reduce_entry(struct pt_regs *ctx)
{
	return comm_call(OP_REDUCE, stack_arg(ctx, 7), PT_REGS_PARM3(ctx),
			 (__s32)PT_REGS_PARM4(ctx), (__s32)PT_REGS_PARM5(ctx),
			 (__s32)PT_REGS_PARM6(ctx));
}

// ncclAlltoAll(sendbuff, recvbuff, count, datatype, comm, stream)
static __noinline int all_to_all_entry(struct pt_regs *ctx)
{
	return comm_call(OP_ALL_TO_ALL, PT_REGS_PARM5(ctx), PT_REGS_PARM3(ctx),
			 (__s32)PT_REGS_PARM4(ctx), -1, -1);
}

// ncclSend(sendbuff, count, datatype, peer, comm, stream)
static __noinline int send_entry(struct pt_regs *ctx)
{
	return comm_call(OP_SEND, PT_REGS_PARM5(ctx), PT_REGS_PARM2(ctx),
			 (__s32)PT_REGS_PARM3(ctx), -1, (__s32)PT_REGS_PARM4(ctx));
}

// ncclRecv(recvbuff, count, datatype, peer, comm, stream)
static __noinline int recv_entry(struct pt_regs *ctx)
{
	return comm_call(OP_RECV, PT_REGS_PARM5(ctx), PT_REGS_PARM2(ctx),
			 (__s32)PT_REGS_PARM3(ctx), -1, (__s32)PT_REGS_PARM4(ctx));
}

// ncclCommDestroy(comm) and ncclCommAbort(comm): forget the communicator,
// so that a later one allocated at the same address does not inherit its id
// and rank. No record is sent.
static __noinline int comm_destroy_entry(struct pt_regs *ctx)
{
	struct comm_key key = { .pid = bpf_get_current_pid_tgid() >> 32, .comm = PT_REGS_PARM1(ctx) };

	bpf_map_delete_elem(&comms, &key);
	return 0;
}

static __noinline int group_start_entry(struct pt_regs *ctx)
{
	struct inflight in = {};

	begin(&in, OP_GROUP_START);
	return save(&in);
}

static __noinline int group_end_entry(struct pt_regs *ctx)
{
	struct inflight in = {};

	begin(&in, OP_GROUP_END);
	return save(&in);
}

// The reader is woken only once this much is pending; it also polls on a
// short timer, so a steady trickle of calls costs no wakeup per call.
#define WAKEUP_BYTES (64 << 10)

static __always_inline void emit(struct event *ev)
{
	__u64 flags = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES ?
			      BPF_RB_FORCE_WAKEUP :
			      BPF_RB_NO_WAKEUP;

	if (bpf_ringbuf_output(&events, ev, sizeof(*ev), flags)) {
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(&lost, &zero);

		if (n)
			*n += 1;
	}
}

static __always_inline void register_comm(struct event *ev)
{
	struct comm_key key = { .pid = ev->pid, .comm = ev->comm };
	struct comm_info ci = {
		.comm_id = ev->comm_id, .rank = ev->rank, .nranks = ev->nranks, .flags = ev->flags,
	};

	bpf_map_update_elem(&comms, &key, &ci, BPF_ANY);
}

// The return of a probed function: one program per function (so that a
// nested call's return finds its own entry), sharing this body.
static __noinline int finish(struct pt_regs *ctx, __u32 op)
{
	struct inflight_key key = { .pid_tgid = bpf_get_current_pid_tgid(), .op = op };
	struct inflight *in = bpf_map_lookup_elem(&inflight, &key);
	struct event ev;

	if (!in)
		return 0;
	ev = in->ev;
	ev.duration_ns = bpf_ktime_get_ns() - ev.time_ns;
	ev.result = (__s32)PT_REGS_RC(ctx);

	switch (op) {
	case OP_COMM_INIT_RANK:
	case OP_COMM_INIT_RANK_CONFIG:
	case OP_COMM_INIT_RANK_SCALABLE:
	case OP_COMM_SPLIT:
		// *comm is written by the call, so it is read on return. A
		// split with no color writes NULL.
		bpf_probe_read_user(&ev.comm, sizeof(ev.comm), (void *)in->out);
		if ((ev.result == 0 || ev.result == NCCL_IN_PROGRESS) && ev.comm)
			register_comm(&ev);
		break;
	case OP_COMM_INIT_ALL:
		// One record per device: rank i owns comm[i].
		for (int i = 0; i < MAX_INIT_ALL; i++) {
			if (i >= ev.nranks)
				break;
			ev.rank = i;
			ev.comm = 0;
			bpf_probe_read_user(&ev.comm, sizeof(ev.comm), (void *)(in->out + 8 * i));
			if ((ev.result == 0 || ev.result == NCCL_IN_PROGRESS) && ev.comm)
				register_comm(&ev);
			emit(&ev);
		}
		bpf_map_delete_elem(&inflight, &key);
		return 0;
	}
	emit(&ev);
	bpf_map_delete_elem(&inflight, &key);
	return 0;
}

#define RETURN_PROBE(name, op)                \
	SEC("uretprobe")                      \
	int name##_ret(struct pt_regs *ctx)   \
	{                                     \
		return finish(ctx, op);       \
	}

RETURN_PROBE(comm_init_rank, OP_COMM_INIT_RANK)
RETURN_PROBE(comm_init_rank_config, OP_COMM_INIT_RANK_CONFIG)
RETURN_PROBE(comm_init_rank_scalable, OP_COMM_INIT_RANK_SCALABLE)
RETURN_PROBE(comm_init_all, OP_COMM_INIT_ALL)
RETURN_PROBE(comm_split, OP_COMM_SPLIT)
RETURN_PROBE(all_reduce, OP_ALL_REDUCE)
RETURN_PROBE(all_gather, OP_ALL_GATHER)
RETURN_PROBE(reduce_scatter, OP_REDUCE_SCATTER)
RETURN_PROBE(broadcast, OP_BROADCAST)
RETURN_PROBE(reduce, OP_REDUCE)
RETURN_PROBE(all_to_all, OP_ALL_TO_ALL)
RETURN_PROBE(send, OP_SEND)
RETURN_PROBE(recv, OP_RECV)
RETURN_PROBE(group_start, OP_GROUP_START)
RETURN_PROBE(group_end, OP_GROUP_END)

// One program per function, for kernels without uprobe_multi links.
#define ENTRY_PROBE(name)                     \
	SEC("uprobe")                         \
	int name(struct pt_regs *ctx)         \
	{                                     \
		return name##_entry(ctx);     \
	}

ENTRY_PROBE(comm_init_rank)
ENTRY_PROBE(comm_init_rank_config)
ENTRY_PROBE(comm_init_rank_scalable)
ENTRY_PROBE(comm_init_all)
ENTRY_PROBE(comm_split)
ENTRY_PROBE(all_reduce)
ENTRY_PROBE(all_gather)
ENTRY_PROBE(reduce_scatter)
ENTRY_PROBE(broadcast)
ENTRY_PROBE(reduce)
ENTRY_PROBE(all_to_all)
ENTRY_PROBE(send)
ENTRY_PROBE(recv)
ENTRY_PROBE(comm_destroy)
ENTRY_PROBE(group_start)
ENTRY_PROBE(group_end)

// The same probes as two uprobe_multi links per library (Linux >= 6.6):
// the attach cookie names the function. Detaching a link waits for the
// kernel's uprobe grace period once, not once per probe: seconds fewer
// when a library's last process exits or the agent stops.
SEC("uprobe.multi")
int entry_multi(struct pt_regs *ctx)
{
	switch (bpf_get_attach_cookie(ctx)) {
	case OP_COMM_INIT_RANK:
		return comm_init_rank_entry(ctx);
	case OP_COMM_INIT_RANK_CONFIG:
		return comm_init_rank_config_entry(ctx);
	case OP_COMM_INIT_RANK_SCALABLE:
		return comm_init_rank_scalable_entry(ctx);
	case OP_COMM_INIT_ALL:
		return comm_init_all_entry(ctx);
	case OP_COMM_SPLIT:
		return comm_split_entry(ctx);
	case OP_ALL_REDUCE:
		return all_reduce_entry(ctx);
	case OP_ALL_GATHER:
		return all_gather_entry(ctx);
	case OP_REDUCE_SCATTER:
		return reduce_scatter_entry(ctx);
	case OP_BROADCAST:
		return broadcast_entry(ctx);
	case OP_REDUCE:
		return reduce_entry(ctx);
	case OP_ALL_TO_ALL:
		return all_to_all_entry(ctx);
	case OP_SEND:
		return send_entry(ctx);
	case OP_RECV:
		return recv_entry(ctx);
	case COOKIE_COMM_DESTROY:
		return comm_destroy_entry(ctx);
	case OP_GROUP_START:
		return group_start_entry(ctx);
	case OP_GROUP_END:
		return group_end_entry(ctx);
	}
	return 0;
}

SEC("uretprobe.multi")
int return_multi(struct pt_regs *ctx)
{
	return finish(ctx, (__u32)bpf_get_attach_cookie(ctx));
}

static __always_inline void send_load(__u32 pid, __u32 kind)
{
	struct load l = { .pid = pid, .kind = kind };

	bpf_ringbuf_output(&loads, &l, sizeof(l), BPF_RB_FORCE_WAKEUP);
}

// glibc's and musl's loaders call _dl_debug_state (the debuggers' hook,
// r_brk) when the link map is about to change and once it is consistent
// again: at startup once the needed libraries are mapped, before main, and
// around every dlopen and dlclose.
SEC("uprobe/_dl_debug_state")
int dl_debug_state(struct pt_regs *ctx)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	__u64 now = bpf_ktime_get_ns();
	__u64 *last;

	if (bpf_map_lookup_elem(&traced, &pid))
		return 0;
	last = bpf_map_lookup_elem(&last_load, &pid);
	if (last && now - *last < 1000000)
		return 0;
	bpf_map_update_elem(&last_load, &pid, &now, BPF_ANY);
	send_load(pid, LOAD_LOADER);
	return 0;
}

// A new program image: its loader is mapped (and found by user space, which
// probes loaders it has not seen), its libraries follow within milliseconds.
SEC("raw_tp/sched_process_exec")
int process_exec(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;

	bpf_map_delete_elem(&traced, &pid);
	send_load(pid, LOAD_EXEC);
	return 0;
}
