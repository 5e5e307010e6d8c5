package gpu

import (
	"fmt"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// partitionMIG puts device d of go-nvml's DGX H100 mock into MIG mode and
// creates GPU instances of the given profiles through the mock's own MIG
// logic; NVML's MIG device handles (which the mock does not model) are set
// to one per instance, with its memory use and a MIG UUID.
func partitionMIG(t *testing.T, d *server.Device, profiles ...int) []string {
	t.Helper()
	if ret, _ := d.SetMigMode(nvml.DEVICE_MIG_ENABLE); ret != nvml.SUCCESS {
		t.Fatalf("SetMigMode: %v", ret)
	}
	var handles []nvml.Device
	var uuids []string
	for k, p := range profiles {
		info, ret := d.GetGpuInstanceProfileInfo(p)
		if ret != nvml.SUCCESS {
			t.Fatalf("profile %d: %v", p, ret)
		}
		gi, ret := d.CreateGpuInstance(&info)
		if ret != nvml.SUCCESS {
			t.Fatalf("CreateGpuInstance(%d): %v", p, ret)
		}
		gInfo, _ := gi.GetInfo()
		id, uuid, total := int(gInfo.Id), fmt.Sprintf("MIG-%08d-0000-0000-0000-%012d", d.Index, k), info.MemorySizeMB<<20
		used := uint64(k+1) << 30
		uuids = append(uuids, uuid)
		handles = append(handles, &mock.Device{
			GetGpuInstanceIdFunc: func() (int, nvml.Return) { return id, nvml.SUCCESS },
			GetUUIDFunc:          func() (string, nvml.Return) { return uuid, nvml.SUCCESS },
			GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
				return nvml.Memory{Total: total, Used: used, Free: total - used}, nvml.SUCCESS
			},
		})
	}
	d.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 7, nvml.SUCCESS }
	d.GetMigDeviceHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		if i < len(handles) {
			return handles[i], nvml.SUCCESS
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
	// A GPU in MIG mode has no whole-device utilization.
	d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.ERROR_NOT_SUPPORTED }
	return uuids
}

// MIG instances are their own series with dcgm-exporter's MIG labels,
// GPU_I_ID and GPU_I_PROFILE, and the pod that holds each instance.
func TestMIGInstancesAreTheirOwnSeries(t *testing.T) {
	tg := newTestGPUs(t)
	uuids := partitionMIG(t, tg.device(2), nvml.GPU_INSTANCE_PROFILE_1_SLICE, nvml.GPU_INSTANCE_PROFILE_1_SLICE, nvml.GPU_INSTANCE_PROFILE_3_SLICE, nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1)
	cfg := testConfig()
	cfg.Pods = pods{uuids[1]: {"notebook-1", "alice", "jupyter"}}
	_, set := start(t, cfg, tg.srv, nil)
	var all []series
	eventually(t, "MIG series", func() bool {
		all = scrape(t, set)
		return len(find(all, "DCGM_FI_DEV_FB_USED", map[string]string{"gpu": "2"})) == 5
	})
	want := []struct {
		id, profile string
		usedMiB     float64
	}{{"0", "1g.10gb", 1024}, {"1", "1g.10gb", 2048}, {"2", "3g.40gb", 3072}, {"3", "1g.10gb+me", 4096}}
	for _, w := range want {
		got := find(all, "DCGM_FI_DEV_FB_USED", map[string]string{"gpu": "2", "GPU_I_ID": w.id})
		if len(got) != 1 || got[0].labels["GPU_I_PROFILE"] != w.profile || got[0].value != w.usedMiB {
			t.Errorf("FB_USED of MIG instance %s = %+v, want profile %s and %v MiB", w.id, got, w.profile, w.usedMiB)
			continue
		}
		if got[0].labels["UUID"] != tg.device(2).UUID || got[0].labels["modelName"] != "NVIDIA H100 80GB HBM3" {
			t.Errorf("MIG series labels %v: want the parent GPU's UUID and model, as dcgm-exporter gives", got[0].labels)
		}
		if free := find(all, "DCGM_FI_DEV_FB_FREE", map[string]string{"GPU_I_ID": w.id}); len(free) != 1 {
			t.Errorf("FB_FREE of MIG instance %s: %v", w.id, free)
		}
	}
	if got := find(all, "DCGM_FI_DEV_FB_USED", map[string]string{"GPU_I_ID": "1"}); len(got) != 1 || got[0].labels["pod"] != "notebook-1" || got[0].labels["namespace"] != "alice" {
		t.Errorf("MIG instance 1's pod labels: %v", got)
	}
	// The whole GPU keeps its own series, without MIG labels; per-device
	// readings that MIG does not split have no MIG series.
	parent := find(all, "DCGM_FI_DEV_FB_USED", map[string]string{"gpu": "2", "GPU_I_ID": ""})
	if len(parent) != 1 {
		t.Errorf("whole-GPU FB_USED of gpu 2: %v", parent)
	}
	for _, s := range find(all, "DCGM_FI_DEV_POWER_USAGE", nil) {
		if _, ok := s.labels["GPU_I_ID"]; ok {
			t.Errorf("POWER_USAGE has a MIG series: %v", s.labels)
		}
	}
	if got := find(all, "DCGM_FI_DEV_GPU_UTIL", gpuLabel(2)); len(got) != 0 {
		t.Errorf("GPU_UTIL of a GPU in MIG mode: %v, want none (NVML does not measure it)", got)
	}
	for _, s := range find(all, "DCGM_FI_DEV_FB_USED", nil) {
		if s.labels["gpu"] != "2" && s.labels["GPU_I_ID"] != "" {
			t.Errorf("GPU %s, not in MIG mode, has MIG series", s.labels["gpu"])
		}
	}
}

func TestMIGProfileNames(t *testing.T) {
	for _, tc := range []struct {
		id       int
		slices   uint32
		mib      uint64
		totalMiB uint64
		want     string
	}{
		{nvml.GPU_INSTANCE_PROFILE_1_SLICE, 1, 4864, 40960, "1g.5gb"},   // A100 40GB
		{nvml.GPU_INSTANCE_PROFILE_7_SLICE, 7, 40192, 40960, "7g.40gb"}, // its whole-GPU instance
		{nvml.GPU_INSTANCE_PROFILE_1_SLICE, 1, 9856, 81920, "1g.10gb"},  // H100 80GB
		{nvml.GPU_INSTANCE_PROFILE_3_SLICE, 3, 40448, 81920, "3g.40gb"},
		{nvml.GPU_INSTANCE_PROFILE_7_SLICE, 7, 80896, 81920, "7g.80gb"},
		{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, 1, 9856, 81920, "1g.10gb+me"},
		{nvml.GPU_INSTANCE_PROFILE_1_SLICE, 1, 10240, 0, "1g.10gb"}, // device memory unknown
	} {
		got := migProfileName(tc.id, nvml.GpuInstanceProfileInfo{SliceCount: tc.slices, MemorySizeMB: tc.mib}, tc.totalMiB)
		if got != tc.want {
			t.Errorf("profile %d, %d slices, %d of %d MiB: %q, want %q", tc.id, tc.slices, tc.mib, tc.totalMiB, got, tc.want)
		}
	}
}
