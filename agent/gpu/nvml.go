package gpu

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/loupe-dev/loupe/traces"
)

// field is one reading of a device. A field that a device answers with
// ERROR_NOT_SUPPORTED or ERROR_NO_PERMISSION is not asked again, and a field
// that never succeeded is not exported, as dcgm-exporter leaves blank
// fields out.
type field uint32

const (
	fUtil field = 1 << iota
	fMemory
	fPower
	fEnergy
	fGPUTemp
	fSMClock
	fMemClock
	fClockEvents
	fMemTemp
	fPCIe
	fNVLink
	fECC
	fRemapped
	fProcesses
	fProf // DCGM profiling fields, or their simulation
	fPCIeReplay
	fEncoder
	fDecoder
	fMemReserved
	fVGPULicense
)

// errGPULost is returned by a read when the device answered
// ERROR_GPU_IS_LOST: it is gone until the node is reset.
var errGPULost = errors.New("GPU is lost")

// device is one GPU as the collector sees it. info is fixed at discovery
// except its pod fields; the fast loop owns fast, the slow loop owns slow,
// and mu guards what both share with readers (last, labels, processes).
type device struct {
	h    nvml.Device
	info traces.GPUInfo
	// minor is the /dev/nvidiaN number (the dcgm-exporter "device" label).
	minor int
	ring  *ring

	supported atomic.Uint32 // fields that succeeded at least once
	disabled  atomic.Uint32 // fields the device does not support
	lost      atomic.Bool

	// cur is the sample being taken, owned by the fast loop (a field, not a
	// local, so that it does not escape to the heap on every tick).
	cur traces.GPUSample

	// slow-loop state: NVLink counters for rates, process-utilization cursor.
	nvlinkTxKiB, nvlinkRxKiB uint64
	nvlinkAt                 time.Time
	procLastSeen             uint64
	fieldBuf                 []nvml.FieldValue

	// MIG instances, owned by the slow loop and listed every
	// migRefreshTicks intervals.
	migs     []migInstance
	migTicks int

	mu      sync.Mutex
	last    traces.GPUSample // newest complete sample (fast and slow fields)
	slow    slowFields
	extra   extraFields
	mig     []migSnapshot // one per MIG instance, with its labels
	lastXID int64
	procs   []GPUProcess
	labels  string // cached dcgm-exporter label set, "" until built
	pod     [3]string
}

// extraFields are steady-rate readings that only the metrics serve (not the
// capture's samples): dcgm-exporter's default counters beyond the samples.
type extraFields struct {
	pcieReplays        int64
	encUtil, decUtil   uint32
	fbReservedMiB      int64
	nvlinkBytes        uint64 // sent and received, all links, since the driver loaded
	vgpuLicensed       int
	remapCorrectable   int64
	remapUncorrectable int64
	remapFailed        int
}

// slowFields are the readings taken at the steady rate only: they are slow
// on real hardware (PCIe throughput samples for 20 ms) or change slowly.
type slowFields struct {
	MemTempC     float32
	PCIeTxBps    int64
	PCIeRxBps    int64
	NVLinkTxBps  int64
	NVLinkRxBps  int64
	ECCSingleBit int64
	ECCDoubleBit int64
	RemappedRows int64
}

// GPUProcess is one process running on a GPU, as NVML reports it.
type GPUProcess struct {
	PID  int
	GPU  int
	UUID string
	// UsedMemoryBytes is the framebuffer memory the process holds.
	UsedMemoryBytes uint64
	// SMUtil and MemUtil are percentages over the last steady interval;
	// -1 when the driver has no utilization sample for the process.
	SMUtil  int
	MemUtil int
}

// ok records the outcome of one NVML read of field f and says whether its
// value can be used. errs counts failures that are neither "unsupported"
// nor "lost".
func (d *device) ok(f field, ret nvml.Return, errs func(error)) (bool, error) {
	switch ret {
	case nvml.SUCCESS:
		if d.supported.Load()&uint32(f) == 0 {
			d.supported.Or(uint32(f))
		}
		return true, nil
	case nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_NO_PERMISSION, nvml.ERROR_FUNCTION_NOT_FOUND:
		d.disabled.Or(uint32(f))
		return false, nil
	case nvml.ERROR_GPU_IS_LOST:
		return false, errGPULost
	default:
		errs(fmt.Errorf("gpu %d: %w", d.info.Index, ret))
		return false, nil
	}
}

