//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
//
// CPU stack sampler. Attached to one software CPU-clock perf event per online
// CPU, it records the current thread's process id, thread name and its user
// and kernel stacks, and counts samples per distinct (tgid, comm, user stack,
// kernel stack) in the kernel, so user space only reads aggregated counts.
//
// User stacks are unwound here, without frame pointers: user space compiles
// the .eh_frame (CFI) of every mapped object into sorted rows (per address
// range, how to find the canonical frame address and the caller's rbp) and
// loads them into `rows`, and lists each process's executable mappings in
// `mappings`. A frame whose code has no row is unwound with its frame
// pointer. Where the code is CPython's interpreter loop, the frames of the
// Python functions it runs are read from the interpreter's own frame chain
// and put in its place, so a stack reads Python caller, Python callee, then
// the C code it called. A process user space has not described yet is
// reported through `events` and unwound by frame pointers meanwhile.
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
#include <bpf/bpf_core_read.h>

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
	// Leaf first, zero-filled after the last frame. A native frame is a
	// code address; a Python frame has bit 63 set, the instruction index
	// in bits 47-62 and the code object's address in bits 0-46.
	__u64 ips[MAX_STACK_DEPTH];
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

// ---- unwinding data, written by user space ----

// Rule kinds (the low 3 bits of a rule): how the canonical frame address
// (CFA, the caller's stack pointer) of a frame is found.
enum cfa_kind {
	CFA_NONE = 0,   // no unwind information: follow the frame pointer
	CFA_RSP = 1,    // CFA = rsp + offset
	CFA_RBP = 2,    // CFA = rbp + offset
	CFA_PLT = 3,    // PLT stub: rsp + 8, + 8 more once rip & 15 >= offset
	CFA_SIGNAL = 4, // signal trampoline: registers saved in a ucontext at rsp
	CFA_END = 5,    // the outermost frame of a thread: stop
};

// A rule packs, from bit 0: the cfa_kind (3 bits); whether the caller's
// rbp is saved at CFA + fp offset (1 bit); the fp offset / 8 (10 bits,
// signed); the CFA offset (18 bits, signed).
#define RULE_KIND(r) ((r) & 7)
#define RULE_FP_SAVED(r) ((r) & 8)
#define RULE_FP_OFF(r) ((((__s32)((r) << 18)) >> 22) * 8)
#define RULE_CFA_OFF(r) (((__s32)(r)) >> 14)

// One unwind row: from pc (an ELF virtual address of its object) up to the
// next row, frames follow rule.
struct row {
	__u32 pc;
	__u32 rule;
};

// An object's rows are rows[first, first+count), sorted by pc.
struct table {
	__u32 first;
	__u32 count;
};

#define NO_TABLE 0xffffffff

// One executable mapping of a process.
struct mapping {
	__u64 start;
	__u64 end;
	__u64 bias; // ELF virtual address = address - bias
	__u32 table;
	__u32 pad;
};

enum proc_state {
	PROC_PENDING = 0, // reported to user space, not described yet
	PROC_READY = 1,   // mappings (and Python offsets) in place
	PROC_NO_USER = 2, // no user address space (kernel thread)
};

// What a process's stacks need: its mappings, sorted by start, are
// mappings[first, first+count). py is 1 + the index of its interpreter's
// offsets in py_offsets, 0 when it runs no CPython.
struct proc {
	__u32 first;
	__u32 count;
	__u32 state;
	__u32 py;
	__u64 py_runtime; // address of _PyRuntime
	// Where _PyEval_EvalFrameDefault's code lies (its hot and cold parts).
	__u64 eval_start;
	__u64 eval_end;
	__u64 eval2_start;
	__u64 eval2_end;
	// Set here when a code address fell outside every mapping (new code
	// was mapped); user space rereads the maps and clears it.
	__u32 miss;
	__u32 pad;
};

// How to walk one CPython version's frames (byte offsets).
enum py_kind {
	PY_FRAME_OBJECT = 0, // 3.9, 3.10: PyFrameObject, one per eval call
	PY_IFRAME_311 = 1,   // 3.11: _PyInterpreterFrame, is_entry ends an eval call
	PY_IFRAME_312 = 2,   // 3.12+: _PyInterpreterFrame, a C-stack-owned shim ends it
};

