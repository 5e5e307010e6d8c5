/* libnccl-profiler-loupe.so: Loupe's NCCL profiler plugin.
 *
 * NCCL (>= 2.23) loads it when NCCL_PROFILER_PLUGIN=loupe (with the library
 * on the loader's path) or NCCL_PROFILER_PLUGIN=/path/to/it, and takes the
 * newest interface both know: ncclProfiler_v7, _v6, _v5 or _v4. For every collective and point-to-point call it follows
 * NCCL's event tree (API call, task, proxy operations and steps, kernel
 * channels) and sends one record to the local loupe-agent when the call's
 * kernel ended: its communicator's commHash, the plugin's count of the
 * communicator's calls, the host times, the kernel's start and end on this
 * GPU, NCCL's algorithm, protocol and channels, and how long the proxy's
 * network steps waited for the GPU and for the network. A call whose kernel
 * has not ended LOUPE_NCCL_PLUGIN_PENDING_MS (default 5000) after it was
 * enqueued is also reported, flagged pending: that is what a hang looks
 * like from here.
 *
 * Transport: unix datagrams to $LOUPE_NCCL_PLUGIN_SOCKET (default
 * /run/loupe/nccl-plugin.sock), sent by a background thread every 20 ms
 * without blocking. Records wait in a bounded queue; what does not fit, or
 * cannot be sent (no agent, agent busy), is dropped and counted, and the
 * count rides in every datagram. NCCL's threads never wait for the agent.
 *
 * GPU time: NCCL's kernel timestamps come from the GPU's global timer. The
 * plugin converts them to CLOCK_REALTIME with the smallest difference seen
 * between the host time at which NCCL reports a timestamp and the timestamp
 * itself (the report always comes after the event), over the last 10 to 20
 * seconds, so the conversion follows drift and errs by the proxy thread's
 * polling delay at most.
 *
 * Build: gcc -shared -fPIC -O2 -o libnccl-profiler-loupe.so loupe_profiler.c -lpthread */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "loupe_wire.h"
#include "nccl_profiler_api.h"

#define TASKS 4096   /* collectives and p2p calls in flight */
#define APIS 4096    /* API call events, reused in turn */
#define SUBS 16384   /* proxy operations, proxy steps, kernel channels in flight */
#define QUEUE 16384  /* records waiting to be sent */
#define FLUSH_NS 20000000LL
#define WINDOW_NS 10000000000LL
#define FALLBACK_NS 200000000LL

enum slot_type { SLOT_API = 1, SLOT_TASK, SLOT_PROXY_OP, SLOT_STEP, SLOT_KERNEL_CH };

struct context {
	uint64_t comm_hash;
	int rank, nranks;
	_Atomic int64_t coll_seq, p2p_seq;
};

struct api_event {
	int type; /* SLOT_API */
	int64_t start_ns;
	int32_t tid;
};

struct task {
	int type; /* SLOT_TASK */
	_Atomic uint32_t gen;
	_Atomic int alive;    /* from start until reported */
	_Atomic int stopped;  /* NCCL stopped the task event: enqueued */
	_Atomic int children; /* proxy events open under it */
	_Atomic int kch_started, kch_stopped;
	_Atomic int pending_sent;
	int kch_expected;
	_Atomic int64_t gpu_start, gpu_end; /* raw GPU timers; 0 when none */
	_Atomic int64_t gpu_wait, net_wait, last_kch_ns;
	struct loupe_wire_record rec;
};

struct sub {
	int type;
	struct task *task;
	uint32_t task_gen;
	int state;
	int64_t since_ns;
	uint64_t ptimer_start, ptimer_stop;
};

static struct task tasks[TASKS];
static struct sub subs[SUBS];
static struct api_event apis[APIS];
static _Atomic uint32_t api_next;

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static int free_tasks[TASKS], n_free_tasks = -1;
static int free_subs[SUBS], n_free_subs;

static pthread_mutex_t queue_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_cv = PTHREAD_COND_INITIALIZER;
static struct loupe_wire_record queue[QUEUE];
static int q_head, q_len;

