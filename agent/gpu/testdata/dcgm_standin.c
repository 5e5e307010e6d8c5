/*
 * A stand-in libdcgm.so.4 for tests on hosts without DCGM. It exports the
 * real symbols with the real signatures (from go-dcgm's copies of DCGM's
 * headers) so that go-dcgm's own code runs against it: init and embedded
 * start, supported devices, the profiling module check, field groups,
 * watches, latest values (with blanks while paused), and dcgmProfPause /
 * dcgmProfResume, which check that they get the session handle that
 * dcgmStartEmbedded handed out.
 *
 * The GPUs it reports are named by LOUPE_STANDIN_UUIDS (comma-separated).
 * Field 1000+k reads 0.1*k + 0.01*gpu for the ratio fields (doubles) and
 * k*1e9 + gpu for the byte-rate fields (int64), except DRAM active (1005),
 * which changes at every update of the watch: as real DCGM does, a field
 * takes a new value once per watch interval, stamped with its time, so the
 * latest value stays the same between updates.
 *
 * LOUPE_STANDIN_MIN_US makes watches faster than that many microseconds
 * fail, as a driver that refuses a short interval does.
 * LOUPE_STANDIN_MULTIPLEX reports the profiling fields in two metric
 * groups with the same major id, as pre-Hopper GPUs do.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include "dcgm_agent.h"
#include "dcgm_structs.h"

#define STANDIN_HANDLE ((dcgmHandle_t)0x10c0be)

static int inited, started, watched, paused;
static long long watch_us = 1000000;

const char *errorString(dcgmReturn_t result) { return result == DCGM_ST_OK ? "Success" : "stand-in DCGM error"; }

dcgmReturn_t dcgmInit(void) { inited = 1; return DCGM_ST_OK; }
dcgmReturn_t dcgmShutdown(void) { inited = 0; return DCGM_ST_OK; }

dcgmReturn_t dcgmStartEmbedded(dcgmOperationMode_t opMode, dcgmHandle_t *pDcgmHandle) {
	if (!inited) return DCGM_ST_UNINITIALIZED;
	*pDcgmHandle = STANDIN_HANDLE;
	started = 1;
	return DCGM_ST_OK;
}

dcgmReturn_t dcgmStopEmbedded(dcgmHandle_t h) {
	if (h != STANDIN_HANDLE) return DCGM_ST_BADPARAM;
	started = 0;
	return DCGM_ST_OK;
}

/* uuid copies the n-th UUID of LOUPE_STANDIN_UUIDS into out; 0 if none. */
static int uuid(int n, char *out, size_t size) {
	const char *s = getenv("LOUPE_STANDIN_UUIDS");
	if (s == NULL || *s == 0) return 0;
	for (int i = 0; i < n; i++) {
		s = strchr(s, ',');
		if (s == NULL) return 0;
		s++;
	}
	size_t len = strcspn(s, ",");
	if (len >= size) len = size - 1;
	memcpy(out, s, len);
	out[len] = 0;
	return 1;
}

dcgmReturn_t dcgmGetAllSupportedDevices(dcgmHandle_t h, unsigned int gpuIdList[DCGM_MAX_NUM_DEVICES], int *count) {
	if (h != STANDIN_HANDLE || !started) return DCGM_ST_BADPARAM;
	char buf[128];
	int n = 0;
	while (n < DCGM_MAX_NUM_DEVICES && uuid(n, buf, sizeof buf)) {
		gpuIdList[n] = n;
		n++;
	}
	*count = n;
	return DCGM_ST_OK;
}

dcgmReturn_t dcgmProfGetSupportedMetricGroups(dcgmHandle_t h, dcgmProfGetMetricGroups_t *metricGroups) {
	if (h != STANDIN_HANDLE) return DCGM_ST_BADPARAM;
	metricGroups->numMetricGroups = 0;
	const char *mux = getenv("LOUPE_STANDIN_MULTIPLEX");
	if (mux == NULL || *mux == 0) return DCGM_ST_OK;
	/* Group 1.0: fields 1001-1005; group 1.1: 1006-1012. */
	metricGroups->numMetricGroups = 2;
	for (int g = 0; g < 2; g++) {
		dcgmProfMetricGroupInfo_v2 *info = &metricGroups->metricGroups[g];
		info->majorId = 1;
		info->minorId = g;
		info->numFieldIds = 0;
		for (int f = g ? 1006 : 1001; f <= (g ? 1012 : 1005); f++) info->fieldIds[info->numFieldIds++] = f;
	}
	return DCGM_ST_OK;
}

