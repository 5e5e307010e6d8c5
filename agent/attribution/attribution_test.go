package attribution

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// fakeProc writes a /proc/<pid> with comm, environ and cgroup.
func fakeProc(t *testing.T, root string, pid int, comm string, env []string, cgroup string) {
	t.Helper()
	dir := filepath.Join(root, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"comm":    comm + "\n",
		"environ": strings.Join(env, "\x00") + "\x00",
		"cgroup":  cgroup,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

const (
	ctrID  = "4f2a0d1cbbb64e4a9c8f1f3d0d6c7b1e2a3b4c5d6e7f8091a2b3c4d5e6f70812"
	podUID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
)

func TestProcessFromFakeProc(t *testing.T) {
	root := t.TempDir()
	fakeProc(t, root, 100, "python3", []string{
		"PATH=/usr/bin", "SLURM_JOB_ID=77", "TORCHELASTIC_RUN_ID=run-9",
		"RANK=5", "LOCAL_RANK=1", "WORLD_SIZE=16",
		"NVIDIA_VISIBLE_DEVICES=GPU-aaaa,GPU-bbbb",
	}, "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+strings.ReplaceAll(podUID, "-", "_")+
		".slice/cri-containerd-"+ctrID+".scope\n")
	fakeProc(t, root, 101, "torchrun", []string{"TORCHELASTIC_RUN_ID=run-9", "OMPI_COMM_WORLD_RANK=3", "RANK=x"},
		"12:memory:/docker/"+ctrID+"\n0::/\n")
	fakeProc(t, root, 102, "bash", nil, "0::/user.slice/user-0.slice/session-1.scope\n")

	r := New(Config{ProcRoot: root, PodResourcesSocket: filepath.Join(root, "missing.sock")}, nil)
	r.byGPU = map[string]podRef{"GPU-bbbb": {"trainer-0", "ml", "worker"}}

	tests := []struct {
		pid  int
		want Info
	}{
		{100, Info{PID: 100, Comm: "python3", Job: "77", Rank: 5, LocalRank: 1, WorldSize: 16,
			GPUs: []string{"GPU-aaaa", "GPU-bbbb"}, Pod: "trainer-0", Namespace: "ml", Container: "worker",
			ContainerID: ctrID, PodUID: podUID}},
		{101, Info{PID: 101, Comm: "torchrun", Job: "run-9", Rank: 3, LocalRank: -1, WorldSize: -1, ContainerID: ctrID}},
		{102, Info{PID: 102, Comm: "bash", Rank: -1, LocalRank: -1, WorldSize: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.want.Comm, func(t *testing.T) {
			got, err := r.Process(tt.pid)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.GPUs, tt.want.GPUs) {
				t.Errorf("GPUs = %v, want %v", got.GPUs, tt.want.GPUs)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Process(%d) =\n %+v\nwant\n %+v", tt.pid, got, tt.want)
			}
		})
	}
	// Without NVIDIA_VISIBLE_DEVICES, the GPU NVML saw the process on names the pod.
	if info, err := r.ProcessOn(101, "GPU-none", "GPU-bbbb"); err != nil || info.Pod != "trainer-0" || info.Rank != 3 {
		t.Errorf("ProcessOn(101) = %+v, %v; want pod trainer-0, rank 3", info, err)
	}
	if info, _ := r.ProcessOn(102, "GPU-none"); info.Pod != "" {
		t.Errorf("ProcessOn(102) on an unknown GPU got pod %q", info.Pod)
	}
	if _, err := r.Process(999); err == nil || !strings.Contains(err.Error(), "process 999") {
		t.Errorf("missing process: err = %v, want one naming process 999", err)
	}
}

func TestParseCgroup(t *testing.T) {
	tests := []struct{ name, in, ctr, pod string }{
		{"systemd containerd", "0::/kubepods.slice/kubepods-pod" + strings.ReplaceAll(podUID, "-", "_") + ".slice/cri-containerd-" + ctrID + ".scope", ctrID, podUID},
		{"cgroupfs v1", "11:devices:/kubepods/besteffort/pod" + podUID + "/" + ctrID + "\n3:cpu:/", ctrID, podUID},
		{"docker", "0::/system.slice/docker-" + ctrID + ".scope", ctrID, ""},
		{"crio", "0::/kubepods.slice/crio-" + ctrID + ".scope", ctrID, ""},
		{"host", "0::/init.scope", "", ""},
		{"garbage", "no colons here\n::\n", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctr, pod := parseCgroup([]byte(tt.in))
			if ctr != tt.ctr || pod != tt.pod {
				t.Errorf("parseCgroup = %q, %q; want %q, %q", ctr, pod, tt.ctr, tt.pod)
			}
		})
	}
}

func FuzzParseCgroup(f *testing.F) {
	f.Add([]byte("0::/kubepods.slice/cri-containerd-" + ctrID + ".scope"))
	f.Add([]byte("11:devices:/kubepods/pod" + podUID + "/" + ctrID))
	f.Add([]byte(":::\n\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ctr, pod := parseCgroup(data)
		if ctr != "" && len(ctr) != 64 {
			t.Errorf("container id %q is not 64 hex digits", ctr)
		}
		if pod != "" && len(pod) != 36 {
			t.Errorf("pod uid %q is not a UUID", pod)
		}
	})
}

func FuzzParseEnviron(f *testing.F) {
	f.Add([]byte("RANK=1\x00WORLD_SIZE=8\x00"))
	f.Add([]byte("=\x00RANK\x00RANK==2"))
	f.Add([]byte{})
	wanted := map[string]bool{"RANK": true, "WORLD_SIZE": true}
	f.Fuzz(func(t *testing.T, data []byte) {
		vars := parseEnviron(data, wanted)
		for k, v := range vars {
			if !wanted[k] {
				t.Errorf("unwanted variable %q kept", k)
			}
			if strings.ContainsRune(v, 0) {
				t.Errorf("value of %s contains NUL", k)
			}
		}
		_ = intVar(vars, []string{"RANK"})
	})
}

// kubelet is a pod-resources v1 server like the kubelet's: only List is
// implemented, the rest answer Unimplemented.
type kubelet struct {
	podresourcesv1.UnimplementedPodResourcesListerServer
	resp *podresourcesv1.ListPodResourcesResponse
	list chan struct{}
}

func (k *kubelet) List(context.Context, *podresourcesv1.ListPodResourcesRequest) (*podresourcesv1.ListPodResourcesResponse, error) {
	select {
	case k.list <- struct{}{}:
	default:
	}
	return k.resp, nil
}

// startKubelet serves pod-resources on a unix socket in a temp folder.
func startKubelet(t *testing.T, resp *podresourcesv1.ListPodResourcesResponse) (string, *kubelet) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "kubelet.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	k := &kubelet{resp: resp, list: make(chan struct{}, 16)}
	podresourcesv1.RegisterPodResourcesListerServer(srv, k)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return sock, k
}

