package attribution

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// fakeAPIServer is a Kubernetes API server over TLS that serves the
// objects of objs by path, refuses the paths in forbidden with 403 and any
// request without the bearer token with 401, and counts requests by path.
type fakeAPIServer struct {
	srv    *httptest.Server
	mu     sync.Mutex
	hits   map[string]int
	caFile string
	token  string
}

func owner(apiVersion, kind, name string) map[string]any {
	return map[string]any{"apiVersion": apiVersion, "kind": kind, "name": name, "uid": "uid-" + name, "controller": true}
}

func object(name string, labels map[string]string, owners ...map[string]any) map[string]any {
	return map[string]any{"kind": "Pod", "metadata": map[string]any{"name": name, "namespace": "ml", "labels": labels, "ownerReferences": owners}}
}

func startAPIServer(t *testing.T, objs map[string]map[string]any, forbidden ...string) *fakeAPIServer {
	t.Helper()
	f := &fakeAPIServer{hits: map[string]int{}, token: "tok-1"}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.hits[r.URL.Path]++
		f.mu.Unlock()
		switch obj, ok := objs[r.URL.Path]; {
		case r.Method != http.MethodGet:
			http.Error(w, "read-only", http.StatusMethodNotAllowed)
		case r.Header.Get("Authorization") != "Bearer "+f.token:
			http.Error(w, `{"kind":"Status","code":401}`, http.StatusUnauthorized)
		case strings.Contains(strings.Join(forbidden, " "), r.URL.Path):
			http.Error(w, `{"kind":"Status","reason":"Forbidden","code":403}`, http.StatusForbidden)
		case !ok:
			http.Error(w, `{"kind":"Status","reason":"NotFound","code":404}`, http.StatusNotFound)
		default:
			json.NewEncoder(w).Encode(obj)
		}
	}))
	t.Cleanup(f.srv.Close)
	dir := t.TempDir()
	f.caFile = filepath.Join(dir, "ca.crt")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
	if err := os.WriteFile(f.caFile, ca, 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeAPIServer) count(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits[path]
}

// podsWithGPUs lists one GPU for each pod of namespace ml, GPU-<pod>.
func podsWithGPUs(pods ...string) *podresourcesv1.ListPodResourcesResponse {
	resp := &podresourcesv1.ListPodResourcesResponse{}
	for _, p := range pods {
		resp.PodResources = append(resp.PodResources, &podresourcesv1.PodResources{Name: p, Namespace: "ml",
			Containers: []*podresourcesv1.ContainerResources{{Name: "worker", Devices: []*podresourcesv1.ContainerDevices{
				{ResourceName: "nvidia.com/gpu", DeviceIds: []string{"GPU-" + p}}}}}})
	}
	return resp
}