static _Atomic uint64_t lost;
static _Atomic uint32_t api_version;
static int64_t pending_ns = 5000000000LL;
static int sock = -1;
static struct sockaddr_un agent_addr;
static socklen_t agent_addr_len;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static _Atomic int64_t offset_cur = INT64_MAX, offset_prev = INT64_MAX, offset_window;

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int32_t gettid_(void)
{
	return (int32_t)syscall(SYS_gettid);
}

/* observe_clock learns the GPU-to-host offset from a timestamp reported at
 * host time now: the event happened before its report. */
static void observe_clock(int64_t now, uint64_t ptimer)
{
	if (ptimer == 0)
		return;
	int64_t d = now - (int64_t)ptimer;
	int64_t w = atomic_load(&offset_window);
	if (now - w > WINDOW_NS && atomic_compare_exchange_strong(&offset_window, &w, now)) {
		atomic_store(&offset_prev, atomic_load(&offset_cur));
		atomic_store(&offset_cur, d);
		return;
	}
	int64_t cur = atomic_load(&offset_cur);
	while (d < cur && !atomic_compare_exchange_weak(&offset_cur, &cur, d))
		;
}

static int64_t to_host(int64_t ptimer)
{
	int64_t a = atomic_load(&offset_cur), b = atomic_load(&offset_prev);
	int64_t off = a < b ? a : b;
	return ptimer == 0 || off == INT64_MAX ? 0 : ptimer + off;
}

static void push(const struct loupe_wire_record *r)
{
	pthread_mutex_lock(&queue_mu);
	if (q_len == QUEUE) {
		atomic_fetch_add(&lost, 1);
	} else {
		queue[(q_head + q_len) % QUEUE] = *r;
		q_len++;
		if (q_len == LOUPE_WIRE_BATCH)
			pthread_cond_signal(&queue_cv);
	}
	pthread_mutex_unlock(&queue_mu);
}

/* send_batch sends up to one batch from the queue; it returns how many
 * records it took. */
static int send_batch(void)
{
	static char buf[sizeof(struct loupe_wire_header) + LOUPE_WIRE_BATCH * sizeof(struct loupe_wire_record)];
	struct loupe_wire_header *h = (struct loupe_wire_header *)buf;
	struct loupe_wire_record *recs = (struct loupe_wire_record *)(h + 1);
	int n;

	pthread_mutex_lock(&queue_mu);
	n = q_len < LOUPE_WIRE_BATCH ? q_len : LOUPE_WIRE_BATCH;
	for (int i = 0; i < n; i++)
		recs[i] = queue[(q_head + i) % QUEUE];
	q_head = (q_head + n) % QUEUE;
	q_len -= n;
	pthread_mutex_unlock(&queue_mu);
	if (n == 0)
		return 0;
	memset(h, 0, sizeof(*h));
	h->magic = LOUPE_WIRE_MAGIC;
	h->version = LOUPE_WIRE_VERSION;
	h->record_size = sizeof(struct loupe_wire_record);
	h->pid = (uint32_t)getpid();
	h->count = (uint32_t)n;
	h->api = atomic_load(&api_version);
	h->lost = atomic_load(&lost);
	size_t len = sizeof(*h) + (size_t)n * sizeof(struct loupe_wire_record);
	if (sock < 0 || sendto(sock, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&agent_addr, agent_addr_len) < 0)
		atomic_fetch_add(&lost, (uint64_t)n);
	return n;
}

static void flush_all(void)
{
	while (send_batch() > 0)
		;
}

static void release_task(struct task *t);

/* finish reports a task once; whichever thread completes it calls this. */
static void finish(struct task *t, int pending)
{
	struct loupe_wire_record r = t->rec;
	int64_t s = atomic_load(&t->gpu_start), e = atomic_load(&t->gpu_end);

	r.gpu_wait_ns = atomic_load(&t->gpu_wait);
	r.net_wait_ns = atomic_load(&t->net_wait);
	if (s) {
		r.gpu_start_ns = to_host(s);
		r.gpu_end_ns = pending ? 0 : to_host(e);
		r.flags |= LOUPE_FLAG_GPU;
	}
	if (pending)
		r.flags |= LOUPE_FLAG_PENDING;
	push(&r);
}

