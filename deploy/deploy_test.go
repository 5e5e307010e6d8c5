package deploy_test

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"flag"
	"io"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	"github.com/loupe-dev/loupe/agent/daemon"
	"github.com/loupe-dev/loupe/aggregator"
)

// need returns the path of a tool the test runs for real. Under CI=true a
// missing tool fails the test with what to install; elsewhere it skips.
func need(t *testing.T, env, name, install string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		return p
	}
	if p, err := filepath.Abs(filepath.Join("..", ".cache", "bin", name)); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	msg := name + " not found; install it: " + install
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// unitKeys parses a systemd unit into key -> values (keys may repeat).
func unitKeys(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: line %q is not key=value", path, line)
		}
		keys[k] = append(keys[k], v)
	}
	return keys
}

func TestSystemdUnits(t *testing.T) {
	analyze := need(t, "LOUPE_SYSTEMD_ANALYZE", "systemd-analyze", "apt-get install systemd")
	for _, unit := range []string{"loupe-agent", "loupe-aggregator"} {
		t.Run(unit, func(t *testing.T) {
			src := filepath.Join("systemd", unit+".service")
			data, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			// verify checks that ExecStart exists; point it at a stand-in.
			dir := t.TempDir()
			bin := filepath.Join(dir, unit)
			os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755)
			unitPath := filepath.Join(dir, unit+".service")
			os.WriteFile(unitPath, bytes.ReplaceAll(data, []byte("/usr/local/bin/"+unit), []byte(bin)), 0o644)
			out, err := exec.Command(analyze, "verify", unitPath).CombinedOutput()
			if err != nil || len(bytes.TrimSpace(out)) > 0 {
				t.Fatalf("systemd-analyze verify %s: %v\n%s", src, err, out)
			}
		})
	}

	agent := unitKeys(t, "systemd/loupe-agent.service")
	caps := strings.Fields(agent["CapabilityBoundingSet"][0])
	for _, c := range []string{"CAP_BPF", "CAP_PERFMON", "CAP_SYS_RESOURCE"} {
		if !slices.Contains(caps, c) {
			t.Errorf("agent capability bounding set %v lacks %s", caps, c)
		}
	}
	if slices.Contains(caps, "CAP_SYS_ADMIN") {
		t.Error("agent unit grants CAP_SYS_ADMIN by default; only the DCGM profiling drop-in may")
	}
	for k, want := range map[string]string{"ProtectSystem": "strict", "Restart": "always", "NoNewPrivileges": "yes", "MemoryMax": "1G"} {
		if got := agent[k]; len(got) != 1 || got[0] != want {
			t.Errorf("agent %s = %v, want %s", k, got, want)
		}
	}
	if rw := agent["ReadWritePaths"]; len(rw) != 1 || !strings.Contains(rw[0], "/var/lib/loupe") {
		t.Errorf("agent ReadWritePaths = %v, want the spool under /var/lib/loupe", rw)
	}
	dropIn := unitKeys(t, "systemd/loupe-agent.service.d/dcgm-profiling.conf")
	if dropIn["CapabilityBoundingSet"][0] != "CAP_SYS_ADMIN" {
		t.Errorf("DCGM drop-in = %v, want CAP_SYS_ADMIN added", dropIn)
	}
	agg := unitKeys(t, "systemd/loupe-aggregator.service")
	if agg["DynamicUser"][0] != "yes" || agg["CapabilityBoundingSet"][0] != "" || agg["Restart"][0] != "always" {
		t.Errorf("aggregator unit is not unprivileged: %v", agg)
	}
}

// objects holds the typed objects of a rendered manifest, decoded strictly:
// an unknown or misspelled field is an error.
type objects struct {
	daemonSets  []appsv1.DaemonSet
	deployments []appsv1.Deployment
	services    []corev1.Service
	accounts    []corev1.ServiceAccount
	configMaps  []corev1.ConfigMap
	secrets     []corev1.Secret
	pdbs        []policyv1.PodDisruptionBudget
	svcMonitors []monitoringv1.ServiceMonitor
	podMonitors []monitoringv1.PodMonitor
}

