package attribution

import (
	"context"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// maxPodResourcesMsg is the largest List answer accepted; the kubelet's
// own limit is 16 MiB.
const maxPodResourcesMsg = 16 << 20

// Refresh lists the pods' devices from the kubelet once and replaces the
// cached GPU map, then looks up the workloads of pods new to the cache in
// the Kubernetes API. On error the previous map is kept.
func (r *Resolver) Refresh(ctx context.Context) error {
	sock := r.cfg.PodResourcesSocket
	if _, err := os.Stat(sock); err != nil {
		return fmt.Errorf("kubelet pod-resources socket %s: %w (not a Kubernetes node, or mount the kubelet's pod-resources folder into the agent)", sock, err)
	}
	conn, err := grpc.NewClient("unix://"+sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxPodResourcesMsg)))
	if err != nil {
		return fmt.Errorf("kubelet pod-resources socket %s: %w", sock, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	resp, err := podresourcesv1.NewPodResourcesListerClient(conn).List(ctx, &podresourcesv1.ListPodResourcesRequest{})
	if err != nil {
		return fmt.Errorf("listing pod resources from %s: %w (the kubelet needs the KubeletPodResources API, on by default since 1.15)", sock, err)
	}
	m := gpuMap(resp)
	r.mu.Lock()
	r.byGPU = m
	r.mu.Unlock()
	pods := map[string]bool{}
	for _, p := range m {
		pods[p.namespace+"/"+p.pod] = true
	}
	return r.refreshJobs(ctx, pods)
}

// gpuMap indexes NVIDIA devices by UUID. The device plugin names
// time-sliced replicas "<uuid>::<n>"; all replicas map to the GPU. When
// several containers share a GPU the first listed keeps it.
func gpuMap(resp *podresourcesv1.ListPodResourcesResponse) map[string]podRef {
	m := map[string]podRef{}
	for _, pod := range resp.GetPodResources() {
		for _, c := range pod.GetContainers() {
			for _, dev := range c.GetDevices() {
				if !strings.HasPrefix(dev.GetResourceName(), "nvidia.com/") {
					continue
				}
				for _, id := range dev.GetDeviceIds() {
					uuid, _, _ := strings.Cut(id, "::")
					if _, taken := m[uuid]; !taken {
						m[uuid] = podRef{pod: pod.GetName(), namespace: pod.GetNamespace(), container: c.GetName()}
					}
				}
			}
		}
	}
	return m
}