func (d *device) wants(f field) bool { return d.disabled.Load()&uint32(f) == 0 }

// readFast fills the readings taken at every tick, including capture ticks.
func (d *device) readFast(s *traces.GPUSample, errs func(error)) error {
	if d.wants(fUtil) {
		u, ret := d.h.GetUtilizationRates()
		if ok, err := d.ok(fUtil, ret, errs); err != nil {
			return err
		} else if ok {
			s.GPUUtil, s.MemCopyUtil = float32(u.Gpu), float32(u.Memory)
		}
	}
	if d.wants(fMemory) {
		m, ret := d.h.GetMemoryInfo()
		if ok, err := d.ok(fMemory, ret, errs); err != nil {
			return err
		} else if ok {
			s.FBUsedMiB, s.FBFreeMiB, s.FBTotalMiB = int64(m.Used>>20), int64(m.Free>>20), int64(m.Total>>20)
		}
	}
	if d.wants(fPower) {
		mw, ret := d.h.GetPowerUsage()
		if ok, err := d.ok(fPower, ret, errs); err != nil {
			return err
		} else if ok {
			s.PowerW = float32(mw) / 1000
		}
	}
	if d.wants(fEnergy) {
		mj, ret := d.h.GetTotalEnergyConsumption()
		if ok, err := d.ok(fEnergy, ret, errs); err != nil {
			return err
		} else if ok {
			s.EnergyMJ = int64(mj)
		}
	}
	if d.wants(fGPUTemp) {
		c, ret := d.h.GetTemperature(nvml.TEMPERATURE_GPU)
		if ok, err := d.ok(fGPUTemp, ret, errs); err != nil {
			return err
		} else if ok {
			s.GPUTempC = float32(c)
		}
	}
	if d.wants(fSMClock) {
		mhz, ret := d.h.GetClockInfo(nvml.CLOCK_SM)
		if ok, err := d.ok(fSMClock, ret, errs); err != nil {
			return err
		} else if ok {
			s.SMClockMHz = int32(mhz)
		}
	}
	if d.wants(fMemClock) {
		mhz, ret := d.h.GetClockInfo(nvml.CLOCK_MEM)
		if ok, err := d.ok(fMemClock, ret, errs); err != nil {
			return err
		} else if ok {
			s.MemClockMHz = int32(mhz)
		}
	}
	if d.wants(fClockEvents) {
		r, ret := d.h.GetCurrentClocksEventReasons()
		if ok, err := d.ok(fClockEvents, ret, errs); err != nil {
			return err
		} else if ok {
			s.ClockEventReasons = int64(r)
		}
	}
	return nil
}

// NVML field ids read in the slow loop: memory temperature, then the NVLink
// data counters (KiB) of every link, which are summed.
const nvlinkLinks = 18 // NVLink 4 on H100; links beyond a device's count answer "not supported"

func (d *device) initFieldBuf() {
	d.fieldBuf = make([]nvml.FieldValue, 1+2*nvlinkLinks)
	d.fieldBuf[0].FieldId = nvml.FI_DEV_MEMORY_TEMP
	for l := 0; l < nvlinkLinks; l++ {
		d.fieldBuf[1+2*l] = nvml.FieldValue{FieldId: nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_TX, ScopeId: uint32(l)}
		d.fieldBuf[2+2*l] = nvml.FieldValue{FieldId: nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_RX, ScopeId: uint32(l)}
	}
}

// fieldUint reads an unsigned field value whatever integer type NVML chose.
func fieldUint(v *nvml.FieldValue) (uint64, bool) {
	if nvml.Return(v.NvmlReturn) != nvml.SUCCESS {
		return 0, false
	}
	b := v.Value
	u64 := uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
	switch nvml.ValueType(v.ValueType) {
	case nvml.VALUE_TYPE_UNSIGNED_INT, nvml.VALUE_TYPE_SIGNED_INT:
		return u64 & 0xffffffff, true
	case nvml.VALUE_TYPE_DOUBLE:
		return 0, false
	default:
		return u64, true
	}
}

// readSlow takes the steady-rate readings and the process list. While a
// capture samples at a high rate, PCIe throughput keeps its last value:
// NVML measures it by blocking for 20 ms per call, which would compete
// with the capture's grid (DCGM's PCIe fields cover captures).
func (d *device) readSlow(now time.Time, capturing bool, errs func(error)) (slowFields, extraFields, []GPUProcess, error) {
	d.mu.Lock()
	sf, x := d.slow, d.extra
	d.mu.Unlock()
	sf, procs, err := d.readSlowSample(sf, now, capturing, errs)
	if err != nil {
		return sf, x, nil, err
	}
	x, err = d.readExtra(x, errs)
	sf.RemappedRows = x.remapCorrectable + x.remapUncorrectable
	return sf, x, procs, err
}

