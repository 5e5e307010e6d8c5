package gpu

import (
	"cmp"
	"fmt"
	"math"
	"slices"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// migInstance is one MIG GPU instance of a device, served as its own
// series with dcgm-exporter's labels GPU_I_ID and GPU_I_PROFILE.
type migInstance struct {
	giID    int
	profile string      // "1g.10gb", as nvidia-smi and dcgm-exporter name it
	uuid    string      // the MIG device's UUID ("MIG-..."), "" when unknown
	h       nvml.Device // the MIG device, nil when NVML gave none
}

// migSnapshot is what a scrape reads of one MIG instance.
type migSnapshot struct {
	labels                           string
	fbUsedMiB, fbFreeMiB, fbTotalMiB int64
	ok                               bool
}

// migRefreshTicks is how many steady intervals pass between two listings of
// a device's MIG instances, which change only when an operator repartitions
// the GPU.
const migRefreshTicks = 60

// listMIG lists the GPU instances of a device in MIG mode, through the
// profiles NVML knows for it, and matches each to its MIG device handle.
// A device not in MIG mode has none.
func (d *device) listMIG() []migInstance {
	cur, _, ret := d.h.GetMigMode()
	if ret != nvml.SUCCESS || cur != nvml.DEVICE_MIG_ENABLE {
		return nil
	}
	var totalMiB uint64
	if m, ret := d.h.GetMemoryInfo(); ret == nvml.SUCCESS {
		totalMiB = m.Total >> 20
	}
	var out []migInstance
	for p := range nvml.GPU_INSTANCE_PROFILE_COUNT {
		info, ret := d.h.GetGpuInstanceProfileInfo(p)
		if ret != nvml.SUCCESS {
			continue
		}
		gis, ret := d.h.GetGpuInstances(&info)
		if ret != nvml.SUCCESS {
			continue
		}
		for _, gi := range gis {
			gInfo, ret := gi.GetInfo()
			if ret != nvml.SUCCESS {
				continue
			}
			out = append(out, migInstance{giID: int(gInfo.Id), profile: migProfileName(p, info, totalMiB)})
		}
	}
	if len(out) == 0 {
		return nil
	}
	n, ret := d.h.GetMaxMigDeviceCount()
	for i := 0; ret == nvml.SUCCESS && i < n; i++ {
		m, r := d.h.GetMigDeviceHandleByIndex(i)
		if r != nvml.SUCCESS {
			continue
		}
		id, r := m.GetGpuInstanceId()
		if r != nvml.SUCCESS {
			continue
		}
		for k := range out {
			if out[k].giID == id && out[k].h == nil {
				out[k].h = m
				out[k].uuid, _ = m.GetUUID()
			}
		}
	}
	slices.SortFunc(out, func(a, b migInstance) int { return cmp.Compare(a.giID, b.giID) })
	return out
}

// migProfileName names a GPU instance profile as nvidia-smi does: slices,
// then memory in GB as the share of the device's memory rounded up to an
// eighth (MIG hands memory out in eighths), then the profile's variant.
func migProfileName(id int, info nvml.GpuInstanceProfileInfo, totalMiB uint64) string {
	gb := (info.MemorySizeMB + 1023) / 1024
	if totalMiB > 0 {
		share := math.Ceil(float64(info.MemorySizeMB)/float64(totalMiB)*8) / 8
		gb = uint64(math.Round(share * math.Ceil(float64(totalMiB)/1024)))
	}
	name := fmt.Sprintf("%dg.%dgb", info.SliceCount, gb)
	switch id {
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, nvml.GPU_INSTANCE_PROFILE_2_SLICE_REV1:
		name += "+me"
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_2_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_4_SLICE_GFX:
		name += "+gfx"
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_NO_ME, nvml.GPU_INSTANCE_PROFILE_2_SLICE_NO_ME:
		name += "-me"
	}
	return name
}

// readMIG reads the memory of each MIG instance (the per-instance
// readings NVML gives; utilization is not measured per instance).
func readMIG(migs []migInstance, errs func(error)) []migSnapshot {
	out := make([]migSnapshot, len(migs))
	for i, m := range migs {
		if m.h == nil {
			continue
		}
		mem, ret := m.h.GetMemoryInfo()
		switch ret {
		case nvml.SUCCESS:
			out[i] = migSnapshot{fbUsedMiB: int64(mem.Used >> 20), fbFreeMiB: int64(mem.Free >> 20), fbTotalMiB: int64(mem.Total >> 20), ok: true}
		case nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_NO_PERMISSION:
		default:
			errs(fmt.Errorf("MIG instance %d (%s): %w", m.giID, m.profile, ret))
		}
	}
	return out
}
