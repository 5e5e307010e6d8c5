/* What Loupe's NCCL profiler plugin sends to the agent: unix datagrams of
 * one header and up to LOUPE_WIRE_BATCH records, little-endian, naturally
 * aligned. agent/nccl/plugin.go decodes the same layout. */
#ifndef LOUPE_WIRE_H
#define LOUPE_WIRE_H

#include <stdint.h>

#define LOUPE_WIRE_MAGIC 0x314e504cu /* "LPN1" */
#define LOUPE_WIRE_VERSION 1
#define LOUPE_WIRE_BATCH 256

enum {
	LOUPE_KIND_COLL = 1,
	LOUPE_KIND_P2P = 2,
};

enum {
	LOUPE_FLAG_GPU = 1,     /* gpu_start_ns and gpu_end_ns are set */
	LOUPE_FLAG_PENDING = 2, /* reported before the kernel ended (a stall) */
};

struct loupe_wire_header {
	uint32_t magic;
	uint16_t version;
	uint16_t record_size; /* sizeof(struct loupe_wire_record) */
	uint32_t pid;         /* getpid(), in the sender's pid namespace */
	uint32_t count;       /* records that follow */
	uint64_t lost;        /* records dropped since the plugin was loaded */
	uint32_t api;         /* the profiler API version NCCL took: 7, 6, 5 or 4 */
	uint32_t _pad;
};

/* One collective or point-to-point call. Times are CLOCK_REALTIME ns; the
 * GPU's are NCCL's kernel timestamps converted to that clock. */
struct loupe_wire_record {
	uint64_t comm_hash;     /* NCCL's commHash, from init: equal on every rank */
	int64_t seq;            /* this communicator's collectives (or p2p calls) before this one */
	int64_t nccl_seq;       /* NCCL's seqNumber for the function; -1 for p2p */
	int64_t host_start_ns;  /* the API call's start (v5+), or the task's (v4) */
	int64_t host_stop_ns;   /* NCCL finished enqueueing it */
	int64_t gpu_start_ns;   /* first channel's kernel start */
	int64_t gpu_end_ns;     /* last channel's kernel end */
	int64_t gpu_wait_ns;    /* proxy steps waiting for the GPU */
	int64_t net_wait_ns;    /* proxy steps waiting for the network or peers */
	uint64_t count;
	int32_t tid;
	int32_t rank;           /* in the communicator */
	int32_t nranks;
	int32_t peer;           /* p2p peer or collective root; -1 when none */
	uint8_t kind;           /* LOUPE_KIND_* */
	uint8_t nchannels;
	uint8_t flags;          /* LOUPE_FLAG_* */
	uint8_t _pad;
	char func[20];          /* ncclFuncToString: AllReduce, AlltoAll, Send, ... */
	char datatype[20];      /* ncclDatatypeToString: ncclFloat32, ... */
	char algo[16];          /* RING, TREE, ... */
	char proto[12];         /* LL, LL128, SIMPLE */
};

_Static_assert(sizeof(struct loupe_wire_header) == 32, "header layout");
_Static_assert(sizeof(struct loupe_wire_record) == 168, "record layout");

#endif