static void maybe_complete(struct task *t)
{
	if (!atomic_load(&t->stopped) || atomic_load(&t->children) > 0 ||
	    atomic_load(&t->kch_stopped) < t->kch_expected)
		return;
	int one = 1;
	if (atomic_compare_exchange_strong(&t->alive, &one, 0)) {
		finish(t, 0);
		release_task(t);
	}
}

/* The flusher: sends every FLUSH_NS (sooner when a batch is full), reports
 * calls pending too long, and completes calls whose channels all ended
 * though fewer reported than NCCL announced. */
static void *flusher(void *arg)
{
	(void)arg;
	for (;;) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += FLUSH_NS;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_mutex_lock(&queue_mu);
		if (q_len < LOUPE_WIRE_BATCH)
			pthread_cond_timedwait(&queue_cv, &queue_mu, &ts);
		pthread_mutex_unlock(&queue_mu);
		flush_all();
		int64_t now = now_ns();
		for (int i = 0; i < TASKS; i++) {
			struct task *t = &tasks[i];
			if (!atomic_load(&t->alive) || !atomic_load(&t->stopped))
				continue;
			int started = atomic_load(&t->kch_started), stopped = atomic_load(&t->kch_stopped);
			if (started > 0 && started == stopped && atomic_load(&t->children) == 0 &&
			    now - atomic_load(&t->last_kch_ns) > FALLBACK_NS) {
				int one = 1;
				if (atomic_compare_exchange_strong(&t->alive, &one, 0)) {
					finish(t, 0);
					release_task(t);
				}
				continue;
			}
			if (!atomic_load(&t->pending_sent) && now - t->rec.host_stop_ns > pending_ns) {
				atomic_store(&t->pending_sent, 1);
				finish(t, 1);
			}
		}
	}
	return NULL;
}

static void setup(void)
{
	const char *path = getenv("LOUPE_NCCL_PLUGIN_SOCKET");
	const char *pend = getenv("LOUPE_NCCL_PLUGIN_PENDING_MS");
	pthread_t th;

	if (path == NULL || *path == 0)
		path = "/run/loupe/nccl-plugin.sock";
	if (pend != NULL && atol(pend) > 0)
		pending_ns = atol(pend) * 1000000LL;
	memset(&agent_addr, 0, sizeof(agent_addr));
	agent_addr.sun_family = AF_UNIX;
	snprintf(agent_addr.sun_path, sizeof(agent_addr.sun_path), "%s", path);
	agent_addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(agent_addr.sun_path) + 1);
	sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	pthread_mutex_lock(&pool_mu);
	for (int i = 0; i < TASKS; i++)
		free_tasks[i] = TASKS - 1 - i;
	n_free_tasks = TASKS;
	for (int i = 0; i < SUBS; i++)
		free_subs[i] = SUBS - 1 - i;
	n_free_subs = SUBS;
	pthread_mutex_unlock(&pool_mu);
	if (pthread_create(&th, NULL, flusher, NULL) == 0)
		pthread_detach(th);
	atexit(flush_all);
}

static struct task *new_task(void)
{
	struct task *t = NULL;
	pthread_mutex_lock(&pool_mu);
	if (n_free_tasks > 0)
		t = &tasks[free_tasks[--n_free_tasks]];
	pthread_mutex_unlock(&pool_mu);
	if (t == NULL) {
		atomic_fetch_add(&lost, 1);
		return NULL;
	}
	atomic_fetch_add(&t->gen, 1);
	t->type = SLOT_TASK;
	atomic_store(&t->stopped, 0);
	atomic_store(&t->children, 0);
	atomic_store(&t->kch_started, 0);
	atomic_store(&t->kch_stopped, 0);
	atomic_store(&t->pending_sent, 0);
	atomic_store(&t->gpu_start, 0);
	atomic_store(&t->gpu_end, 0);
	atomic_store(&t->gpu_wait, 0);
	atomic_store(&t->net_wait, 0);
	atomic_store(&t->last_kch_ns, 0);
	memset(&t->rec, 0, sizeof(t->rec));
	return t;
}

