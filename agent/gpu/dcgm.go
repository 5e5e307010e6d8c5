package gpu

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/NVIDIA/go-dcgm/pkg/dcgm"

	"github.com/loupe-dev/loupe/traces"
)

// profiler supplies the DCGM profiling fields (1001-1012) of the devices.
// fill must be cheap: it runs on every sampling tick.
type profiler interface {
	fill(d *device, s *traces.GPUSample) bool
	pause(paused bool) error
}

// profFields are the watched DCGM fields: the profiling fields in the
// order they are stored, then the GPU's UUID, which maps DCGM's GPU ids to
// NVML's devices without a per-GPU attribute and topology query.
var profFields = []dcgm.Short{
	dcgm.DCGM_FI_PROF_GR_ENGINE_ACTIVE,
	dcgm.DCGM_FI_PROF_SM_ACTIVE,
	dcgm.DCGM_FI_PROF_SM_OCCUPANCY,
	dcgm.DCGM_FI_PROF_PIPE_TENSOR_ACTIVE,
	dcgm.DCGM_FI_PROF_DRAM_ACTIVE,
	dcgm.DCGM_FI_PROF_PIPE_FP64_ACTIVE,
	dcgm.DCGM_FI_PROF_PIPE_FP32_ACTIVE,
	dcgm.DCGM_FI_PROF_PIPE_FP16_ACTIVE,
	dcgm.DCGM_FI_PROF_PCIE_TX_BYTES,
	dcgm.DCGM_FI_PROF_PCIE_RX_BYTES,
	dcgm.DCGM_FI_PROF_NVLINK_TX_BYTES,
	dcgm.DCGM_FI_PROF_NVLINK_RX_BYTES,
	dcgm.DCGM_FI_DEV_UUID,
}

const nProf = 12 // profiling fields at the start of profFields

// dcgmProfiler reads the profiling fields from a DCGM host engine (embedded
// in the agent or standalone). DCGM updates the watched fields at the
// watch's interval: the steady fields interval, or the capture rate while a
// capture window is open. Its own loop polls the latest values at that same
// interval and caches them per GPU with DCGM's timestamp; fill copies the
// cache.
type dcgmProfiler struct {
	cleanup func()
	fg      dcgm.FieldHandle
	steady  time.Duration
	ids     []uint // DCGM GPU ids
	// sharedMajor names the watched fields that fall in metric groups
	// sharing a major id, which on pre-Hopper GPUs DCGM can only collect in
	// turns (multiplexing); empty when there are none.
	sharedMajor string
	wake        chan struct{} // the watch interval changed

	mu     sync.Mutex
	every  time.Duration          // the watch's update interval, which the poll follows
	vals   map[string]*profValues // GPU UUID -> latest values; nil = blank
	paused bool
}

// profValues are one GPU's latest profiling values and when DCGM took them.
type profValues struct {
	v    [nProf]float64
	atNs int64
}

// openDCGM starts or connects to DCGM and watches the profiling fields. The
// error says why DCGM cannot be used; the caller logs it once.
func openDCGM(cfg DCGMConfig) (*dcgmProfiler, error) {
	var (
		cleanup func()
		err     error
	)
	switch cfg.Mode {
	case DCGMStandalone:
		isSocket := "0"
		if _, _, splitErr := net.SplitHostPort(cfg.Address); splitErr != nil {
			isSocket = "1"
		}
		cleanup, err = dcgm.Init(dcgm.Standalone, cfg.Address, isSocket)
	default:
		cleanup, err = dcgm.Init(dcgm.Embedded)
	}
	if err != nil {
		return nil, err
	}
	p := &dcgmProfiler{cleanup: cleanup, steady: cfg.FieldsInterval, every: cfg.FieldsInterval,
		vals: map[string]*profValues{}, wake: make(chan struct{}, 1)}
	p.ids, err = dcgm.GetSupportedDevices()
	if err != nil {
		p.close()
		return nil, fmt.Errorf("listing DCGM devices: %w", err)
	}
	if len(p.ids) == 0 {
		p.close()
		return nil, errors.New("DCGM supports none of the GPUs")
	}
	groups, err := dcgm.GetSupportedMetricGroups(p.ids[0])
	if err != nil {
		p.close()
		return nil, fmt.Errorf("DCGM profiling module not available (needs a datacenter GPU and the profiling module; is another profiler holding the counters?): %w", err)
	}
	p.sharedMajor = sharedMajorFields(groups)
	p.fg, err = dcgm.FieldGroupCreate(fmt.Sprintf("loupe-prof-%d", time.Now().UnixNano()), profFields)
	if err != nil {
		p.close()
		return nil, fmt.Errorf("creating the DCGM field group: %w", err)
	}
	if err := p.watch(p.steady); err != nil {
		_ = dcgm.FieldGroupDestroy(p.fg)
		p.close()
		return nil, fmt.Errorf("watching the DCGM profiling fields: %w", err)
	}
	return p, nil
}

