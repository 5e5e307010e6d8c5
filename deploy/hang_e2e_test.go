package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/agent/daemon"
	"github.com/loupe-dev/loupe/agent/nccl/nccltest"
	"github.com/loupe-dev/loupe/aggregator"
	"github.com/loupe-dev/loupe/aggregator/alerts"
	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces"
)

// hangHook is a generic webhook receiver that verifies signatures and
// keeps the NCCL hang incidents it is sent.
type hangHook struct {
	mu   sync.Mutex
	got  []traces.Incident
	errs []string
}

func (h *hangHook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := alerts.Verify([]byte("hang-e2e"), r.Header.Get("X-Loupe-Timestamp"), r.Header.Get("X-Loupe-Signature"), body, time.Now(), time.Minute); err != nil {
		h.errs = append(h.errs, err.Error())
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var msg struct {
		Incident traces.Incident `json:"incident"`
	}
	if json.Unmarshal(body, &msg) == nil && msg.Incident.Category == "nccl-hang" {
		h.got = append(h.got, msg.Incident)
	}
}

func (h *hangHook) incidents() []traces.Incident {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]traces.Incident(nil), h.got...)
}

// waitTraced waits until the agent at metricsAddr traces n NCCL processes.
func waitTraced(t *testing.T, metricsAddr string, n int) {
	t.Helper()
	want := fmt.Sprintf("loupe_nccl_attached_processes %d\n", n)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(body), want) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent does not trace the job's %d ranks after a minute", n)
		}
	}
}

// The agent and the aggregator together, on a 4-rank job launched with
// SLURM_JOB_ID, RANK and WORLD_SIZE whose rank 2 stops calling collectives
// for 20 s: within 90 s of the stall a critical NCCL hang incident names
// rank 2 and its stack (it spins in stuck_outside_nccl) and is alerted;
// when rank 2 comes back, the incident is resolved and alerted again.
// Then a job whose rank 2 only slows down raises no hang.
func TestNCCLHangIncidentEndToEnd(t *testing.T) {
	s := nccltest.Build(t)
	t.Setenv("LOUPE_HANG_E2E_SECRET", "hang-e2e")
	hook := &hangHook{}
	srv := httptest.NewServer(hook)
	defer srv.Close()
	dir := t.TempDir()
	storeURL := "file://" + filepath.Join(dir, "store")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	acfg := aggregator.DefaultConfig()
	acfg.Store = storeURL
	acfg.SweepInterval = 100 * time.Millisecond
	acfg.PartitionTimeout = time.Second
	acfg.Webhooks = []alerts.Target{{Name: "oncall", Kind: alerts.KindWebhook, URL: srv.URL, SecretEnv: "LOUPE_HANG_E2E_SECRET",
		MinSeverity: traces.SeverityCritical}}
	svc, err := aggregator.New(ctx, acfg, analyzers.All, log)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { svc.Serve(ctx, ln) })

	cfg := daemon.DefaultConfig()
	cfg.MetricsAddr, cfg.APIAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Store, cfg.SpoolDir = storeURL, filepath.Join(dir, "spool")
	cfg.Cluster, cfg.Host, cfg.SimulateGPUs = "c1", "gpu-node-1", 4
	cfg.Upload.Interval = 100 * time.Millisecond
	cfg.Kineto.Enabled, cfg.Trigger.Disabled = false, true
	cfg.Attribution.PodResourcesSocket = filepath.Join(dir, "no-kubelet.sock")
	cfg.NCCL.PluginSocket = filepath.Join(dir, "nccl-plugin.sock")
	cfg.NCCL.ScanInterval, cfg.NCCL.StepInterval = 100*time.Millisecond, time.Hour
	cfg.NCCL.Libraries = []string{s.Dir()} // not other packages' tests, run at the same time
	cfg.Hang.Timeout, cfg.Hang.CheckInterval, cfg.Hang.Lookback = 3*time.Second, 250*time.Millisecond, 20*time.Second
	agent, err := daemon.New(ctx, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { agent.Run(ctx) })

	// The ranks wait for DIR/go until the agent traces all four, so that
	// the stall is seen from its start however loaded the machine is (a
	// job that does not wait for the agent is the nccl package's
	// TestTracerJobStartsAfterAgent).
	j := nccltest.StartJob(t, s.Rank, "ranks", 4, 0, -1, 0,
		[]string{"SLURM_JOB_ID=llm-hang", "NCCLRANK_UNTIL_STOP=1"}, func(int) []string {
			return []string{"NCCLRANK_STALL_RANK=2", "NCCLRANK_STALL_AT=40", "NCCLRANK_STALL_MS=20000"}
		})
	defer j.Kill()
	waitTraced(t, agent.MetricsAddr(), 4)
	j.Touch(t, "go")
	started := time.Now()
	var open, resolved *traces.Incident
	for deadline := started.Add(3 * time.Minute); open == nil || resolved == nil; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("alerts %+v: want the hang, then its resolution", hook.incidents())
		}
		for _, inc := range hook.incidents() {
			if inc.Resolved.IsZero() && open == nil {
				open = &inc
				t.Logf("hang alerted %v after the job started: %s", time.Since(started).Round(time.Second), inc.Title)
			}
			if !inc.Resolved.IsZero() {
				resolved = &inc
			}
		}
	}
	j.Stop(t)
	if open.Severity != traces.SeverityCritical || len(open.Ranks) != 1 || open.Ranks[0] != 2 || open.Scope.Job != "llm-hang" ||
		!strings.Contains(open.Title, "rank 2 never arrived at collective") || !strings.Contains(open.SuggestedFix, "stuck outside NCCL, in stuck_outside_nccl") {
		t.Fatalf("hang incident %+v: want critical, on rank 2, with its stack", open)
	}
	// The job's ranks run some 40 iterations before the stall, a second
	// at most; the hang shows 3 s after it, once the capture is analyzed.
	if d := open.Created.Sub(started); d > 90*time.Second {
		t.Errorf("the incident came %v after the job started, want within 90 s of the stall", d)
	}
	if resolved.ID != open.ID || resolved.Rule != "H2" || !strings.Contains(resolved.Title, "recovered") {
		t.Errorf("resolution %+v: want incident %s resolved", resolved, open.ID)
	}
	var listed struct {
		Incidents []traces.Incident `json:"incidents"`
	}
	resp, err := http.Get("http://" + ln.Addr().String() + "/api/v1/incidents?job=llm-hang")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&listed)
	resp.Body.Close()
	if len(listed.Incidents) != 1 || listed.Incidents[0].ID != open.ID || listed.Incidents[0].Resolved.IsZero() {
		t.Errorf("incidents API %+v: want the one hang, resolved", listed.Incidents)
	}

	slow := nccltest.StartJob(t, s.Rank, "ranks", 4, 0, 2, 30000,
		[]string{"SLURM_JOB_ID=llm-slow", "NCCLRANK_NO_GO=1", "NCCLRANK_UNTIL_STOP=1"}, nil)
	defer slow.Kill()
	time.Sleep(10 * time.Second)
	slow.Stop(t)
	time.Sleep(2 * time.Second)
	for _, inc := range hook.incidents() {
		if inc.Scope.Job == "llm-slow" {
			t.Errorf("a job that only slowed down raised %+v", inc)
		}
	}
	hook.mu.Lock()
	defer hook.mu.Unlock()
	if len(hook.errs) > 0 {
		t.Errorf("receiver rejected deliveries: %v", hook.errs)
	}
}
