package attribution

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// In-cluster defaults: the service account Kubernetes mounts into every pod.
const (
	serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"
	// maxKubeObject bounds one object read from the API server.
	maxKubeObject = 4 << 20
	// maxOwnerDepth bounds the owner chain walked (pod, Job, JobSet: 2).
	maxOwnerDepth = 4
	// maxLookupsPerRefresh bounds the API calls one refresh makes for pods
	// not cached yet; the rest wait for the next refresh.
	maxLookupsPerRefresh = 64
)

// KubeJob is the workload a pod belongs to: the top of its controller
// owner chain (a PyTorchJob, JobSet, Job, Deployment, ...), or what its
// labels name when the chain cannot be read.
type KubeJob struct {
	Kind, Name, UID string
}

// jobLabels name a pod's workload, most specific first, with the kind each
// implies: used when the owner chain cannot be walked (RBAC, an owner kind
// the agent may not read).
var jobLabels = []struct{ label, kind string }{
	{"jobset.sigs.k8s.io/jobset-name", "JobSet"},
	{"training.kubeflow.org/job-name", "TrainingJob"},
	{"batch.kubernetes.io/job-name", "Job"},
	{"job-name", "Job"},
}

// objectMeta is the part of a Kubernetes object the agent reads.
type objectMeta struct {
	Metadata struct {
		Name            string            `json:"name"`
		Namespace       string            `json:"namespace"`
		UID             string            `json:"uid"`
		Labels          map[string]string `json:"labels"`
		OwnerReferences []ownerRef        `json:"ownerReferences"`
	} `json:"metadata"`
}

type ownerRef struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Name       string `json:"name"`
	UID        string `json:"uid"`
	Controller *bool  `json:"controller"`
}

// controller is the managing owner among refs: the one marked controller,
// else the only one.
func controller(refs []ownerRef) *ownerRef {
	for i := range refs {
		if refs[i].Controller != nil && *refs[i].Controller {
			return &refs[i]
		}
	}
	if len(refs) == 1 {
		return &refs[0]
	}
	return nil
}

// readablePath is the API path of an owner between a pod and its workload
// that the agent reads (and its RBAC role allows), or "" for any other
// kind: that owner is then the workload.
func readablePath(ns string, o *ownerRef) string {
	switch {
	case o.Kind == "Job" && o.APIVersion == "batch/v1":
		return "/apis/batch/v1/namespaces/" + url.PathEscape(ns) + "/jobs/" + url.PathEscape(o.Name)
	case o.Kind == "ReplicaSet" && o.APIVersion == "apps/v1":
		return "/apis/apps/v1/namespaces/" + url.PathEscape(ns) + "/replicasets/" + url.PathEscape(o.Name)
	}
	return ""
}

// kubeClient reads pods and their owners from the API server with the
// agent's service account token (read again on every call: bound tokens
// rotate).
type kubeClient struct {
	base      string
	tokenFile string
	http      *http.Client
}

// newKubeClient returns a client for cfg, or nil when no API server is
// configured and the agent does not run in a pod.
func newKubeClient(cfg Config) (*kubeClient, error) {
	base := cfg.KubernetesAPI
	if base == "" {
		host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
		if host == "" || port == "" {
			return nil, nil
		}
		base = "https://" + net.JoinHostPort(host, port)
	}
	if base == "off" {
		return nil, nil
	}
	u, err := url.Parse(base)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("attribution.kubernetes_api %q: want https://HOST:PORT", base)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if u.Scheme == "https" {
		pem, err := os.ReadFile(cfg.KubernetesCAFile)
		if err != nil {
			return nil, fmt.Errorf("kubernetes API CA: %w (set attribution.kubernetes_ca_file)", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("kubernetes API CA %s: no PEM certificate in it", cfg.KubernetesCAFile)
		}
		tlsCfg.RootCAs = pool
	}
	return &kubeClient{
		base: strings.TrimSuffix(base, "/"), tokenFile: cfg.KubernetesTokenFile,
		http: &http.Client{Timeout: cfg.Timeout, Transport: &http.Transport{TLSClientConfig: tlsCfg, Proxy: nil}},
	}, nil
}

// errForbidden marks an API answer that the agent's RBAC role refused.
var errForbidden = errors.New("forbidden")

func (k *kubeClient) get(ctx context.Context, path string) (*objectMeta, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.base+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if k.tokenFile != "" {
		if tok, err := os.ReadFile(k.tokenFile); err == nil {
			req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
		}
	}
	resp, err := k.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("kubernetes API GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusUnauthorized:
		return nil, fmt.Errorf("kubernetes API GET %s: %s: %w (the agent's service account needs the chart's read-only role)", path, resp.Status, errForbidden)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("kubernetes API GET %s: %s", path, resp.Status)
	}
	var obj objectMeta
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxKubeObject)).Decode(&obj); err != nil {
		return nil, fmt.Errorf("kubernetes API GET %s: decoding: %w", path, err)
	}
	return &obj, nil
}

