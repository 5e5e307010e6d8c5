package gpu

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// Metric types of a counters file, as dcgm-exporter names them.
const (
	typeGauge   = "gauge"
	typeCounter = "counter"
	typeLabel   = "label"
)

// Counter is one line of a counters file in dcgm-exporter's format
// (`--collectors`): a DCGM field name, its Prometheus type and a help text.
type Counter struct {
	Field string
	Type  string
	Help  string
}

// exported is one series family the agent can serve: dcgm-exporter's name,
// the type and unit its files give it, the reading it needs (a family whose
// reading never succeeded is left out, as dcgm-exporter leaves blank fields
// out) and how to get it from a device's snapshot, or from one MIG
// instance's when the field exists per instance. Its help text is the
// counters file's, else the daemon's table of help texts (metrics_help.go).
type exported struct {
	name string
	typ  string
	need field
	get  func(x *snapshot) float64
	mig  func(m *migSnapshot) float64
}

// exportable lists every family the agent collects, in the order of
// dcgm-exporter's files: the default counters (default-counters.csv, every
// one of them), then the fields of its DCP file that the agent reads too.
// Types are those files' (so PCIe throughput is a counter there, whatever
// DCGM measures); units are DCGM's: MiB, W, mJ, MHz, C, %, KB/s for NVML's
// PCIe throughput, ratios for the DCP fields, bytes/s for their byte rates.
var exportable = []exported{
	{"DCGM_FI_DEV_SM_CLOCK", typeGauge, fSMClock, func(x *snapshot) float64 { return float64(x.s.SMClockMHz) }, nil},
	{"DCGM_FI_DEV_MEM_CLOCK", typeGauge, fMemClock, func(x *snapshot) float64 { return float64(x.s.MemClockMHz) }, nil},
	{"DCGM_FI_DEV_MEMORY_TEMP", typeGauge, fMemTemp, func(x *snapshot) float64 { return float64(x.s.MemTempC) }, nil},
	{"DCGM_FI_DEV_GPU_TEMP", typeGauge, fGPUTemp, func(x *snapshot) float64 { return float64(x.s.GPUTempC) }, nil},
	{"DCGM_FI_DEV_POWER_USAGE", typeGauge, fPower, func(x *snapshot) float64 { return float64(x.s.PowerW) }, nil},
	{"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", typeCounter, fEnergy, func(x *snapshot) float64 { return float64(x.s.EnergyMJ) }, nil},
	{"DCGM_FI_DEV_PCIE_TX_THROUGHPUT", typeCounter, fPCIe, func(x *snapshot) float64 { return float64(x.s.PCIeTxBps / 1024) }, nil},
	{"DCGM_FI_DEV_PCIE_RX_THROUGHPUT", typeCounter, fPCIe, func(x *snapshot) float64 { return float64(x.s.PCIeRxBps / 1024) }, nil},
	{"DCGM_FI_DEV_PCIE_REPLAY_COUNTER", typeCounter, fPCIeReplay, func(x *snapshot) float64 { return float64(x.x.pcieReplays) }, nil},
	{"DCGM_FI_DEV_GPU_UTIL", typeGauge, fUtil, func(x *snapshot) float64 { return float64(x.s.GPUUtil) }, nil},
	{"DCGM_FI_DEV_MEM_COPY_UTIL", typeGauge, fUtil, func(x *snapshot) float64 { return float64(x.s.MemCopyUtil) }, nil},
	{"DCGM_FI_DEV_ENC_UTIL", typeGauge, fEncoder, func(x *snapshot) float64 { return float64(x.x.encUtil) }, nil},
	{"DCGM_FI_DEV_DEC_UTIL", typeGauge, fDecoder, func(x *snapshot) float64 { return float64(x.x.decUtil) }, nil},
	{"DCGM_FI_DEV_XID_ERRORS", typeGauge, 0, func(x *snapshot) float64 { return float64(x.xid) }, nil},
	{"DCGM_FI_DEV_FB_FREE", typeGauge, fMemory, func(x *snapshot) float64 { return float64(x.s.FBFreeMiB) },
		func(m *migSnapshot) float64 { return float64(m.fbFreeMiB) }},
	{"DCGM_FI_DEV_FB_USED", typeGauge, fMemory, func(x *snapshot) float64 { return float64(x.s.FBUsedMiB) },
		func(m *migSnapshot) float64 { return float64(m.fbUsedMiB) }},
	{"DCGM_FI_DEV_FB_RESERVED", typeGauge, fMemReserved, func(x *snapshot) float64 { return float64(x.x.fbReservedMiB) }, nil},
	{"DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", typeCounter, fNVLink, func(x *snapshot) float64 { return float64(x.x.nvlinkBytes) }, nil},
	{"DCGM_FI_DEV_VGPU_LICENSE_STATUS", typeGauge, fVGPULicense, func(x *snapshot) float64 { return float64(x.x.vgpuLicensed) }, nil},
	{"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", typeCounter, fRemapped, func(x *snapshot) float64 { return float64(x.x.remapUncorrectable) }, nil},
	{"DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", typeCounter, fRemapped, func(x *snapshot) float64 { return float64(x.x.remapCorrectable) }, nil},
	{"DCGM_FI_DEV_ROW_REMAP_FAILURE", typeGauge, fRemapped, func(x *snapshot) float64 { return float64(x.x.remapFailed) }, nil},
	{"DCGM_FI_PROF_GR_ENGINE_ACTIVE", typeGauge, fProf, func(x *snapshot) float64 { return float64(x.s.GrEngineActive) }, nil},
	{"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", typeGauge, fProf, func(x *snapshot) float64 { return float64(x.s.TensorActive) }, nil},
	{"DCGM_FI_PROF_DRAM_ACTIVE", typeGauge, fProf, func(x *snapshot) float64 { return float64(x.s.DRAMActive) }, nil},
	{"DCGM_FI_PROF_PCIE_TX_BYTES", typeCounter, fProf, func(x *snapshot) float64 { return float64(x.s.ProfPCIeTxBps) }, nil},
	{"DCGM_FI_PROF_PCIE_RX_BYTES", typeCounter, fProf, func(x *snapshot) float64 { return float64(x.s.ProfPCIeRxBps) }, nil},
	// Beyond dcgm-exporter's defaults: what its DCP file adds, and what
	// Loupe's own dashboards read.
	{"DCGM_FI_PROF_SM_ACTIVE", typeGauge, fProf, func(x *snapshot) float64 { return float64(x.s.SMActive) }, nil},
	{"DCGM_FI_PROF_SM_OCCUPANCY", typeGauge, fProf, func(x *snapshot) float64 { return float64(x.s.SMOccupancy) }, nil},
	{"DCGM_FI_PROF_PIPE_FP64_ACTIVE", typeGauge, fProf, func(x *snapshot) float64 { return float64(x.s.FP64Active) }, nil},
	{"DCGM_FI_PROF_PIPE_FP32_ACTIVE", typeGauge, fProf, func(x *snapshot) float64 { return float64(x.s.FP32Active) }, nil},
	{"DCGM_FI_PROF_PIPE_FP16_ACTIVE", typeGauge, fProf, func(x *snapshot) float64 { return float64(x.s.FP16Active) }, nil},
	{"DCGM_FI_PROF_NVLINK_TX_BYTES", typeCounter, fProf, func(x *snapshot) float64 { return float64(x.s.ProfNVLinkTxBps) }, nil},
	{"DCGM_FI_PROF_NVLINK_RX_BYTES", typeCounter, fProf, func(x *snapshot) float64 { return float64(x.s.ProfNVLinkRxBps) }, nil},
	{"DCGM_FI_DEV_FB_TOTAL", typeGauge, fMemory, func(x *snapshot) float64 { return float64(x.s.FBTotalMiB) },
		func(m *migSnapshot) float64 { return float64(m.fbTotalMiB) }},
	{"DCGM_FI_DEV_CLOCKS_EVENT_REASONS", typeGauge, fClockEvents, func(x *snapshot) float64 { return float64(x.s.ClockEventReasons) }, nil},
	{"DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", typeCounter, fECC, func(x *snapshot) float64 { return float64(x.s.ECCSingleBit) }, nil},
	{"DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", typeCounter, fECC, func(x *snapshot) float64 { return float64(x.s.ECCDoubleBit) }, nil},
}

