/* The parts of NCCL's profiler plugin interface (NCCL >= 2.23,
 * NCCL_PROFILER_PLUGIN) that Loupe's plugin implements and the test's
 * stand-in NCCL drives: versions 7 (NCCL's newest), 6 (NCCL 2.29), 5 (2.28)
 * and 4 (2.26).
 * Written from NVIDIA/nccl's src/include/plugin/profiler/profiler_v{4,5,6,7}.h
 * and nccl_profiler.h: every struct has the same members, types and order
 * as there, so the layouts are NCCL's; enum values are NCCL's. */
#ifndef LOUPE_NCCL_PROFILER_API_H
#define LOUPE_NCCL_PROFILER_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifndef LOUPE_HAVE_NCCL_RESULT_T
typedef int ncclResult_t; /* ncclSuccess is 0; nccl.h's enum has the same size */
#endif
typedef pid_t ncclPid_t;

typedef enum {
	NCCL_LOG_NONE = 0,
	NCCL_LOG_VERSION = 1,
	NCCL_LOG_WARN = 2,
	NCCL_LOG_INFO = 3,
	NCCL_LOG_ABORT = 4,
	NCCL_LOG_TRACE = 5
} ncclDebugLogLevel;

typedef void (*ncclDebugLogger_t)(ncclDebugLogLevel level, unsigned long flags, const char *file, int line,
				  const char *fmt, ...);

/* Event types: the bits of the activation mask. */
enum {
	ncclProfileGroup = (1 << 0),
	ncclProfileColl = (1 << 1),
	ncclProfileP2p = (1 << 2),
	ncclProfileProxyOp = (1 << 3),
	ncclProfileProxyStep = (1 << 4),
	ncclProfileProxyCtrl = (1 << 5),
	ncclProfileKernelCh = (1 << 6),
	ncclProfileNetPlugin = (1 << 7),
	ncclProfileGroupApi = (1 << 8),     /* v5 */
	ncclProfileCollApi = (1 << 9),      /* v5 */
	ncclProfileP2pApi = (1 << 10),      /* v5 */
	ncclProfileKernelLaunch = (1 << 11), /* v5 */
	ncclProfileCeColl = (1 << 12),      /* v6 */
	ncclProfileCeSync = (1 << 13),      /* v6 */
	ncclProfileCeBatch = (1 << 14),     /* v6 */
	ncclProfileKernelPhase = (1 << 15), /* v7 */
};

/* Event states (recordEventState), the same for v4 to v7. */
typedef enum {
	ncclProfilerProxyOpSendPosted = 0,
	ncclProfilerProxyOpSendRemFifoWait = 1,
	ncclProfilerProxyOpSendTransmitted = 2,
	ncclProfilerProxyOpSendDone = 3,
	ncclProfilerProxyOpRecvPosted = 4,
	ncclProfilerProxyOpRecvReceived = 5,
	ncclProfilerProxyOpRecvTransmitted = 6,
	ncclProfilerProxyOpRecvDone = 7,
	ncclProfilerProxyOpInProgress_v4 = 19,
	ncclProfilerProxyStepSendGPUWait = 8,
	ncclProfilerProxyStepSendPeerWait_v4 = 20,
	ncclProfilerProxyStepSendWait = 9,
	ncclProfilerProxyStepRecvWait = 10,
	ncclProfilerProxyStepRecvFlushWait = 11,
	ncclProfilerProxyStepRecvGPUWait = 12,
	ncclProfilerProxyCtrlIdle = 13,
	ncclProfilerProxyCtrlActive = 14,
	ncclProfilerProxyCtrlSleep = 15,
	ncclProfilerProxyCtrlWakeup = 16,
	ncclProfilerProxyCtrlAppend = 17,
	ncclProfilerProxyCtrlAppendEnd = 18,
	ncclProfilerNetPluginUpdate = 21,
	ncclProfilerKernelChStop = 22,
	ncclProfilerGroupStartApiStop = 23,
	ncclProfilerGroupEndApiStart = 24,
	ncclProfilerCeCollStart = 25,
	ncclProfilerCeCollComplete = 26,
	ncclProfilerCeSyncStart = 27,
	ncclProfilerCeSyncComplete = 28,
	ncclProfilerCeBatchStart = 29,
	ncclProfilerCeBatchComplete = 30,
	ncclProfilerKernelPhaseStop = 31, /* v7 */
} ncclProfilerEventState_t;

