// Package triage turns a capture's findings and fault events into
// incidents: grouped by category, deduplicated across the hosts of the job,
// with a severity set by documented rules, an impact in GPU-hours, owners
// from an owners file, and a suggested fix with a documentation link. An
// optional Summarizer (a local LLM through Ollama) may add a summary, marked
// as generated; it never replaces the rule-based fields.
//
// Incidents come from two sources:
//
//   - findings of the analyzers, grouped by category (see categoryOf) and by
//     subject: the rank for stragglers, the host and GPU for hardware
//     faults, the hang's id for NCCL hangs (so that the capture of its
//     recovery, in a later capture, resolves the same incident: Resolved
//     is set), the analyzer for the rest. Reports (the temporal and kernel
//     breakdowns) are not incidents. A root-cause finding about a rank
//     joins that rank's straggler incident rather than making one of its
//     own: it names the incident (an input-bound, thermal or failing-GPU
//     straggler), its fix comes first, and it adds no impact, since it
//     restates the straggler's.
//   - fault events found in logs that no analyzer covers: NCCL watchdog
//     timeouts, other NCCL errors, CUDA errors, out-of-memory errors
//     (retried ones apart) and crashes, grouped per kind and error (crashes
//     per top stack frame), one incident however many hosts reported it.
//     An event's own host (from a journald or syslog prefix) is where it
//     was seen; else the bundle's. XID and ECC events become incidents
//     through the hardware-faults analyzer's findings; triage uses them to
//     tie an NCCL timeout or error to the XID before it: one on any host
//     of the job within the collective's timeout (plus a minute) before it
//     is named in the NCCL incident's title and summary, the hardware
//     incident becomes its Cause, and the hardware fix comes first.
//
// Severity rules, first match wins (the rule is recorded in Incident.Rule):
//
//	H1 nccl-hang finding                   critical  a communicator stalled: ranks missing from a collective
//	H2 nccl-hang finding, recovered        critical  the same incident, resolved: the job made progress again
//	F1 nccl_watchdog                       critical  a collective timed out: the job is hung or aborted
//	F6 nccl_error                          critical  NCCL failed (system, internal, remote error): the job aborts
//	F2 crash                               critical  a process of the job died
//	F3 cuda_error naming ECC/uncorrectable critical  a hardware error surfaced through CUDA
//	F7 oom the program retried after       warning   it went on (at a smaller batch, after freeing memory)
//	F4 oom seen 3 times or more, or fatal  critical  the job is likely crash-looping, or died of it
//	F5 cuda_error, oom                     warning
//	R1 a grouped finding is critical       critical
//	R2 window share >= CriticalShare       critical  (default 25 % of the window's GPU time)
//	R3 a grouped finding is a warning,     warning
//	   or window share >= WarningShare              (default 5 %)
//	R4 otherwise                           info
//
// Impact: the sum of the grouped findings' GPU-seconds. For faults, which
// stop the whole job, an estimate: WorldSize GPUs idle for the watchdog
// timeout (from the event, else 30 min) for F1, and for RestartCost
// (default 10 min: restart plus lost progress since the last checkpoint)
// for crashes, NCCL errors, OOMs and CUDA errors; none for a retried OOM.
package triage

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// Categories of incidents.
const (
	CategoryGPUEfficiency = "gpu-efficiency"
	CategoryStraggler     = "straggler"
	CategoryCommunication = "communication"
	CategoryThrottling    = "throttling"
	CategoryHardware      = "hardware"
	CategoryInputPipeline = "input-pipeline"
	CategoryNCCLTimeout   = "nccl-timeout"
	CategoryNCCLError     = "nccl-error"
	CategoryOOM           = "out-of-memory"
	CategoryCUDAError     = "cuda-error"
	CategoryCrash         = "crash"
	CategoryWarmup        = "warm-up"
	CategoryRebalance     = "rebalance"
	CategoryNCCLHang      = "nccl-hang"
	categoryReport        = "report"
)

// nameRootCause is the analyzers' correlation step (analyzers.RootCause),
// whose findings explain a straggler rank's other findings.
const nameRootCause = "root-cause"