static void release_task(struct task *t)
{
	pthread_mutex_lock(&pool_mu);
	free_tasks[n_free_tasks++] = (int)(t - tasks);
	pthread_mutex_unlock(&pool_mu);
}

static struct sub *new_sub(int type, struct task *t)
{
	struct sub *s = NULL;
	pthread_mutex_lock(&pool_mu);
	if (n_free_subs > 0)
		s = &subs[free_subs[--n_free_subs]];
	pthread_mutex_unlock(&pool_mu);
	if (s == NULL)
		return NULL;
	memset(s, 0, sizeof(*s));
	s->type = type;
	s->task = t;
	s->task_gen = atomic_load(&t->gen);
	return s;
}

static void release_sub(struct sub *s)
{
	s->type = 0;
	pthread_mutex_lock(&pool_mu);
	free_subs[n_free_subs++] = (int)(s - subs);
	pthread_mutex_unlock(&pool_mu);
}

/* live_task returns the task a handle names while that task still waits for
 * its report, or NULL. */
static struct task *live_task(void *h)
{
	struct task *t = h;
	if (t == NULL || t < tasks || t >= tasks + TASKS || t->type != SLOT_TASK || !atomic_load(&t->alive))
		return NULL;
	return t;
}

static void copy_name(char *dst, size_t n, const char *src)
{
	if (src != NULL)
		snprintf(dst, n, "%s", src);
}

/* The interface-independent form of an event descriptor. */
struct descr {
	uint64_t type;
	void *parent;
	int rank;
	uint64_t seq_number;
	const char *func, *datatype, *algo, *proto;
	size_t count;
	int root_or_peer;
	uint8_t nchannels;
	ncclPid_t pid;
	uint64_t ptimer;
};

static int init_common(void **context, uint64_t comm_hash, int *mask, int nranks, int rank, uint32_t api)
{
	struct context *c;

	pthread_once(&once, setup);
	atomic_store(&api_version, api);
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return 1; /* NCCL then runs without the plugin */
	c->comm_hash = comm_hash;
	c->rank = rank;
	c->nranks = nranks;
	*context = c;
	*mask = ncclProfileColl | ncclProfileP2p | ncclProfileProxyOp | ncclProfileProxyStep | ncclProfileKernelCh;
	if (api >= 5)
		*mask |= ncclProfileCollApi | ncclProfileP2pApi;
	return 0;
}