// jobOf walks a pod's controller owners up to its workload. The pod's own
// labels name the workload when the walk stops at an owner the agent may
// not read; a pod without owner or label has no job.
func (k *kubeClient) jobOf(ctx context.Context, namespace, pod string) (KubeJob, error) {
	obj, err := k.get(ctx, "/api/v1/namespaces/"+url.PathEscape(namespace)+"/pods/"+url.PathEscape(pod))
	if err != nil {
		return KubeJob{}, err
	}
	labels := obj.Metadata.Labels
	byLabel := func() (KubeJob, bool) {
		for _, l := range jobLabels {
			if v := labels[l.label]; v != "" {
				return KubeJob{Kind: l.kind, Name: v}, true
			}
		}
		return KubeJob{}, false
	}
	owner := controller(obj.Metadata.OwnerReferences)
	if owner == nil {
		j, _ := byLabel()
		return j, nil
	}
	for range maxOwnerDepth {
		path := readablePath(namespace, owner)
		if path == "" {
			break
		}
		next, err := k.get(ctx, path)
		if err != nil {
			if j, ok := byLabel(); ok {
				return j, nil
			}
			if errors.Is(err, errForbidden) {
				return KubeJob{}, err
			}
			break
		}
		up := controller(next.Metadata.OwnerReferences)
		if up == nil {
			break
		}
		owner = up
	}
	return KubeJob{Kind: owner.Kind, Name: owner.Name, UID: owner.UID}, nil
}

// kubeEntry is one cached pod-to-job answer.
type kubeEntry struct {
	job     KubeJob
	expires time.Time
}

// refreshJobs looks up the workloads of the pods not cached (or expired),
// at most maxLookupsPerRefresh of them, and drops pods no longer listed.
func (r *Resolver) refreshJobs(ctx context.Context, pods map[string]bool) error {
	if r.kube == nil {
		return nil
	}
	now := r.now()
	r.mu.RLock()
	var todo []string
	for p := range pods {
		if e, ok := r.jobs[p]; !ok || now.After(e.expires) {
			todo = append(todo, p)
		}
	}
	r.mu.RUnlock()
	var errs []error
	found := map[string]kubeEntry{}
	for i, p := range todo {
		if i >= maxLookupsPerRefresh {
			break
		}
		ns, name, _ := strings.Cut(p, "/")
		j, err := r.kube.jobOf(ctx, ns, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		found[p] = kubeEntry{job: j, expires: now.Add(r.cfg.JobCacheTTL)}
	}
	r.mu.Lock()
	for p := range r.jobs {
		if !pods[p] {
			delete(r.jobs, p)
		}
	}
	for p, e := range found {
		r.jobs[p] = e
	}
	r.mu.Unlock()
	if len(errs) > 0 {
		return fmt.Errorf("job names from the Kubernetes API for %d of %d pods: %w", len(errs), len(todo), errs[0])
	}
	return nil
}

// Job returns the workload of a pod from the cache.
func (r *Resolver) Job(namespace, pod string) (KubeJob, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.jobs[namespace+"/"+pod]
	return e.job, ok && e.job.Name != ""
}
