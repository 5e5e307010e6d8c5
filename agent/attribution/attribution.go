// Package attribution says who a GPU process belongs to: its job and rank
// (from its environment), its container (from its cgroup) and the
// container's image (from the runtime's state), and, on
// Kubernetes, its pod and namespace (from the kubelet pod-resources API,
// which maps GPU UUIDs to the containers they were allocated to).
//
// The pod-resources map is fetched on a timer by Run and cached; lookups
// never call the kubelet, so a metrics scrape costs nothing here
// (dcgm-exporter once spent up to 10 cores listing pods on every scrape).
package attribution

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Config configures a Resolver.
type Config struct {
	// ProcRoot is where /proc is mounted (a host /proc inside a container).
	ProcRoot string `yaml:"proc_root"`
	// PodResourcesSocket is the kubelet's pod-resources v1 socket.
	PodResourcesSocket string `yaml:"pod_resources_socket"`
	// JobEnvVars are the environment variables that name a job, tried in
	// order; the first one set wins.
	JobEnvVars []string `yaml:"job_env_vars"`
	// RefreshInterval is how often Run lists the pods' GPUs.
	RefreshInterval time.Duration `yaml:"refresh_interval"`
	// Timeout bounds one call to the kubelet.
	Timeout time.Duration `yaml:"timeout"`
	// ContainerStateDirs are the container runtimes' state folders on the
	// host, where a container's image is named (read through
	// ProcRoot/1/root, the host's root with hostPID).
	ContainerStateDirs []string `yaml:"container_state_dirs"`
}

// DefaultConfig returns the settings for a plain host or a DaemonSet with
// hostPID and the kubelet's pod-resources folder mounted.
func DefaultConfig() Config {
	return Config{
		ProcRoot:           "/proc",
		PodResourcesSocket: "/var/lib/kubelet/pod-resources/kubelet.sock",
		JobEnvVars:         []string{"SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"},
		RefreshInterval:    30 * time.Second,
		Timeout:            5 * time.Second,
		ContainerStateDirs: defaultContainerStateDirs,
	}
}

// Info is what is known about one process. Rank, LocalRank and WorldSize
// are -1 when unknown; strings are empty when unknown.
type Info struct {
	PID       int
	Comm      string
	Job       string
	Rank      int
	LocalRank int
	WorldSize int
	// GPUs are the GPU (or MIG) UUIDs the process may use, from
	// NVIDIA_VISIBLE_DEVICES.
	GPUs        []string
	Container   string
	Pod         string
	Namespace   string
	ContainerID string
	// PodUID comes from the cgroup path of a Kubernetes container.
	PodUID string
	// Started is when the process started (zero when unknown).
	Started time.Time
	// Image is the container's image, from its runtime's state.
	Image string
}

// Variables that carry ranks, in the order launchers set them: torchrun,
// Open MPI, MPICH/Intel MPI (PMI), Slurm.
var (
	rankVars      = []string{"RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"}
	localRankVars = []string{"LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}
	worldSizeVars = []string{"WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"}
)

// podRef is one container that holds a GPU.
type podRef struct{ pod, namespace, container string }

// Resolver answers attribution questions. It is safe for concurrent use.
type Resolver struct {
	cfg    Config
	log    *slog.Logger
	wanted map[string]bool

	mu      sync.RWMutex
	byGPU   map[string]podRef
	images  map[string]string // container ID -> image ("" when none is known)
	lastErr error
}

// New returns a Resolver. Zero fields of cfg take their defaults.
func New(cfg Config, logger *slog.Logger) *Resolver {
	def := DefaultConfig()
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = def.ProcRoot
	}
	if cfg.PodResourcesSocket == "" {
		cfg.PodResourcesSocket = def.PodResourcesSocket
	}
	if cfg.JobEnvVars == nil {
		cfg.JobEnvVars = def.JobEnvVars
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = def.RefreshInterval
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = def.Timeout
	}
	if cfg.ContainerStateDirs == nil {
		cfg.ContainerStateDirs = def.ContainerStateDirs
	}
	if logger == nil {
		logger = slog.Default()
	}
	r := &Resolver{cfg: cfg, log: logger.With("component", "attribution"), wanted: map[string]bool{"NVIDIA_VISIBLE_DEVICES": true},
		images: map[string]string{}}
	for _, list := range [][]string{cfg.JobEnvVars, rankVars, localRankVars, worldSizeVars} {
		for _, k := range list {
			r.wanted[k] = true
		}
	}
	return r
}