func TestPodResourcesOverGRPC(t *testing.T) {
	resp := &podresourcesv1.ListPodResourcesResponse{PodResources: []*podresourcesv1.PodResources{
		{Name: "trainer-0", Namespace: "ml", Containers: []*podresourcesv1.ContainerResources{
			{Name: "sidecar"},
			{Name: "worker", Devices: []*podresourcesv1.ContainerDevices{
				{ResourceName: "nvidia.com/gpu", DeviceIds: []string{"GPU-0000", "GPU-1111"}},
				{ResourceName: "example.com/nic", DeviceIds: []string{"GPU-9999"}},
			}},
		}},
		{Name: "notebook", Namespace: "alice", Containers: []*podresourcesv1.ContainerResources{
			{Name: "jupyter", Devices: []*podresourcesv1.ContainerDevices{
				{ResourceName: "nvidia.com/gpu.shared", DeviceIds: []string{"GPU-2222::3"}},
				{ResourceName: "nvidia.com/mig-1g.10gb", DeviceIds: []string{"MIG-3333"}},
			}},
		}},
	}}
	sock, k := startKubelet(t, resp)
	root := t.TempDir()
	fakeProc(t, root, 42, "python", []string{"NVIDIA_VISIBLE_DEVICES=GPU-2222"}, "0::/\n")
	r := New(Config{ProcRoot: root, PodResourcesSocket: sock, RefreshInterval: 50 * time.Millisecond}, nil)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	for range 2 { // the first refresh, then one from the timer
		select {
		case <-k.list:
		case <-time.After(10 * time.Second):
			t.Fatal("the resolver never called List")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	tests := []struct{ uuid, pod, ns, ctr string }{
		{"GPU-0000", "trainer-0", "ml", "worker"},
		{"GPU-1111", "trainer-0", "ml", "worker"},
		{"GPU-2222", "notebook", "alice", "jupyter"},
		{"MIG-3333", "notebook", "alice", "jupyter"},
		{"GPU-9999", "", "", ""}, // not an NVIDIA resource
		{"GPU-unknown", "", "", ""},
	}
	for _, tt := range tests {
		pod, ns, ctr := r.GPU(tt.uuid)
		if pod != tt.pod || ns != tt.ns || ctr != tt.ctr {
			t.Errorf("GPU(%s) = %q %q %q, want %q %q %q", tt.uuid, pod, ns, ctr, tt.pod, tt.ns, tt.ctr)
		}
	}
	info, err := r.Process(42)
	if err != nil {
		t.Fatal(err)
	}
	if info.Pod != "notebook" || info.Namespace != "alice" || info.Container != "jupyter" {
		t.Errorf("Process(42) pod = %q/%q/%q, want alice/notebook/jupyter", info.Namespace, info.Pod, info.Container)
	}
}

func TestRefreshWithoutKubelet(t *testing.T) {
	r := New(Config{PodResourcesSocket: filepath.Join(t.TempDir(), "kubelet.sock")}, nil)
	err := r.Refresh(context.Background())
	if err == nil || !strings.Contains(err.Error(), "not a Kubernetes node") {
		t.Fatalf("Refresh without a socket: err = %v, want a hint that this is not a Kubernetes node", err)
	}
	if pod, _, _ := r.GPU("GPU-0000"); pod != "" {
		t.Errorf("GPU() without a kubelet = %q, want empty", pod)
	}
}
