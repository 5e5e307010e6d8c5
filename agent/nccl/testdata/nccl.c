/* A stand-in libnccl.so.2 for tests on machines without GPUs: it exports
 * NCCL's real host API symbols with their real signatures and does no GPU
 * work. Built with -DSTANDIN_OLD_NCCL it lacks the functions that older
 * NCCL releases lack (ncclAlltoAll, ncclCommInitRankScalable,
 * ncclCommSplit). Each call checks its arguments the way a caller relies on
 * (so a probe reading the wrong register would disagree with it) and spends
 * a few microseconds, as a real enqueue does.
 *
 * Like NCCL >= 2.23 it loads a profiler plugin named by NCCL_PROFILER_PLUGIN
 * ("none", a name for libnccl-profiler-<name>.so, or a path), takes the
 * newest of ncclProfiler_v7, _v6, _v5 and _v4 it finds (NCCL_STANDIN_PROFILER_
 * VERSIONS, e.g. "4", plays an older NCCL that knows fewer), and calls its
 * entry points as NCCL does: init per communicator with its commHash; per
 * call the group and API events (v5+), then at launch the task event with
 * NCCL's per-function seqNumber, and from a proxy thread the kernel channel
 * events (with GPU timestamps) and proxy operation and step events with
 * their wait states.
 *
 * Simulated GPU (on when a plugin is loaded, or NCCL_STANDIN_GPU=1): each
 * communicator has a stream thread that runs its calls in order; a
 * collective's kernel starts NCCL_STANDIN_KERNEL_DELAY_US (default 0) after
 * its enqueue or the previous kernel's end, whichever is later (a slow GPU:
 * the compute before each collective takes that long), and ends
 * NCCL_STANDIN_TRANSFER_US
 * (default 20) after every rank's kernel has started (its proxy sees it
 * NCCL_STANDIN_PROXY_POLL_US, default 50, later), which the ranks see
 * in a shared file under NCCL_STANDIN_DIR. A rank that never calls a
 * collective leaves the others' kernels waiting: a hang. Its GPU timer runs
 * 1234.5 s ahead of CLOCK_REALTIME, which the plugin must convert.
 * ncclCommSplit also meets the other ranks through NCCL_STANDIN_DIR.
 * NCCL_STANDIN_HANG_CALL=N blocks the process's N-th collective call inside
 * NCCL for NCCL_STANDIN_HANG_MS (0: for ever).
 *
 * Build:
 *   gcc -shared -fPIC -O2 -Wl,-soname,libnccl.so.2 -o libnccl.so.2 nccl.c -ldl -lpthread */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "nccl.h"
#include "../plugin/nccl_profiler_api.h"

#define MAX_RANKS 64
#define QUEUE 64
#define CHANNELS 2
#define GPU_SKEW_NS 1234500000000LL

/* NCCL's function numbering, for the per-function seqNumber. */
enum { F_BROADCAST, F_REDUCE, F_ALLGATHER, F_REDUCESCATTER, F_ALLREDUCE, F_SEND, F_RECV, F_ALLTOALL, F_COUNT };
static const char *func_names[F_COUNT] = { "Broadcast", "Reduce", "AllGather", "ReduceScatter", "AllReduce",
					   "Send", "Recv", "AlltoAll" };
static const char *dtype_names[] = { "ncclInt8", "ncclUint8", "ncclInt32", "ncclUint32", "ncclInt64",
				     "ncclUint64", "ncclFloat16", "ncclFloat32", "ncclFloat64", "ncclBfloat16",
				     "ncclFloat8e4m3", "ncclFloat8e5m2" };

/* What the ranks of one communicator share. */
struct shared {
	_Atomic uint64_t started[MAX_RANKS]; /* collectives whose kernel started, per rank */
	struct {
		_Atomic uint64_t gen; /* the split's number + 1 once written */
		int32_t color, key;
	} split[2][MAX_RANKS];
};

struct work {
	int coll;
	uint64_t index; /* the communicator's collective number */
	int64_t enqueued;
	void *task; /* the profiler's task event */
};