// driverVersionField is the one field served as a label (of every series),
// which a counters file may name with the type "label".
const driverVersionField = "DCGM_FI_DRIVER_VERSION"

// maxCountersFile bounds a counters file read.
const maxCountersFile = 1 << 20

// ParseCounters reads a counters file in dcgm-exporter's format: one field
// per line as "DCGM field, type, help", where type is gauge, counter or
// label; '#' starts a comment line; blank lines and spaces around the
// columns are ignored. It fails on the first line it cannot use, naming it.
func ParseCounters(r io.Reader) ([]Counter, error) {
	var out []Counter
	seen := map[string]int{}
	sc := bufio.NewScanner(io.LimitReader(r, maxCountersFile))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		cols := strings.SplitN(line, ",", 3)
		if len(cols) < 2 {
			return nil, fmt.Errorf("line %d %q: want \"DCGM field, type, help\"", n, line)
		}
		c := Counter{Field: strings.TrimSpace(cols[0]), Type: strings.ToLower(strings.TrimSpace(cols[1]))}
		if len(cols) == 3 {
			c.Help = strings.TrimSpace(cols[2])
		}
		if !strings.HasPrefix(c.Field, "DCGM_FI_") {
			return nil, fmt.Errorf("line %d: %q is not a DCGM field name (DCGM_FI_...)", n, c.Field)
		}
		switch c.Type {
		case typeGauge, typeCounter, typeLabel:
		default:
			return nil, fmt.Errorf("line %d: field %s has type %q: want gauge, counter or label", n, c.Field, c.Type)
		}
		if prev, dup := seen[c.Field]; dup {
			return nil, fmt.Errorf("line %d: field %s is listed again (first on line %d)", n, c.Field, prev)
		}
		seen[c.Field] = n
		out = append(out, c)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading counters: %w", err)
	}
	return out, nil
}

