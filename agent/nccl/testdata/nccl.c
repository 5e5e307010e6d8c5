/* A stand-in libnccl.so.2 for tests on machines without GPUs: it exports
 * NCCL's real host API symbols with their real signatures and does no GPU
 * work. Built with -DSTANDIN_OLD_NCCL it lacks the functions that older
 * NCCL releases lack (ncclAlltoAll, ncclCommInitRankScalable). Each call checks its arguments the way a caller relies on (so a
 * probe reading the wrong register would disagree with it) and spends a few
 * microseconds, as a real enqueue does. Build:
 *   gcc -shared -fPIC -O2 -Wl,-soname,libnccl.so.2 -o libnccl.so.2 nccl.c */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#include "nccl.h"

struct ncclComm {
	int rank;
	int nranks;
	ncclUniqueId id;
};

/* Enqueue cost in microseconds; NCCL_STANDIN_ENQUEUE_US overrides, 0 spins
 * not at all (for benchmarks). */
static long enqueue_us = -1;

static void enqueue(void)
{
	if (enqueue_us < 0) {
		const char *s = getenv("NCCL_STANDIN_ENQUEUE_US");
		enqueue_us = s ? atol(s) : 5;
	}
	if (enqueue_us == 0)
		return;
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while ((now.tv_sec - start.tv_sec) * 1000000L + (now.tv_nsec - start.tv_nsec) / 1000 < enqueue_us);
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
	if (comm == NULL || nranks < 1 || rank < 0 || rank >= nranks)
		return ncclInvalidArgument;
	struct ncclComm *c = calloc(1, sizeof(*c));
	c->rank = rank;
	c->nranks = nranks;
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
#endif

/* Like NCCL's own, this wraps the per-device inits in a group through the
 * public ncclGroupStart/ncclGroupEnd: probes must survive nested API calls. */
ncclResult_t ncclCommInitAll(ncclComm_t *comm, int ndev, const int *devlist)
{
	ncclUniqueId id;
	ncclResult_t r = ncclSuccess;
	(void)devlist;
	if (ncclGetUniqueId(&id) != ncclSuccess || ncclGroupStart() != ncclSuccess)
		return ncclInvalidArgument;
	for (int i = 0; i < ndev && r == ncclSuccess; i++)
		r = init_rank(&comm[i], ndev, &id, i);
	if (ncclGroupEnd() != ncclSuccess)
		return ncclInvalidArgument;
	return r;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm)
{
	free(comm);
	return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm)
{
	free(comm);
	return ncclSuccess;
}

static ncclResult_t coll(ncclComm_t comm, ncclDataType_t datatype)
{
	if (!valid(comm, datatype))
		return ncclInvalidArgument;
	enqueue();
	return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
			   ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream)
{
	(void)sendbuff, (void)recvbuff, (void)count, (void)stream;
	if (op > ncclAvg)
		return ncclInvalidArgument;
	return coll(comm, datatype);
}

ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount,
			   ncclDataType_t datatype, ncclComm_t comm, cudaStream_t stream)
{
	(void)sendbuff, (void)recvbuff, (void)sendcount, (void)stream;
	return coll(comm, datatype);
}

ncclResult_t ncclReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount,
			       ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream)
{
	(void)sendbuff, (void)recvbuff, (void)recvcount, (void)stream;
	if (op > ncclAvg)
		return ncclInvalidArgument;
	return coll(comm, datatype);
}

ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
			   int root, ncclComm_t comm, cudaStream_t stream)
{
	(void)sendbuff, (void)recvbuff, (void)count, (void)stream;
	if (comm != NULL && (root < 0 || root >= comm->nranks))
		return ncclInvalidArgument;
	return coll(comm, datatype);
}

ncclResult_t ncclReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
			ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream)
{
	(void)sendbuff, (void)recvbuff, (void)count, (void)stream;
	if (op > ncclAvg || (comm != NULL && (root < 0 || root >= comm->nranks)))
		return ncclInvalidArgument;
	return coll(comm, datatype);
}

#ifndef STANDIN_OLD_NCCL
ncclResult_t ncclAlltoAll(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
			  ncclComm_t comm, cudaStream_t stream)
{
	(void)sendbuff, (void)recvbuff, (void)count, (void)stream;
	return coll(comm, datatype);
}
#endif

static ncclResult_t p2p(int peer, ncclComm_t comm, ncclDataType_t datatype)
{
	if (comm != NULL && (peer < 0 || peer >= comm->nranks))
		return ncclInvalidArgument;
	return coll(comm, datatype);
}

ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t datatype, int peer,
		      ncclComm_t comm, cudaStream_t stream)
{
	(void)sendbuff, (void)count, (void)stream;
	return p2p(peer, comm, datatype);
}

ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
		      cudaStream_t stream)
{
	(void)recvbuff, (void)count, (void)stream;
	return p2p(peer, comm, datatype);
}

static __thread int group_depth;

ncclResult_t ncclGroupStart(void)
{
	group_depth++;
	return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void)
{
	if (group_depth == 0)
		return ncclInvalidArgument;
	group_depth--;
	enqueue();
	return ncclSuccess;
}