static ncclResult_t start_common(struct context *c, void **handle, const struct descr *d)
{
	*handle = NULL;
	switch (d->type) {
	case ncclProfileCollApi:
	case ncclProfileP2pApi: {
		struct api_event *a = &apis[atomic_fetch_add(&api_next, 1) % APIS];
		a->type = SLOT_API;
		a->start_ns = now_ns();
		a->tid = gettid_();
		*handle = a;
		return 0;
	}
	case ncclProfileColl:
	case ncclProfileP2p: {
		struct task *t = new_task();
		struct api_event *a = d->parent;
		int coll = d->type == ncclProfileColl;
		if (t == NULL)
			return 0;
		t->rec.comm_hash = c->comm_hash;
		t->rec.seq = atomic_fetch_add(coll ? &c->coll_seq : &c->p2p_seq, 1);
		t->rec.nccl_seq = coll ? (int64_t)d->seq_number : -1;
		if (a != NULL && a >= apis && a < apis + APIS && a->type == SLOT_API) {
			t->rec.host_start_ns = a->start_ns;
			t->rec.tid = a->tid;
		} else {
			t->rec.host_start_ns = now_ns();
			t->rec.tid = gettid_();
		}
		t->rec.count = d->count;
		t->rec.rank = c->rank;
		t->rec.nranks = c->nranks;
		t->rec.peer = d->root_or_peer;
		t->rec.kind = coll ? LOUPE_KIND_COLL : LOUPE_KIND_P2P;
		t->rec.nchannels = d->nchannels;
		copy_name(t->rec.func, sizeof(t->rec.func), d->func);
		copy_name(t->rec.datatype, sizeof(t->rec.datatype), d->datatype);
		copy_name(t->rec.algo, sizeof(t->rec.algo), d->algo);
		copy_name(t->rec.proto, sizeof(t->rec.proto), d->proto);
		t->kch_expected = d->nchannels;
		atomic_store(&t->alive, 1);
		*handle = t;
		return 0;
	}
	case ncclProfileProxyOp: {
		/* PXN: a proxy op of another process's task; its parent is not ours. */
		struct task *t = d->pid == getpid() ? live_task(d->parent) : NULL;
		struct sub *s = t ? new_sub(SLOT_PROXY_OP, t) : NULL;
		if (s != NULL)
			atomic_fetch_add(&t->children, 1);
		*handle = s;
		return 0;
	}
	case ncclProfileProxyStep: {
		struct sub *op = d->parent;
		struct task *t = op != NULL && op->type == SLOT_PROXY_OP ? live_task(op->task) : NULL;
		struct sub *s = t && atomic_load(&t->gen) == op->task_gen ? new_sub(SLOT_STEP, t) : NULL;
		if (s != NULL) {
			atomic_fetch_add(&t->children, 1);
			s->since_ns = now_ns();
		}
		*handle = s;
		return 0;
	}
	case ncclProfileKernelCh: {
		struct task *t = live_task(d->parent);
		struct sub *s = t ? new_sub(SLOT_KERNEL_CH, t) : NULL;
		if (s != NULL) {
			s->ptimer_start = d->ptimer;
			observe_clock(now_ns(), d->ptimer);
			atomic_fetch_add(&t->kch_started, 1);
		}
		*handle = s;
		return 0;
	}
	}
	return 0; /* groups, kernel launches: not followed */
}

/* A proxy step's time in its last state goes to the GPU or the network. */
static void account_step(struct sub *s, int64_t now)
{
	int64_t d = now - s->since_ns;
	switch (s->state) {
	case ncclProfilerProxyStepSendGPUWait:
	case ncclProfilerProxyStepRecvGPUWait:
		atomic_fetch_add(&s->task->gpu_wait, d);
		break;
	case ncclProfilerProxyStepSendPeerWait_v4:
	case ncclProfilerProxyStepSendWait:
	case ncclProfilerProxyStepRecvWait:
	case ncclProfilerProxyStepRecvFlushWait:
		atomic_fetch_add(&s->task->net_wait, d);
		break;
	}
	s->since_ns = now;
}

static ncclResult_t record_common(void *handle, ncclProfilerEventState_t state, ncclProfilerEventStateArgs_v4_t *args)
{
	struct sub *s = handle;
	if (s == NULL || s < subs || s >= subs + SUBS)
		return 0;
	switch (s->type) {
	case SLOT_STEP:
		account_step(s, now_ns());
		s->state = state;
		break;
	case SLOT_KERNEL_CH:
		if (state == ncclProfilerKernelChStop && args != NULL) {
			s->ptimer_stop = args->kernelCh.pTimer;
			observe_clock(now_ns(), s->ptimer_stop);
		}
		break;
	}
	return 0;
}

