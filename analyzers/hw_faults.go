package analyzers

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/logparse"
)

// xidInfo is what NVIDIA documents about one XID code, and what to do.
type xidInfo struct {
	meaning  string
	severity string
	advice   string
}

// xids are the well-known XID codes (NVIDIA's XID catalogue). Codes not
// listed are reported as warnings that point to the catalogue.
var xids = map[int64]xidInfo{
	13: {"graphics engine exception", traces.SeverityWarning,
		"Usually the application's fault (out-of-bounds access, illegal instruction): rerun the job under compute-sanitizer. If different jobs hit it on this GPU, run dcgmi diag -r 3."},
	31: {"GPU memory page fault", traces.SeverityWarning,
		"An illegal address access by the application (MMU fault): look for out-of-range indexing in custom kernels. If several jobs fault on this GPU, suspect the hardware and run dcgmi diag -r 3."},
	43: {"GPU stopped processing", traces.SeverityWarning,
		"A user application faulted and its channel was reset; the GPU is usable. Look at the job's own CUDA error."},
	45: {"preemptive cleanup, due to previous errors", traces.SeverityWarning,
		"Follows an earlier error (often an ECC error or a fallen-off GPU): act on the earlier XID on this GPU."},
	48: {"double-bit ECC error", traces.SeverityCritical,
		"An uncorrectable memory error: drain the GPU and reset it; if double-bit errors recur, RMA the board."},
	63: {"ECC page retirement or row remapping recording event", traces.SeverityWarning,
		"A memory row was remapped; the remap takes effect after a GPU reset. Reset the GPU (or reboot) when it is idle."},
	64: {"ECC page retirement or row remapper recording failure", traces.SeverityCritical,
		"The remap could not be recorded (remap resources exhausted or failing): drain the host and RMA the GPU."},
	74: {"NVLink error", traces.SeverityCritical,
		"Check the NVLink links (nvidia-smi nvlink -e, -s); reset the GPU; if errors recur, reseat or replace the board or NVSwitch tray."},
	79: {"GPU has fallen off the bus", traces.SeverityCritical,
		"The GPU no longer answers on PCIe: drain the host; check PCIe slot, risers, power and thermals; reboot, and RMA if it recurs."},
	92: {"high single-bit ECC error rate", traces.SeverityWarning,
		"Correctable errors are frequent: schedule dcgmi diag -r 3 and watch for row remaps or double-bit errors."},
	94: {"contained ECC error", traces.SeverityWarning,
		"An uncorrectable error was contained to the application that hit it; reset the GPU when idle so the row is remapped."},
	95: {"uncontained ECC error", traces.SeverityCritical,
		"An uncorrectable error affected every application on the GPU: drain the GPU and reset it; RMA if it recurs."},
	119: {"GSP RPC timeout", traces.SeverityCritical,
		"The GPU System Processor stopped responding: reset the GPU, and update the driver if it recurs."},
}

// gpuByPCI is the index of host h's GPU at a PCI address, -1 when the
// manifest lists none there.
func gpuByPCI(h *Host, addr string) int {
	key := logparse.PCIKey(addr)
	for _, g := range h.Manifest.GPUs {
		if key != "" && logparse.PCIKey(g.PCIBusID) == key {
			return g.Index
		}
	}
	return -1
}

// HWFaults reports XID errors, ECC errors and remapped rows.
var HWFaults = &Analyzer{
	Name:    "hw-faults",
	Version: "2",
	Doc: `hardware faults: XID errors, ECC errors, remapped rows, lost GPUs

Reads events.jsonl (kinds xid, ecc, gpu_lost: from NVML, or from the
kernel's NVRM lines in a journal, whose PCI address is mapped to the
manifest's GPU) and the ECC and row-remapping
counters of gpu_samples.parquet (a counter that grows inside the window is a
new error). Well-known XIDs are classified after NVIDIA's XID catalogue: 13,
31, 43, 45, 63, 92, 94 are warnings (mostly application faults or contained
errors); 48, 64, 74, 79, 95, 119 are critical (the GPU needs a reset or
replacement). A new double-bit ECC error or a lost GPU is critical; new
remapped rows and single-bit errors are warnings. One finding per GPU and
fault.

Impact: for critical faults, the rest of the window after the first
occurrence on that GPU (the GPU is presumed lost for it); none otherwise.`,
	Requires: []string{traces.PartEvents, traces.PartGPUSamples},
	Run:      runHWFaults,
}

// fault is one kind of fault on one GPU.
type fault struct {
	host      *Host
	gpu, rank int
	title     string
	severity  string
	advice    string
	count     float64
	firstNs   int64
	extra     []traces.Metric
	countName string // the evidence name of count
}