func decodeStrict(t *testing.T, name string, data []byte) objects {
	t.Helper()
	var objs objects
	for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		var meta struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("%s document %d: %v", name, i, err)
		}
		var err error
		switch meta.Kind {
		case "":
			continue // comments only
		case "DaemonSet":
			objs.daemonSets = append(objs.daemonSets, appsv1.DaemonSet{})
			err = yaml.UnmarshalStrict([]byte(doc), &objs.daemonSets[len(objs.daemonSets)-1])
		case "Deployment":
			objs.deployments = append(objs.deployments, appsv1.Deployment{})
			err = yaml.UnmarshalStrict([]byte(doc), &objs.deployments[len(objs.deployments)-1])
		case "Service":
			objs.services = append(objs.services, corev1.Service{})
			err = yaml.UnmarshalStrict([]byte(doc), &objs.services[len(objs.services)-1])
		case "ServiceAccount":
			objs.accounts = append(objs.accounts, corev1.ServiceAccount{})
			err = yaml.UnmarshalStrict([]byte(doc), &objs.accounts[len(objs.accounts)-1])
		case "ConfigMap":
			objs.configMaps = append(objs.configMaps, corev1.ConfigMap{})
			err = yaml.UnmarshalStrict([]byte(doc), &objs.configMaps[len(objs.configMaps)-1])
		case "Secret":
			objs.secrets = append(objs.secrets, corev1.Secret{})
			err = yaml.UnmarshalStrict([]byte(doc), &objs.secrets[len(objs.secrets)-1])
		case "PodDisruptionBudget":
			objs.pdbs = append(objs.pdbs, policyv1.PodDisruptionBudget{})
			err = yaml.UnmarshalStrict([]byte(doc), &objs.pdbs[len(objs.pdbs)-1])
		case "ServiceMonitor":
			objs.svcMonitors = append(objs.svcMonitors, monitoringv1.ServiceMonitor{})
			err = yaml.UnmarshalStrict([]byte(doc), &objs.svcMonitors[len(objs.svcMonitors)-1])
		case "PodMonitor":
			objs.podMonitors = append(objs.podMonitors, monitoringv1.PodMonitor{})
			err = yaml.UnmarshalStrict([]byte(doc), &objs.podMonitors[len(objs.podMonitors)-1])
		default:
			t.Fatalf("%s document %d: unexpected kind %q", name, i, meta.Kind)
		}
		if err != nil {
			t.Fatalf("%s document %d (%s) does not decode strictly: %v", name, i, meta.Kind, err)
		}
	}
	return objs
}

func helmTemplate(t *testing.T, helm string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(helm, append([]string{"template", "loupe", "helm/loupe", "--namespace", "loupe"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, stderr.Bytes())
	}
	return out
}

// checkSecurity asserts the security settings that matter for each workload.
func checkSecurity(t *testing.T, objs objects, dcgmProfiling bool) {
	t.Helper()
	if len(objs.daemonSets) != 1 || len(objs.deployments) != 1 || len(objs.services) != 2 || len(objs.accounts) != 2 || len(objs.configMaps) != 2 {
		t.Fatalf("rendered %d DaemonSets, %d Deployments, %d Services, %d ServiceAccounts, %d ConfigMaps; want 1, 1, 2, 2, 2",
			len(objs.daemonSets), len(objs.deployments), len(objs.services), len(objs.accounts), len(objs.configMaps))
	}
	ds := objs.daemonSets[0].Spec.Template.Spec
	if !ds.HostPID {
		t.Error("agent DaemonSet needs hostPID to see the node's processes")
	}
	if ds.NodeSelector["nvidia.com/gpu.present"] != "true" || len(ds.Tolerations) == 0 || ds.Tolerations[0].Key != "nvidia.com/gpu" {
		t.Errorf("agent must select GPU nodes and tolerate their taint: %v %v", ds.NodeSelector, ds.Tolerations)
	}
	sc := ds.Containers[0].SecurityContext
	if sc == nil || sc.Privileged != nil && *sc.Privileged {
		t.Fatal("agent must not be privileged")
	}
	var added []string
	for _, c := range sc.Capabilities.Add {
		added = append(added, string(c))
	}
	want := []string{"BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE", "DAC_READ_SEARCH"}
	if dcgmProfiling {
		want = append(want, "SYS_ADMIN")
	}
	if !slices.Equal(added, want) || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("agent capabilities add %v drop %v, want add %v drop [ALL]", added, sc.Capabilities.Drop, want)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("agent must have a read-only root file system and no privilege escalation")
	}
	mounts := map[string]bool{}
	for _, v := range ds.Volumes {
		if v.HostPath != nil {
			mounts[v.HostPath.Path] = true
		}
	}
	for _, p := range []string{"/var/lib/loupe", "/sys/kernel/btf", "/var/lib/kubelet/pod-resources"} {
		if !mounts[p] {
			t.Errorf("agent lacks hostPath %s (have %v)", p, mounts)
		}
	}
	agg := objs.deployments[0].Spec.Template.Spec
	if agg.SecurityContext == nil || agg.SecurityContext.RunAsNonRoot == nil || !*agg.SecurityContext.RunAsNonRoot {
		t.Error("aggregator must run as non-root")
	}
	asc := agg.Containers[0].SecurityContext
	if asc == nil || len(asc.Capabilities.Drop) != 1 || len(asc.Capabilities.Add) != 0 || !*asc.ReadOnlyRootFilesystem {
		t.Error("aggregator must drop every capability and have a read-only root file system")
	}
	if svc := service(t, objs, "loupe-aggregator"); agg.ServiceAccountName != "loupe-aggregator" || svc.Spec.Ports[0].Port != 8080 {
		t.Errorf("aggregator service account %q, service port %d", agg.ServiceAccountName, svc.Spec.Ports[0].Port)
	}
}