static ncclResult_t stop_event(void *handle)
{
	if (handle == NULL)
		return 0;
	if ((struct task *)handle >= tasks && (struct task *)handle < tasks + TASKS) {
		struct task *t = live_task(handle);
		if (t != NULL) {
			t->rec.host_stop_ns = now_ns();
			atomic_store(&t->stopped, 1);
			maybe_complete(t);
		}
		return 0;
	}
	struct sub *s = handle;
	if (s < subs || s >= subs + SUBS)
		return 0; /* an API event: nothing to do */
	struct task *t = s->task;
	int same = t != NULL && atomic_load(&t->gen) == s->task_gen && atomic_load(&t->alive);
	switch (s->type) {
	case SLOT_STEP:
		if (same)
			account_step(s, now_ns());
		/* fall through */
	case SLOT_PROXY_OP:
		if (same) {
			atomic_fetch_sub(&t->children, 1);
			maybe_complete(t);
		}
		break;
	case SLOT_KERNEL_CH:
		if (!same)
			break;
		if (s->ptimer_start != 0) {
			int64_t st = (int64_t)s->ptimer_start, en = (int64_t)(s->ptimer_stop ? s->ptimer_stop : s->ptimer_start);
			int64_t cur = atomic_load(&t->gpu_start);
			while ((cur == 0 || st < cur) && !atomic_compare_exchange_weak(&t->gpu_start, &cur, st))
				;
			cur = atomic_load(&t->gpu_end);
			while (en > cur && !atomic_compare_exchange_weak(&t->gpu_end, &cur, en))
				;
		}
		atomic_store(&t->last_kch_ns, now_ns());
		atomic_fetch_add(&t->kch_stopped, 1);
		maybe_complete(t);
		break;
	}
	release_sub(s);
	return 0;
}

static ncclResult_t finalize(void *context)
{
	flush_all();
	free(context);
	return 0;
}

/* ---- v5, v6 and v7 ---- */

/* FILL_DESCR copies what the plugin follows from a v4 or v5 descriptor
 * e into d: the members it reads have the same names in both. */
#define FILL_DESCR(d, e)                                        \
	do {                                                    \
		switch ((e)->type) {                            \
		case ncclProfileColl:                           \
			(d).seq_number = (e)->coll.seqNumber;   \
			(d).func = (e)->coll.func;              \
			(d).count = (e)->coll.count;            \
			(d).root_or_peer = (e)->coll.root;      \
			(d).datatype = (e)->coll.datatype;      \
			(d).nchannels = (e)->coll.nChannels;    \
			(d).algo = (e)->coll.algo;              \
			(d).proto = (e)->coll.proto;            \
			break;                                  \
		case ncclProfileP2p:                            \
			(d).func = (e)->p2p.func;               \
			(d).count = (e)->p2p.count;             \
			(d).datatype = (e)->p2p.datatype;       \
			(d).root_or_peer = (e)->p2p.peer;       \
			(d).nchannels = (e)->p2p.nChannels;     \
			break;                                  \
		case ncclProfileProxyOp:                        \
			(d).pid = (e)->proxyOp.pid;             \
			break;                                  \
		case ncclProfileKernelCh:                       \
			(d).ptimer = (e)->kernelCh.pTimer;      \
			break;                                  \
		}                                               \
	} while (0)

static ncclResult_t start_v5(void *context, void **handle, ncclProfilerEventDescr_v5_t *e)
{
	struct descr d = { .type = e->type, .parent = e->parentObj, .rank = e->rank, .root_or_peer = -1 };
	FILL_DESCR(d, e);
	return start_common(context, handle, &d);
}

/* v6 adds members at the end of the descriptor's union only. */
_Static_assert(offsetof(ncclProfilerEventDescr_v6_t, coll) == offsetof(ncclProfilerEventDescr_v5_t, coll), "v6 layout");
_Static_assert(offsetof(ncclProfilerEventDescr_v6_t, kernelCh) == offsetof(ncclProfilerEventDescr_v5_t, kernelCh), "v6 layout");

static ncclResult_t start_v6(void *context, void **handle, ncclProfilerEventDescr_v6_t *e)
{
	if (e->type & (ncclProfileCeColl | ncclProfileCeSync | ncclProfileCeBatch)) {
		*handle = NULL; /* copy-engine collectives: not requested */
		return 0;
	}
	return start_v5(context, handle, (ncclProfilerEventDescr_v5_t *)e);
}

/* v7 appends members to the task and API structs and adds kernel phase
 * events; what the plugin reads keeps its place. */