// readExtra reads what dcgm-exporter's default counters need beyond the
// samples: PCIe replays, encoder and decoder utilization, reserved memory,
// the vGPU license and the remapped rows by kind.
func (d *device) readExtra(x extraFields, errs func(error)) (extraFields, error) {
	if d.wants(fPCIeReplay) {
		n, ret := d.h.GetPcieReplayCounter()
		if ok, err := d.ok(fPCIeReplay, ret, errs); err != nil {
			return x, err
		} else if ok {
			x.pcieReplays = int64(n)
		}
	}
	for _, v := range []struct {
		f    field
		read func() (uint32, uint32, nvml.Return)
		dst  *uint32
	}{{fEncoder, d.h.GetEncoderUtilization, &x.encUtil}, {fDecoder, d.h.GetDecoderUtilization, &x.decUtil}} {
		if !d.wants(v.f) {
			continue
		}
		u, _, ret := v.read()
		if ok, err := d.ok(v.f, ret, errs); err != nil {
			return x, err
		} else if ok {
			*v.dst = u
		}
	}
	if d.wants(fMemReserved) {
		m, ret := d.h.GetMemoryInfo_v2()
		if ok, err := d.ok(fMemReserved, ret, errs); err != nil {
			return x, err
		} else if ok {
			x.fbReservedMiB = int64(m.Reserved >> 20)
		}
	}
	if d.wants(fVGPULicense) {
		f, ret := d.h.GetGridLicensableFeatures()
		if ret == nvml.SUCCESS && f.IsGridLicenseSupported == 0 {
			ret = nvml.ERROR_NOT_SUPPORTED // not a vGPU: no license to report
		}
		if ok, err := d.ok(fVGPULicense, ret, errs); err != nil {
			return x, err
		} else if ok {
			x.vgpuLicensed = 0
			for _, g := range f.GridLicensableFeatures[:min(int(f.LicensableFeaturesCount), len(f.GridLicensableFeatures))] {
				if g.FeatureState != 0 {
					x.vgpuLicensed = 1
				}
			}
		}
	}
	if d.wants(fRemapped) {
		corr, unc, _, failed, ret := d.h.GetRemappedRows()
		if ok, err := d.ok(fRemapped, ret, errs); err != nil {
			return x, err
		} else if ok {
			x.remapCorrectable, x.remapUncorrectable = int64(corr), int64(unc)
			x.remapFailed = 0
			if failed {
				x.remapFailed = 1
			}
		}
	}
	x.nvlinkBytes = (d.nvlinkTxKiB + d.nvlinkRxKiB) * 1024
	return x, nil
}

