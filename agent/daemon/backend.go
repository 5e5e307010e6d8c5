package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/loupe-dev/loupe/agent/api"
	"github.com/loupe-dev/loupe/agent/attribution"
	"github.com/loupe-dev/loupe/agent/capture"
	"github.com/loupe-dev/loupe/agent/steps"
	"github.com/loupe-dev/loupe/agent/trigger"
	"github.com/loupe-dev/loupe/traces"
)

// backend is the daemon as the control API sees it.
type backend struct{ d *Daemon }

func (b backend) Mark(_ context.Context, r api.StepRequest) error {
	err := b.d.tracker.Mark(steps.Marker{Job: r.Job, Run: r.Run, Rank: r.Rank, PID: r.PID, Iteration: r.Iteration, Time: r.Time})
	if errors.Is(err, steps.ErrTooManyRanks) {
		return api.Errorf(http.StatusTooManyRequests, "%v", err)
	}
	return err
}

func (b backend) Steps(job string) []steps.Stats { return b.d.tracker.Stats(job) }

func (b backend) Captures() []capture.Status { return b.d.capturer.List() }

func (b backend) CaptureStatus(id string) (capture.Status, bool) { return b.d.capturer.Status(id) }

func (b backend) PauseProfiling(pause bool) error {
	if b.d.gpu == nil {
		return api.Errorf(http.StatusConflict, "no GPU collector: %s", b.d.collector(collGPU).Reason)
	}
	if err := b.d.gpu.PauseProfiling(pause); err != nil {
		return api.Errorf(http.StatusConflict, "%v", err)
	}
	return nil
}

func (b backend) Status() api.StatusReply {
	d := b.d
	d.mu.Lock()
	colls := slices.Clone(d.collectors)
	d.mu.Unlock()
	st := api.StatusReply{
		Version: Version, Host: d.cfg.Host, Cluster: d.cfg.Cluster, Started: d.started,
		Collectors: colls, Jobs: d.tracker.Stats(""), Captures: d.capturer.List(), GPUs: []traces.GPUInfo{},
	}
	if st.Jobs == nil {
		st.Jobs = []steps.Stats{}
	}
	if d.gpu != nil {
		st.GPUs = append(st.GPUs, d.gpu.Devices()...)
		st.Simulated = d.gpu.Simulated()
	}
	st.Processes = d.processes(d.candidates(""), func(attribution.Info) bool { return true })
	return st
}

// Capture matches the request's processes and submits the capture.
func (b backend) Capture(_ context.Context, req api.CaptureRequest) (api.CaptureReply, error) {
	d := b.d
	var procs []traces.Process
	var notes []string
	if len(req.PIDs) > 0 {
		var missing []int
		for _, pid := range req.PIDs {
			info, err := d.attribute(pid)
			if err != nil {
				missing = append(missing, pid)
				continue
			}
			procs = append(procs, d.process(info))
		}
		if len(procs) == 0 {
			return api.CaptureReply{}, api.Errorf(http.StatusNotFound, "no process matched: none of pids %v runs on this host", req.PIDs)
		}
		if len(missing) > 0 {
			notes = append(notes, fmt.Sprintf("pids %v are not running and were left out", missing))
		}
	}
	job := req.Job
	if job != "" {
		for _, p := range d.jobProcesses(job) {
			if !slices.ContainsFunc(procs, func(q traces.Process) bool { return q.PID == p.PID }) {
				procs = append(procs, p)
			}
		}
		if _, known := d.tracker.Iteration(job); len(procs) == 0 && !known {
			return api.CaptureReply{}, api.Errorf(http.StatusNotFound,
				"no process matched job %q on this host (jobs seen here: %s); check the name with `loupe-agent status`, or pass --pids",
				job, d.knownJobs())
		}
	}
	if job == "" && len(req.PIDs) == 0 {
		procs = d.processes(d.candidates(""), func(attribution.Info) bool { return true })
		notes = append(notes, "host-wide capture: no job or pids given")
	}
	if job == "" {
		job = commonJob(procs, d)
	}
	run := d.runOfProcesses(procs)
	if _, r := d.tracker.Ranks(job); r != "" {
		run = r
	}
	r := capture.Request{ID: req.ID, Job: job, Run: run, Processes: procs, WorldSize: worldSize(procs, d)}
	reason := "requested over the local API"
	if req.Iterations > 0 {
		it, ok := d.tracker.Iteration(job)
		if !ok {
			return api.CaptureReply{}, api.Errorf(http.StatusConflict,
				"job %q has reported no iterations yet (post markers to /v1/steps, enable Kineto, or wait for NCCL periodicity); use --duration instead", job)
		}
		r.StartIteration = trigger.StartIteration(it, d.trigger.Config().Roundup)
		r.Iterations = req.Iterations
		if r.ID == "" {
			// The same on every host asked within one round-up block.
			r.ID = "od-" + trigger.CaptureID(r.StartIteration, r.Iterations)
		}
		reason = fmt.Sprintf("%s: %d iterations from iteration %d (job at %d)", reason, r.Iterations, r.StartIteration, it)
	} else {
		r.Duration = req.Duration
		if r.Duration == 0 {
			r.Duration = d.cfg.Capture.DefaultDuration
		}
		reason = fmt.Sprintf("%s: %v", reason, r.Duration)
	}
	r.Trigger = traces.Trigger{Kind: traces.TriggerOnDemand, Reason: reason}
	st, err := d.capturer.Submit(r)
	if err != nil {
		return api.CaptureReply{}, err
	}
	msg := fmt.Sprintf("capture %s of job %s (run %s): %s", st.ID, job, run, describe(procs))
	if len(procs) == 0 {
		msg = fmt.Sprintf("capture %s of job %s (run %s): no process matched; only host-wide GPU samples and the job's steps are captured", st.ID, job, run)
	}
	if len(notes) > 0 {
		msg += "; " + strings.Join(notes, "; ")
	}
	return api.CaptureReply{Status: st, Message: msg}, nil
}