struct py_offsets {
	__u32 kind;
	__u32 runtime_interp_head; // _PyRuntime.interpreters.head
	__u32 interp_threads_head; // PyInterpreterState's first thread state
	__u32 tstate_next;
	__u32 tstate_thread_id;    // pthread_self() of the thread
	__u32 tstate_frame;        // frame, cframe or current_frame
	__u32 cframe_current;      // _PyCFrame.current_frame, or NO_OFFSET
	__u32 frame_back;          // f_back or previous
	__u32 frame_code;          // f_code or f_executable
	__u32 frame_lasti;         // f_lasti, prev_instr or instr_ptr
	__u32 frame_entry;         // is_entry (3.11) or owner (3.12+)
	__u32 code_adaptive;       // co_code_adaptive (3.11+)
};

#define NO_OFFSET 0xffffffff
#define FRAME_OWNED_BY_CSTACK 3
#define PY_FRAME_BIT (1ULL << 63)
#define PY_ADDR_MASK ((1ULL << 47) - 1)
#define MAX_PY_THREADS 64

// Capacities here are placeholders: the loader sets them.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct row);
	__uint(max_entries, 1 << 20);
} rows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct table);
	__uint(max_entries, 4096);
} tables SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct mapping);
	__uint(max_entries, 1 << 16);
} mappings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct proc);
	__uint(max_entries, 8192);
} procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct py_offsets);
	__uint(max_entries, 64);
} py_offset_sets SEC(".maps");

// Events for user space: a process to describe, one whose maps changed,
// one that exited.
enum event_kind {
	EVENT_NEW = 0,
	EVENT_MAPS = 1,
	EVENT_EXIT = 2,
};

struct event {
	__u32 kind;
	__u32 pid;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

// Set by user space while the program runs.
volatile __u32 enabled;
volatile __u32 filter_pids;
volatile __u32 buffer;
// Unwind with the tables (else frame pointers only, as bpf_get_stack does).
volatile __u32 unwind;

static __always_inline void count_lost(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&lost, &reason);
	if (n)
		*n += 1;
}

// send_event returns bpf_ringbuf_output's result: negative when the ring is
// full.
static __always_inline long send_event(__u32 kind, __u32 pid)
{
	struct event ev = {.kind = kind, .pid = pid};
	return bpf_ringbuf_output(&events, &ev, sizeof(ev), 0);
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

// store_stack stores st in `stacks` under its hash; -1 when the sample
// must be dropped (the drop is counted).
static __always_inline long store_stack(struct stack *st, void *stacks, __u64 *hash)
{
	*hash = stack_hash(st);
	long err = bpf_map_update_elem(stacks, hash, st, BPF_NOEXIST);
	if (err && err != -EEXIST) {
		count_lost(LOST_STACK_FULL);
		return -1;
	}
	return 0;
}

// take_stack reads one stack with bpf_get_stack (frame pointers) into st;
// 0 when there is no such stack, -1 when the sample must be dropped.
static __always_inline long take_stack(struct bpf_perf_event_data *ctx, struct stack *st, __u64 flags)
{
	long n = bpf_get_stack(ctx, st, sizeof(*st), flags);
	if (n == -EFAULT || n == 0)
		return 0;
	if (n < 0) {
		count_lost(LOST_STACK_ERROR);
		return -1;
	}
	return 1; // bpf_get_stack zeroes the rest of st
}

// ---- the unwinder ----

// unwind_state is one sample's walk, kept per CPU.
struct walk {
	__u64 ip, sp, bp;
	__u64 fsbase;  // the thread pointer: pthread_self()
	__u64 pyframe; // the next Python frame to report, 0 when none
	__u32 n;       // frames written
	__u32 mode;
	__u32 tgid;
	__u32 pad;
	struct proc proc;
};

// unwind_state.mode bits.
#define MODE_EXACT_IP 1  // ip is not a return address (leaf, after a signal)
#define MODE_PY 2        // reporting Python frames of the current eval call
#define MODE_PY_INIT 4   // pyframe was looked up
#define MODE_EVAL_DONE 8 // the eval call at ip had its Python frames reported
#define MODE_PY_REST 16  // native unwinding ended: report every Python frame left

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct walk);
	__uint(max_entries, 1);
} walk_scratch SEC(".maps");

struct loop_ctx {
	struct walk *s;
	struct stack *st;
};

static __always_inline __u64 read_u64(__u64 addr)
{
	__u64 v = 0;
	if (bpf_probe_read_user(&v, sizeof(v), (void *)addr))
		return 0;
	return v;
}