struct stream {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct work q[QUEUE];
	int head, len, busy, stop;
};

struct ncclComm {
	int rank;
	int nranks;
	ncclUniqueId id;
	uint64_t hash;
	int children; /* splits so far */
	uint64_t seq[F_COUNT];
	uint64_t ncoll;
	void *prof;
	struct shared *shared;
	struct stream *stream;
};

/* Enqueue cost in microseconds; NCCL_STANDIN_ENQUEUE_US overrides, 0 spins
 * not at all (for benchmarks). */
static long enqueue_us = -1;

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long env_long(const char *name, long def)
{
	const char *s = getenv(name);
	return s ? atol(s) : def;
}

static void enqueue(void)
{
	if (enqueue_us < 0)
		enqueue_us = env_long("NCCL_STANDIN_ENQUEUE_US", 5);
	if (enqueue_us == 0)
		return;
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while ((now.tv_sec - start.tv_sec) * 1000000L + (now.tv_nsec - start.tv_nsec) / 1000 < enqueue_us);
}

static void sleep_until(int64_t t)
{
	int64_t d = t - now_ns();
	if (d > 0) {
		struct timespec ts = { d / 1000000000LL, d % 1000000000LL };
		nanosleep(&ts, NULL);
	}
}

/* ---- the profiler plugin, loaded as NCCL loads it ---- */

static pthread_once_t prof_once = PTHREAD_ONCE_INIT;
static int prof_version; /* 0: none */
static ncclProfiler_v7_t *prof7;
static ncclProfiler_v6_t *prof6;
static ncclProfiler_v5_t *prof5;
static ncclProfiler_v4_t *prof4;
static int prof_mask;
static int gpu_on;

static void prof_log(ncclDebugLogLevel level, unsigned long flags, const char *file, int line, const char *fmt, ...)
{
	(void)level, (void)flags, (void)file, (void)line, (void)fmt;
}

static void prof_load(void)
{
	const char *name = getenv("NCCL_PROFILER_PLUGIN");
	const char *versions = getenv("NCCL_STANDIN_PROFILER_VERSIONS");
	char path[4096];
	void *lib;

	gpu_on = env_long("NCCL_STANDIN_GPU", 0) != 0;
	if (name == NULL || strcasecmp(name, "none") == 0)
		return;
	if (strchr(name, '/') != NULL)
		snprintf(path, sizeof(path), "%s", name);
	else
		snprintf(path, sizeof(path), "libnccl-profiler-%s.so", name);
	if ((lib = dlopen(path, RTLD_NOW | RTLD_LOCAL)) == NULL) {
		fprintf(stderr, "stand-in NCCL: profiler plugin %s: %s\n", path, dlerror());
		return;
	}
	if (versions == NULL)
		versions = "7,6,5,4";
	if (strchr(versions, '7') && (prof7 = dlsym(lib, "ncclProfiler_v7")) != NULL)
		prof_version = 7;
	else if (strchr(versions, '6') && (prof6 = dlsym(lib, "ncclProfiler_v6")) != NULL)
		prof_version = 6;
	else if (strchr(versions, '5') && (prof5 = dlsym(lib, "ncclProfiler_v5")) != NULL)
		prof_version = 5;
	else if (strchr(versions, '4') && (prof4 = dlsym(lib, "ncclProfiler_v4")) != NULL)
		prof_version = 4;
	gpu_on = gpu_on || prof_version != 0;
}

static void prof_init(struct ncclComm *c)
{
	int mask = 0, err = 0;
	switch (prof_version) {
	case 7:
		err = prof7->init(&c->prof, c->hash, &mask, "", 1, c->nranks, c->rank, prof_log);
		break;
	case 6:
		err = prof6->init(&c->prof, c->hash, &mask, "", 1, c->nranks, c->rank, prof_log);
		break;
	case 5:
		err = prof5->init(&c->prof, c->hash, &mask, "", 1, c->nranks, c->rank, prof_log);
		break;
	case 4:
		err = prof4->init(&c->prof, &mask, "", c->hash, 1, c->nranks, c->rank, prof_log);
		break;
	}
	if (err)
		c->prof = NULL; /* NCCL carries on without the plugin for this communicator */
	else
		prof_mask = mask;
}