func describe(procs []traces.Process) string {
	parts := make([]string, len(procs))
	for i, p := range procs {
		parts[i] = fmt.Sprintf("pid %d", p.PID)
		if p.Rank >= 0 {
			parts[i] += fmt.Sprintf(" rank %d", p.Rank)
		}
		if p.Comm != "" {
			parts[i] += " (" + p.Comm + ")"
		}
	}
	return fmt.Sprintf("%d processes: %s", len(procs), strings.Join(parts, ", "))
}

// candidates are the pids the agent knows as interesting: GPU processes,
// processes that map libnccl or poll for Kineto, and step-marker senders of
// job (of every job when job is empty).
func (d *Daemon) candidates(job string) []int {
	var pids []int
	add := func(pid int) {
		if pid > 0 && !slices.Contains(pids, pid) {
			pids = append(pids, pid)
		}
	}
	if d.gpu != nil {
		for _, p := range d.gpu.Processes() {
			add(p.PID)
		}
	}
	if d.nccl != nil {
		for _, p := range d.nccl.Processes() {
			add(p.PID)
		}
	}
	if d.kineto != nil {
		for _, p := range d.kineto.Processes() {
			add(p.PID)
		}
	}
	for _, st := range d.tracker.Stats(job) {
		add(st.PID)
	}
	slices.Sort(pids)
	return pids
}

// jobProcesses are the live processes of job on this host: those whose
// environment names the job, and those that posted its step markers.
func (d *Daemon) jobProcesses(job string) []traces.Process {
	markers, _ := d.tracker.Ranks(job)
	return d.processes(d.candidates(""), func(info attribution.Info) bool {
		if jobName(info) == job {
			return true
		}
		for _, pid := range markers {
			if pid == info.PID {
				return true
			}
		}
		return false
	})
}

// processes describes the live pids that keep says yes to.
func (d *Daemon) processes(pids []int, keep func(attribution.Info) bool) []traces.Process {
	var out []traces.Process
	for _, pid := range pids {
		info, err := d.attribute(pid)
		if err != nil || !keep(info) {
			continue
		}
		out = append(out, d.process(info))
	}
	return out
}

// process is the manifest's view of one process; a rank the environment
// does not give comes from the step markers.
func (d *Daemon) process(info attribution.Info) traces.Process {
	p := traces.Process{PID: info.PID, Comm: info.Comm, Rank: info.Rank, LocalRank: info.LocalRank, GPU: -1,
		Container: info.Container, Pod: info.Pod, Namespace: info.Namespace, Image: info.Image, Started: info.Started}
	if d.nccl != nil {
		for _, n := range d.nccl.Processes() {
			if n.PID == info.PID {
				p.NCCLVersion = n.Version
				break
			}
		}
	}
	if d.gpu != nil {
		for _, g := range d.gpu.Processes() {
			if g.PID != info.PID || p.Uses(g.GPU) {
				continue
			}
			if p.GPU < 0 {
				p.GPU = g.GPU
			} else {
				// One process on several GPUs owns all of them.
				if len(p.GPUs) == 0 {
					p.GPUs = []int{p.GPU}
				}
				p.GPUs = append(p.GPUs, g.GPU)
			}
		}
	}
	if p.Rank < 0 {
		for _, st := range d.tracker.Stats("") {
			if st.PID == info.PID {
				p.Rank = st.Rank
				break
			}
		}
	}
	return p
}

