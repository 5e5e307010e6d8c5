package attribution

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
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
// (/proc/1/root); the start time from /proc/<pid>/stat and btime.
func TestImageAndStartTime(t *testing.T) {
	root := t.TempDir()
	host := filepath.Join(root, "1", "root")
	ids := map[string]string{"containerd": strings.Repeat("a", 64), "crio": strings.Repeat("b", 64), "docker": strings.Repeat("c", 64), "gone": strings.Repeat("d", 64)}
	write(t, filepath.Join(host, "run/containerd/io.containerd.runtime.v2.task/k8s.io", ids["containerd"], "config.json"),
		`{"ociVersion":"1.1.0","annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.image-name":"nvcr.io/nvidia/pytorch:24.05-py3"}}`)
	write(t, filepath.Join(host, "run/containers/storage/overlay-containers", ids["crio"], "userdata/config.json"),
		`{"annotations":{"io.kubernetes.cri-o.ImageName":"quay.io/team/trainer:v7"}}`)
	write(t, filepath.Join(host, "var/lib/docker/containers", ids["docker"], "config.v2.json"),
		`{"Image":"sha256:0123","Config":{"Image":"pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"}}`)
	write(t, filepath.Join(root, "stat"), "cpu  1 2 3\nbtime 1795600000\nprocesses 9\n")
	boot := time.Unix(1795600000, 0).UTC()
	for pid, id := range map[int]string{200: ids["containerd"], 201: ids["crio"], 202: ids["docker"], 203: ids["gone"]} {
		fakeProc(t, root, pid, "python3", nil, "0::/kubepods.slice/cri-containerd-"+id+".scope\n")
		// A comm with spaces and parentheses; start time 12345 ticks after boot.
		write(t, filepath.Join(root, strconv.Itoa(pid), "stat"),
			strconv.Itoa(pid)+" (pt_main (x) 1) S 1 2 3 0 -1 4194560 5 0 0 0 7 8 0 0 20 0 12 0 12345 1000 200 18446744073709551615\n")
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
		if want := boot.Add(123450 * time.Millisecond); !info.Started.Equal(want) {
			t.Errorf("pid %d: started %v, want %v", pid, info.Started, want)
		}
	}
	// Looked up once per container: a state file written later is not read.
	write(t, filepath.Join(host, "var/lib/docker/containers", ids["gone"], "config.v2.json"), `{"Config":{"Image":"late"}}`)
	if info, _ := r.Process(203); info.Image != "" {
		t.Errorf("image %q: the miss should be remembered", info.Image)
	}
	// A process outside any container, and one without a stat file.
	fakeProc(t, root, 204, "sshd", nil, "0::/system.slice/ssh.service\n")
	if info, _ := r.Process(204); info.Image != "" || !info.Started.IsZero() {
		t.Errorf("host process: image %q started %v", info.Image, info.Started)
	}
}

func FuzzStatStartTicks(f *testing.F) {
	f.Add([]byte("1 (systemd) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 42 1 2 3\n"))
	f.Add([]byte("7 (a) b)) R 1"))
	f.Add([]byte(")"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if n, ok := statStartTicks(data); ok && n < 0 {
			t.Errorf("negative start time %d", n)
		}
	})
}