func service(t *testing.T, objs objects, name string) corev1.Service {
	t.Helper()
	for _, s := range objs.services {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no Service %s", name)
	return corev1.Service{}
}

// selects reports whether a label selector's matchLabels all hold in labels.
func selects(sel map[string]string, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return len(sel) > 0
}

// checkOperations asserts what an SRE needs to run the chart: separate
// readiness and liveness probes on both workloads, a headless agent Service
// on the metrics port, and a disruption budget that keeps one aggregator.
func checkOperations(t *testing.T, objs objects) {
	t.Helper()
	for _, w := range []struct {
		name string
		spec corev1.PodSpec
	}{{"agent", objs.daemonSets[0].Spec.Template.Spec}, {"aggregator", objs.deployments[0].Spec.Template.Spec}} {
		c := w.spec.Containers[0]
		if c.ReadinessProbe == nil || c.LivenessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet == nil {
			t.Errorf("%s: readiness %+v liveness %+v, want both HTTP probes", w.name, c.ReadinessProbe, c.LivenessProbe)
			continue
		}
		if c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/healthz" {
			t.Errorf("%s: readiness on %s, liveness on %s; want /readyz and /healthz", w.name, c.ReadinessProbe.HTTPGet.Path, c.LivenessProbe.HTTPGet.Path)
		}
	}
	agent := service(t, objs, "loupe-agent")
	if agent.Spec.ClusterIP != "None" || agent.Spec.Ports[0].Port != 9400 || agent.Spec.Ports[0].Name != "metrics" ||
		!selects(agent.Spec.Selector, objs.daemonSets[0].Spec.Template.Labels) {
		t.Errorf("agent Service %+v: want headless, port metrics 9400, selecting the agent pods", agent.Spec)
	}
	if len(objs.pdbs) != 1 || objs.pdbs[0].Spec.MinAvailable == nil || objs.pdbs[0].Spec.MinAvailable.IntValue() != 1 ||
		!selects(objs.pdbs[0].Spec.Selector.MatchLabels, objs.deployments[0].Spec.Template.Labels) {
		t.Errorf("PodDisruptionBudgets %+v: want one keeping 1 aggregator", objs.pdbs)
	}
}

