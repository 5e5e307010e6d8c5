package gpu

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"

	"github.com/loupe-dev/loupe/traces"
)

// SimOptions plants problems on simulated GPUs, for demos and tests. The
// zero value plants none.
type SimOptions struct {
	// ThrottledGPUs run hot: their temperature settles above the slowdown
	// threshold, so they report thermal clock event reasons and low SM
	// clocks, and do less work per second.
	ThrottledGPUs []int `yaml:"throttled_gpus"`
	// StarvedGPUs wait for input most of every step, as behind a data
	// loader that cannot keep up: they idle (low utilization and SM
	// activity) for about two thirds of each step.
	StarvedGPUs []int `yaml:"starved_gpus"`
	// LostGPUs answer ERROR_GPU_IS_LOST to every call from their time on.
	LostGPUs []SimEvent `yaml:"lost_gpus"`
	// XIDs are delivered through the NVML event set at their time.
	XIDs []SimXID `yaml:"xids"`
	// PIDs are shown as the compute processes of the GPUs, round-robin,
	// so that attribution has real processes to look at.
	PIDs []int `yaml:"pids"`
}

// SimEvent is something that happens to one simulated GPU After the
// simulator starts.
type SimEvent struct {
	GPU   int           `yaml:"gpu"`
	After time.Duration `yaml:"after"`
}

// SimXID is one XID error the simulator raises After the simulator starts.
type SimXID struct {
	GPU   int           `yaml:"gpu"`
	Code  uint64        `yaml:"code"`
	After time.Duration `yaml:"after"`
}

// Simulator is a set of simulated H100 GPUs behind nvml.Interface.
//
// It is go-nvml's mock DGX H100 server (names, UUIDs, PCI ids, memory size
// and MIG come from it) whose devices are wrapped so that their telemetry
// moves like a data-parallel training job: steps of compute, communication
// and data loading, a checkpoint pause every minute, temperatures that
// follow power with a thermal time constant, clocks that drop with thermal
// reasons when a GPU runs hot. The readings are methods of the wrapper, not
// the mock's recorded ...Func fields, because the mock records every call
// and would grow without bound in a long-running daemon.
type Simulator struct {
	srv   *server.Server
	gpus  []*simGPU
	start time.Time
	opts  SimOptions
}