/* prof_start starts an event described in the newest layout; an older
 * plugin gets it translated as NCCL's adapters do (v5 and v6: the same
 * members in the same places, less v7's additions at the ends; v4: no API
 * events, the group as the task's parent, a one-byte type). */
static void *prof_start(struct ncclComm *c, ncclProfilerEventDescr_v7_t *d)
{
	void *h = NULL;
	if (c == NULL || c->prof == NULL || !(prof_mask & d->type))
		return NULL;
	if (prof_version == 7) {
		prof7->startEvent(c->prof, &h, d);
	} else if (prof_version == 6) {
		prof6->startEvent(c->prof, &h, (ncclProfilerEventDescr_v6_t *)d);
	} else if (prof_version == 5) {
		prof5->startEvent(c->prof, &h, (ncclProfilerEventDescr_v5_t *)d);
	} else if (prof_version == 4) {
		ncclProfilerEventDescr_v4_t e = { .type = (uint8_t)d->type, .parentObj = d->parentObj, .rank = d->rank };
		switch (d->type) {
		case ncclProfileColl:
			e.parentObj = d->coll.parentGroup;
			e.coll.seqNumber = d->coll.seqNumber;
			e.coll.func = d->coll.func;
			e.coll.sendBuff = d->coll.sendBuff;
			e.coll.recvBuff = d->coll.recvBuff;
			e.coll.count = d->coll.count;
			e.coll.root = d->coll.root;
			e.coll.datatype = d->coll.datatype;
			e.coll.nChannels = d->coll.nChannels;
			e.coll.nWarps = d->coll.nWarps;
			e.coll.algo = d->coll.algo;
			e.coll.proto = d->coll.proto;
			break;
		case ncclProfileP2p:
			e.parentObj = d->p2p.parentGroup;
			e.p2p.func = d->p2p.func;
			e.p2p.buff = d->p2p.buff;
			e.p2p.datatype = d->p2p.datatype;
			e.p2p.count = d->p2p.count;
			e.p2p.peer = d->p2p.peer;
			e.p2p.nChannels = d->p2p.nChannels;
			break;
		case ncclProfileProxyOp:
			e.proxyOp.pid = d->proxyOp.pid;
			e.proxyOp.channelId = d->proxyOp.channelId;
			e.proxyOp.peer = d->proxyOp.peer;
			e.proxyOp.nSteps = d->proxyOp.nSteps;
			e.proxyOp.chunkSize = d->proxyOp.chunkSize;
			e.proxyOp.isSend = d->proxyOp.isSend;
			break;
		case ncclProfileProxyStep:
			e.proxyStep.step = d->proxyStep.step;
			break;
		case ncclProfileKernelCh:
			e.kernelCh.channelId = d->kernelCh.channelId;
			e.kernelCh.pTimer = d->kernelCh.pTimer;
			break;
		case ncclProfileGroup:
			break;
		default:
			return NULL;
		}
		prof4->startEvent(c->prof, &h, &e);
	}
	return h;
}

static void prof_stop(void *h)
{
	if (h == NULL)
		return;
	if (prof_version == 7)
		prof7->stopEvent(h);
	else if (prof_version == 6)
		prof6->stopEvent(h);
	else if (prof_version == 5)
		prof5->stopEvent(h);
	else if (prof_version == 4)
		prof4->stopEvent(h);
}

static void prof_record(void *h, ncclProfilerEventState_t s, ncclProfilerEventStateArgs_v4_t *a)
{
	if (h == NULL)
		return;
	if (prof_version == 7)
		prof7->recordEventState(h, s, a);
	else if (prof_version == 6)
		prof6->recordEventState(h, s, a);
	else if (prof_version == 5)
		prof5->recordEventState(h, s, a);
	else if (prof_version == 4 && s != ncclProfilerGroupStartApiStop && s != ncclProfilerGroupEndApiStart)
		prof4->recordEventState(h, s, a);
}

/* ---- the simulated GPU ---- */

