package attribution

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Container state as the runtimes keep it on the host, one folder per
// container ID (paths relative to the host's root):
//
//	containerd  /run/containerd/io.containerd.runtime.v2.task/<namespace>/<id>/config.json
//	            (the OCI spec; CRI sets the annotation io.kubernetes.cri.image-name)
//	CRI-O       /run/containers/storage/overlay-containers/<id>/userdata/config.json
//	            (annotation io.kubernetes.cri-o.ImageName)
//	Docker      /var/lib/docker/containers/<id>/config.v2.json (Config.Image)
var defaultContainerStateDirs = []string{
	"/run/containerd/io.containerd.runtime.v2.task",
	"/run/containers/storage/overlay-containers",
	"/var/lib/docker/containers",
}

// stateFiles are where a container's state file may lie under a state
// folder, for a container ID.
func stateFiles(dir, id string) []string {
	files := []string{
		filepath.Join(dir, id, "config.v2.json"),
		filepath.Join(dir, id, "userdata", "config.json"),
		filepath.Join(dir, id, "config.json"),
	}
	namespaces, _ := filepath.Glob(filepath.Join(dir, "*", id, "config.json"))
	return append(files, namespaces...)
}

// maxStateFile bounds a container state file read.
const maxStateFile = 4 << 20

// maxImageCache bounds the container IDs whose image is remembered.
const maxImageCache = 4096

// imageOf names the image of the container with this ID from its runtime's
// state, read through the host's root (ProcRoot/1/root: the host's when the
// agent runs on the host or with hostPID); "" when no runtime says.
func (r *Resolver) imageOf(containerID string) string {
	if containerID == "" {
		return ""
	}
	r.mu.RLock()
	img, ok := r.images[containerID]
	r.mu.RUnlock()
	if ok {
		return img
	}
	root := filepath.Join(r.cfg.ProcRoot, "1", "root")
	for _, dir := range r.cfg.ContainerStateDirs {
		for _, f := range stateFiles(filepath.Join(root, dir), containerID) {
			if img = readImage(f); img != "" {
				break
			}
		}
		if img != "" {
			break
		}
	}
	r.mu.Lock()
	if len(r.images) >= maxImageCache {
		clear(r.images)
	}
	r.images[containerID] = img
	r.mu.Unlock()
	return img
}

// readImage reads the image name out of one state file, "" if it has none.
func readImage(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxStateFile))
	if err != nil {
		return ""
	}
	var st struct {
		Annotations map[string]string `json:"annotations"`
		Config      struct {
			Image string `json:"Image"`
		} `json:"Config"`
	}
	if json.Unmarshal(data, &st) != nil {
		return ""
	}
	for _, v := range []string{st.Annotations["io.kubernetes.cri.image-name"], st.Annotations["io.kubernetes.cri-o.ImageName"], st.Config.Image} {
		if v = strings.TrimSpace(v); v != "" {
			return v
		}
	}
	return ""
}

// userHZ is the unit of /proc/<pid>/stat's start time: USER_HZ, 100 on
// every Linux architecture the agent runs on.
const userHZ = 100

// started is when process pid started: its start time in clock ticks after
// boot (field 22 of /proc/<pid>/stat) plus the boot time (btime of
// /proc/stat); zero when either cannot be read.
func (r *Resolver) started(pid int) time.Time {
	boot := r.bootTime()
	data, err := os.ReadFile(filepath.Join(r.cfg.ProcRoot, strconv.Itoa(pid), "stat"))
	if err != nil || boot.IsZero() {
		return time.Time{}
	}
	ticks, ok := statStartTicks(data)
	if !ok {
		return time.Time{}
	}
	return boot.Add(time.Duration(ticks) * time.Second / userHZ)
}

// statStartTicks parses field 22 (starttime) of a /proc/<pid>/stat line.
// The comm field (2) is in parentheses and may hold spaces and
// parentheses, so fields are counted after the last ')'.
func statStartTicks(stat []byte) (int64, bool) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	fields := strings.Fields(string(stat[i+1:]))
	const startField = 22 - 3 // fields after comm start at field 3
	if len(fields) <= startField {
		return 0, false
	}
	n, err := strconv.ParseInt(fields[startField], 10, 64)
	return n, err == nil && n >= 0
}

// bootTime reads btime from /proc/stat once.
func (r *Resolver) bootTime() time.Time {
	r.bootOnce.Do(func() {
		data, err := os.ReadFile(filepath.Join(r.cfg.ProcRoot, "stat"))
		if err != nil {
			return
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "btime "); ok {
				if s, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
					r.boot = time.Unix(s, 0).UTC()
				}
			}
		}
	})
	return r.boot
}