// find_mapping returns the mapping of the process holding ip, or NULL.
static __always_inline struct mapping *find_mapping(struct proc *p, __u64 ip)
{
	__u32 lo = p->first, hi = p->first + p->count;
	for (int i = 0; i < 17; i++) { // segments hold at most 65536 mappings
		if (lo >= hi)
			break;
		__u32 mid = lo + (hi - lo) / 2;
		struct mapping *m = bpf_map_lookup_elem(&mappings, &mid);
		if (!m)
			return NULL;
		if (m->start <= ip)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == p->first)
		return NULL;
	__u32 idx = lo - 1;
	struct mapping *m = bpf_map_lookup_elem(&mappings, &idx);
	if (!m || ip >= m->end)
		return NULL;
	return m;
}

// find_rule returns the rule of the last row at or before pc in table t.
static __always_inline __u32 find_rule(__u32 t, __u32 pc)
{
	struct table *tab = bpf_map_lookup_elem(&tables, &t);
	if (!tab)
		return CFA_NONE;
	__u32 lo = tab->first, hi = tab->first + tab->count;
	for (int i = 0; i < 25; i++) { // tables hold at most 2^24 rows
		if (lo >= hi)
			break;
		__u32 mid = lo + (hi - lo) / 2;
		struct row *r = bpf_map_lookup_elem(&rows, &mid);
		if (!r)
			return CFA_NONE;
		if (r->pc <= pc)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == tab->first)
		return CFA_NONE;
	__u32 idx = lo - 1;
	struct row *r = bpf_map_lookup_elem(&rows, &idx);
	return r ? r->rule : CFA_NONE;
}

static __always_inline int in_eval(struct walk *s, __u64 ip)
{
	return (ip >= s->proc.eval_start && ip < s->proc.eval_end) ||
	       (ip >= s->proc.eval2_start && ip < s->proc.eval2_end);
}

// current_pyframe finds the innermost Python frame of the sampled thread:
// the interpreter's thread state whose thread id is this thread's.
static __always_inline __u64 current_pyframe(struct walk *s, struct py_offsets *o)
{
	__u64 interp = read_u64(s->proc.py_runtime + o->runtime_interp_head);
	if (!interp)
		return 0;
	__u64 ts = read_u64(interp + o->interp_threads_head);
	for (int i = 0; i < MAX_PY_THREADS; i++) {
		if (!ts)
			return 0;
		if (read_u64(ts + o->tstate_thread_id) == s->fsbase)
			break;
		ts = read_u64(ts + o->tstate_next);
	}
	if (!ts)
		return 0;
	__u64 f = read_u64(ts + o->tstate_frame);
	if (f && o->cframe_current != NO_OFFSET)
		f = read_u64(f + o->cframe_current);
	return f;
}

static __always_inline void push(struct loop_ctx *c, __u64 v)
{
	__u32 n = c->s->n;
	if (n < MAX_STACK_DEPTH) {
		c->st->ips[n] = v;
		c->s->n = n + 1;
	}
}

// leave_python ends the Python frames of one eval call.
static __always_inline void leave_python(struct walk *s)
{
	s->mode &= ~MODE_PY;
	s->mode |= MODE_EVAL_DONE;
}

// py_step reports one Python frame (or skips a shim); 1 ends the walk.
static __always_inline long py_step(struct loop_ctx *c)
{
	struct walk *s = c->s;
	__u64 f = s->pyframe;
	if (!f) {
		if (s->mode & MODE_PY_REST)
			return 1;
		leave_python(s);
		return 0;
	}
	__u32 idx = s->proc.py - 1;
	struct py_offsets *o = bpf_map_lookup_elem(&py_offset_sets, &idx);
	if (!o)
		return 1;
	__u8 entry = 0;
	if (o->kind != PY_FRAME_OBJECT)
		bpf_probe_read_user(&entry, 1, (void *)(f + o->frame_entry));
	__u64 back = read_u64(f + o->frame_back);
	if (o->kind == PY_IFRAME_312 && entry == FRAME_OWNED_BY_CSTACK) {
		// The shim an eval call pushes first: the frames before it
		// belong to the next eval call out.
		s->pyframe = back;
		if (!(s->mode & MODE_PY_REST))
			leave_python(s);
		return 0;
	}
	__u64 code = read_u64(f + o->frame_code);
	__u64 lasti = 0;
	if (o->kind == PY_FRAME_OBJECT) {
		__s32 v = 0;
		bpf_probe_read_user(&v, sizeof(v), (void *)(f + o->frame_lasti));
		lasti = v < 0 ? 0 : v;
	} else {
		__u64 instr = read_u64(f + o->frame_lasti);
		__u64 base = code + o->code_adaptive;
		lasti = instr >= base ? (instr - base) / 2 : 0;
	}
	if (lasti > 0xffff)
		lasti = 0xffff;
	if (code)
		push(c, PY_FRAME_BIT | (lasti << 47) | (code & PY_ADDR_MASK));
	s->pyframe = back;
	if (!(s->mode & MODE_PY_REST) && (o->kind == PY_FRAME_OBJECT || (o->kind == PY_IFRAME_311 && entry)))
		leave_python(s);
	return 0;
}