static struct shared *open_shared(uint64_t hash)
{
	const char *dir = getenv("NCCL_STANDIN_DIR");
	char path[4200];
	struct shared *s;
	int fd;

	if (dir == NULL)
		return NULL;
	snprintf(path, sizeof(path), "%s/standin-comm-%016llx", dir, (unsigned long long)hash);
	fd = open(path, O_RDWR | O_CREAT, 0600);
	if (fd < 0 || ftruncate(fd, sizeof(struct shared)) != 0) {
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	s = mmap(NULL, sizeof(*s), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	return s == MAP_FAILED ? NULL : s;
}

static void run_kernel(struct ncclComm *c, struct work *w)
{
	int64_t delay = env_long("NCCL_STANDIN_KERNEL_DELAY_US", 0) * 1000;
	int64_t transfer = env_long("NCCL_STANDIN_TRANSFER_US", 20) * 1000;
	void *ch[CHANNELS] = { 0 }, *op = NULL, *step = NULL;
	ncclProfilerEventStateArgs_v4_t args = { 0 };

	if (w->coll) {
		int64_t ready = now_ns() > w->enqueued ? now_ns() : w->enqueued;
		sleep_until(ready + delay);
	}
	int64_t start = now_ns();
	for (int i = 0; i < CHANNELS; i++) {
		ncclProfilerEventDescr_v7_t d = { .type = ncclProfileKernelCh, .parentObj = w->task, .rank = c->rank };
		d.kernelCh.channelId = (uint8_t)i;
		d.kernelCh.pTimer = (uint64_t)(start + GPU_SKEW_NS);
		ch[i] = prof_start(c, &d);
	}
	{
		ncclProfilerEventDescr_v7_t d = { .type = ncclProfileProxyOp, .parentObj = w->task, .rank = c->rank };
		d.proxyOp.pid = getpid();
		d.proxyOp.peer = (c->rank + 1) % c->nranks;
		d.proxyOp.nSteps = 1;
		d.proxyOp.chunkSize = 1 << 19;
		d.proxyOp.isSend = 1;
		op = prof_start(c, &d);
		ncclProfilerEventDescr_v7_t s = { .type = ncclProfileProxyStep, .parentObj = op, .rank = c->rank };
		step = prof_start(c, &s);
	}
	/* The proxy waits for the GPU to produce the data, then for the peers:
	 * in this simulation, for every rank's kernel to start. */
	prof_record(step, ncclProfilerProxyStepSendGPUWait, &args);
	if (w->coll && c->shared != NULL) {
		atomic_store(&c->shared->started[c->rank], w->index + 1);
		prof_record(step, ncclProfilerProxyStepSendWait, &args);
		for (int r = 0; r < c->nranks; r++)
			while (atomic_load(&c->shared->started[r]) < w->index + 1)
				usleep(20);
	} else {
		prof_record(step, ncclProfilerProxyStepSendWait, &args);
	}
	sleep_until(now_ns() + transfer);
	int64_t end = now_ns();
	prof_stop(step);
	prof_stop(op);
	args.kernelCh.pTimer = (uint64_t)(end + GPU_SKEW_NS);
	usleep(env_long("NCCL_STANDIN_PROXY_POLL_US", 50)); /* NCCL's proxy polls the kernel's counters */
	for (int i = 0; i < CHANNELS; i++) {
		prof_record(ch[i], ncclProfilerKernelChStop, &args);
		prof_stop(ch[i]);
	}
}

static void *stream_main(void *arg)
{
	struct ncclComm *c = arg;
	struct stream *s = c->stream;
	pthread_mutex_lock(&s->mu);
	for (;;) {
		while (s->len == 0 && !s->stop)
			pthread_cond_wait(&s->cv, &s->mu);
		if (s->len == 0)
			break;
		struct work w = s->q[s->head];
		s->busy = 1;
		pthread_mutex_unlock(&s->mu);
		run_kernel(c, &w);
		pthread_mutex_lock(&s->mu);
		s->head = (s->head + 1) % QUEUE;
		s->len--;
		s->busy = 0;
		pthread_cond_broadcast(&s->cv);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

static void gpu_enqueue(struct ncclComm *c, struct work w)
{
	struct stream *s = c->stream;
	if (s == NULL)
		return;
	pthread_mutex_lock(&s->mu);
	while (s->len == QUEUE) /* the launch queue is full: the host waits, as with CUDA */
		pthread_cond_wait(&s->cv, &s->mu);
	s->q[(s->head + s->len) % QUEUE] = w;
	s->len++;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

ncclResult_t ncclStandinStreamSynchronize(ncclComm_t c)
{
	if (c == NULL || c->stream == NULL)
		return ncclSuccess;
	struct stream *s = c->stream;
	pthread_mutex_lock(&s->mu);
	while (s->len > 0)
		pthread_cond_wait(&s->cv, &s->mu);
	pthread_mutex_unlock(&s->mu);
	return ncclSuccess;
}

/* ---- communicators ---- */

static uint64_t mix(uint64_t h, uint64_t v)
{
	h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
	h ^= h >> 29;
	h *= 0xbf58476d1ce4e5b9ULL;
	return h ^ (h >> 32);
}

/* commHash: NCCL hashes the unique id; this is a hash of its own, unlike
 * Loupe's probes', so a test can tell whose id a row carries. */
static uint64_t id_hash(const ncclUniqueId *id)
{
	uint64_t h = 1;
	for (int i = 0; i < NCCL_UNIQUE_ID_BYTES; i += 8) {
		uint64_t v;
		memcpy(&v, id->internal + i, 8);
		h = mix(h, v);
	}
	return h;
}

static ncclComm_t new_comm(int rank, int nranks, uint64_t hash)
{
	pthread_once(&prof_once, prof_load);
	struct ncclComm *c = calloc(1, sizeof(*c));
	c->rank = rank;
	c->nranks = nranks;
	c->hash = hash;
	if (gpu_on) {
		c->shared = nranks > 1 ? open_shared(hash) : NULL;
		c->stream = calloc(1, sizeof(*c->stream));
		pthread_mutex_init(&c->stream->mu, NULL);
		pthread_cond_init(&c->stream->cv, NULL);
		pthread_create(&c->stream->thread, NULL, stream_main, c);
	}
	if (prof_version)
		prof_init(c);
	return c;
}

static int valid(ncclComm_t comm, ncclDataType_t datatype)
{
	return comm != NULL && datatype >= ncclInt8 && datatype <= ncclFloat8e5m2;
}

ncclResult_t ncclGetVersion(int *version)
{
	*version = 22304;
	return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *uniqueId)
{
	int fd = open("/dev/urandom", O_RDONLY);
	if (fd < 0 || read(fd, uniqueId->internal, NCCL_UNIQUE_ID_BYTES) != NCCL_UNIQUE_ID_BYTES) {
		if (fd >= 0)
			close(fd);
		return ncclInvalidArgument;
	}
	close(fd);
	return ncclSuccess;
}

static ncclResult_t init_rank(ncclComm_t *comm, int nranks, const ncclUniqueId *id, int rank)
{
	if (comm == NULL || nranks < 1 || rank < 0 || rank >= nranks || nranks > MAX_RANKS)
		return ncclInvalidArgument;
	struct ncclComm *c = new_comm(rank, nranks, id_hash(id));
	memcpy(&c->id, id, sizeof(*id));
	enqueue();
	*comm = c;
	return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank)
{
	return init_rank(comm, nranks, &commId, rank);
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank,
				    ncclConfig_t *config)
{
	if (config != NULL && config->size < sizeof(size_t))
		return ncclInvalidArgument;
	return init_rank(comm, nranks, &commId, rank);
}

#ifndef STANDIN_OLD_NCCL
ncclResult_t ncclCommInitRankScalable(ncclComm_t *newcomm, int nranks, int myrank, int nId,
				      ncclUniqueId *commIds, ncclConfig_t *config)
{
	if (nId < 1 || commIds == NULL || (config != NULL && config->size < sizeof(size_t)))
		return ncclInvalidArgument;
	return init_rank(newcomm, nranks, &commIds[0], myrank);
}

/* Every rank of comm calls it; ranks of one color get a communicator
 * ordered by key (then by rank), as NCCL's. */
ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t *newcomm, ncclConfig_t *config)
{
	(void)config;
	if (comm == NULL || newcomm == NULL || color < NCCL_SPLIT_NOCOLOR)
		return ncclInvalidArgument;
	struct shared *s = comm->shared ? comm->shared : open_shared(comm->hash);
	uint64_t n = (uint64_t)comm->children++;
	int members = 0, myrank = 0;
	if (s == NULL && comm->nranks > 1)
		return ncclInvalidArgument; /* needs NCCL_STANDIN_DIR to meet the other ranks */
	if (s != NULL) {
		s->split[n % 2][comm->rank].color = color;
		s->split[n % 2][comm->rank].key = key;
		atomic_store(&s->split[n % 2][comm->rank].gen, n + 1);
		for (int r = 0; r < comm->nranks; r++)
			while (atomic_load(&s->split[n % 2][r].gen) < n + 1)
				usleep(50);
		for (int r = 0; r < comm->nranks; r++) {
			int rc = s->split[n % 2][r].color, rk = s->split[n % 2][r].key;
			if (rc != color)
				continue;
			members++;
			if (rk < key || (rk == key && r < comm->rank))
				myrank++;
		}
		if (s != comm->shared)
			munmap(s, sizeof(*s));
	} else {
		members = 1;
	}
	enqueue();
	if (color == NCCL_SPLIT_NOCOLOR) {
		*newcomm = NULL;
		return ncclSuccess;
	}
	*newcomm = new_comm(myrank, members, mix(mix(comm->hash, n), (uint64_t)color + 1));
	return ncclSuccess;
}
#endif

static void destroy(ncclComm_t comm)
{
	if (comm == NULL)
		return;
	if (comm->stream != NULL) {
		pthread_mutex_lock(&comm->stream->mu);
		comm->stream->stop = 1;
		pthread_cond_broadcast(&comm->stream->cv);
		pthread_mutex_unlock(&comm->stream->mu);
		pthread_join(comm->stream->thread, NULL);
		free(comm->stream);
	}
	if (comm->prof != NULL) {
		if (prof_version == 7)
			prof7->finalize(comm->prof);
		else if (prof_version == 6)
			prof6->finalize(comm->prof);
		else if (prof_version == 5)
			prof5->finalize(comm->prof);
		else
			prof4->finalize(comm->prof);
	}
	if (comm->shared != NULL)
		munmap(comm->shared, sizeof(*comm->shared));
	free(comm);
}

/* ---- calls, groups and launches ---- */

struct task {
	struct ncclComm *comm;
	int func;
	size_t count;
	ncclDataType_t datatype;
	int root_or_peer;
	void *api; /* the API event */
};

static __thread int group_depth;
static __thread void *group_api;
static __thread struct task group_tasks[256];
static __thread int group_len;

static void *start_group_api(struct ncclComm *c, int depth)
{
	ncclProfilerEventDescr_v7_t d = { .type = ncclProfileGroupApi, .rank = c ? c->rank : -1 };
	d.groupApi.groupDepth = depth;
	return prof_start(c, &d);
}

/* launch starts the tasks' events, as NCCL does when a group ends: the
 * group, each task (with its per-function seqNumber), the kernel launch;
 * the simulated GPU gets the work; then the tasks and the group stop. */
static void launch(struct task *ts, int n)
{
	if (n == 0)
		return;
	struct ncclComm *c0 = ts[0].comm;
	ncclProfilerEventDescr_v7_t g = { .type = ncclProfileGroup, .rank = c0->rank };
	void *group = prof_start(c0, &g);
	void *handles[256];
	for (int i = 0; i < n; i++) {
		struct task *t = &ts[i];
		struct ncclComm *c = t->comm;
		int coll = t->func != F_SEND && t->func != F_RECV;
		ncclProfilerEventDescr_v7_t d = { .type = coll ? ncclProfileColl : ncclProfileP2p, .parentObj = t->api,
						  .rank = c->rank };
		if (coll) {
			d.coll.seqNumber = c->seq[t->func]++;
			d.coll.func = func_names[t->func];
			d.coll.count = t->count;
			d.coll.root = t->root_or_peer;
			d.coll.datatype = dtype_names[t->datatype];
			d.coll.nChannels = CHANNELS;
			d.coll.nWarps = 16;
			d.coll.algo = "RING";
			d.coll.proto = t->count > 65536 ? "SIMPLE" : "LL";
			d.coll.parentGroup = group;
		} else {
			d.p2p.func = func_names[t->func];
			d.p2p.count = t->count;
			d.p2p.datatype = dtype_names[t->datatype];
			d.p2p.peer = t->root_or_peer;
			d.p2p.nChannels = CHANNELS;
			d.p2p.parentGroup = group;
		}
		handles[i] = prof_start(c, &d);
	}
	ncclProfilerEventDescr_v7_t kl = { .type = ncclProfileKernelLaunch, .rank = c0->rank };
	void *launch_ev = prof_start(c0, &kl);
	int64_t at = now_ns();
	for (int i = 0; i < n; i++) {
		struct ncclComm *c = ts[i].comm;
		int coll = ts[i].func != F_SEND && ts[i].func != F_RECV;
		struct work w = { .coll = coll, .index = coll ? c->ncoll++ : 0, .enqueued = at, .task = handles[i] };
		gpu_enqueue(c, w);
	}
	prof_stop(launch_ev);
	for (int i = 0; i < n; i++)
		prof_stop(handles[i]);
	prof_stop(group);
}

/* call is one collective or point-to-point API call: its API events, then
 * at once (outside a group) or at ncclGroupEnd, its launch. */
static ncclResult_t call(ncclComm_t c, int func, size_t count, ncclDataType_t datatype, int root_or_peer)
{
	int coll = func != F_SEND && func != F_RECV;
	struct task t = { c, func, count, datatype, root_or_peer, NULL };
	void *group = group_depth == 0 ? start_group_api(c, 1) : NULL;
	if (group_depth > 0 && group_len == 0) {
		/* NCCL starts a user group's API event with its first call. */
		group_api = start_group_api(c, group_depth + 1);
		prof_record(group_api, ncclProfilerGroupStartApiStop, NULL);
	}
	ncclProfilerEventDescr_v7_t d = { .type = coll ? ncclProfileCollApi : ncclProfileP2pApi,
					  .parentObj = group_depth ? group_api : group, .rank = c->rank };
	if (coll) {
		d.collApi.func = func_names[func];
		d.collApi.count = count;
		d.collApi.datatype = dtype_names[datatype];
		d.collApi.root = root_or_peer;
	} else {
		d.p2pApi.func = func_names[func];
		d.p2pApi.count = count;
		d.p2pApi.datatype = dtype_names[datatype];
	}
	t.api = prof_start(c, &d);
	enqueue();
	prof_stop(t.api);
	if (group_depth > 0) {
		if (group_len == 256)
			return ncclInvalidArgument;
		group_tasks[group_len++] = t;
		return ncclSuccess;
	}
	launch(&t, 1);
	prof_stop(group);
	return ncclSuccess;
}

/* Like NCCL's own, this wraps the per-device inits in a group through the
 * public ncclGroupStart/ncclGroupEnd: probes must survive nested API calls. */
ncclResult_t ncclCommInitAll(ncclComm_t *comm, int ndev, const int *devlist)
{
	ncclUniqueId id;
	ncclResult_t r = ncclSuccess;
	(void)devlist;
	if (ndev > MAX_RANKS || ncclGetUniqueId(&id) != ncclSuccess || ncclGroupStart() != ncclSuccess)
		return ncclInvalidArgument;
	for (int i = 0; i < ndev && r == ncclSuccess; i++)
		r = init_rank(&comm[i], ndev, &id, i);
	if (ncclGroupEnd() != ncclSuccess)
		return ncclInvalidArgument;
	return r;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm)
{
	destroy(comm);
	return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm)
{
	destroy(comm);
	return ncclSuccess;
}

/* A hang inside NCCL: the process's NCCL_STANDIN_HANG_CALL-th collective
 * call (from 1) blocks for NCCL_STANDIN_HANG_MS (0: for ever) before it
 * enqueues anything, as a call waiting on a peer that never comes does. */
static void maybe_hang(void)
{
	static _Atomic long calls;
	long n = atomic_fetch_add(&calls, 1) + 1;
	if (n != env_long("NCCL_STANDIN_HANG_CALL", 0))
		return;
	long ms = env_long("NCCL_STANDIN_HANG_MS", 0);
	int64_t until = now_ns() + ms * 1000000LL;
	while (ms == 0 || now_ns() < until)
		usleep(100000); /* asleep, as a thread waiting on a peer is */
}

static ncclResult_t coll(ncclComm_t comm, ncclDataType_t datatype, int func, size_t count, int root)
{
	if (!valid(comm, datatype))
		return ncclInvalidArgument;
	maybe_hang();
	return call(comm, func, count, datatype, root);
}

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
			   ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream)
{
	(void)sendbuff, (void)recvbuff, (void)stream;
	if (op > ncclAvg)
		return ncclInvalidArgument;
	return coll(comm, datatype, F_ALLREDUCE, count, -1);
}

ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount,
			   ncclDataType_t datatype, ncclComm_t comm, cudaStream_t stream)
{
	(void)sendbuff, (void)recvbuff, (void)stream;
	return coll(comm, datatype, F_ALLGATHER, sendcount, -1);
}

ncclResult_t ncclReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount,
			       ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream)
{
	(void)sendbuff, (void)recvbuff, (void)stream;
	if (op > ncclAvg)
		return ncclInvalidArgument;
	return coll(comm, datatype, F_REDUCESCATTER, recvcount, -1);
}

ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
			   int root, ncclComm_t comm, cudaStream_t stream)
{
	(void)sendbuff, (void)recvbuff, (void)stream;
	if (comm != NULL && (root < 0 || root >= comm->nranks))
		return ncclInvalidArgument;
	return coll(comm, datatype, F_BROADCAST, count, root);
}