typedef ncclProfilerEventState_t ncclProfilerEventState_v4_t;
typedef ncclProfilerEventState_t ncclProfilerEventState_v5_t;
typedef ncclProfilerEventState_t ncclProfilerEventState_v6_t;
typedef ncclProfilerEventState_t ncclProfilerEventState_v7_t;

/* A collective's call and NCCL's count of it, first in every version's
 * task descriptor and in v6's copy-engine one. */
#define LOUPE_PROFILER_COLL_ARGS \
	uint64_t seqNumber;      \
	const char *func;        \
	void const *sendBuff;    \
	void *recvBuff;          \
	size_t count;            \
	int root;                \
	const char *datatype;

/* The descriptor members that no version since v4 changed: the proxy's,
 * the kernel channel's and the network plugin's. */
#define LOUPE_PROFILER_DESCR_PROXY_MEMBERS \
	struct {                           \
		ncclPid_t pid;             \
		uint8_t channelId;         \
		int peer;                  \
		int nSteps;                \
		int chunkSize;             \
		int isSend;                \
	} proxyOp;                         \
	struct {                           \
		int step;                  \
	} proxyStep;                       \
	struct {                           \
		uint8_t channelId;         \
		uint64_t pTimer;           \
	} kernelCh;                        \
	struct {                           \
		int64_t id;                \
		void *data;                \
	} netPlugin;

/* ---- v4 ---- */

typedef struct {
	uint8_t type;
	void *parentObj;
	int rank;
	union {
		struct {
			LOUPE_PROFILER_COLL_ARGS
			uint8_t nChannels;
			uint8_t nWarps;
			const char *algo;
			const char *proto;
		} coll;
		struct {
			const char *func;
			void *buff;
			const char *datatype;
			size_t count;
			int peer;
			uint8_t nChannels;
		} p2p;
		LOUPE_PROFILER_DESCR_PROXY_MEMBERS
	};
} ncclProfilerEventDescr_v4_t;

typedef union {
	struct {
		size_t transSize;
	} proxyStep;
	struct {
		int appendedProxyOps;
	} proxyCtrl;
	struct {
		void *data;
	} netPlugin;
	struct {
		uint64_t pTimer;
	} kernelCh;
} ncclProfilerEventStateArgs_v4_t;

typedef struct {
	const char *name;
	ncclResult_t (*init)(void **context, int *eActivationMask, const char *commName, uint64_t commHash, int nNodes,
			     int nranks, int rank, ncclDebugLogger_t logfn);
	ncclResult_t (*startEvent)(void *context, void **eHandle, ncclProfilerEventDescr_v4_t *eDescr);
	ncclResult_t (*stopEvent)(void *eHandle);
	ncclResult_t (*recordEventState)(void *eHandle, ncclProfilerEventState_v4_t eState,
					 ncclProfilerEventStateArgs_v4_t *eStateArgs);
	ncclResult_t (*finalize)(void *context);
} ncclProfiler_v4_t;

/* ---- v5 to v7: one descriptor layout; v6 adds the copy-engine members
 * at the end of the union, v7 a user tag at the end of the API, task and
 * copy-engine members (and the kernel variant before it in coll) and
 * kernel phase events. The *_tail arguments are v7's additions. ---- */

#define LOUPE_PROFILER_DESCR_MEMBERS(api_tail, coll_tail, p2p_tail) \
	struct {                                                    \
		bool graphCaptured;                                 \
		int groupDepth;                                     \
	} groupApi;                                                 \
	struct {                                                    \
		const char *func;                                   \
		size_t count;                                       \
		const char *datatype;                               \
		int root;                                           \
		void *stream;                                       \
		bool graphCaptured;                                 \
		api_tail                                            \
	} collApi;                                                  \
	struct {                                                    \
		const char *func;                                   \
		size_t count;                                       \
		const char *datatype;                               \
		void *stream;                                       \
		bool graphCaptured;                                 \
		api_tail                                            \
	} p2pApi;                                                   \
	struct {                                                    \
		void *stream;                                       \
	} kernelLaunch;                                             \
	struct {                                                    \
		LOUPE_PROFILER_COLL_ARGS                            \
		uint8_t nChannels;                                  \
		uint8_t nWarps;                                     \
		const char *algo;                                   \
		const char *proto;                                  \
		void *parentGroup;                                  \
		coll_tail                                           \
	} coll;                                                     \
	struct {                                                    \
		const char *func;                                   \
		void *buff;                                         \
		const char *datatype;                               \
		size_t count;                                       \
		int peer;                                           \
		uint8_t nChannels;                                  \
		void *parentGroup;                                  \
		p2p_tail                                            \
	} p2p;                                                      \
	LOUPE_PROFILER_DESCR_PROXY_MEMBERS