// start_python looks up the thread's Python frames once per sample.
static __always_inline void start_python(struct walk *s)
{
	if (s->mode & MODE_PY_INIT)
		return;
	s->mode |= MODE_PY_INIT;
	__u32 idx = s->proc.py - 1;
	struct py_offsets *o = bpf_map_lookup_elem(&py_offset_sets, &idx);
	if (o)
		s->pyframe = current_pyframe(s, o);
}

// native_end is reached when native unwinding cannot go on: the Python
// frames not yet reported are outer frames, and follow.
static __always_inline long native_end(struct walk *s)
{
	if (!s->proc.py)
		return 1;
	start_python(s);
	if (!s->pyframe)
		return 1;
	s->mode |= MODE_PY | MODE_PY_REST;
	return 0;
}

static __always_inline void report_miss(struct walk *s)
{
	if (s->proc.miss)
		return;
	s->proc.miss = 1;
	struct proc *p = bpf_map_lookup_elem(&procs, &s->tgid);
	// Two CPUs may both report: user space rereads the maps twice.
	if (p && !p->miss) {
		p->miss = 1;
		send_event(EVENT_MAPS, s->tgid);
	}
}

// unwind_step reports one frame and steps to its caller; 1 ends the walk.
static __noinline long unwind_step(__u32 i, void *arg)
{
	struct loop_ctx *c = arg;
	struct walk *s = c->s;
	if (s->n >= MAX_STACK_DEPTH)
		return 1;
	if (s->mode & MODE_PY)
		return py_step(c);
	__u64 ip = s->ip;
	if (!ip)
		return native_end(s);
	if (s->proc.py && !(s->mode & MODE_EVAL_DONE) && in_eval(s, ip)) {
		start_python(s);
		if (s->pyframe) {
			s->mode |= MODE_PY;
			return 0;
		}
	}
	if (!(s->mode & MODE_EVAL_DONE))
		push(c, ip);
	s->mode &= ~MODE_EVAL_DONE;

	__u64 pc = (s->mode & MODE_EXACT_IP) ? ip : ip - 1;
	__u32 rule = CFA_NONE;
	struct mapping *m = find_mapping(&s->proc, ip);
	if (!m)
		report_miss(s);
	else if (m->table != NO_TABLE && pc >= m->bias && pc - m->bias <= 0xffffffffULL)
		rule = find_rule(m->table, (__u32)(pc - m->bias));

	__u64 cfa, bp = s->bp, ra;
	switch (RULE_KIND(rule)) {
	case CFA_END:
		return native_end(s);
	case CFA_SIGNAL: {
		// rt_sigreturn's frame: a ucontext at rsp, its sigcontext at 40,
		// holding rbp at +80, rsp at +120 and rip at +128.
		__u64 uc = s->sp;
		s->bp = read_u64(uc + 40 + 80);
		s->sp = read_u64(uc + 40 + 120);
		s->ip = read_u64(uc + 40 + 128);
		s->mode |= MODE_EXACT_IP;
		return 0;
	}
	case CFA_RSP:
		cfa = s->sp + RULE_CFA_OFF(rule);
		break;
	case CFA_RBP:
		cfa = s->bp + RULE_CFA_OFF(rule);
		break;
	case CFA_PLT:
		cfa = s->sp + 8 + ((ip & 15) >= (__u64)RULE_CFA_OFF(rule) ? 8 : 0);
		break;
	default:
		// Frame pointers: the caller's rbp at [rbp], the return
		// address above it.
		if (!s->bp)
			return native_end(s);
		cfa = s->bp + 16;
		bp = read_u64(s->bp);
		break;
	}
	if (RULE_KIND(rule) != CFA_NONE && RULE_FP_SAVED(rule))
		bp = read_u64(cfa + RULE_FP_OFF(rule));
	ra = read_u64(cfa - 8);
	// The stack grows down: a caller's frame lies above its callee's.
	if (!ra || cfa <= s->sp)
		return native_end(s);
	s->ip = ra;
	s->sp = cfa;
	s->bp = bp;
	s->mode &= ~MODE_EXACT_IP;
	return 0;
}