// categoryOf maps an analyzer to the incident category of its findings; an
// analyzer not listed is its own category.
var categoryOf = map[string]string{
	"sm-underuse":               CategoryGPUEfficiency,
	"tensor-underuse":           CategoryGPUEfficiency,
	"memory-bound":              CategoryGPUEfficiency,
	"kineto-idle-time":          CategoryGPUEfficiency,
	"kineto-launch-overhead":    CategoryGPUEfficiency,
	"nccl-straggler":            CategoryStraggler,
	"step-imbalance":            CategoryStraggler,
	"kineto-comm-overlap":       CategoryCommunication,
	"throttle":                  CategoryThrottling,
	"hw-faults":                 CategoryHardware,
	"input-bound":               CategoryInputPipeline,
	"kineto-temporal-breakdown": categoryReport,
	"kineto-kernel-breakdown":   categoryReport,
	"warmup":                    CategoryWarmup,
	"rebalance":                 CategoryRebalance,
	"nccl-hang":                 CategoryNCCLHang,
}

// playbook is the generic fix and documentation of a category, used when
// the findings carry no recommendation of their own.
var playbook = map[string]struct{ fix, doc string }{
	CategoryGPUEfficiency: {"Open the job's kernel breakdown: fuse or batch small kernels, use bf16/fp16 or TF32 so matmuls run on tensor cores, and raise the batch size if memory allows.",
		"https://docs.nvidia.com/deeplearning/performance/dl-performance-getting-started/index.html"},
	CategoryStraggler: {"Compare the slow rank's host with its peers (throttling, data loading, noisy neighbours, a bad NIC); drain the host if its hardware is at fault.",
		"https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/troubleshooting.html"},
	CategoryCommunication: {"Overlap communication with computation: tune DDP's bucket_cap_mb or FSDP prefetching so collectives run while the next layer computes.",
		"https://pytorch.org/docs/stable/notes/ddp.html"},
	CategoryThrottling: {"Check cooling and power limits of the named GPUs (nvidia-smi -q -d PERFORMANCE,POWER,TEMPERATURE); fix airflow or the power cap.",
		"https://docs.nvidia.com/deploy/nvml-api/group__nvmlClocksEventReasons.html"},
	CategoryHardware: {"Drain the GPU and follow the XID's documented action (reset, diagnostics with dcgmi diag -r 3, RMA).",
		"https://docs.nvidia.com/deploy/xid-errors/index.html"},
	CategoryInputPipeline: {"Feed the GPU faster: raise DataLoader num_workers, set pin_memory=True and persistent_workers=True, and move decoding and augmentation to the GPU (e.g. DALI).",
		"https://pytorch.org/docs/stable/data.html#multi-process-data-loading"},
	CategoryNCCLTimeout: {"Find the rank that never reached the collective (look for a crash or straggler incident on another rank); keep TORCH_NCCL_ASYNC_ERROR_HANDLING on and the timeout realistic.",
		"https://pytorch.org/docs/stable/distributed.html#torch.distributed.init_process_group"},
	CategoryNCCLError: {"Rerun with NCCL_DEBUG=INFO (and NCCL_DEBUG_SUBSYS=INIT,NET) to see which peer or transport failed; a 'remote error' or 'system error' usually means another rank died or a NIC or link failed: look for a crash or hardware incident at the same time.",
		"https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/troubleshooting.html"},
	CategoryOOM: {"Reduce the micro-batch or sequence length, enable activation checkpointing, and set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True against fragmentation.",
		"https://pytorch.org/docs/stable/notes/cuda.html#optimizing-memory-usage-with-pytorch-cuda-alloc-conf"},
	CategoryCUDAError: {"Rerun with CUDA_LAUNCH_BLOCKING=1 to find the failing kernel, and under compute-sanitizer for memory errors.",
		"https://docs.nvidia.com/compute-sanitizer/ComputeSanitizer/index.html"},
	CategoryCrash: {"Read the stack trace in the incident; the owners file matched its frames to the team below.",
		"https://docs.python.org/3/library/faulthandler.html"},
	CategoryWarmup: {"Measure and capture only after warm-up: warm torch.compile, CUDA graphs and autotuning up before timing or serving traffic.",
		"https://pytorch.org/docs/stable/torch.compiler_troubleshooting.html"},
	CategoryNCCLHang: {"Find out why the missing rank never reached the collective: its stack is in the incident; the ranks that arrived wait inside the collective for it.",
		"https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/troubleshooting.html"},
	CategoryRebalance: {"Use Kafka's consumer rebalance protocol (group.protocol=consumer, KIP-848) and static membership (group.instance.id) for rolling restarts; for torch elastic restarts, fix the failing worker.",
		"https://kafka.apache.org/documentation/#consumer_rebalance_protocol"},
}