// NewSimulator builds n simulated GPUs whose clock starts now.
func NewSimulator(n int, opts SimOptions) *Simulator {
	srv := dgxh100.NewWithGPUs(gpus.Multiple(n, gpus.H100_SXM5_80GB)...)
	s := &Simulator{srv: srv, start: time.Now(), opts: opts}
	for i, d := range srv.Devices {
		g := &simGPU{
			Device: d.(*server.Device),
			sim:    s,
			idx:    i,
			rng:    rand.New(rand.NewPCG(uint64(i)+1, 0x10e)),
			// Ranks do not start their steps at the same instant.
			offset:   float64(i) * 0.013,
			hot:      slices.Contains(opts.ThrottledGPUs, i),
			starved:  slices.Contains(opts.StarvedGPUs, i),
			energyMJ: 4.2e9 + float64(i)*3.1e7,
		}
		// The job is already running when the simulation starts, so the
		// GPUs start at the temperature of its average power.
		g.temp = g.targetTemp(trainAvgPowerW)
		s.gpus = append(s.gpus, g)
		srv.Devices[i] = g
	}
	srv.DeviceGetHandleByUUIDFunc = func(uuid string) (nvml.Device, nvml.Return) {
		for _, g := range s.gpus {
			if g.UUID == uuid {
				return g, nvml.SUCCESS
			}
		}
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	srv.DeviceGetHandleByPciBusIdFunc = func(busID string) (nvml.Device, nvml.Return) {
		for _, g := range s.gpus {
			if g.PciBusID == busID {
				return g, nvml.SUCCESS
			}
		}
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	srv.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		return &simEventSet{sim: s, sent: make([]bool, len(opts.XIDs)), mask: make(map[int]uint64)}, nvml.SUCCESS
	}
	return s
}

// Interface is the NVML library the collector reads.
func (s *Simulator) Interface() nvml.Interface { return s.srv }

const (
	trainAvgPowerW = 530
	stepSeconds    = 1.2
	slowdownAtC    = 87 // above this the hot GPU throttles
	thermalTau     = 20 // seconds
	nvlinkPeakBs   = 240e9
)

// simGPU is one simulated device. Its state is integrated lazily when a
// reading is asked for, at most once per millisecond.
type simGPU struct {
	*server.Device
	sim     *Simulator
	idx     int
	offset  float64
	hot     bool
	starved bool

	mu       sync.Mutex
	rng      *rand.Rand
	at       time.Time
	temp     float64
	energyMJ float64
	nvTxKiB  float64
	nvRxKiB  float64
	st       simState
}

// simState is one instant of a simulated GPU.
type simState struct {
	util, memUtil    float64
	powerW           float64
	tempC            float64
	smMHz, memMHz    uint32
	reasons          uint64
	fbUsed           uint64
	pcieTxBs, pcieRx float64
	nvlinkBs         float64
	smActive, occ    float64
	tensor, dram     float64
	fp64, fp32, fp16 float64
	lost             bool
}

func (g *simGPU) targetTemp(powerW float64) float64 {
	t := 28 + 0.075*powerW
	if g.hot {
		t += 25 // a blocked air inlet, a failed fan
	}
	return t
}

// refresh moves the model to now and returns the new state. The readings
// that start a round (utilization in every sample, the slow-loop readings)
// refresh; the others read the state of that round, as a driver's readings
// come from its own periodic update rather than from the instant of the call.
// One clock read per round instead of one per reading keeps the simulator
// cheap at 100 Hz.
func (g *simGPU) refresh() simState {
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if now.Sub(g.at) >= time.Millisecond {
		g.advance(now)
	}
	return g.st
}

// state is the state of the current round.
func (g *simGPU) state() simState {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.at.IsZero() {
		g.advance(time.Now())
	}
	return g.st
}

// advance moves the model to now.
func (g *simGPU) advance(now time.Time) {
	opts := &g.sim.opts
	t := now.Sub(g.sim.start).Seconds()
	dt := 0.0
	if !g.at.IsZero() {
		dt = now.Sub(g.at).Seconds()
	}
	g.at = now
	st := simState{memMHz: 2619}
	for _, l := range opts.LostGPUs {
		st.lost = st.lost || l.GPU == g.idx && now.Sub(g.sim.start) >= l.After
	}
	noise := func(scale float64) float64 { return (g.rng.Float64()*2 - 1) * scale }

	// The job: steps of compute, all-reduce and input; every 60 s a 3 s
	// checkpoint during which the GPUs idle.
	phase := math.Mod(t/stepSeconds+g.offset, 1)
	compute, comm := 0.68, 0.9
	if g.starved {
		compute, comm = 0.25, 0.33 // the rest of the step waits for input
	}
	switch {
	case math.Mod(t, 60) >= 57:
		st.util, st.powerW = 1, 110
	case phase < compute: // forward and backward
		st.util, st.powerW = 97+noise(2), 650+noise(25)
		st.smActive, st.occ, st.tensor, st.dram = 0.88, 0.41, 0.63, 0.52
		st.fp16, st.fp32 = 0.09, 0.04
		st.memUtil = 38 + noise(4)
	case phase < comm: // gradient all-reduce
		st.util, st.powerW = 42+noise(4), 330+noise(20)
		st.smActive, st.occ, st.tensor, st.dram = 0.3, 0.12, 0.01, 0.24
		st.memUtil = 21 + noise(3)
		st.nvlinkBs = nvlinkPeakBs * (0.85 + noise(0.1))
	default: // input pipeline
		st.util, st.powerW = 6+noise(3), 160+noise(10)
		st.smActive, st.dram = 0.04, 0.03
		st.pcieRx = 11e9 * (1 + noise(0.1))
	}
	st.fbUsed = 71<<30 + uint64(1<<28*(1+noise(0.05)))
	st.pcieTxBs = 150e6 * (1 + noise(0.2))
	st.pcieRx += 180e6 * (1 + noise(0.2))

	// Temperature follows power with a first-order lag.
	g.temp += (g.targetTemp(st.powerW) - g.temp) * (1 - math.Exp(-dt/thermalTau))
	st.tempC = g.temp + noise(0.3)

	st.smMHz = 1980
	if st.util < 10 {
		st.smMHz, st.reasons = 345, traces.ClockEventGPUIdle
	}
	if g.temp > slowdownAtC {
		// Thermal slowdown: clocks fall with temperature, power and work
		// rates fall with them.
		st.smMHz = uint32(math.Max(900, 1500-40*(g.temp-slowdownAtC)))
		st.reasons = traces.ClockEventSWThermalSlowdown | traces.ClockEventHWThermalSlowdown
		f := float64(st.smMHz) / 1980
		st.powerW *= 0.6 + 0.4*f
		st.smActive *= f
		st.tensor *= f
	}
	st.util = math.Max(0, math.Min(100, st.util))
	st.memUtil = math.Max(0, st.memUtil)
	g.energyMJ += st.powerW * dt * 1000
	g.nvTxKiB += st.nvlinkBs * dt / 1024
	g.nvRxKiB += st.nvlinkBs * dt / 1024
	g.st = st
}

// The readings below answer ERROR_GPU_IS_LOST once the GPU is lost.

// GetUtilizationRates starts a round and reports GPU and memory utilization.
func (g *simGPU) GetUtilizationRates() (nvml.Utilization, nvml.Return) {
	st := g.refresh()
	if st.lost {
		return nvml.Utilization{}, nvml.ERROR_GPU_IS_LOST
	}
	return nvml.Utilization{Gpu: uint32(st.util), Memory: uint32(st.memUtil)}, nvml.SUCCESS
}

// GetMemoryInfo reports framebuffer use: the job holds about 71 GiB.
func (g *simGPU) GetMemoryInfo() (nvml.Memory, nvml.Return) {
	st := g.state()
	if st.lost {
		return nvml.Memory{}, nvml.ERROR_GPU_IS_LOST
	}
	total := g.MemoryInfo.Total
	return nvml.Memory{Total: total, Used: st.fbUsed, Free: total - st.fbUsed}, nvml.SUCCESS
}

// GetPowerUsage reports the board power in milliwatts.
func (g *simGPU) GetPowerUsage() (uint32, nvml.Return) {
	st := g.state()
	if st.lost {
		return 0, nvml.ERROR_GPU_IS_LOST
	}
	return uint32(st.powerW * 1000), nvml.SUCCESS
}

// GetTotalEnergyConsumption reports the energy counter in millijoules.
func (g *simGPU) GetTotalEnergyConsumption() (uint64, nvml.Return) {
	st := g.state()
	if st.lost {
		return 0, nvml.ERROR_GPU_IS_LOST
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return uint64(g.energyMJ), nvml.SUCCESS
}

// GetTemperature reports the GPU core temperature.
func (g *simGPU) GetTemperature(sensor nvml.TemperatureSensors) (uint32, nvml.Return) {
	st := g.state()
	if st.lost {
		return 0, nvml.ERROR_GPU_IS_LOST
	}
	if sensor != nvml.TEMPERATURE_GPU {
		return 0, nvml.ERROR_NOT_SUPPORTED
	}
	return uint32(math.Round(st.tempC)), nvml.SUCCESS
}

// GetClockInfo reports the SM and memory clocks in MHz.
func (g *simGPU) GetClockInfo(clock nvml.ClockType) (uint32, nvml.Return) {
	st := g.state()
	switch {
	case st.lost:
		return 0, nvml.ERROR_GPU_IS_LOST
	case clock == nvml.CLOCK_SM || clock == nvml.CLOCK_GRAPHICS:
		return st.smMHz, nvml.SUCCESS
	case clock == nvml.CLOCK_MEM:
		return st.memMHz, nvml.SUCCESS
	}
	return 0, nvml.ERROR_NOT_SUPPORTED
}

// GetCurrentClocksEventReasons reports why clocks are held down (idle, thermal slowdown).
func (g *simGPU) GetCurrentClocksEventReasons() (uint64, nvml.Return) {
	st := g.state()
	if st.lost {
		return 0, nvml.ERROR_GPU_IS_LOST
	}
	return st.reasons, nvml.SUCCESS
}

// GetPcieThroughput reports PCIe throughput in KB/s; input loading shows on RX.
func (g *simGPU) GetPcieThroughput(c nvml.PcieUtilCounter) (uint32, nvml.Return) {
	st := g.refresh()
	if st.lost {
		return 0, nvml.ERROR_GPU_IS_LOST
	}
	if c == nvml.PCIE_UTIL_TX_BYTES {
		return uint32(st.pcieTxBs / 1024), nvml.SUCCESS
	}
	return uint32(st.pcieRx / 1024), nvml.SUCCESS
}

// GetFieldValues answers the memory temperature and the per-link NVLink
// data counters; other fields are "not supported", as on a real device
// that lacks them.
func (g *simGPU) GetFieldValues(values []nvml.FieldValue) nvml.Return {
	st := g.refresh()
	if st.lost {
		return nvml.ERROR_GPU_IS_LOST
	}
	g.mu.Lock()
	tx, rx := g.nvTxKiB/nvlinkLinks, g.nvRxKiB/nvlinkLinks
	g.mu.Unlock()
	for i := range values {
		v := &values[i]
		v.NvmlReturn = uint32(nvml.SUCCESS)
		v.ValueType = uint32(nvml.VALUE_TYPE_UNSIGNED_LONG_LONG)
		v.Timestamp = time.Now().UnixMicro()
		switch v.FieldId {
		case nvml.FI_DEV_MEMORY_TEMP:
			v.ValueType = uint32(nvml.VALUE_TYPE_UNSIGNED_INT)
			binary.LittleEndian.PutUint64(v.Value[:], uint64(st.tempC+4))
		case nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_TX:
			binary.LittleEndian.PutUint64(v.Value[:], uint64(tx))
		case nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_RX:
			binary.LittleEndian.PutUint64(v.Value[:], uint64(rx))
		default:
			v.NvmlReturn = uint32(nvml.ERROR_NOT_SUPPORTED)
		}
	}
	return nvml.SUCCESS
}

// GetTotalEccErrors reports no ECC errors: the simulated memory is healthy.
func (g *simGPU) GetTotalEccErrors(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) {
	if g.state().lost {
		return 0, nvml.ERROR_GPU_IS_LOST
	}
	return 0, nvml.SUCCESS
}

// GetRemappedRows reports no remapped rows.
func (g *simGPU) GetRemappedRows() (int, int, bool, bool, nvml.Return) {
	if g.state().lost {
		return 0, 0, false, false, nvml.ERROR_GPU_IS_LOST
	}
	return 0, 0, false, false, nvml.SUCCESS
}

// GetPcieReplayCounter reports no PCIe replays: the simulated link is clean.
func (g *simGPU) GetPcieReplayCounter() (int, nvml.Return) {
	if g.state().lost {
		return 0, nvml.ERROR_GPU_IS_LOST
	}
	return 0, nvml.SUCCESS
}

// GetEncoderUtilization reports an idle video encoder (training uses none).
func (g *simGPU) GetEncoderUtilization() (uint32, uint32, nvml.Return) {
	if g.state().lost {
		return 0, 0, nvml.ERROR_GPU_IS_LOST
	}
	return 0, 167000, nvml.SUCCESS
}

// GetDecoderUtilization reports an idle video decoder.
func (g *simGPU) GetDecoderUtilization() (uint32, uint32, nvml.Return) {
	if g.state().lost {
		return 0, 0, nvml.ERROR_GPU_IS_LOST
	}
	return 0, 167000, nvml.SUCCESS
}

// GetMemoryInfo_v2 adds the driver's reservation (about 0.5 GiB on an H100)
// to GetMemoryInfo's view.
func (g *simGPU) GetMemoryInfo_v2() (nvml.Memory_v2, nvml.Return) {
	m, ret := g.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return nvml.Memory_v2{}, ret
	}
	const reserved = 512 << 20
	return nvml.Memory_v2{Total: m.Total, Reserved: reserved, Used: m.Used - min(m.Used, reserved), Free: m.Free}, nvml.SUCCESS
}

// GetGridLicensableFeatures answers as a bare-metal GPU does: no vGPU
// license to hold.
func (g *simGPU) GetGridLicensableFeatures() (nvml.GridLicensableFeatures, nvml.Return) {
	if g.state().lost {
		return nvml.GridLicensableFeatures{}, nvml.ERROR_GPU_IS_LOST
	}
	return nvml.GridLicensableFeatures{}, nvml.SUCCESS
}

// pid is the simulated process on this GPU, 0 for none.
func (g *simGPU) pid() uint32 {
	pids := g.sim.opts.PIDs
	if len(pids) == 0 {
		return 0
	}
	return uint32(pids[g.idx%len(pids)])
}

// GetComputeRunningProcesses lists the simulated process of this GPU, if any.
func (g *simGPU) GetComputeRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	st := g.refresh()
	if st.lost {
		return nil, nvml.ERROR_GPU_IS_LOST
	}
	if p := g.pid(); p != 0 {
		return []nvml.ProcessInfo{{Pid: p, UsedGpuMemory: st.fbUsed - 512<<20}}, nvml.SUCCESS
	}
	return nil, nvml.SUCCESS
}

