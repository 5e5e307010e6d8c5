package aggregator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/aggregator"
	"github.com/loupe-dev/loupe/aggregator/alerts"
	"github.com/loupe-dev/loupe/aggregator/api"
	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/aggregator/incidents"
	"github.com/loupe-dev/loupe/aggregator/internal/aggtest"
	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/logparse"
	"github.com/loupe-dev/loupe/traces/store"
)

// receiver is a generic webhook endpoint that checks every signature and
// counts deliveries per incident.
type receiver struct {
	secret []byte
	mu     sync.Mutex
	got    map[string]int
	bad    []string
	owners map[string][]string
}

func (rv *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rv.mu.Lock()
	defer rv.mu.Unlock()
	if err := alerts.Verify(rv.secret, r.Header.Get("X-Loupe-Timestamp"), r.Header.Get("X-Loupe-Signature"), body, time.Now(), 5*time.Minute); err != nil {
		rv.bad = append(rv.bad, err.Error())
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var msg struct {
		Incident traces.Incident `json:"incident"`
	}
	if err := json.Unmarshal(body, &msg); err != nil {
		rv.bad = append(rv.bad, err.Error())
		return
	}
	rv.got[msg.Incident.Category]++
	rv.owners[msg.Incident.Category] = msg.Incident.Owners
}

func (rv *receiver) counts() map[string]int {
	rv.mu.Lock()
	defer rv.mu.Unlock()
	out := map[string]int{}
	for k, v := range rv.got {
		out[k] = v
	}
	return out
}

// plantedEvents are a capture's faults as the agent's log tailer makes
// them, plus an XID from the GPU collector.
func plantedEvents(t *testing.T, start time.Time) []byte {
	p := logparse.NewParser(0)
	at := func(d time.Duration) string { return start.Add(d).UTC().Format(time.RFC3339Nano) }
	var evs []traces.Event
	for _, l := range []string{
		at(5*time.Second) + " stderr F [rank3]:[E1125 12:00:05.000000000 ProcessGroupNCCL.cpp:616] [Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=88, OpType=ALLREDUCE, NumelIn=1048576, NumelOut=1048576, Timeout(ms)=600000) ran for 600017 milliseconds before timing out.",
		at(6*time.Second) + " stderr F [rank2]: Traceback (most recent call last):",
		at(6*time.Second) + ` stderr F [rank2]:   File "/app/llm/train.py", line 120, in <module>`,
		at(6*time.Second) + " stderr F [rank2]:     main()",
		at(6*time.Second) + ` stderr F [rank2]:   File "/app/llm/data/loader.py", line 57, in next_batch`,
		at(6*time.Second) + " stderr F [rank2]:     raise ValueError(\"corrupt shard\")",
		at(6*time.Second) + " stderr F [rank2]: ValueError: corrupt shard 17",
	} {
		evs = p.Feed([]byte(l), start, evs)
	}
	evs = append(evs, traces.Event{TimeNs: start.Add(3 * time.Second).UnixNano(), Kind: traces.EventXID, GPU: 1, Rank: -1, Code: 79, Message: "GPU has fallen off the bus"})
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	for _, e := range evs {
		enc.Encode(e)
	}
	if len(evs) != 3 {
		t.Fatalf("planted %d events, want 3: %+v", len(evs), evs)
	}
	return b.Bytes()
}

// A capture with planted faults becomes findings, incidents in the store
// and the API, and signed alerts that a real HTTP receiver verifies;
// analyzing the capture again (another replica, after its record was lost)
// sends nothing twice.
func TestIncidentsEndToEnd(t *testing.T) {
	secret := "e2e-signing-secret"
	t.Setenv("LOUPE_E2E_WEBHOOK_SECRET", secret)
	rv := &receiver{secret: []byte(secret), got: map[string]int{}, owners: map[string][]string{}}
	hook := httptest.NewServer(rv)
	defer hook.Close()

	dir := t.TempDir()
	owners := filepath.Join(dir, "owners.yaml")
	os.WriteFile(owners, []byte(`teams:
  - {name: ml-infra, channels: ["#ml-infra"]}
  - {name: data, channels: ["#data"]}
rules:
  - {team: ml-infra, jobs: ["llm-*"]}
  - {team: data, frames: ["*/data/loader.py*"], priority: 10}
`), 0o644)
	cfg := aggregator.DefaultConfig()
	cfg.Store = "file://" + filepath.Join(dir, "store")
	cfg.SweepInterval = 20 * time.Millisecond
	cfg.PartitionTimeout = time.Second
	cfg.LeaseTTL = 10 * time.Second
	cfg.OwnersFile = owners
	cfg.DashboardURL = "https://loupe.example.com"
	cfg.Webhooks = []alerts.Target{{Name: "oncall", Kind: alerts.KindWebhook, URL: hook.URL, SecretEnv: "LOUPE_E2E_WEBHOOK_SECRET", MinSeverity: traces.SeverityCritical}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	st, err := store.Open(context.Background(), cfg.Store)
	if err != nil {
		t.Fatal(err)
	}
	m := aggtest.Manifest("llm-train", "cap-faults", "gpu-node-1", 4, 0, 1, 2, 3)
	m.GPUs = []traces.GPUInfo{{Index: 0, UUID: "GPU-0", Ranks: []int{0}}, {Index: 1, UUID: "GPU-1", Ranks: []int{1}}, {Index: 2, UUID: "GPU-2", Ranks: []int{2}}, {Index: 3, UUID: "GPU-3", Ranks: []int{3}}}
	aggtest.Put(t, st, m, map[string][]byte{traces.PartEvents: plantedEvents(t, m.Start)})
	id := capture.ID{Cluster: "c1", Job: "llm-train", Run: "r1", Capture: "cap-faults"}

	serve := func() (base string, svc *aggregator.Service, stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		svc, err := aggregator.New(ctx, cfg, analyzers.All, log)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Go(func() { svc.Serve(ctx, ln) })
		return "http://" + ln.Addr().String(), svc, func() { cancel(); wg.Wait() }
	}
	want := map[string]int{"hardware": 1, "nccl-timeout": 1, "crash": 1}
	delivered := func() bool {
		c := rv.counts()
		return c["hardware"] >= 1 && c["nccl-timeout"] >= 1 && c["crash"] >= 1
	}

	base, svc, stop := serve()
	waitFor(t, "three signed alerts", delivered)
	if _, err := st.Stat(context.Background(), incidents.Key(id)); err != nil {
		t.Fatalf("incidents not stored at %s: %v", incidents.Key(id), err)
	}
	var resp api.IncidentsResponse
	getJSON(t, base+"/api/v1/incidents?job=llm-train&severity=critical", http.StatusOK, &resp)
	if resp.Total != 3 {
		t.Fatalf("critical incidents %d, want 3: %+v", resp.Total, resp.Incidents)
	}
	for _, inc := range resp.Incidents {
		wantOwner := "ml-infra"
		if inc.Category == "crash" {
			wantOwner = "data" // the stack frame rule outranks the job rule
			if !strings.Contains(inc.Summary, "corrupt shard") || len(inc.Ranks) != 1 || inc.Ranks[0] != 2 {
				t.Errorf("crash incident %+v", inc)
			}
		}
		if len(inc.Owners) != 1 || inc.Owners[0] != wantOwner || inc.Scope.Capture != "cap-faults" {
			t.Errorf("%s incident owners %v scope %+v, want %s", inc.Category, inc.Owners, inc.Scope, wantOwner)
		}
	}
	for _, q := range []string{"severity=loud", "job=..%2Fetc", "host=x", "limit=0"} {
		var e map[string]string
		getJSON(t, base+"/api/v1/incidents?"+q, http.StatusBadRequest, &e)
		if e["error"] == "" {
			t.Errorf("%s: no error message", q)
		}
	}
	_ = svc
	stop()

	// The record is lost; another replica analyzes the capture again and
	// triages it again, but the alerts are not sent twice.
	if err := st.Delete(context.Background(), findings.RecordKey(id)); err != nil {
		t.Fatal(err)
	}
	base, svc, stop = serve()
	defer stop()
	waitFor(t, "the second analysis's triage", func() bool {
		var buf bytes.Buffer
		svc.Metrics.WritePrometheus(&buf)
		return strings.Contains(buf.String(), `loupe_alerts_deduplicated_total{target="oncall"} 3`)
	})
	if got := rv.counts(); len(got) != len(want) || got["hardware"] != 1 || got["nccl-timeout"] != 1 || got["crash"] != 1 {
		t.Errorf("deliveries %v, want exactly one per incident %v", got, want)
	}
	rv.mu.Lock()
	if len(rv.bad) > 0 {
		t.Errorf("receiver rejected deliveries: %v", rv.bad)
	}
	rv.mu.Unlock()
}

func getJSON(t *testing.T, url string, code int, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != code {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s, want %d", url, resp.StatusCode, body, code)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}
