package kineto

import (
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"
)

// Process is a Kineto-enabled process known from its polls.
type Process struct {
	// PID is the polling process; Ancestors are its parents, nearest first.
	PID       int       `json:"pid"`
	Ancestors []int     `json:"ancestors,omitempty"`
	JobID     int64     `json:"job_id"`
	Job       string    `json:"job,omitempty"` // Loupe's attribution, when known
	GPU       int       `json:"gpu"`           // -1 until a ctxt message says
	LastPoll  time.Time `json:"last_poll"`
	// pending configurations, handed out (and cleared) on the next poll.
	activities, events string
}

// Result is the outcome of an on-demand trace request, in dynolog's shape.
type Result struct {
	ProcessesMatched           []int `json:"processesMatched"`
	EventProfilersTriggered    []int `json:"eventProfilersTriggered"`
	ActivityProfilersTriggered []int `json:"activityProfilersTriggered"`
	EventProfilersBusy         int   `json:"eventProfilersBusy"`
	ActivityProfilersBusy      int   `json:"activityProfilersBusy"`
}

// registry tracks polling processes and their pending configurations.
type registry struct {
	mu    sync.Mutex
	procs map[int]*Process // by PID
	// jobOf attributes a pid to a Loupe job name; may be nil.
	jobOf func(pid int) string
	// gpuCount counts ctxt registrations per (job id, gpu), as dynolog answers.
	gpuCount map[[2]int64]map[int32]bool
}

func newRegistry(jobOf func(int) string) *registry {
	return &registry{procs: map[int]*Process{}, jobOf: jobOf, gpuCount: map[[2]int64]map[int32]bool{}}
}

// poll records a "req" from a process and returns the configuration waiting
// for it (of the requested types), clearing it.
func (r *registry) poll(req pollRequest, now time.Time) string {
	pid := int(req.PIDs[0])
	r.mu.Lock()
	p, ok := r.procs[pid]
	if !ok || p.JobID != req.JobID {
		p = &Process{PID: pid, JobID: req.JobID, GPU: -1}
		for _, a := range req.PIDs[1:] {
			p.Ancestors = append(p.Ancestors, int(a))
		}
		r.procs[pid] = p
		jobOf := r.jobOf
		r.mu.Unlock()
		job := ""
		if jobOf != nil {
			job = jobOf(pid) // reads /proc: outside the lock
		}
		r.mu.Lock()
		p.Job = job
	}
	p.LastPoll = now
	var cfg string
	if req.ConfigType&ConfigEvents != 0 && p.events != "" {
		cfg += p.events + "\n"
		p.events = ""
	}
	if req.ConfigType&ConfigActivities != 0 && p.activities != "" {
		cfg += p.activities + "\n"
		p.activities = ""
	}
	r.mu.Unlock()
	return cfg
}

// register records a "ctxt" message and returns how many processes of the
// job have registered for that GPU.
func (r *registry) register(c contextRequest, now time.Time) int32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.procs[int(c.PID)]; ok {
		p.GPU = int(c.GPU)
		p.LastPoll = now
	}
	key := [2]int64{c.JobID, int64(c.GPU)}
	if r.gpuCount[key] == nil {
		r.gpuCount[key] = map[int32]bool{}
	}
	r.gpuCount[key][c.PID] = true
	return int32(len(r.gpuCount[key]))
}

// gc drops processes that have not polled within keepAlive and returns them.
func (r *registry) gc(now time.Time, keepAlive time.Duration) []Process {
	r.mu.Lock()
	defer r.mu.Unlock()
	var dropped []Process
	for pid, p := range r.procs {
		if now.Sub(p.LastPoll) > keepAlive {
			dropped = append(dropped, *p)
			delete(r.procs, pid)
			for _, set := range r.gpuCount {
				delete(set, int32(pid))
			}
		}
	}
	return dropped
}

// matches reports whether p belongs to job and to the requested pids. An
// empty pid list, or the single pid 0, means every process of the job (as
// dynolog and older dyno CLIs send). job matches Kineto's numeric job id or
// Loupe's attributed job name; "" matches every job.
func (p *Process) matches(job string, pids []int) bool {
	if job != "" && job != strconv.FormatInt(p.JobID, 10) && job != p.Job {
		return false
	}
	if len(pids) == 0 || len(pids) == 1 && pids[0] == 0 {
		return true
	}
	return slices.Contains(pids, p.PID) || slices.ContainsFunc(p.Ancestors, func(a int) bool { return slices.Contains(pids, a) })
}

// setOnDemand installs config for up to limit matching processes, in pid
// order; a process with a configuration still pending counts as busy.
func (r *registry) setOnDemand(job string, pids []int, config string, configType, limit int) Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := Result{ProcessesMatched: []int{}, EventProfilersTriggered: []int{}, ActivityProfilersTriggered: []int{}}
	for _, pid := range r.sortedPIDs() {
		p := r.procs[pid]
		if !p.matches(job, pids) {
			continue
		}
		res.ProcessesMatched = append(res.ProcessesMatched, p.PID)
		if configType&ConfigEvents != 0 && len(res.EventProfilersTriggered) < limit {
			if p.events == "" {
				p.events = config
				res.EventProfilersTriggered = append(res.EventProfilersTriggered, p.PID)
			} else {
				res.EventProfilersBusy++
			}
		}
		if configType&ConfigActivities != 0 && len(res.ActivityProfilersTriggered) < limit {
			if p.activities == "" {
				p.activities = config
				res.ActivityProfilersTriggered = append(res.ActivityProfilersTriggered, p.PID)
			} else {
				res.ActivityProfilersBusy++
			}
		}
	}
	return res
}

func (r *registry) sortedPIDs() []int {
	pids := make([]int, 0, len(r.procs))
	for pid := range r.procs {
		pids = append(pids, pid)
	}
	sort.Ints(pids)
	return pids
}

// list returns a copy of every known process, by pid.
func (r *registry) list() []Process {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Process, 0, len(r.procs))
	for _, pid := range r.sortedPIDs() {
		p := *r.procs[pid]
		p.Ancestors = slices.Clone(p.Ancestors)
		out = append(out, p)
	}
	return out
}