#define LOUPE_PROFILER_DESCR_CE_MEMBERS(ce_tail) \
	struct {                                 \
		LOUPE_PROFILER_COLL_ARGS         \
		const char *syncStrategy;        \
		bool intraBatchSync;             \
		uint32_t batchSize;              \
		uint32_t numBatches;             \
		uint32_t ceSeqNum;               \
		void *stream;                    \
		ce_tail                          \
	} ceColl;                                \
	struct {                                 \
		bool isComplete;                 \
		int nRanks;                      \
	} ceCollSync;                            \
	struct {                                 \
		int numOps;                      \
		size_t totalBytes;               \
		bool useIntraSync;               \
	} ceCollBatch;

typedef struct {
	uint64_t type;
	void *parentObj;
	int rank;
	union {
		LOUPE_PROFILER_DESCR_MEMBERS(, , )
	};
} ncclProfilerEventDescr_v5_t;

typedef struct {
	uint64_t type;
	void *parentObj;
	int rank;
	union {
		LOUPE_PROFILER_DESCR_MEMBERS(, , )
		LOUPE_PROFILER_DESCR_CE_MEMBERS()
	};
} ncclProfilerEventDescr_v6_t;

typedef ncclProfilerEventStateArgs_v4_t ncclProfilerEventStateArgs_v5_t;
typedef ncclProfilerEventStateArgs_v4_t ncclProfilerEventStateArgs_v6_t;

/* The entry points of v5 and later, which differ only by their types. */
#define LOUPE_PROFILER_T(v)                                                                                        \
	typedef struct {                                                                                           \
		const char *name;                                                                                  \
		ncclResult_t (*init)(void **context, uint64_t commId, int *eActivationMask, const char *commName, \
				     int nNodes, int nranks, int rank, ncclDebugLogger_t logfn);                   \
		ncclResult_t (*startEvent)(void *context, void **eHandle, ncclProfilerEventDescr_##v##_t *eDescr); \
		ncclResult_t (*stopEvent)(void *eHandle);                                                          \
		ncclResult_t (*recordEventState)(void *eHandle, ncclProfilerEventState_##v##_t eState,             \
						 ncclProfilerEventStateArgs_##v##_t *eStateArgs);                  \
		ncclResult_t (*finalize)(void *context);                                                           \
	} ncclProfiler_##v##_t;

LOUPE_PROFILER_T(v5) /* ncclProfiler_v5_t */
LOUPE_PROFILER_T(v6) /* ncclProfiler_v6_t */

/* ---- v7 ---- */

typedef struct {
	uint64_t type;
	void *parentObj;
	int rank;
	union {
		LOUPE_PROFILER_DESCR_MEMBERS(uint64_t userTag;, const char *kernelVariant; bool isSymColl; uint64_t userTag;,
					     uint64_t userTag;)
		LOUPE_PROFILER_DESCR_CE_MEMBERS(uint64_t userTag;)
		struct {
			uint8_t channelId;
			uint8_t phaseId; /* 0 initial sync, 1 compute, 2 final sync */
			const char *phaseName;
			uint64_t pTimer;
		} kernelPhase;
	};
} ncclProfilerEventDescr_v7_t;

/* Same members as v4's; kernelCh also carries a kernel phase's stop time. */
typedef ncclProfilerEventStateArgs_v4_t ncclProfilerEventStateArgs_v7_t;

LOUPE_PROFILER_T(v7) /* ncclProfiler_v7_t */

#endif