func runHWFaults(pass *Pass) error {
	faults := map[string]*fault{}
	add := func(h *Host, gpu, rank int, id, title, sev, advice, unit string, n float64, t int64) *fault {
		key := fmt.Sprintf("%p/%d/%s", h, gpu, id)
		f := faults[key]
		if f == nil {
			if rank < 0 && gpu >= 0 {
				rank = h.GPURank(gpu)
			}
			f = &fault{host: h, gpu: gpu, rank: rank, title: title, severity: sev, advice: advice, firstNs: t, countName: unit}
			faults[key] = f
		}
		f.count += n
		f.firstNs = min(f.firstNs, t)
		return f
	}
	err := EachEvent(pass, func(h *Host, e *traces.Event) error {
		// Kernel lines name the GPU by its PCI address: map it to the
		// manifest's device, or keep the address where none matches.
		where := ""
		if pci := e.Attrs[logparse.AttrPCI]; pci != "" && e.GPU < 0 {
			if e.GPU = gpuByPCI(h, pci); e.GPU < 0 {
				where = " (GPU at PCI " + pci + ")"
			}
		}
		switch e.Kind {
		case traces.EventXID:
			x, ok := xids[e.Code]
			if !ok {
				x = xidInfo{"not in Loupe's table", traces.SeverityWarning,
					"Look the code up in NVIDIA's XID catalogue (docs.nvidia.com/deploy/xid-errors) and the kernel log (dmesg) of the host."}
			}
			add(h, e.GPU, e.Rank, fmt.Sprint("xid-", e.Code, where), fmt.Sprintf("XID %d: %s%s", e.Code, x.meaning, where), x.severity, x.advice, "events", 1, e.TimeNs)
		case traces.EventECC:
			sev, what := traces.SeverityWarning, "corrected"
			if t := strings.ToLower(e.Attrs["type"]); t == "dbe" || t == "uncorrectable" || t == "uncorrected" {
				sev, what = traces.SeverityCritical, "uncorrectable"
			}
			add(h, e.GPU, e.Rank, "ecc-event-"+what, "ECC error reported ("+what+")", sev,
				"Check nvidia-smi -q -d ECC,ROW_REMAPPER; reset the GPU when idle if rows are pending remap; RMA on repeated uncorrectable errors.",
				"events", 1, e.TimeNs)
		case traces.EventGPULost:
			add(h, e.GPU, e.Rank, "gpu-lost"+where, "GPU lost"+where, traces.SeverityCritical,
				"The driver lost the GPU: drain the host, check dmesg for the XID that preceded it, reboot, and RMA if it recurs.",
				"events", 1, e.TimeNs)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := eccCounters(pass, add); err != nil {
		return err
	}
	list := make([]*fault, 0, len(faults))
	for _, f := range faults {
		list = append(list, f)
	}
	slices.SortFunc(list, func(a, b *fault) int {
		return cmp.Or(cmp.Compare(a.host.Manifest.Host, b.host.Manifest.Host), cmp.Compare(a.gpu, b.gpu), cmp.Compare(a.title, b.title))
	})
	for _, f := range list {
		var lost float64
		if f.severity == traces.SeverityCritical {
			lost = share(float64(f.host.Manifest.End.UnixNano()-f.firstNs)/1e9, f.host.Seconds()) * f.host.Seconds()
		}
		ev := append([]traces.Metric{
			metric(f.countName, f.count, unitCount),
			metric("first_seen_offset", float64(f.firstNs-f.host.Manifest.Start.UnixNano())/1e9, unitSeconds),
		}, f.extra...)
		(&finding{Title: f.title, Recommendation: f.advice, Targets: []target{{
			Host: f.host, GPU: f.gpu, Rank: f.rank, Severity: f.severity, Lost: lost, Evidence: ev,
		}}}).report(pass)
	}
	return nil
}

// eccCounters reports ECC and row-remapping counters that grew in the window.
func eccCounters(pass *Pass, add func(h *Host, gpu, rank int, id, title, sev, advice, unit string, n float64, t int64) *fault) error {
	type counters struct {
		first, last traces.GPUSample
		grewAt      [3]int64 // first sample time each counter exceeded its first value
	}
	gpus := map[gpuKey]*counters{}
	err := EachGPUSample(pass, func(h *Host, s *traces.GPUSample) error {
		k := gpuKey{h, s.GPU}
		c := gpus[k]
		if c == nil {
			gpus[k] = &counters{first: *s, last: *s}
			return nil
		}
		if s.TimeNs < c.first.TimeNs {
			c.first = *s
		}
		if s.TimeNs >= c.last.TimeNs {
			c.last = *s
		}
		for i, v := range [3]int64{s.ECCDoubleBit, s.RemappedRows, s.ECCSingleBit} {
			first := [3]int64{c.first.ECCDoubleBit, c.first.RemappedRows, c.first.ECCSingleBit}[i]
			if v > first && (c.grewAt[i] == 0 || s.TimeNs < c.grewAt[i]) {
				c.grewAt[i] = s.TimeNs
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for k, c := range gpus {
		kinds := []struct {
			id, title, sev, advice string
			first, last            int64
		}{
			{"ecc-dbe", "Double-bit (uncorrectable) ECC errors", traces.SeverityCritical,
				"Uncorrectable memory errors: drain the GPU, reset it so the rows are remapped, and RMA it if they recur.",
				c.first.ECCDoubleBit, c.last.ECCDoubleBit},
			{"remapped-rows", "Memory rows remapped", traces.SeverityWarning,
				"Rows were remapped after memory errors; a remap is applied at the next GPU reset. Reset the GPU when idle and check nvidia-smi -q -d ROW_REMAPPER for pending or failed remaps.",
				c.first.RemappedRows, c.last.RemappedRows},
			{"ecc-sbe", "Single-bit (corrected) ECC errors", traces.SeverityWarning,
				"Corrected errors cost little each, but a rising rate precedes uncorrectable ones: run dcgmi diag -r 3 and watch for remaps.",
				c.first.ECCSingleBit, c.last.ECCSingleBit},
		}
		for i, kd := range kinds {
			if kd.last <= kd.first {
				continue
			}
			f := add(k.host, int(k.gpu), -1, kd.id, kd.title, kd.sev, kd.advice, "new_"+strings.ReplaceAll(kd.id, "-", "_"), float64(kd.last-kd.first), c.grewAt[i])
			f.extra = []traces.Metric{metric("counter_start", float64(kd.first), unitCount), metric("counter_end", float64(kd.last), unitCount)}
		}
	}
	return nil
}