// Process reads /proc/<pid> and the cached pod map. It fails only when the
// process does not exist (or its comm cannot be read); an unreadable
// environment or cgroup just leaves those fields unknown.
func (r *Resolver) Process(pid int) (Info, error) {
	info := Info{PID: pid, Rank: -1, LocalRank: -1, WorldSize: -1}
	if pid <= 0 {
		return info, fmt.Errorf("attribution: pid %d is not a process id", pid)
	}
	dir := filepath.Join(r.cfg.ProcRoot, strconv.Itoa(pid))
	comm, err := os.ReadFile(filepath.Join(dir, "comm"))
	if err != nil {
		return info, fmt.Errorf("attribution: process %d: %w", pid, err)
	}
	info.Comm = strings.TrimSpace(string(comm))
	if env, err := os.ReadFile(filepath.Join(dir, "environ")); err == nil {
		vars := parseEnviron(env, r.wanted)
		info.Job = first(vars, r.cfg.JobEnvVars)
		info.Rank = intVar(vars, rankVars)
		info.LocalRank = intVar(vars, localRankVars)
		info.WorldSize = intVar(vars, worldSizeVars)
		info.GPUs = visibleGPUs(vars["NVIDIA_VISIBLE_DEVICES"])
	} else {
		r.log.Debug("cannot read a process environment; job and rank unknown", "pid", pid, "err", err)
	}
	if cg, err := os.ReadFile(filepath.Join(dir, "cgroup")); err == nil {
		info.ContainerID, info.PodUID = parseCgroup(cg)
	}
	info.Image = r.imageOf(info.ContainerID)
	for _, g := range info.GPUs {
		if p, ok := r.lookup(g); ok {
			info.Pod, info.Namespace, info.Container = p.pod, p.namespace, p.container
			break
		}
	}
	return info, nil
}

// ProcessOn is Process for a process known to run on the given GPUs (from
// NVML's process list): when its environment names no GPU the pod map
// knows, such as with the device plugin's volume-mount or CDI strategies,
// the pod that holds one of these GPUs is taken.
func (r *Resolver) ProcessOn(pid int, gpuUUIDs ...string) (Info, error) {
	info, err := r.Process(pid)
	if err != nil || info.Pod != "" {
		return info, err
	}
	for _, g := range gpuUUIDs {
		if p, ok := r.lookup(g); ok {
			info.Pod, info.Namespace, info.Container = p.pod, p.namespace, p.container
			break
		}
	}
	return info, nil
}

// GPU names the pod, namespace and container that were allocated the GPU
// with this UUID, from the cache; empty strings when none is known.
func (r *Resolver) GPU(uuid string) (pod, namespace, container string) {
	p, _ := r.lookup(uuid)
	return p.pod, p.namespace, p.container
}

func (r *Resolver) lookup(uuid string) (podRef, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	p, ok := r.byGPU[uuid]
	return p, ok
}

// Run refreshes the pod map now and every RefreshInterval until ctx is
// done. A host that is not a Kubernetes node is normal: that is logged once
// and the map stays empty.
func (r *Resolver) Run(ctx context.Context) error {
	t := time.NewTicker(r.cfg.RefreshInterval)
	defer t.Stop()
	for {
		err := r.Refresh(ctx)
		r.mu.Lock()
		prev := r.lastErr
		r.lastErr = err
		r.mu.Unlock()
		switch {
		case err != nil && (prev == nil || prev.Error() != err.Error()):
			level := slog.LevelWarn
			if errors.Is(err, os.ErrNotExist) {
				level = slog.LevelInfo
			}
			r.log.Log(ctx, level, "no pod attribution for GPUs", "err", err)
		case err == nil && prev != nil:
			r.log.Info("pod attribution for GPUs available again")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// parseEnviron returns the wanted variables of a NUL-separated
// /proc/<pid>/environ. A variable set twice keeps its last value, as
// getenv sees it.
func parseEnviron(data []byte, wanted map[string]bool) map[string]string {
	out := map[string]string{}
	for len(data) > 0 {
		var kv []byte
		if i := bytes.IndexByte(data, 0); i >= 0 {
			kv, data = data[:i], data[i+1:]
		} else {
			kv, data = data, nil
		}
		k, v, ok := bytes.Cut(kv, []byte{'='})
		if !ok || len(k) == 0 || !wanted[string(k)] {
			continue
		}
		out[string(k)] = string(v)
	}
	return out
}

func first(vars map[string]string, keys []string) string {
	for _, k := range keys {
		if v := strings.TrimSpace(vars[k]); v != "" {
			return v
		}
	}
	return ""
}

func intVar(vars map[string]string, keys []string) int {
	for _, k := range keys {
		if v, ok := vars[k]; ok {
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
				return n
			}
		}
	}
	return -1
}

// visibleGPUs keeps the UUIDs of NVIDIA_VISIBLE_DEVICES ("all", "none"
// and indices name no particular device).
func visibleGPUs(v string) []string {
	var out []string
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if strings.HasPrefix(f, "GPU-") || strings.HasPrefix(f, "MIG-") {
			out = append(out, f)
		}
	}
	return out
}

var (
	containerIDRe = regexp.MustCompile(`[0-9a-f]{64}`)
	podUIDRe      = regexp.MustCompile(`pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})`)
)

// parseCgroup finds the container ID (64 hex digits: docker, containerd,
// CRI-O, podman) and the Kubernetes pod UID in /proc/<pid>/cgroup, for
// cgroup v1 and v2, cgroupfs and systemd drivers alike.
func parseCgroup(data []byte) (containerID, podUID string) {
	for _, line := range strings.Split(string(data), "\n") {
		_, path, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		_, path, ok = strings.Cut(path, ":")
		if !ok {
			continue
		}
		if ids := containerIDRe.FindAllString(path, -1); len(ids) > 0 && containerID == "" {
			containerID = ids[len(ids)-1]
		}
		if m := podUIDRe.FindStringSubmatch(path); m != nil && podUID == "" {
			podUID = strings.ReplaceAll(m[1], "_", "-")
		}
	}
	return containerID, podUID
}