// attribute describes a live process; for a GPU process, the GPUs NVML saw
// it on also name its pod when its environment does not.
func (d *Daemon) attribute(pid int) (attribution.Info, error) {
	var uuids []string
	if d.gpu != nil {
		for _, g := range d.gpu.Processes() {
			if g.PID == pid {
				uuids = append(uuids, g.UUID)
			}
		}
	}
	return d.attr.ProcessOn(pid, uuids...)
}

func (d *Daemon) processInfo(pid int) attribution.Info {
	info, err := d.attribute(pid)
	if err != nil {
		return attribution.Info{PID: pid, Rank: -1, LocalRank: -1, WorldSize: -1}
	}
	return info
}

// knownJobs lists the jobs seen on this host, for error messages.
func (d *Daemon) knownJobs() string {
	var jobs []string
	for _, st := range d.tracker.Stats("") {
		if !slices.Contains(jobs, st.Job) {
			jobs = append(jobs, st.Job)
		}
	}
	for _, p := range d.processes(d.candidates(""), func(attribution.Info) bool { return true }) {
		if j := jobName(d.processInfo(p.PID)); j != "" && !slices.Contains(jobs, j) {
			jobs = append(jobs, j)
		}
	}
	if len(jobs) == 0 {
		return "none"
	}
	return strings.Join(jobs, ", ")
}

// jobOf names the job of a process: from its environment, or from the
// step markers it posts.
func (d *Daemon) jobOf(pid int) string {
	if j := jobName(d.processInfo(pid)); j != "" {
		return j
	}
	if d.tracker != nil {
		for _, st := range d.tracker.Stats("") {
			if st.PID == pid {
				return st.Job
			}
		}
	}
	return ""
}

// jobName is the key-safe name of a process's job ("" when it has none).
func jobName(info attribution.Info) string { return keyComponent(info.Job, "") }

// commonJob is the job every process belongs to, or the default job.
func commonJob(procs []traces.Process, d *Daemon) string {
	job := ""
	for _, p := range procs {
		j := jobName(d.processInfo(p.PID))
		if j == "" || (job != "" && j != job) {
			return d.cfg.DefaultJob
		}
		job = j
	}
	if job == "" {
		return d.cfg.DefaultJob
	}
	return job
}

// worldSize is the largest WORLD_SIZE the processes carry (0: unknown).
func worldSize(procs []traces.Process, d *Daemon) int {
	w := 0
	for _, p := range procs {
		w = max(w, d.processInfo(p.PID).WorldSize)
	}
	return w
}

// runOfProcesses is the TORCHELASTIC_RUN_ID the processes share, or the
// default run.
func (d *Daemon) runOfProcesses(procs []traces.Process) string {
	for _, p := range procs {
		if r := d.runOf(p.PID, ""); r != "" {
			return r
		}
	}
	return d.cfg.DefaultRun
}

// runOf reads TORCHELASTIC_RUN_ID from the process's environment.
func (d *Daemon) runOf(pid int, fallback string) string {
	root := d.cfg.Attribution.ProcRoot
	if root == "" {
		root = "/proc"
	}
	data, err := os.ReadFile(filepath.Join(root, strconv.Itoa(pid), "environ"))
	if err != nil {
		return fallback
	}
	for kv := range bytes.SplitSeq(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("TORCHELASTIC_RUN_ID=")); ok {
			return keyComponent(string(v), fallback)
		}
	}
	return fallback
}

// keyComponent makes s usable in an object key: characters outside
// [A-Za-z0-9._-] become '_', a leading one that is not a letter or digit
// gets an 'x' before it, and it is cut to 128 bytes. Empty gives fallback.
func keyComponent(s, fallback string) string {
	if s == "" {
		return fallback
	}
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '_'
		}
	}
	if c := b[0]; c == '.' || c == '_' || c == '-' {
		b = append([]byte{'x'}, b...)
	}
	if len(b) > 128 {
		b = b[:128]
	}
	return string(b)
}
