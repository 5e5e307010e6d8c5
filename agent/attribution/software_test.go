package attribution

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, path, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The image comes from each runtime's state, read through the host's root
// (/proc/1/root).
func TestImage(t *testing.T) {
	root := t.TempDir()
	host := filepath.Join(root, "1", "root")
	ids := map[string]string{"containerd": strings.Repeat("a", 64), "crio": strings.Repeat("b", 64), "docker": strings.Repeat("c", 64), "gone": strings.Repeat("d", 64)}
	write(t, filepath.Join(host, "run/containerd/io.containerd.runtime.v2.task/k8s.io", ids["containerd"], "config.json"),
		`{"ociVersion":"1.1.0","annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.image-name":"nvcr.io/nvidia/pytorch:24.05-py3"}}`)
	write(t, filepath.Join(host, "run/containers/storage/overlay-containers", ids["crio"], "userdata/config.json"),
		`{"annotations":{"io.kubernetes.cri-o.ImageName":"quay.io/team/trainer:v7"}}`)
	write(t, filepath.Join(host, "var/lib/docker/containers", ids["docker"], "config.v2.json"),
		`{"Image":"sha256:0123","Config":{"Image":"pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"}}`)
	for pid, id := range map[int]string{200: ids["containerd"], 201: ids["crio"], 202: ids["docker"], 203: ids["gone"]} {
		fakeProc(t, root, pid, "python3", nil, "0::/kubepods.slice/cri-containerd-"+id+".scope\n")
	}
	r := New(Config{ProcRoot: root, PodResourcesSocket: filepath.Join(root, "missing.sock")}, nil)
	want := map[int]string{200: "nvcr.io/nvidia/pytorch:24.05-py3", 201: "quay.io/team/trainer:v7", 202: "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime", 203: ""}
	for pid, img := range want {
		info, err := r.Process(pid)
		if err != nil {
			t.Fatal(err)
		}
		if info.Image != img {
			t.Errorf("pid %d: image %q, want %q", pid, info.Image, img)
		}
	}
	// Looked up once per container: a state file written later is not read.
	write(t, filepath.Join(host, "var/lib/docker/containers", ids["gone"], "config.v2.json"), `{"Config":{"Image":"late"}}`)
	if info, _ := r.Process(203); info.Image != "" {
		t.Errorf("image %q: the miss should be remembered", info.Image)
	}
	// A process outside any container.
	fakeProc(t, root, 204, "sshd", nil, "0::/system.slice/ssh.service\n")
	if info, _ := r.Process(204); info.Image != "" {
		t.Errorf("host process: image %q", info.Image)
	}
}