// The path a job name takes on Kubernetes: the kubelet's pod-resources
// names the pod that holds a process's GPU, and the API server's owner
// references name its workload, which wins over the environment.
func TestJobNamesFromTheKubernetesAPI(t *testing.T) {
	const pods = "/api/v1/namespaces/ml/pods/"
	api := startAPIServer(t, map[string]map[string]any{
		pods + "llama-70b-worker-0": object("llama-70b-worker-0", map[string]string{"training.kubeflow.org/job-name": "llama-70b"},
			owner("kubeflow.org/v1", "PyTorchJob", "llama-70b")),
		pods + "trainer-js-0": object("trainer-js-0", nil, owner("batch/v1", "Job", "trainer-js-workers-0")),
		"/apis/batch/v1/namespaces/ml/jobs/trainer-js-workers-0": object("trainer-js-workers-0", nil, owner("jobset.x-k8s.io/v1alpha2", "JobSet", "trainer-js")),
		pods + "serve-7f9-abcde":                                 object("serve-7f9-abcde", nil, owner("apps/v1", "ReplicaSet", "serve-7f9")),
		"/apis/apps/v1/namespaces/ml/replicasets/serve-7f9":      object("serve-7f9", nil, owner("apps/v1", "Deployment", "serve")),
		pods + "locked-0":                                        object("locked-0", map[string]string{"jobset.sigs.k8s.io/jobset-name": "locked-set"}, owner("batch/v1", "Job", "locked-w")),
		pods + "bare":                                            object("bare", nil),
	}, "/apis/batch/v1/namespaces/ml/jobs/locked-w")
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(api.token+"\n"), 0o600)
	sock, _ := startKubelet(t, podsWithGPUs("llama-70b-worker-0", "trainer-js-0", "serve-7f9-abcde", "locked-0", "bare"))
	root := t.TempDir()
	for i, p := range []string{"llama-70b-worker-0", "trainer-js-0", "serve-7f9-abcde", "locked-0", "bare"} {
		fakeProc(t, root, 100+i, "python", []string{"TORCHELASTIC_RUN_ID=from-env", "NVIDIA_VISIBLE_DEVICES=GPU-" + p}, "0::/\n")
	}
	r := New(Config{ProcRoot: root, PodResourcesSocket: sock, KubernetesAPI: api.srv.URL,
		KubernetesTokenFile: tokenFile, KubernetesCAFile: api.caFile, JobCacheTTL: time.Hour}, nil)
	clock := time.Now()
	r.now = func() time.Time { return clock }
	ctx := context.Background()
	if err := r.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct{ job, kind string }{
		{"llama-70b", "PyTorchJob"},
		{"trainer-js", "JobSet"},
		{"serve", "Deployment"},
		{"locked-set", "JobSet"}, // the Job is forbidden: the pod's label names the JobSet
		{"from-env", ""},         // no owner, no label: the environment
	} {
		info, err := r.Process(100 + i)
		if err != nil {
			t.Fatal(err)
		}
		if info.Job != want.job || info.JobKind != want.kind || info.Namespace != "ml" {
			t.Errorf("process %d (pod %s): job %q kind %q, want %q %q", 100+i, info.Pod, info.Job, info.JobKind, want.job, want.kind)
		}
	}
	// Cached: a second refresh asks the API nothing; after the TTL it asks again.
	if err := r.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if n := api.count(pods + "llama-70b-worker-0"); n != 1 {
		t.Errorf("pod read %d times over two refreshes, want once (cached)", n)
	}
	clock = clock.Add(2 * time.Hour)
	if err := r.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if n := api.count(pods + "llama-70b-worker-0"); n != 2 {
		t.Errorf("pod read %d times after its cache entry expired, want 2", n)
	}
	// A wrong token: the lookups fail with a hint at RBAC; cached names stay.
	os.WriteFile(tokenFile, []byte("stale"), 0o600)
	clock = clock.Add(2 * time.Hour)
	err := r.Refresh(ctx)
	if err == nil || !strings.Contains(err.Error(), "read-only role") {
		t.Errorf("refresh with a refused token: err %v, want one naming the RBAC role", err)
	}
	if j, ok := r.Job("ml", "llama-70b-worker-0"); !ok || j.Name != "llama-70b" {
		t.Errorf("after a failed lookup the cached job is %+v, %v; want it kept", j, ok)
	}
}

func TestNoKubernetesAPIOutsideAPod(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if k, err := newKubeClient(DefaultConfig()); k != nil || err != nil {
		t.Errorf("outside a pod: client %v, err %v; want none and no error", k, err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	cfg := DefaultConfig()
	cfg.KubernetesCAFile = filepath.Join(t.TempDir(), "missing.crt")
	if _, err := newKubeClient(cfg); err == nil || !strings.Contains(err.Error(), "kubernetes_ca_file") {
		t.Errorf("in a pod without its CA: err %v, want one naming attribution.kubernetes_ca_file", err)
	}
	cfg.KubernetesAPI = "off"
	if k, err := newKubeClient(cfg); k != nil || err != nil {
		t.Errorf("kubernetes_api off: client %v, err %v", k, err)
	}
}

func TestProcessStartTime(t *testing.T) {
	boot := time.Unix(1_790_000_000, 0)
	// comm with spaces and parentheses; starttime (field 22) is 123456 ticks.
	line := "4242 (my (odd) comm) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 123456 1000000 100 18446744073709551615\n"
	if got, want := startTime([]byte(line), boot), boot.Add(1234560*time.Millisecond); !got.Equal(want) {
		t.Errorf("start %v, want %v", got, want)
	}
	for _, bad := range []string{"", "4242 no parens", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 -5 9"} {
		if got := startTime([]byte(bad), boot); !got.IsZero() {
			t.Errorf("startTime(%q) = %v, want zero", bad, got)
		}
	}
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "stat"), []byte("cpu  1 2 3\nbtime 1790000000\nprocesses 9\n"), 0o644)
	fakeProc(t, root, 4242, "python", nil, "0::/\n")
	os.WriteFile(filepath.Join(root, "4242", "stat"), []byte(line), 0o644)
	info, err := New(Config{ProcRoot: root}, nil).Process(4242)
	if err != nil || !info.Started.Equal(boot.Add(1234560*time.Millisecond)) {
		t.Errorf("Process: started %v, %v", info.Started, err)
	}
}

func FuzzStartTime(f *testing.F) {
	f.Add([]byte("1 (a) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0"))
	f.Add([]byte("1 ()) S"))
	f.Fuzz(func(t *testing.T, stat []byte) {
		boot := time.Unix(1_790_000_000, 0)
		if got := startTime(stat, boot); !got.IsZero() && (got.Before(boot) || got.After(boot.AddDate(200, 0, 0))) {
			t.Fatalf("start %v outside 200 years after boot", got)
		}
	})
}
