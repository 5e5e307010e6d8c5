package attribution

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
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