// watch (re)starts the watch of the profiling fields with DCGM updating
// them every interval; the poll follows.
func (p *dcgmProfiler) watch(every time.Duration) error {
	keep := max(5*every, time.Second).Seconds()
	if err := dcgm.WatchFieldsWithGroupEx(p.fg, dcgm.GroupAllGPUs(), every.Microseconds(), keep, 0); err != nil {
		return err
	}
	p.mu.Lock()
	p.every = every
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return nil
}

// captureFallback is the update interval tried when DCGM refuses the
// capture rate: the profiling module's long-standing minimum.
const captureFallback = 100 * time.Millisecond

// raise makes DCGM update the profiling fields every period for a capture
// window. A driver or DCGM that refuses the interval gets the fallback, and
// failing that keeps the steady interval; the notes say which, for the
// capture's manifest.
func (p *dcgmProfiler) raise(period time.Duration) []string {
	tries := []time.Duration{period}
	if period < captureFallback && captureFallback < p.steady {
		tries = append(tries, captureFallback)
	}
	var refused []string
	for _, every := range tries {
		err := p.watch(every)
		if err == nil {
			if len(refused) == 0 {
				return nil
			}
			return []string{fmt.Sprintf("dcgm: DCGM refused a %v update interval for the profiling fields (%s); they were sampled every %v in this window",
				period, strings.Join(refused, "; "), every)}
		}
		refused = append(refused, fmt.Sprintf("%v: %v", every, err))
	}
	return []string{fmt.Sprintf("dcgm: DCGM refused a %v update interval for the profiling fields (%s); they kept the steady %v interval, so samples between updates repeat the last values (see prof_time_ns)",
		period, strings.Join(refused, "; "), p.steady)}
}

// restore puts the watch back at the steady interval after a capture.
func (p *dcgmProfiler) restore() error { return p.watch(p.steady) }

// sharedMajorFields lists the watched profiling fields whose metric groups
// share a major id with another group holding a watched field: DCGM
// cannot collect such groups at once on GPUs before Hopper.
func sharedMajorFields(groups []dcgm.MetricGroup) string {
	watched := map[uint]bool{}
	for _, f := range profFields[:nProf] {
		watched[uint(f)] = true
	}
	minors := map[uint]map[uint][]uint{} // major -> minor -> watched fields
	for _, g := range groups {
		for _, f := range g.FieldIds {
			if watched[f] {
				if minors[g.Major] == nil {
					minors[g.Major] = map[uint][]uint{}
				}
				minors[g.Major][g.Minor] = append(minors[g.Major][g.Minor], f)
			}
		}
	}
	var parts []string
	for _, major := range slices.Sorted(maps.Keys(minors)) {
		if len(minors[major]) < 2 {
			continue
		}
		for _, minor := range slices.Sorted(maps.Keys(minors[major])) {
			parts = append(parts, fmt.Sprintf("group %d.%d (fields %v)", major, minor, minors[major][minor]))
		}
	}
	return strings.Join(parts, ", ")
}

func (p *dcgmProfiler) close() {
	if p.cleanup != nil {
		p.cleanup()
		p.cleanup = nil
	}
}