ncclResult_t ncclReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
			ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream)
{
	(void)sendbuff, (void)recvbuff, (void)stream;
	if (op > ncclAvg || (comm != NULL && (root < 0 || root >= comm->nranks)))
		return ncclInvalidArgument;
	return coll(comm, datatype, F_REDUCE, count, root);
}

#ifndef STANDIN_OLD_NCCL
ncclResult_t ncclAlltoAll(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
			  ncclComm_t comm, cudaStream_t stream)
{
	(void)sendbuff, (void)recvbuff, (void)stream;
	return coll(comm, datatype, F_ALLTOALL, count, -1);
}
#endif

static ncclResult_t p2p(int func, size_t count, int peer, ncclComm_t comm, ncclDataType_t datatype)
{
	if (comm != NULL && (peer < 0 || peer >= comm->nranks))
		return ncclInvalidArgument;
	if (!valid(comm, datatype))
		return ncclInvalidArgument;
	return call(comm, func, count, datatype, peer);
}

ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t datatype, int peer,
		      ncclComm_t comm, cudaStream_t stream)
{
	(void)sendbuff, (void)stream;
	return p2p(F_SEND, count, peer, comm, datatype);
}

ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
		      cudaStream_t stream)
{
	(void)recvbuff, (void)stream;
	return p2p(F_RECV, count, peer, comm, datatype);
}

ncclResult_t ncclGroupStart(void)
{
	if (group_depth++ == 0) {
		group_len = 0;
		group_api = NULL;
	}
	return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void)
{
	if (group_depth == 0)
		return ncclInvalidArgument;
	if (--group_depth > 0)
		return ncclSuccess;
	prof_record(group_api, ncclProfilerGroupEndApiStart, NULL);
	launch(group_tasks, group_len);
	prof_stop(group_api);
	group_api = NULL;
	group_len = 0;
	enqueue();
	return ncclSuccess;
}