dcgmReturn_t dcgmFieldGroupCreate(dcgmHandle_t h, int numFieldIds, const unsigned short *fieldIds,
                                  const char *fieldGroupName, dcgmFieldGrp_t *dcgmFieldGroupId) {
	if (h != STANDIN_HANDLE || numFieldIds <= 0) return DCGM_ST_BADPARAM;
	*dcgmFieldGroupId = (dcgmFieldGrp_t)7;
	return DCGM_ST_OK;
}

dcgmReturn_t dcgmFieldGroupDestroy(dcgmHandle_t h, dcgmFieldGrp_t g) { return h == STANDIN_HANDLE ? DCGM_ST_OK : DCGM_ST_BADPARAM; }

dcgmReturn_t dcgmWatchFields(dcgmHandle_t h, dcgmGpuGrp_t groupId, dcgmFieldGrp_t fieldGroupId, long long updateFreq,
                             double maxKeepAge, int maxKeepSamples) {
	if (h != STANDIN_HANDLE || updateFreq <= 0) return DCGM_ST_BADPARAM;
	const char *min = getenv("LOUPE_STANDIN_MIN_US");
	if (min != NULL && *min != 0 && updateFreq < atoll(min)) return DCGM_ST_NOT_SUPPORTED;
	watch_us = updateFreq;
	watched = 1;
	return DCGM_ST_OK;
}

dcgmReturn_t dcgmUnwatchFields(dcgmHandle_t h, dcgmGpuGrp_t groupId, dcgmFieldGrp_t fieldGroupId) {
	watched = 0;
	return DCGM_ST_OK;
}

dcgmReturn_t dcgmUpdateAllFields(dcgmHandle_t h, int waitForUpdate) { return DCGM_ST_OK; }

dcgmReturn_t dcgmGetLatestValuesForFields(dcgmHandle_t h, int gpuId, unsigned short fields[], unsigned int count,
                                          dcgmFieldValue_v1 values[]) {
	if (h != STANDIN_HANDLE) return DCGM_ST_BADPARAM;
	struct timeval tv;
	gettimeofday(&tv, NULL);
	/* The latest update of the watch: one per watch interval. */
	long long update = ((int64_t)tv.tv_sec * 1000000 + tv.tv_usec) / watch_us;
	for (unsigned int i = 0; i < count; i++) {
		dcgmFieldValue_v1 *v = &values[i];
		memset(v, 0, sizeof *v);
		v->version = dcgmFieldValue_version1;
		v->fieldId = fields[i];
		v->ts = update * watch_us;
		v->status = watched ? DCGM_ST_OK : DCGM_ST_NOT_WATCHED;
		int k = fields[i] - 1000;
		if (fields[i] == DCGM_FI_DEV_UUID) {
			v->fieldType = DCGM_FT_STRING;
			uuid(gpuId, v->value.str, sizeof v->value.str);
		} else if (k == 5) {
			v->fieldType = DCGM_FT_DOUBLE;
			v->value.dbl = paused ? DCGM_FP64_BLANK : (double)(update % 1000) / 1000;
		} else if (k >= 1 && k <= 8) {
			v->fieldType = DCGM_FT_DOUBLE;
			v->value.dbl = paused ? DCGM_FP64_BLANK : 0.1 * k + 0.01 * gpuId;
		} else if (k >= 9 && k <= 12) {
			v->fieldType = DCGM_FT_INT64;
			v->value.i64 = paused ? DCGM_INT64_BLANK : (int64_t)k * 1000000000 + gpuId;
		} else {
			v->status = DCGM_ST_NOT_SUPPORTED;
		}
	}
	return DCGM_ST_OK;
}

dcgmReturn_t dcgmProfPause(dcgmHandle_t h) {
	if (h != STANDIN_HANDLE) return DCGM_ST_BADPARAM;
	paused = 1;
	return DCGM_ST_OK;
}

dcgmReturn_t dcgmProfResume(dcgmHandle_t h) {
	if (h != STANDIN_HANDLE) return DCGM_ST_BADPARAM;
	paused = 0;
	return DCGM_ST_OK;
}