// run polls the latest values until ctx is done, then stops DCGM.
func (p *dcgmProfiler) run(ctx context.Context, errs func(error)) {
	defer func() {
		_ = dcgm.UnwatchFields(p.fg, dcgm.GroupAllGPUs())
		_ = dcgm.FieldGroupDestroy(p.fg)
		p.close()
	}()
	t := time.NewTicker(p.every)
	defer t.Stop()
	for {
		for _, id := range p.ids {
			vals, err := dcgm.GetLatestValuesForFields(id, profFields)
			if err != nil {
				errs(fmt.Errorf("dcgm gpu %d: %w", id, err))
				continue
			}
			if len(vals) != len(profFields) {
				errs(fmt.Errorf("dcgm gpu %d: %d values for %d fields", id, len(vals), len(profFields)))
				continue
			}
			uuid := vals[nProf].String()
			out := &profValues{}
			blank := false
			for i := range out.v {
				f, ok := dcgmValue(vals[i])
				if !ok {
					blank = true
					break
				}
				out.v[i] = f
				out.atNs = max(out.atNs, vals[i].TS*1000) // DCGM stamps in microseconds
			}
			p.mu.Lock()
			if blank || p.paused { // a poll that raced a pause keeps nothing
				p.vals[uuid] = nil
			} else {
				p.vals[uuid] = out
			}
			p.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.wake:
			p.mu.Lock()
			t.Reset(p.every)
			p.mu.Unlock()
		}
	}
}

// dcgmValue converts one field value; false for a blank or failed value
// (DCGM stores blanks while profiling is paused).
func dcgmValue(v dcgm.FieldValue_v1) (float64, bool) {
	if v.Status != 0 {
		return 0, false
	}
	switch v.FieldType {
	case dcgm.DCGM_FT_DOUBLE:
		// DCGM's double blanks are 2^47 and up.
		if f := v.Float64(); f < 140737488355328.0 {
			return f, true
		}
	case dcgm.DCGM_FT_INT64:
		// DCGM's int64 blanks are 0x7ffffffffffffff0 and up.
		if i := v.Int64(); i < 0x7ffffffffffffff0 {
			return float64(i), true
		}
	}
	return 0, false
}

func (p *dcgmProfiler) fill(d *device, s *traces.GPUSample) bool {
	p.mu.Lock()
	pv := p.vals[d.info.UUID]
	p.mu.Unlock()
	if pv == nil {
		return false
	}
	v := &pv.v
	s.ProfValid, s.ProfTimeNs = true, pv.atNs
	s.GrEngineActive, s.SMActive, s.SMOccupancy = float32(v[0]), float32(v[1]), float32(v[2])
	s.TensorActive, s.DRAMActive = float32(v[3]), float32(v[4])
	s.FP64Active, s.FP32Active, s.FP16Active = float32(v[5]), float32(v[6]), float32(v[7])
	s.ProfPCIeTxBps, s.ProfPCIeRxBps = int64(v[8]), int64(v[9])
	s.ProfNVLinkTxBps, s.ProfNVLinkRxBps = int64(v[10]), int64(v[11])
	return true
}

func (p *dcgmProfiler) pause(paused bool) error {
	if err := dcgmProfPause(paused); err != nil {
		return err
	}
	p.mu.Lock()
	p.paused = paused
	if paused {
		clear(p.vals)
	}
	p.mu.Unlock()
	return nil
}

// simProfiler derives the profiling fields of simulated GPUs from the
// simulation, so a demo shows SM, tensor and DRAM activity; the series
// carry simulated="true" like every other series of a simulated GPU.
type simProfiler struct {
	mu     sync.Mutex
	paused bool
}

func (p *simProfiler) fill(d *device, s *traces.GPUSample) bool {
	g, ok := d.h.(*simGPU)
	if !ok {
		return false
	}
	p.mu.Lock()
	paused := p.paused
	p.mu.Unlock()
	return !paused && g.profiling(s)
}

func (p *simProfiler) pause(paused bool) error {
	p.mu.Lock()
	p.paused = paused
	p.mu.Unlock()
	return nil
}

// dcgmReason turns DCGM's start-up error into a short, stable label value
// for loupe_dcgm_available.
func dcgmReason(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "not found"):
		return "libdcgm_not_found"
	case strings.Contains(msg, "profiling"):
		return "profiling_module_unavailable"
	case strings.Contains(msg, "none of the GPUs"):
		return "no_supported_gpu"
	case strings.Contains(msg, "connect"):
		return "hostengine_unreachable"
	default:
		return "init_failed"
	}
}

// errNoDCGM is what PauseProfiling answers on a host without DCGM.
var errNoDCGM = errors.New("DCGM profiling is not available on this host")