// readSlowSample takes the steady-rate readings of the samples.
func (d *device) readSlowSample(sf slowFields, now time.Time, capturing bool, errs func(error)) (slowFields, []GPUProcess, error) {
	if d.wants(fPCIe) && !capturing {
		tx, ret := d.h.GetPcieThroughput(nvml.PCIE_UTIL_TX_BYTES)
		if ok, err := d.ok(fPCIe, ret, errs); err != nil {
			return sf, nil, err
		} else if ok {
			rx, ret := d.h.GetPcieThroughput(nvml.PCIE_UTIL_RX_BYTES)
			if ok, err := d.ok(fPCIe, ret, errs); err != nil {
				return sf, nil, err
			} else if ok {
				sf.PCIeTxBps, sf.PCIeRxBps = int64(tx)*1024, int64(rx)*1024 // NVML reports KB/s
			}
		}
	}
	if d.wants(fMemTemp) || d.wants(fNVLink) {
		if d.fieldBuf == nil {
			d.initFieldBuf()
		}
		ret := d.h.GetFieldValues(d.fieldBuf)
		if ret != nvml.SUCCESS {
			if _, err := d.ok(fMemTemp|fNVLink, ret, errs); err != nil {
				return sf, nil, err
			}
		} else {
			// Each value carries its own status; mark only what answered.
			if c, ok := fieldUint(&d.fieldBuf[0]); ok {
				sf.MemTempC = float32(c)
				d.supported.Or(uint32(fMemTemp))
			}
			var tx, rx uint64
			links := 0
			for l := 0; l < nvlinkLinks; l++ {
				t, okT := fieldUint(&d.fieldBuf[1+2*l])
				r, okR := fieldUint(&d.fieldBuf[2+2*l])
				if okT && okR {
					tx, rx, links = tx+t, rx+r, links+1
				}
			}
			if links > 0 {
				d.supported.Or(uint32(fNVLink))
				if dt := now.Sub(d.nvlinkAt).Seconds(); !d.nvlinkAt.IsZero() && dt > 0 && tx >= d.nvlinkTxKiB && rx >= d.nvlinkRxKiB {
					sf.NVLinkTxBps = int64(float64(tx-d.nvlinkTxKiB) * 1024 / dt)
					sf.NVLinkRxBps = int64(float64(rx-d.nvlinkRxKiB) * 1024 / dt)
				}
				d.nvlinkTxKiB, d.nvlinkRxKiB, d.nvlinkAt = tx, rx, now
			}
		}
	}
	if d.wants(fECC) {
		sbe, ret := d.h.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.AGGREGATE_ECC)
		if ok, err := d.ok(fECC, ret, errs); err != nil {
			return sf, nil, err
		} else if ok {
			dbe, ret := d.h.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.AGGREGATE_ECC)
			if ok, err := d.ok(fECC, ret, errs); err != nil {
				return sf, nil, err
			} else if ok {
				sf.ECCSingleBit, sf.ECCDoubleBit = int64(sbe), int64(dbe)
			}
		}
	}
	var procs []GPUProcess
	if d.wants(fProcesses) {
		ps, ret := d.h.GetComputeRunningProcesses()
		if ok, err := d.ok(fProcesses, ret, errs); err != nil {
			return sf, nil, err
		} else if ok {
			procs = make([]GPUProcess, len(ps))
			for i, p := range ps {
				procs[i] = GPUProcess{PID: int(p.Pid), GPU: d.info.Index, UUID: d.info.UUID,
					UsedMemoryBytes: p.UsedGpuMemory, SMUtil: -1, MemUtil: -1}
			}
			d.fillProcessUtil(procs)
		}
	}
	return sf, procs, nil
}

// fillProcessUtil adds per-process SM and memory utilization. NVML returns
// samples newer than the cursor; ERROR_NOT_FOUND means none, which is normal
// for an idle GPU.
func (d *device) fillProcessUtil(procs []GPUProcess) {
	if len(procs) == 0 {
		return
	}
	samples, ret := d.h.GetProcessUtilization(d.procLastSeen)
	if ret != nvml.SUCCESS {
		return
	}
	for _, s := range samples {
		if s.TimeStamp > d.procLastSeen {
			d.procLastSeen = s.TimeStamp
		}
		for i := range procs {
			if procs[i].PID == int(s.Pid) {
				procs[i].SMUtil, procs[i].MemUtil = int(s.SmUtil), int(s.MemUtil)
			}
		}
	}
}

// discover opens every device NVML reports. A device that cannot be
// identified is logged by the caller and left out; the others are used.
func discover(lib nvml.Interface, ringSpanNs int64, ringMin, ringMax int) ([]*device, []error) {
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, []error{fmt.Errorf("counting GPUs: %w", ret)}
	}
	var devs []*device
	var errs []error
	for i := 0; i < n; i++ {
		h, ret := lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			errs = append(errs, fmt.Errorf("gpu %d: getting its handle: %w", i, ret))
			continue
		}
		uuid, ret := h.GetUUID()
		if ret != nvml.SUCCESS {
			errs = append(errs, fmt.Errorf("gpu %d: reading its UUID: %w", i, ret))
			continue
		}
		d := &device{h: h, info: traces.GPUInfo{Index: i, UUID: uuid}, minor: i,
			ring: newRing(ringSpanNs, ringMin, ringMax)}
		if name, ret := h.GetName(); ret == nvml.SUCCESS {
			d.info.Name = name
		}
		if m, ret := h.GetMinorNumber(); ret == nvml.SUCCESS {
			d.minor = m
		}
		if p, ret := h.GetPciInfo(); ret == nvml.SUCCESS {
			d.info.PCIBusID = cString(p.BusId[:])
		}
		if cur, _, ret := h.GetMigMode(); ret == nvml.SUCCESS {
			d.info.MIG = cur == nvml.DEVICE_MIG_ENABLE
		}
		devs = append(devs, d)
	}
	return devs, errs
}

// cString converts a NUL-terminated C char array.
func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}