// GetProcessUtilization reports the simulated process's utilization.
func (g *simGPU) GetProcessUtilization(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
	st := g.state()
	if st.lost {
		return nil, nvml.ERROR_GPU_IS_LOST
	}
	p := g.pid()
	if p == 0 {
		return nil, nvml.ERROR_NOT_FOUND
	}
	return []nvml.ProcessUtilizationSample{{Pid: p, TimeStamp: uint64(time.Now().UnixMicro()),
		SmUtil: uint32(st.util), MemUtil: uint32(st.memUtil)}}, nvml.SUCCESS
}

// GetPciInfo adds the bus id (which the mock leaves out) to the mock's PCI info.
func (g *simGPU) GetPciInfo() (nvml.PciInfo, nvml.Return) {
	p, ret := g.Device.GetPciInfo()
	for i := 0; i < len(g.PciBusID) && i < len(p.BusId)-1; i++ {
		p.BusId[i] = int8(g.PciBusID[i])
	}
	return p, ret
}

// RegisterEvents subscribes this GPU to a simulated event set.
func (g *simGPU) RegisterEvents(types uint64, set nvml.EventSet) nvml.Return {
	es, ok := set.(*simEventSet)
	if !ok {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	es.mu.Lock()
	es.mask[g.idx] |= types
	es.mu.Unlock()
	return nvml.SUCCESS
}

// profiling fills the DCGM profiling fields from the model: the simulated
// stand-in for DCGM on simulated GPUs.
func (g *simGPU) profiling(s *traces.GPUSample) bool {
	st := g.state()
	if st.lost {
		return false
	}
	s.ProfValid = true
	s.GrEngineActive = float32(math.Min(1, st.util/100))
	s.SMActive, s.SMOccupancy = float32(st.smActive), float32(st.occ)
	s.TensorActive, s.DRAMActive = float32(st.tensor), float32(st.dram)
	s.FP64Active, s.FP32Active, s.FP16Active = float32(st.fp64), float32(st.fp32), float32(st.fp16)
	s.ProfPCIeTxBps, s.ProfPCIeRxBps = int64(st.pcieTxBs), int64(st.pcieRx)
	s.ProfNVLinkTxBps, s.ProfNVLinkRxBps = int64(st.nvlinkBs), int64(st.nvlinkBs)
	return true
}

// simEventSet delivers the planted XIDs of the devices registered on it.
type simEventSet struct {
	mock.EventSet
	sim  *Simulator
	mu   sync.Mutex
	mask map[int]uint64
	sent []bool
}

// Wait returns the first due XID, or ERROR_TIMEOUT after timeoutMs.
func (e *simEventSet) Wait(timeoutMs uint32) (nvml.EventData, nvml.Return) {
	deadline := time.Now().Add(time.Duration(timeoutMs) * time.Millisecond)
	for {
		now := time.Now()
		next := deadline
		e.mu.Lock()
		for i, x := range e.sim.opts.XIDs {
			due := e.sim.start.Add(x.After)
			if e.sent[i] || x.GPU < 0 || x.GPU >= len(e.sim.gpus) || e.mask[x.GPU]&nvml.EventTypeXidCriticalError == 0 {
				continue
			}
			if !due.After(now) {
				e.sent[i] = true
				e.mu.Unlock()
				return nvml.EventData{Device: e.sim.gpus[x.GPU], EventType: nvml.EventTypeXidCriticalError,
					EventData: x.Code, GpuInstanceId: 0xFFFFFFFF, ComputeInstanceId: 0xFFFFFFFF}, nvml.SUCCESS
			}
			if due.Before(next) {
				next = due
			}
		}
		e.mu.Unlock()
		if !now.Before(deadline) {
			return nvml.EventData{}, nvml.ERROR_TIMEOUT
		}
		time.Sleep(next.Sub(now))
	}
}

// Free releases the set.
func (e *simEventSet) Free() nvml.Return { return nvml.SUCCESS }
