/* A synthetic data-parallel training job for Loupe's demo: one process per
 * rank, no GPU. Every iteration it posts a step marker to the local
 * loupe-agent, "computes" (sleeps, as a host thread does while its GPU
 * works), calls the gradient collectives of the stand-in libnccl (the real
 * NCCL host API, so the agent's eBPF uprobes see them), and waits for the
 * other ranks, as a collective's completion would make it wait.
 *
 * Planted problems:
 *   --straggler R:MS   rank R sleeps MS milliseconds more before its
 *                      collectives every iteration: it arrives last.
 *   --loader R         rank R decodes and collates its batch on the CPU
 *                      (decode_jpeg, collate_batch) for most of its compute
 *                      time: the data-loader stall its CPU profile shows.
 *
 * Usage (ranks from the environment, as torchrun sets them):
 *   RANK=r WORLD_SIZE=n train --dir DIR [--compute-ms 40] [--straggler R:MS]
 *        [--loader R] [--agent HOST:PORT --job JOB] [--no-sync]
 *
 * Rank 0 writes the communicator's unique id to DIR; every rank first waits
 * for DIR/go (the demo writes it before it starts the agent: the agent
 * attaches to a job whose communicator exists). SIGTERM or SIGINT ends the loop; the rank then destroys its
 * communicator and exits 0. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <linux/futex.h>
#include <netdb.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "nccl.h"

static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
	(void)sig;
	stopping = 1;
}

static int rank, nranks;

static void die(const char *what)
{
	fprintf(stderr, "train rank %d: %s: %s\n", rank, what, strerror(errno));
	exit(2);
}

static void check(ncclResult_t r, const char *what)
{
	if (r != ncclSuccess) {
		fprintf(stderr, "train rank %d: %s returned %d\n", rank, what, r);
		exit(3);
	}
}

static double now_s(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_ms(double ms)
{
	struct timespec ts = { .tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms * 1e6) % 1000000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !stopping)
		;
}

/* ---- the data loader of the stalled rank: real CPU work in frames whose
 * names a profile reader recognises. ---- */

#define IMG 64
static uint8_t jpeg[IMG * IMG * 3];
static float batch[32][IMG * IMG * 3];
static volatile float sink;

/* decode_jpeg_idct: an 8x8 integer inverse transform over the image, the
 * hot loop of a JPEG decoder. */
__attribute__((noinline)) static void decode_jpeg_idct(const uint8_t *src, float *dst)
{
	for (int b = 0; b < IMG * IMG * 3; b += 64) {
		for (int u = 0; u < 8; u++) {
			int acc = 0;
			for (int v = 0; v < 64; v++)
				acc += src[b + v] * ((u * 7 + v * 3) % 11 - 5);
			for (int v = 0; v < 8; v++)
				dst[b + u * 8 + v] = (float)(acc >> 3) / 255.0f;
		}
	}
}

__attribute__((noinline)) static void decode_jpeg(int img, float *dst)
{
	for (size_t i = 0; i < sizeof(jpeg); i++)
		jpeg[i] = (uint8_t)(i * 31 + img * 17);
	decode_jpeg_idct(jpeg, dst);
}

/* collate_batch: normalise and stack the decoded images into one batch. */
__attribute__((noinline)) static void collate_batch(int n)
{
	float sum = 0;
	for (int i = 0; i < n; i++)
		for (int j = 0; j < IMG * IMG * 3; j++) {
			batch[i][j] = (batch[i][j] - 0.45f) / 0.225f;
			sum += batch[i][j];
		}
	sink = sum;
}

/* load_batch decodes and collates images until ms of CPU time are spent. */
__attribute__((noinline)) static void load_batch(double ms)
{
	double until = now_s(CLOCK_THREAD_CPUTIME_ID) + ms / 1000;
	int n = 0;
	while (now_s(CLOCK_THREAD_CPUTIME_ID) < until && !stopping) {
		decode_jpeg(n, batch[n % 32]);
		if (++n % 32 == 0)
			collate_batch(32);
	}
	collate_batch(n % 32);
}

