/* A multi-rank NCCL program for Loupe's tests, calling the host API the way
 * a training loop does. Built twice: linked against libnccl.so.2, and with
 * -DUSE_DLOPEN loading the library named by $LOUPE_NCCL_LIB with dlopen, as
 * PyTorch does with the copy inside its wheel.
 *
 *   ncclrank ranks DIR RANK NRANKS ITERS SLOWRANK SLOW_US
 *       one rank of NRANKS (one process each) with three communicators, one
 *       from each init function that takes unique ids; rank 0 writes the ids
 *       to DIR, ranks synchronize their simulated stream and meet at a
 *       barrier in a shared file after every iteration; SLOWRANK sleeps
 *       SLOW_US before every collective.
 *   ncclrank split DIR RANK NRANKS ITERS SLOWRANK SLOW_US
 *       a data-parallel communicator of NRANKS split into tensor-parallel
 *       pairs (ncclCommSplit, color RANK/2): every iteration two
 *       collectives on the pair, then two on the whole; SLOWRANK sleeps
 *       SLOW_US before its pair's collectives, and so does every rank
 *       listed in $NCCLRANK_TP_SLOW_RANKS.
 *   ncclrank initall DIR NDEV ITERS
 *       one process, NDEV communicators from ncclCommInitAll.
 *   ncclrank bench DIR N
 *       N back-to-back ncclAllReduce calls on a one-rank communicator;
 *       prints the CPU time they took in ns (user and kernel: probe
 *       handling is charged to the traced process).
 *
 * Every mode first waits for the file DIR/go, so that a test can attach
 * before the first NCCL call (not with NCCLRANK_NO_GO=1: a job that does
 * not wait for the agent), and waits for DIR/exit before it exits, so
 * that a test can look at the live process after its calls. With
 * NCCLRANK_UNTIL_STOP=1 the ranks and split modes run until DIR/stop
 * exists instead of ITERS iterations. NCCLRANK_STALL_RANK stops calling
 * collectives at iteration NCCLRANK_STALL_AT, spinning in
 * stuck_outside_nccl for NCCLRANK_STALL_MS (0: for ever). */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef USE_DLOPEN
#include <dlfcn.h>
#endif

#include "nccl.h"

#define NCCL_FUNCS(X)                                                                               \
	X(ncclGetUniqueId) X(ncclCommInitRank) X(ncclCommInitRankConfig) X(ncclCommInitRankScalable)   \
	X(ncclCommInitAll) X(ncclCommSplit)                                                            \
	X(ncclCommDestroy) X(ncclAllReduce) X(ncclAllGather) X(ncclReduceScatter) X(ncclBroadcast)     \
	X(ncclReduce) X(ncclAlltoAll) X(ncclSend) X(ncclRecv) X(ncclGroupStart) X(ncclGroupEnd)        \
	X(ncclStandinStreamSynchronize)

#define DECLARE(f) static __typeof__(&f) p_##f;
NCCL_FUNCS(DECLARE)