// selectCounters resolves counters against what the agent collects: the
// families to serve, in the file's order, with the file's type, and the
// file's help texts. A field the agent does not collect is an error that
// says which it does.
func selectCounters(cs []Counter) ([]exported, map[string]string, error) {
	var out []exported
	help := map[string]string{}
	for _, c := range cs {
		if c.Type == typeLabel {
			if c.Field != driverVersionField {
				return nil, nil, fmt.Errorf("counters: field %s as a label: only %s is served as a label", c.Field, driverVersionField)
			}
			continue
		}
		i := slices.IndexFunc(exportable, func(e exported) bool { return e.name == c.Field })
		if i < 0 {
			return nil, nil, fmt.Errorf("counters: field %s is not collected by loupe-agent; it serves %s", c.Field, exportableNames())
		}
		e := exportable[i]
		e.typ = c.Type
		if c.Help != "" {
			help[c.Field] = c.Help
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, nil, fmt.Errorf("counters: the file names no field to serve")
	}
	return out, help, nil
}

func exportableNames() string {
	names := make([]string, len(exportable))
	for i, e := range exportable {
		names[i] = e.name
	}
	return strings.Join(names, ", ")
}

// loadCounters reads the counters file at path: the families to serve and
// the file's help texts. An empty path serves every family the agent
// collects.
func loadCounters(path string) ([]exported, map[string]string, error) {
	if path == "" {
		return exportable, nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("gpu collectors file: %w", err)
	}
	defer f.Close()
	cs, err := ParseCounters(f)
	if err != nil {
		return nil, nil, fmt.Errorf("gpu collectors file %s: %w", path, err)
	}
	out, help, err := selectCounters(cs)
	if err != nil {
		return nil, nil, fmt.Errorf("gpu collectors file %s: %w", path, err)
	}
	return out, help, nil
}