// Summarizer writes an optional summary of an incident.
type Summarizer interface {
	Summarize(ctx context.Context, inc *traces.Incident) (*traces.GeneratedSummary, error)
}

// Config tunes triage.
type Config struct {
	Owners        *Owners
	CriticalShare float64
	WarningShare  float64
	// WorldSize is the number of GPUs a whole-job fault idles.
	WorldSize int
	// RestartCost is what a crash costs per GPU beyond the crash itself.
	RestartCost time.Duration
	Summarizer  Summarizer
	Logger      *slog.Logger
	Now         func() time.Time
}

// DefaultConfig returns the documented thresholds.
func DefaultConfig() Config {
	return Config{CriticalShare: 0.25, WarningShare: 0.05, WorldSize: 1, RestartCost: 10 * time.Minute}
}

// HostEvent is a fault event and the host that reported it.
type HostEvent struct {
	Host  string
	Event traces.Event
}

// group accumulates the findings or events of one incident.
type group struct {
	subject  string
	inc      traces.Incident
	share    float64
	worst    string
	count    int
	fatal    bool // a fault the process died of
	firstNs  int64
	lookback time.Duration // how far before the first fault event its cause may lie
	frames   []string
	fixes    []string
	// hung and recovered count NCCL hang findings and their recoveries.
	hung, recovered int
}

// ncclErrorLookback is how far before an NCCL error its XID may lie: a
// collective's default timeout (torch.distributed's 30 min for NCCL in
// older releases, the longest in use).
const ncclErrorLookback = 30 * time.Minute

// linkXID ties an NCCL timeout or error to an XID (or lost GPU) seen on
// any host of the job within the fault's timeout (an error: 30 min) plus a
// minute before it: one hw-faults judged critical first, an XID before a
// lost GPU, then the latest.
func linkXID(g *group, xidEvents []HostEvent, groups map[string]*group, order []string) {
	from := g.firstNs - (g.lookback + time.Minute).Nanoseconds()
	var best *HostEvent
	var bestHW *group
	for i := range xidEvents {
		x := &xidEvents[i]
		if x.Event.TimeNs < from || x.Event.TimeNs > g.firstNs {
			continue
		}
		hw := hardwareGroup(x, groups, order)
		critical := hw != nil && hw.worst == traces.SeverityCritical
		bestCritical := bestHW != nil && bestHW.worst == traces.SeverityCritical
		isXID, bestXID := x.Event.Kind == traces.EventXID, best != nil && best.Event.Kind == traces.EventXID
		if best == nil || critical && !bestCritical ||
			critical == bestCritical && (isXID && !bestXID || isXID == bestXID && x.Event.TimeNs > best.Event.TimeNs) {
			best, bestHW = x, hw
		}
	}
	if best == nil {
		return
	}
	what := "a lost GPU"
	if best.Event.Kind == traces.EventXID {
		what = fmt.Sprintf("XID %d", best.Event.Code)
	}
	before := time.Duration(g.firstNs - best.Event.TimeNs).Round(time.Second)
	g.inc.Title += fmt.Sprintf(", after %s on %s", what, best.Host)
	g.inc.Summary = fmt.Sprintf("%s on %s (%s) came %v before it: the GPU failed, and the collectives waiting for its rank could not complete. %s",
		what, best.Host, firstLine(best.Event.Message), before, g.inc.Summary)
	g.fixes = append([]string{playbook[CategoryHardware].fix}, g.fixes...)
	if bestHW != nil {
		g.inc.Cause = bestHW.inc.ID
	}
}

// hardwareGroup is the hw-faults incident of an XID or lost-GPU event.
func hardwareGroup(x *HostEvent, groups map[string]*group, order []string) *group {
	prefix := "GPU lost"
	if x.Event.Kind == traces.EventXID {
		prefix = fmt.Sprintf("XID %d:", x.Event.Code)
	}
	for _, key := range order {
		g := groups[key]
		if g.inc.Category == CategoryHardware && g.inc.Scope.Host == x.Host && strings.HasPrefix(g.inc.Summary, prefix) {
			return g
		}
	}
	return nil
}