/* ---- step markers: POST /v1/steps to the local agent ---- */

static const char *agent, *job;
static struct sockaddr_in agent_addr;
static int marker_errors;

static void resolve_agent(void)
{
	char host[256];
	const char *colon = strrchr(agent, ':');
	if (colon == NULL || colon - agent >= (long)sizeof(host)) {
		fprintf(stderr, "train: --agent %s: want HOST:PORT\n", agent);
		exit(2);
	}
	memcpy(host, agent, colon - agent);
	host[colon - agent] = 0;
	struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM }, *res;
	if (getaddrinfo(host, colon + 1, &hints, &res) != 0) {
		fprintf(stderr, "train: cannot resolve agent address %s\n", agent);
		exit(2);
	}
	memcpy(&agent_addr, res->ai_addr, sizeof(agent_addr));
	freeaddrinfo(res);
}

/* post_marker says that iteration it began now. A failure is reported once
 * and otherwise ignored: training never waits for the profiler. */
static void post_marker(long it)
{
	char body[512], req[1024], resp[256];
	int n = snprintf(body, sizeof(body), "{\"job\":\"%s\",\"rank\":%d,\"pid\":%d,\"iteration\":%ld,\"time\":%.6f}", job,
			 rank, getpid(), it, now_s(CLOCK_REALTIME));
	int m = snprintf(req, sizeof(req),
			 "POST /v1/steps HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
			 "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
			 agent, n, body);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct timeval tv = { .tv_sec = 1 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	ssize_t got = -1;
	if (fd >= 0 && connect(fd, (struct sockaddr *)&agent_addr, sizeof(agent_addr)) == 0 && write(fd, req, m) == m)
		got = read(fd, resp, sizeof(resp) - 1);
	if (fd >= 0)
		close(fd);
	if (got > 0) {
		resp[got] = 0;
		if (strncmp(resp, "HTTP/1.1 2", 10) == 0)
			return;
	}
	if (marker_errors++ == 0)
		fprintf(stderr, "train rank %d: step marker %ld not accepted by %s (%s); training goes on\n", rank, it, agent,
			got > 0 ? resp : "no answer");
}

/* ---- the wait for the other ranks: a futex barrier in a shared file,
 * standing in for the completion of the collective on the GPU. ---- */

struct shared {
	uint32_t count, gen;
};
static struct shared *shm;

static void futex(uint32_t *addr, int op, uint32_t val)
{
	struct timespec timeout = { .tv_nsec = 200000000 };
	syscall(SYS_futex, addr, op, val, op == FUTEX_WAIT ? &timeout : NULL, NULL, 0);
}

static void barrier(void)
{
	uint32_t gen = __atomic_load_n(&shm->gen, __ATOMIC_ACQUIRE);
	if (__atomic_add_fetch(&shm->count, 1, __ATOMIC_ACQ_REL) == (uint32_t)nranks) {
		__atomic_store_n(&shm->count, 0, __ATOMIC_RELEASE);
		__atomic_add_fetch(&shm->gen, 1, __ATOMIC_ACQ_REL);
		futex(&shm->gen, FUTEX_WAKE, INT_MAX);
		return;
	}
	while (__atomic_load_n(&shm->gen, __ATOMIC_ACQUIRE) == gen && !stopping)
		futex(&shm->gen, FUTEX_WAIT, gen);
}

static char dir[3800];

static void wait_file(const char *name)
{
	char p[4096];
	struct stat st;
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	while (stat(p, &st) != 0) {
		if (stopping)
			exit(0);
		usleep(10000);
	}
}

static void share_id(ncclUniqueId *id)
{
	char p[4096], tmp[4200];
	snprintf(p, sizeof(p), "%s/nccl-id", dir);
	if (rank == 0) {
		check(ncclGetUniqueId(id), "ncclGetUniqueId");
		snprintf(tmp, sizeof(tmp), "%s.tmp", p);
		FILE *f = fopen(tmp, "w");
		if (f == NULL || fwrite(id, sizeof(*id), 1, f) != 1 || fclose(f) != 0 || rename(tmp, p) != 0)
			die(p);
		return;
	}
	wait_file("nccl-id");
	FILE *f = fopen(p, "r");
	if (f == NULL || fread(id, sizeof(*id), 1, f) != 1)
		die(p);
	fclose(f);
}

static void open_shared(void)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s/barrier", dir);
	int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || ftruncate(fd, 4096) != 0)
		die(p);
	shm = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (shm == MAP_FAILED)
		die("mmap barrier");
	close(fd);
}