func TestHelmChart(t *testing.T) {
	helm := need(t, "LOUPE_HELM_BIN", "helm", "make tools (builds helm from the Go module proxy into .cache/bin)")
	rendered := helmTemplate(t, helm)
	checkSecurity(t, decodeStrict(t, "helm template (defaults)", rendered), false)

	withDCGM := decodeStrict(t, "helm template (dcgm profiling, existing secret)",
		helmTemplate(t, helm, "--set", "agent.dcgmProfiling=true", "--set", "s3.existingSecret=my-s3"))
	checkSecurity(t, withDCGM, true)
	if len(withDCGM.secrets) != 0 {
		t.Error("chart created an S3 secret although existingSecret was given")
	}

	checkConfigs(t, decodeStrict(t, "helm template (defaults)", rendered))
	defaults := decodeStrict(t, "helm template (defaults)", rendered)
	checkOperations(t, defaults)
	if len(defaults.svcMonitors)+len(defaults.podMonitors) != 0 {
		t.Error("ServiceMonitor or PodMonitor rendered by default; they need the Prometheus Operator's CRDs")
	}

	// Prometheus Operator scraping: each monitor selects its Service or
	// pods, on the named port; the agent's dcgm-exporter labels are kept.
	mon := decodeStrict(t, "helm template (monitors)", helmTemplate(t, helm,
		"--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.podMonitor.enabled=true",
		"--set", "metrics.serviceMonitor.labels.release=prom"))
	if len(mon.svcMonitors) != 2 || len(mon.podMonitors) != 2 {
		t.Fatalf("%d ServiceMonitors, %d PodMonitors; want 2 of each", len(mon.svcMonitors), len(mon.podMonitors))
	}
	ports := map[string]string{"loupe-agent": "metrics", "loupe-aggregator": "http"}
	pods := map[string]map[string]string{"loupe-agent": mon.daemonSets[0].Spec.Template.Labels, "loupe-aggregator": mon.deployments[0].Spec.Template.Labels}
	for _, sm := range mon.svcMonitors {
		svc := service(t, mon, sm.Name)
		ep := sm.Spec.Endpoints[0]
		if !selects(sm.Spec.Selector.MatchLabels, svc.Labels) || ep.Port != ports[sm.Name] || ep.Path != "/metrics" || sm.Labels["release"] != "prom" {
			t.Errorf("ServiceMonitor %s: selector %v (Service labels %v), endpoint %+v, labels %v", sm.Name, sm.Spec.Selector.MatchLabels, svc.Labels, ep, sm.Labels)
		}
		if sm.Name == "loupe-agent" && !ep.HonorLabels {
			t.Error("the agent's ServiceMonitor must honor the series' labels (dcgm-exporter's pod, namespace, Hostname)")
		}
	}
	for _, pm := range mon.podMonitors {
		ep := pm.Spec.PodMetricsEndpoints[0]
		if !selects(pm.Spec.Selector.MatchLabels, pods[pm.Name]) || ep.Port == nil || *ep.Port != ports[pm.Name] {
			t.Errorf("PodMonitor %s: selector %v (pod labels %v), endpoint %+v", pm.Name, pm.Spec.Selector.MatchLabels, pods[pm.Name], ep)
		}
	}

	// The plain manifests are the chart rendered with its defaults; they must
	// not drift from it (regenerate with make manifests).
	committed, err := os.ReadFile("kubernetes/loupe.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(committed, rendered) {
		t.Error("deploy/kubernetes/loupe.yaml differs from the chart rendered with defaults: run make manifests")
	}
}

func TestKubernetesManifests(t *testing.T) {
	files, _ := filepath.Glob("kubernetes/*.yaml")
	if len(files) == 0 {
		t.Fatal("no manifests under deploy/kubernetes")
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		checkSecurity(t, decodeStrict(t, f, data), false)
	}
}

// TestDockerfilesBuildRealPackages checks that each container file builds a
// main package that exists in this repository.
func TestDockerfilesBuildRealPackages(t *testing.T) {
	re := regexp.MustCompile(`go build .* (\./\S+)`)
	files, _ := filepath.Glob("docker/*.Dockerfile")
	if len(files) != 2 {
		t.Fatalf("want the agent and aggregator Dockerfiles, found %v", files)
	}
	for _, f := range files {
		data, _ := os.ReadFile(f)
		m := re.FindSubmatch(data)
		if m == nil {
			t.Fatalf("%s: no go build line", f)
		}
		pkg := filepath.Join("..", string(m[1]))
		mains, _ := filepath.Glob(filepath.Join(pkg, "*.go"))
		found := false
		for _, g := range mains {
			src, _ := os.ReadFile(g)
			found = found || bytes.Contains(src, []byte("package main"))
		}
		if !found {
			t.Errorf("%s builds %s, which has no main package", f, m[1])
		}
		if strings.Contains(f, "aggregator") && !bytes.Contains(data, []byte("USER 65532")) {
			t.Errorf("%s must run as a non-root user", f)
		}
	}
}

// checkConfigs loads the configuration files the chart renders with the
// binaries' own loaders, which reject unknown keys, so the chart cannot
// carry a key the daemons would refuse at start.
func checkConfigs(t *testing.T, objs objects) {
	t.Helper()
	for _, cm := range objs.configMaps {
		for name, text := range cm.Data {
			path := filepath.Join(t.TempDir(), name)
			os.WriteFile(path, []byte(text), 0o644)
			var err error
			switch name {
			case "agent.yaml":
				_, err = daemon.Load([]string{"--config", path}, io.Discard)
			case "aggregator.yaml":
				_, _, err = aggregator.LoadConfig(flag.NewFlagSet("loupe-aggregator", flag.ContinueOnError), []string{"--config", path})
			default:
				t.Errorf("ConfigMap %s has unexpected file %s", cm.Name, name)
				continue
			}
			if err != nil {
				t.Errorf("ConfigMap %s: %s is refused by its binary: %v", cm.Name, name, err)
			}
		}
	}
}