// Triage builds the incidents of one capture. scope names the capture.
func Triage(ctx context.Context, scope traces.Scope, findings []traces.Finding, events []HostEvent, cfg Config) []traces.Incident {
	def := DefaultConfig()
	if cfg.CriticalShare <= 0 {
		cfg.CriticalShare = def.CriticalShare
	}
	if cfg.WarningShare <= 0 {
		cfg.WarningShare = def.WarningShare
	}
	if cfg.WorldSize <= 0 {
		cfg.WorldSize = def.WorldSize
	}
	if cfg.RestartCost <= 0 {
		cfg.RestartCost = def.RestartCost
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	groups := map[string]*group{}
	var order []string
	get := func(category, subject, title string) *group {
		key := category + "\x00" + subject
		g, ok := groups[key]
		if !ok {
			g = &group{subject: subject, inc: traces.Incident{
				ID: incidentID(scope, category, subject), Category: category, Title: title,
				Scope: traces.Scope{Cluster: scope.Cluster, Job: scope.Job, Run: scope.Run, Capture: scope.Capture, GPU: -1, Rank: -1},
			}}
			groups[key] = g
			order = append(order, key)
		}
		return g
	}
	for i := range findings {
		f := &findings[i]
		category := cmp.Or(categoryOf[f.Analyzer], f.Analyzer)
		rootCause := f.Analyzer == nameRootCause && f.Scope.Rank >= 0
		if rootCause {
			category = CategoryStraggler
		}
		if category == categoryReport {
			continue
		}
		subject, title := f.Analyzer, f.Title
		switch {
		case category == CategoryStraggler && f.Scope.Rank >= 0:
			subject, title = "rank-"+strconv.Itoa(f.Scope.Rank), fmt.Sprintf("Rank %d is slower than its peers", f.Scope.Rank)
		case category == CategoryHardware:
			subject = f.Scope.Host + "/gpu-" + strconv.Itoa(f.Scope.GPU) + "/" + f.Title
		case category == CategoryNCCLHang:
			subject = cmp.Or(f.Subject, f.Title)
		}
		if f.Scope.HostWide {
			// Another tenant's GPU, or one nobody uses: the host's incident.
			subject = "host/" + f.Scope.Host + "/gpu-" + strconv.Itoa(f.Scope.GPU) + "/" + subject
			title = fmt.Sprintf("%s (host %s, GPU %d: no process of job %s uses it)", title, f.Scope.Host, f.Scope.GPU, scope.Job)
		}
		g := get(category, subject, title)
		if rootCause {
			g.inc.Findings = append(g.inc.Findings, f.ID)
			g.inc.Title = fmt.Sprintf("Rank %d: %s", f.Scope.Rank, f.Title)
			if f.Recommendation != "" && !slices.Contains(g.fixes, f.Recommendation) {
				g.fixes = append([]string{f.Recommendation}, g.fixes...)
			}
			continue
		}
		g.count++
		g.inc.Findings = append(g.inc.Findings, f.ID)
		g.inc.ImpactGPUHours += f.Impact.GPUSeconds / 3600
		g.share += f.Impact.WindowShare
		g.inc.Simulated = g.inc.Simulated || f.Simulated
		if traces.SeverityRank(f.Severity) > traces.SeverityRank(g.worst) {
			g.worst = f.Severity
			g.inc.Summary = f.Title
			g.inc.Evidence = f.Evidence
		}
		if f.Recommendation != "" && !slices.Contains(g.fixes, f.Recommendation) {
			g.fixes = append(g.fixes, f.Recommendation)
		}
		addPlace(&g.inc, f.Scope.Host, f.Scope.Rank)
		g.frames = append(g.frames, f.Frames...)
		if category == CategoryHardware || f.Scope.HostWide {
			g.inc.Scope.Host, g.inc.Scope.GPU = f.Scope.Host, f.Scope.GPU
		}
		g.inc.Scope.HostWide = f.Scope.HostWide
		if category == CategoryStraggler {
			g.inc.Scope.Rank = f.Scope.Rank
		}
		if category == CategoryNCCLHang {
			g.inc.Scope.Rank = f.Scope.Rank
			if at, ok := evidenceValue(f, "recovered_at"); ok {
				g.recovered++
				g.inc.Resolved = time.UnixMilli(int64(at * 1e3)).UTC()
				g.inc.Title, g.inc.Summary = f.Title, f.Title
			} else {
				g.hung++
				if g.recovered == 0 {
					g.inc.Title = f.Title
				}
			}
		}
	}
	var xidEvents []HostEvent
	for _, he := range events {
		e := he.Event
		host := cmp.Or(e.Attrs["host"], he.Host)
		if e.Kind == traces.EventXID || e.Kind == traces.EventGPULost {
			xidEvents = append(xidEvents, HostEvent{Host: host, Event: e})
			continue
		}
		category, subject, title := faultCategory(e)
		if category == "" {
			continue
		}
		g := get(category, subject, title)
		g.count++
		g.fatal = g.fatal || e.Attrs["fatal"] == "true"
		g.inc.Simulated = g.inc.Simulated || e.Attrs["simulated"] == "true"
		if g.inc.Summary == "" {
			g.inc.Summary = e.Message
		}
		if g.count == 1 { // one stall of the whole job, however many hosts report it
			g.inc.ImpactGPUHours += faultCost(e, cfg).Hours() * float64(cfg.WorldSize)
		}
		if g.firstNs == 0 || e.TimeNs < g.firstNs {
			g.firstNs, g.lookback = e.TimeNs, faultCost(e, cfg)
			if e.Kind == traces.EventNCCLError {
				g.lookback = ncclErrorLookback
			}
		}
		addPlace(&g.inc, host, e.Rank)
		if st := e.Attrs["stack"]; st != "" {
			g.frames = append(g.frames, strings.Split(st, "\n")...)
		}
	}
	for _, key := range order {
		if g := groups[key]; g.inc.Category == CategoryNCCLTimeout || g.inc.Category == CategoryNCCLError {
			linkXID(g, xidEvents, groups, order)
		}
	}

	var out []traces.Incident
	for _, key := range order {
		g := groups[key]
		inc := g.inc
		inc.Severity, inc.Rule = severity(g, &inc, cfg)
		if inc.Severity == traces.SeverityInfo && g.worst == traces.SeverityInfo && g.share < cfg.WarningShare && !isFault(inc.Category) {
			continue // an informational finding of negligible cost is not an incident
		}
		pb := playbook[inc.Category]
		inc.SuggestedFix = cmp.Or(strings.Join(g.fixes, " "), pb.fix)
		inc.DocURL = pb.doc
		job := scope.Job
		if inc.Scope.HostWide {
			job = "" // the job's owners do not own another job's GPU
		}
		inc.Owners, inc.Channels = cfg.Owners.Match(Subject{Job: job, Category: inc.Category, Hosts: inc.Hosts, Frames: g.frames})
		inc.Created = cfg.Now().UTC()
		if cfg.Summarizer != nil {
			if gen, err := cfg.Summarizer.Summarize(ctx, &inc); err != nil {
				if cfg.Logger != nil {
					cfg.Logger.Warn("LLM summary skipped; the incident keeps its rule-based fields", "incident", inc.ID, "err", err)
				}
			} else {
				inc.Generated = gen
			}
		}
		out = append(out, inc)
	}
	slices.SortStableFunc(out, func(a, b traces.Incident) int {
		return cmp.Or(traces.SeverityRank(b.Severity)-traces.SeverityRank(a.Severity), cmp.Compare(b.ImpactGPUHours, a.ImpactGPUHours))
	})
	return out
}

func isFault(category string) bool {
	switch category {
	case CategoryNCCLTimeout, CategoryNCCLError, CategoryCrash, CategoryOOM, CategoryCUDAError:
		return true
	}
	return false
}

// subjectOOMRetry groups the out-of-memory errors a program retried after.
const subjectOOMRetry = "oom-retry"

// FaultKinds are the event kinds Triage reads: the faults it makes
// incidents of, and the XIDs and lost GPUs it ties NCCL faults to.
var FaultKinds = []string{traces.EventNCCLWatchdog, traces.EventNCCLError, traces.EventCUDAError, traces.EventOOM,
	traces.EventCrash, traces.EventXID, traces.EventGPULost}

// severity applies the documented rules, returning the severity and rule.
func severity(g *group, inc *traces.Incident, cfg Config) (string, string) {
	msg := strings.ToLower(inc.Summary)
	switch inc.Category {
	case CategoryNCCLHang:
		if g.recovered > 0 {
			return traces.SeverityCritical, "H2"
		}
		return traces.SeverityCritical, "H1"
	case CategoryNCCLTimeout:
		return traces.SeverityCritical, "F1"
	case CategoryNCCLError:
		return traces.SeverityCritical, "F6"
	case CategoryCrash:
		return traces.SeverityCritical, "F2"
	case CategoryCUDAError:
		if strings.Contains(msg, "ecc") || strings.Contains(msg, "uncorrectable") {
			return traces.SeverityCritical, "F3"
		}
		return traces.SeverityWarning, "F5"
	case CategoryOOM:
		switch {
		case g.subject == subjectOOMRetry:
			return traces.SeverityWarning, "F7"
		case g.count >= 3 || g.fatal:
			return traces.SeverityCritical, "F4"
		}
		return traces.SeverityWarning, "F5"
	}
	switch {
	case g.worst == traces.SeverityCritical:
		return traces.SeverityCritical, "R1"
	case g.share >= cfg.CriticalShare:
		return traces.SeverityCritical, "R2"
	case g.worst == traces.SeverityWarning || g.share >= cfg.WarningShare:
		return traces.SeverityWarning, "R3"
	}
	return traces.SeverityInfo, "R4"
}

// faultCategory classifies a fault event; "" for events triage leaves to
// the analyzers.
func faultCategory(e traces.Event) (category, subject, title string) {
	switch e.Kind {
	case traces.EventNCCLWatchdog:
		return CategoryNCCLTimeout, "watchdog", "NCCL watchdog timeout: a collective never completed"
	case traces.EventNCCLError:
		msg := firstLine(cmp.Or(e.Attrs["error"], e.Message))
		return CategoryNCCLError, msg, "NCCL error: " + msg
	case traces.EventOOM:
		if e.Attrs["retry"] == "true" {
			return CategoryOOM, subjectOOMRetry, "CUDA out of memory, retried"
		}
		return CategoryOOM, "oom", "CUDA out of memory"
	case traces.EventCUDAError:
		msg := firstLine(cmp.Or(e.Attrs["error"], e.Message))
		return CategoryCUDAError, msg, "CUDA error: " + msg
	case traces.EventCrash:
		top := firstLine(e.Attrs["stack"])
		if top == "" {
			top = firstLine(e.Message)
		}
		return CategoryCrash, top, "Process crashed in " + top
	}
	return "", "", ""
}

// evidenceValue is a finding's evidence number by name.
func evidenceValue(f *traces.Finding, name string) (float64, bool) {
	for _, m := range f.Evidence {
		if m.Name == name {
			return m.Value, true
		}
	}
	return 0, false
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 120 {
		s = s[:120]
	}
	return s
}

// faultCost estimates what one fault costs each GPU of the job.
func faultCost(e traces.Event, cfg Config) time.Duration {
	if e.Kind == traces.EventOOM && e.Attrs["retry"] == "true" {
		return 0 // the program went on
	}
	if e.Kind == traces.EventNCCLWatchdog {
		if ms, err := strconv.ParseInt(e.Attrs["timeout_ms"], 10, 64); err == nil && ms > 0 {
			return time.Duration(ms) * time.Millisecond
		}
		return 30 * time.Minute
	}
	return cfg.RestartCost
}

func addPlace(inc *traces.Incident, host string, rank int) {
	if host != "" && !slices.Contains(inc.Hosts, host) {
		inc.Hosts = append(inc.Hosts, host)
		slices.Sort(inc.Hosts)
	}
	if rank >= 0 && !slices.Contains(inc.Ranks, rank) {
		inc.Ranks = append(inc.Ranks, rank)
		slices.Sort(inc.Ranks)
	}
}

// incidentID is stable for a job run, category and subject, so that the same
// incident seen in a later capture keeps its id and alerts deduplicate.
func incidentID(s traces.Scope, category, subject string) string {
	h := sha256.Sum256([]byte(s.Cluster + "\x00" + s.Job + "\x00" + s.Run + "\x00" + category + "\x00" + subject))
	return category + "-" + hex.EncodeToString(h[:8])
}