static void die(const char *what)
{
	fprintf(stderr, "ncclrank: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void check(ncclResult_t r, const char *what)
{
	if (r != ncclSuccess) {
		fprintf(stderr, "ncclrank: %s returned %d\n", what, r);
		exit(3);
	}
}

static void load(void)
{
#ifdef USE_DLOPEN
	const char *path = getenv("LOUPE_NCCL_LIB");
	void *h = path ? dlopen(path, RTLD_NOW) : NULL;
	if (h == NULL) {
		fprintf(stderr, "ncclrank: dlopen %s: %s\n", path ? path : "($LOUPE_NCCL_LIB unset)", dlerror());
		exit(2);
	}
#define LOAD(f)                                                                                     \
	if ((p_##f = (__typeof__(&f))dlsym(h, #f)) == NULL)                                        \
		die("dlsym " #f);
#else
#define LOAD(f) p_##f = &f;
#endif
	NCCL_FUNCS(LOAD)
}

static char dir[4096];

static void path(char *buf, const char *name)
{
	snprintf(buf, 4200, "%s/%s", dir, name);
}

static void wait_file(const char *name)
{
	char p[4200];
	struct stat st;
	path(p, name);
	for (int i = 0; stat(p, &st) != 0; i++) {
		if (i > 60000)
			die(p);
		usleep(500);
	}
}

static void write_id(const char *name, const ncclUniqueId *id)
{
	char p[4200], tmp[4300];
	path(p, name);
	snprintf(tmp, sizeof(tmp), "%s.tmp", p);
	FILE *f = fopen(tmp, "w");
	if (f == NULL || fwrite(id, sizeof(*id), 1, f) != 1 || fclose(f) != 0 || rename(tmp, p) != 0)
		die(p);
}

static void read_id(const char *name, ncclUniqueId *id)
{
	char p[4200];
	wait_file(name);
	path(p, name);
	FILE *f = fopen(p, "r");
	if (f == NULL || fread(id, sizeof(*id), 1, f) != 1)
		die(p);
	fclose(f);
}

static uint64_t *barrier_count;
static uint64_t barrier_gen;
static int nranks = 1;

static void barrier(void)
{
	barrier_gen++;
	__atomic_add_fetch(barrier_count, 1, __ATOMIC_SEQ_CST);
	while (__atomic_load_n(barrier_count, __ATOMIC_SEQ_CST) < barrier_gen * (uint64_t)nranks)
		usleep(20);
}

static void open_barrier(void)
{
	char p[4200];
	path(p, "barrier");
	int fd = open(p, O_RDWR | O_CREAT, 0600);
	if (fd < 0 || ftruncate(fd, 4096) != 0)
		die(p);
	barrier_count = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (barrier_count == MAP_FAILED)
		die("mmap barrier");
	close(fd);
}

static int rank, slow_rank = -1, slow_us;

static void maybe_slow(void)
{
	if (rank == slow_rank)
		usleep(slow_us);
}

static int env_int(const char *name, int def)
{
	const char *s = getenv(name);
	return s && *s ? atoi(s) : def;
}

/* A rank that stopped calling collectives: busy in its own code. */
__attribute__((noinline)) void stuck_outside_nccl(int ms)
{
	struct timespec a, b;
	volatile uint64_t spin = 0;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (;;) {
		for (int i = 0; i < 100000; i++)
			spin++;
		clock_gettime(CLOCK_MONOTONIC, &b);
		if (ms > 0 && (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000 >= ms)
			return;
	}
}

/* keep_going: ITERS iterations, or under NCCLRANK_UNTIL_STOP until DIR/stop
 * exists. All ranks must stop after the same iteration, or those that go on
 * wait for ever in a collective the others never call; so the first rank
 * to see DIR/stop publishes the last iteration for all in DIR/stop-at (its
 * own plus 2, more than the one iteration the per-iteration barrier lets
 * ranks drift apart), written aside and linked into place, which only the
 * first link does. */
static int keep_going(int i, int iters)
{
	static int last = -1;
	char p[4200], mine[4300];
	struct stat st;
	FILE *f;
	if (!env_int("NCCLRANK_UNTIL_STOP", 0))
		return i < iters;
	if (last < 0) {
		path(p, "stop");
		if (stat(p, &st) != 0)
			return 1;
		path(p, "stop-at");
		snprintf(mine, sizeof(mine), "%s.%d", p, rank);
		if ((f = fopen(mine, "w")) == NULL || fprintf(f, "%d\n", i + 2) < 0 || fclose(f) != 0)
			die(mine);
		if (link(mine, p) != 0 && errno != EEXIST)
			die(p);
		if ((f = fopen(p, "r")) == NULL || fscanf(f, "%d", &last) != 1)
			die(p);
		fclose(f);
	}
	return i < last;
}

static void maybe_stall(int i)
{
	if (rank == env_int("NCCLRANK_STALL_RANK", -1) && i == env_int("NCCLRANK_STALL_AT", -1))
		stuck_outside_nccl(env_int("NCCLRANK_STALL_MS", 0));
}

static char sbuf[64], rbuf[64];

/* One training iteration: the collectives of a sharded data-parallel step,
 * then a ring exchange on the second communicator. */
static void iteration(ncclComm_t c0, ncclComm_t c1)
{
	maybe_slow();
	check(p_ncclAllReduce(sbuf, rbuf, 1 << 20, ncclFloat32, ncclSum, c0, NULL), "AllReduce");
	maybe_slow();
	check(p_ncclAllReduce(sbuf, rbuf, 1 << 18, ncclBfloat16, ncclAvg, c0, NULL), "AllReduce");
	maybe_slow();
	check(p_ncclAllGather(sbuf, rbuf, 4096, ncclFloat16, c0, NULL), "AllGather");
	maybe_slow();
	check(p_ncclReduceScatter(sbuf, rbuf, 2048, ncclFloat32, ncclSum, c0, NULL), "ReduceScatter");
	maybe_slow();
	check(p_ncclBroadcast(sbuf, rbuf, 100, ncclInt64, 0, c0, NULL), "Broadcast");
	maybe_slow();
	check(p_ncclReduce(sbuf, rbuf, 300, ncclFloat64, ncclMax, nranks - 1, c0, NULL), "Reduce");
	maybe_slow();
	check(p_ncclAlltoAll(sbuf, rbuf, 64, ncclInt32, c0, NULL), "AlltoAll");
	check(p_ncclGroupStart(), "GroupStart");
	check(p_ncclSend(sbuf, 10, ncclUint8, (rank + 1) % nranks, c1, NULL), "Send");
	check(p_ncclRecv(rbuf, 10, ncclUint8, (rank + nranks - 1) % nranks, c1, NULL), "Recv");
	check(p_ncclGroupEnd(), "GroupEnd");
}

static int ranks_main(char **argv)
{
	rank = atoi(argv[0]);
	nranks = atoi(argv[1]);
	int iters = atoi(argv[2]);
	slow_rank = atoi(argv[3]);
	slow_us = atoi(argv[4]);

	ncclUniqueId id0, id1, id2[2];
	if (rank == 0) {
		check(p_ncclGetUniqueId(&id0), "GetUniqueId");
		check(p_ncclGetUniqueId(&id1), "GetUniqueId");
		check(p_ncclGetUniqueId(&id2[0]), "GetUniqueId");
		check(p_ncclGetUniqueId(&id2[1]), "GetUniqueId");
		write_id("id2a", &id2[0]);
		write_id("id2b", &id2[1]);
		write_id("id1", &id1);
		write_id("id0", &id0);
	} else {
		read_id("id0", &id0);
		read_id("id1", &id1);
		read_id("id2a", &id2[0]);
		read_id("id2b", &id2[1]);
	}
	open_barrier();

	ncclComm_t c0, c1, c2;
	ncclConfig_t cfg = { .size = sizeof(cfg), .magic = 0xcafebeef, .version = 22304, .blocking = 1 };
	check(p_ncclCommInitRank(&c0, nranks, id0, rank), "CommInitRank");
	check(p_ncclCommInitRankConfig(&c1, nranks, id1, rank, &cfg), "CommInitRankConfig");
	check(p_ncclCommInitRankScalable(&c2, nranks, rank, 2, id2, &cfg), "CommInitRankScalable");
	barrier();
	for (int i = 0; keep_going(i, iters); i++) {
		maybe_stall(i);
		iteration(c0, c1);
		p_ncclStandinStreamSynchronize(c0);
		p_ncclStandinStreamSynchronize(c1);
		barrier();
		usleep(3000); /* the forward pass: no collectives */
	}
	p_ncclCommDestroy(c0);
	p_ncclCommDestroy(c1);
	p_ncclCommDestroy(c2);
	return 0;
}

static int listed(const char *list, int r)
{
	char buf[256];
	snprintf(buf, sizeof(buf), "%s", list ? list : "");
	for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ","))
		if (atoi(tok) == r)
			return 1;
	return 0;
}

static int split_main(char **argv)
{
	rank = atoi(argv[0]);
	nranks = atoi(argv[1]);
	int iters = atoi(argv[2]);
	slow_rank = atoi(argv[3]);
	slow_us = atoi(argv[4]);
	int tp_slow = rank == slow_rank || listed(getenv("NCCLRANK_TP_SLOW_RANKS"), rank);

	ncclUniqueId id;
	if (rank == 0) {
		check(p_ncclGetUniqueId(&id), "GetUniqueId");
		write_id("id0", &id);
	} else {
		read_id("id0", &id);
	}
	open_barrier();
	ncclComm_t world, pair;
	check(p_ncclCommInitRank(&world, nranks, id, rank), "CommInitRank");
	check(p_ncclCommSplit(world, rank / 2, rank, &pair, NULL), "CommSplit");
	barrier();
	for (int i = 0; keep_going(i, iters); i++) {
		maybe_stall(i);
		if (tp_slow)
			usleep(slow_us);
		check(p_ncclAllGather(sbuf, rbuf, 8192, ncclBfloat16, pair, NULL), "AllGather");
		if (tp_slow)
			usleep(slow_us);
		check(p_ncclReduceScatter(sbuf, rbuf, 8192, ncclBfloat16, ncclSum, pair, NULL), "ReduceScatter");
		check(p_ncclAllReduce(sbuf, rbuf, 1 << 20, ncclFloat32, ncclSum, world, NULL), "AllReduce");
		check(p_ncclAllReduce(sbuf, rbuf, 1 << 16, ncclFloat32, ncclSum, world, NULL), "AllReduce");
		p_ncclStandinStreamSynchronize(pair);
		p_ncclStandinStreamSynchronize(world);
		barrier();
		usleep(3000);
	}
	p_ncclCommDestroy(pair);
	p_ncclCommDestroy(world);
	return 0;
}

static int initall_main(char **argv)
{
	int ndev = atoi(argv[0]), iters = atoi(argv[1]);
	ncclComm_t comms[64];
	if (ndev < 1 || ndev > 64)
		return 2;
	check(p_ncclCommInitAll(comms, ndev, NULL), "CommInitAll");
	for (int i = 0; i < iters; i++) {
		check(p_ncclGroupStart(), "GroupStart");
		for (int d = 0; d < ndev; d++)
			check(p_ncclAllReduce(sbuf, rbuf, 1024, ncclFloat32, ncclSum, comms[d], NULL), "AllReduce");
		check(p_ncclGroupEnd(), "GroupEnd");
	}
	for (int d = 0; d < ndev; d++)
		p_ncclCommDestroy(comms[d]);
	return 0;
}

static int bench_main(char **argv)
{
	long n = atol(argv[0]);
	ncclUniqueId id;
	ncclComm_t c;
	struct timespec a, b;
	check(p_ncclGetUniqueId(&id), "GetUniqueId");
	check(p_ncclCommInitRank(&c, 1, id, 0), "CommInitRank");
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
	for (long i = 0; i < n; i++)
		check(p_ncclAllReduce(sbuf, rbuf, 1024, ncclFloat32, ncclSum, c, NULL), "AllReduce");
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
	printf("%lld\n", (long long)((b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec)));
	p_ncclCommDestroy(c);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: ncclrank ranks|split|initall|bench DIR ARGS...\n");
		return 2;
	}
	load();
	snprintf(dir, sizeof(dir), "%s", argv[2]);
	if (!env_int("NCCLRANK_NO_GO", 0))
		wait_file("go");
	int rc = 2;
	if (strcmp(argv[1], "ranks") == 0 && argc == 8)
		rc = ranks_main(argv + 3);
	else if (strcmp(argv[1], "split") == 0 && argc == 8)
		rc = split_main(argv + 3);
	else if (strcmp(argv[1], "initall") == 0 && argc == 5)
		rc = initall_main(argv + 3);
	else if (strcmp(argv[1], "bench") == 0 && argc == 4)
		rc = bench_main(argv + 3);
	else
		fprintf(stderr, "ncclrank: bad arguments\n");
	fflush(stdout);
	wait_file("exit");
	return rc;
}