static int env_int(const char *name)
{
	const char *v = getenv(name);
	char *end;
	long n = v ? strtol(v, &end, 10) : -1;
	if (v == NULL || *end != 0 || n < 0 || n > 1 << 20) {
		fprintf(stderr, "train: %s=%s: want a number (the launcher sets RANK and WORLD_SIZE)\n", name, v ? v : "");
		exit(2);
	}
	return (int)n;
}

int main(int argc, char **argv)
{
	double compute_ms = 40, straggle_ms = 0;
	int straggler = -1, loader = -1, sync = 1;
	static const struct option opts[] = {
		{ "dir", required_argument, 0, 'd' },	     { "compute-ms", required_argument, 0, 'c' },
		{ "straggler", required_argument, 0, 's' }, { "loader", required_argument, 0, 'l' },
		{ "agent", required_argument, 0, 'a' },     { "job", required_argument, 0, 'j' },
		{ "no-sync", no_argument, 0, 'n' },	     { 0, 0, 0, 0 },
	};
	for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
		switch (c) {
		case 'd':
			snprintf(dir, sizeof(dir), "%s", optarg);
			break;
		case 'c':
			compute_ms = atof(optarg);
			break;
		case 's':
			if (sscanf(optarg, "%d:%lf", &straggler, &straggle_ms) != 2) {
				fprintf(stderr, "train: --straggler %s: want RANK:MS\n", optarg);
				return 2;
			}
			break;
		case 'l':
			loader = atoi(optarg);
			break;
		case 'a':
			agent = optarg;
			break;
		case 'j':
			job = optarg;
			break;
		case 'n':
			sync = 0;
			break;
		default:
			return 2;
		}
	}
	if (dir[0] == 0 || (agent != NULL && job == NULL)) {
		fprintf(stderr, "usage: RANK=r WORLD_SIZE=n train --dir DIR [--compute-ms MS] [--straggler R:MS] [--loader R] "
				"[--agent HOST:PORT --job JOB] [--no-sync]\n");
		return 2;
	}
	rank = env_int("RANK");
	nranks = env_int("WORLD_SIZE");
	if (agent != NULL)
		resolve_agent();
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	open_shared();
	wait_file("go");
	ncclUniqueId id;
	ncclComm_t comm;
	share_id(&id);
	check(ncclCommInitRank(&comm, nranks, id, rank), "ncclCommInitRank");
	static char grads[1 << 20], out[1 << 20];

	for (long it = 0; !stopping; it++) {
		if (agent != NULL)
			post_marker(it);
		/* Forward and backward: the GPU works, the host thread waits. The
		 * stalled rank first prepares its batch on the CPU. */
		if (rank == loader) {
			load_batch(compute_ms * 0.7);
			sleep_ms(compute_ms * 0.3);
		} else {
			sleep_ms(compute_ms);
		}
		if (rank == straggler)
			sleep_ms(straggle_ms);
		check(ncclAllReduce(grads, out, 1 << 18, ncclFloat32, ncclSum, comm, NULL), "ncclAllReduce");
		check(ncclAllReduce(grads, out, 1 << 16, ncclBfloat16, ncclAvg, comm, NULL), "ncclAllReduce");
		check(ncclAllGather(grads, out, 4096, ncclFloat16, comm, NULL), "ncclAllGather");
		if (sync)
			barrier();
	}
	ncclCommDestroy(comm);
	return 0;
}