// unwind_user walks the user stack of the current thread into st; it
// returns the number of frames.
static __always_inline int unwind_user(struct bpf_perf_event_data *ctx, struct proc *p, __u32 tgid,
				       struct stack *st)
{
	__u32 zero = 0;
	struct walk *s = bpf_map_lookup_elem(&walk_scratch, &zero);
	if (!s)
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	if ((ctx->regs.csx & 3) == 3) { // user mode
		s->ip = ctx->regs.ip;
		s->sp = ctx->regs.sp;
		s->bp = ctx->regs.bp;
	} else {
		// In the kernel: the user registers saved at kernel entry.
		struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
		if (!regs)
			return 0;
		s->ip = BPF_CORE_READ(regs, ip);
		s->sp = BPF_CORE_READ(regs, sp);
		s->bp = BPF_CORE_READ(regs, bp);
	}
	if (!s->ip)
		return 0;
	s->fsbase = BPF_CORE_READ(task, thread.fsbase);
	s->pyframe = 0;
	s->n = 0;
	s->mode = MODE_EXACT_IP;
	s->tgid = tgid;
	s->proc = *p;
	struct loop_ctx c = {.s = s, .st = st};
	bpf_loop(MAX_STACK_DEPTH * 2, unwind_step, &c, 0);
	__u32 n = s->n;
	for (int i = 0; i < MAX_STACK_DEPTH; i++) {
		if (i >= n)
			st->ips[i] = 0;
	}
	return n;
}

// user_stack fills st with the current thread's user stack; 0 when there
// is none, -1 when the sample must be dropped.
static __always_inline long user_stack(struct bpf_perf_event_data *ctx, __u32 tgid, struct stack *st)
{
	if (unwind) {
		struct proc *p = bpf_map_lookup_elem(&procs, &tgid);
		if (!p) {
			struct proc fresh = {.state = PROC_PENDING};
			// With the ring full user space never hears of the process:
			// undo, so that its next sample asks again.
			if (!bpf_map_update_elem(&procs, &tgid, &fresh, BPF_NOEXIST) && send_event(EVENT_NEW, tgid) < 0)
				bpf_map_delete_elem(&procs, &tgid);
		} else if (p->state == PROC_NO_USER) {
			return 0;
		} else if (p->state == PROC_READY) {
			return unwind_user(ctx, p, tgid, st) > 0;
		}
	}
	return take_stack(ctx, st, BPF_F_USER_STACK);
}

static __always_inline int record(struct bpf_perf_event_data *ctx, struct sample_key *key,
				  void *stacks, void *counts)
{
	__u32 slot = 0;
	struct stack *st = bpf_map_lookup_elem(&scratch, &slot);
	if (!st)
		return 0;
	long got = user_stack(ctx, key->tgid, st);
	if (got < 0)
		return 0;
	if (got > 0 && store_stack(st, stacks, &key->user_stack) < 0)
		return 0;

	slot = 1;
	st = bpf_map_lookup_elem(&scratch, &slot);
	if (!st)
		return 0;
	got = take_stack(ctx, st, 0);
	if (got < 0)
		return 0;
	if (got > 0 && store_stack(st, stacks, &key->kernel_stack) < 0)
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

// forget_proc drops a process's description and tells user space, which
// frees its mappings.
static __always_inline void forget_proc(__u32 tgid)
{
	if (bpf_map_delete_elem(&procs, &tgid) == 0)
		send_event(EVENT_EXIT, tgid);
}

// A process runs a new program: its mappings are gone; the next sample
// reports it anew.
SEC("tp_btf/sched_process_exec")
int process_exec(__u64 *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx[0];
	forget_proc(task->tgid);
	return 0;
}

// A process is gone: forget its description (its pid may be reused).
SEC("tp_btf/sched_process_exit")
int process_exit(__u64 *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx[0];
	if (!ctx[1]) // group_dead: the last thread of the process
		return 0;
	forget_proc(task->tgid);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