_Static_assert(offsetof(ncclProfilerEventDescr_v7_t, coll.parentGroup) == offsetof(ncclProfilerEventDescr_v5_t, coll.parentGroup), "v7 layout");
_Static_assert(offsetof(ncclProfilerEventDescr_v7_t, p2p.parentGroup) == offsetof(ncclProfilerEventDescr_v5_t, p2p.parentGroup), "v7 layout");
_Static_assert(offsetof(ncclProfilerEventDescr_v7_t, proxyOp.pid) == offsetof(ncclProfilerEventDescr_v5_t, proxyOp.pid), "v7 layout");
_Static_assert(offsetof(ncclProfilerEventDescr_v7_t, kernelCh.pTimer) == offsetof(ncclProfilerEventDescr_v5_t, kernelCh.pTimer), "v7 layout");

static ncclResult_t start_v7(void *context, void **handle, ncclProfilerEventDescr_v7_t *e)
{
	if (e->type & (ncclProfileCeColl | ncclProfileCeSync | ncclProfileCeBatch | ncclProfileKernelPhase)) {
		*handle = NULL; /* not requested */
		return 0;
	}
	return start_v5(context, handle, (ncclProfilerEventDescr_v5_t *)e);
}

static ncclResult_t record_v5(void *handle, ncclProfilerEventState_v5_t state, ncclProfilerEventStateArgs_v5_t *args)
{
	return record_common(handle, state, args);
}

/* EXPORT_PROFILER defines init_vN and the exported ncclProfiler_vN for the
 * versions whose entry points differ only by their descriptor's type. */
#define EXPORT_PROFILER(N)                                                                                  \
	static ncclResult_t init_v##N(void **context, uint64_t comm_id, int *mask, const char *name,        \
				      int nnodes, int nranks, int rank, ncclDebugLogger_t logfn)            \
	{                                                                                                   \
		(void)name, (void)nnodes, (void)logfn;                                                      \
		return init_common(context, comm_id, mask, nranks, rank, N);                                \
	}                                                                                                   \
	__attribute__((visibility("default"))) ncclProfiler_v##N##_t ncclProfiler_v##N = {                \
		.name = "loupe",                                                                            \
		.init = init_v##N,                                                                          \
		.startEvent = start_v##N,                                                                   \
		.stopEvent = stop_event,                                                                    \
		.recordEventState = record_v5,                                                              \
		.finalize = finalize,                                                                       \
	};

EXPORT_PROFILER(7) /* ncclProfiler_v7 */
EXPORT_PROFILER(6) /* ncclProfiler_v6 */
EXPORT_PROFILER(5) /* ncclProfiler_v5 */

/* ---- v4: no API events, the commHash after the name, a one-byte type ---- */

static ncclResult_t init_v4(void **context, int *mask, const char *name, uint64_t comm_hash, int nnodes, int nranks,
			    int rank, ncclDebugLogger_t logfn)
{
	(void)name, (void)nnodes, (void)logfn;
	return init_common(context, comm_hash, mask, nranks, rank, 4);
}

static ncclResult_t start_v4(void *context, void **handle, ncclProfilerEventDescr_v4_t *e)
{
	struct descr d = { .type = e->type, .parent = e->parentObj, .rank = e->rank, .root_or_peer = -1 };
	FILL_DESCR(d, e);
	if (e->type == ncclProfileColl || e->type == ncclProfileP2p)
		d.parent = NULL; /* the group event, which is not followed */
	return start_common(context, handle, &d);
}

static ncclResult_t record_v4(void *handle, ncclProfilerEventState_v4_t state, ncclProfilerEventStateArgs_v4_t *args)
{
	return record_common(handle, state, args);
}

__attribute__((visibility("default"))) ncclProfiler_v4_t ncclProfiler_v4 = {
	.name = "loupe",
	.init = init_v4,
	.startEvent = start_v4,
	.stopEvent = stop_event,
	.recordEventState = record_v4,
	.finalize = finalize,
};
