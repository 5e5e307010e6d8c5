package alerts

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// receiver is a real HTTP server that records what it is sent and answers
// with the statuses queued in fail before answering 200.
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	bodies [][]byte
	hdrs   []http.Header
	fail   []int
	hits   int
}

func newReceiver(t *testing.T, fail ...int) *receiver {
	r := &receiver{fail: fail}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.hits++
		if len(r.fail) > 0 {
			code := r.fail[0]
			if len(r.fail) > 1 {
				r.fail = r.fail[1:]
			} else if code != http.StatusOK {
				r.fail = []int{code} // keeps failing
			}
			if code != http.StatusOK {
				http.Error(w, "nope", code)
				return
			}
		}
		r.bodies = append(r.bodies, body)
		r.hdrs = append(r.hdrs, req.Header.Clone())
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) received() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.bodies)
}

func incident(sev string, impact float64) traces.Incident {
	return traces.Incident{
		ID: "straggler-job7-rank3", Category: "straggler", Severity: sev, Title: "Rank 3 is a straggler",
		Summary: "rank 3 arrives last at 92% of all-reduces", Scope: traces.Scope{Cluster: "c1", Job: "job7", Run: "r1", Capture: "cap-9", GPU: -1, Rank: 3},
		ImpactGPUHours: impact, Owners: []string{"ml-infra"}, SuggestedFix: "check rank 3's data loader", DocURL: "https://example.invalid/doc",
	}
}

type fixture struct {
	n   *Notifier
	st  store.Store
	set *metrics.Set
	now time.Time
}

func newFixture(t *testing.T, targets ...Target) *fixture {
	t.Helper()
	st, err := store.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("TEST_ALERT_SECRET", "s3cret")
	cfg := Config{Targets: targets, DashboardURL: "http://loupe.example:8080/", MinInterval: time.Hour,
		MaxAttempts: 4, BackoffBase: time.Millisecond, BackoffMax: 5 * time.Millisecond}
	set := metrics.NewSet()
	n, err := New(cfg, st, nil, set)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{n: n, st: st, set: set, now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	n.now = func() time.Time { return f.now }
	return f
}

func (f *fixture) count(name, target string) uint64 {
	return f.set.GetOrCreateCounter(name + `{target="` + target + `"}`).Get()
}

func TestWebhookSignedRetriedAndDeduplicated(t *testing.T) {
	rcv := newReceiver(t, 500, 503, 200)
	f := newFixture(t, Target{Name: "hook", Kind: KindWebhook, URL: rcv.URL, SecretEnv: "TEST_ALERT_SECRET"})
	ctx := context.Background()
	inc := incident(traces.SeverityWarning, 2.5)
	if err := f.n.Notify(ctx, []traces.Incident{inc}); err != nil {
		t.Fatal(err)
	}
	if rcv.received() != 1 || rcv.hits != 3 {
		t.Fatalf("received %d after %d requests, want 1 after 2 retries", rcv.received(), rcv.hits)
	}
	h, body := rcv.hdrs[0], rcv.bodies[0]
	if err := Verify([]byte("s3cret"), h.Get("X-Loupe-Timestamp"), h.Get("X-Loupe-Signature"), body, f.now, 5*time.Minute); err != nil {
		t.Fatalf("signature does not verify: %v", err)
	}
	if err := Verify([]byte("wrong"), h.Get("X-Loupe-Timestamp"), h.Get("X-Loupe-Signature"), body, f.now, 5*time.Minute); err == nil {
		t.Fatal("signature verified with the wrong secret")
	}
	if err := Verify([]byte("s3cret"), h.Get("X-Loupe-Timestamp"), h.Get("X-Loupe-Signature"), body, f.now.Add(time.Hour), 5*time.Minute); err == nil {
		t.Fatal("stale timestamp accepted")
	}
	var got struct {
		Type     string            `json:"type"`
		Incident traces.Incident   `json:"incident"`
		Links    map[string]string `json:"links"`
	}
	json.Unmarshal(body, &got)
	if got.Type != "incident" || got.Incident.ID != inc.ID || got.Links["perfetto"] != "http://loupe.example:8080/api/v1/captures/c1/job7/r1/cap-9/trace" {
		t.Errorf("payload = %+v", got)
	}
	if f.count("loupe_alerts_retries_total", "hook") != 2 {
		t.Errorf("retries = %d, want 2", f.count("loupe_alerts_retries_total", "hook"))
	}

	// The same incident again: nothing is sent.
	f.now = f.now.Add(2 * time.Hour)
	f.n.Notify(ctx, []traces.Incident{inc})
	if rcv.received() != 1 || f.count("loupe_alerts_deduplicated_total", "hook") != 1 {
		t.Fatalf("unchanged incident sent again (%d received)", rcv.received())
	}
	// Changed: sent again.
	inc.ImpactGPUHours = 7
	f.n.Notify(ctx, []traces.Incident{inc})
	if rcv.received() != 2 {
		t.Fatalf("changed incident not sent (%d received)", rcv.received())
	}
	// Changed again within the interval: rate-limited...
	f.now = f.now.Add(time.Minute)
	inc.ImpactGPUHours = 9
	f.n.Notify(ctx, []traces.Incident{inc})
	if rcv.received() != 2 || f.count("loupe_alerts_rate_limited_total", "hook") != 1 {
		t.Fatalf("change within the interval was not rate-limited (%d received)", rcv.received())
	}
	// ...unless the severity rose.
	inc.Severity = traces.SeverityCritical
	f.n.Notify(ctx, []traces.Incident{inc})
	if rcv.received() != 3 {
		t.Fatalf("escalation was held back (%d received)", rcv.received())
	}
	// ...or it was resolved (a hung job recovered): sent at once, once.
	f.now = f.now.Add(time.Minute)
	inc.Resolved = f.now
	f.n.Notify(ctx, []traces.Incident{inc})
	f.n.Notify(ctx, []traces.Incident{inc})
	if rcv.received() != 4 {
		t.Fatalf("resolution sent %d times, want once (%d received)", rcv.received()-3, rcv.received())
	}
	json.Unmarshal(rcv.bodies[3], &got)
	if got.Incident.Resolved.IsZero() {
		t.Errorf("payload does not say resolved: %s", rcv.bodies[3])
	}
}

func TestDeadLetterForFailingTarget(t *testing.T) {
	for _, tc := range []struct {
		name  string
		code  int
		tries int
	}{{"keeps failing with 5xx", 502, 4}, {"permanent 4xx", 404, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			rcv := newReceiver(t, tc.code)
			f := newFixture(t, Target{Name: "slack-ops", Kind: KindSlack, URL: rcv.URL})
			if err := f.n.Notify(context.Background(), []traces.Incident{incident(traces.SeverityCritical, 1)}); err != nil {
				t.Fatal(err)
			}
			if rcv.hits != tc.tries {
				t.Errorf("%d attempts, want %d", rcv.hits, tc.tries)
			}
			objs, _, err := f.st.List(context.Background(), "_alerts/deadletter/slack-ops/", "", 10)
			if err != nil || len(objs) != 1 {
				t.Fatalf("dead letters = %v, %v; want one", objs, err)
			}
			rc, _, _ := f.st.Get(context.Background(), objs[0].Key)
			var dl DeadLetter
			json.NewDecoder(rc).Decode(&dl)
			rc.Close()
			if dl.Incident != "straggler-job7-rank3" || !strings.Contains(dl.Error, "HTTP") || len(dl.Payload) == 0 {
				t.Errorf("dead letter %+v", dl)
			}
			// Not recorded as sent: a later run tries again.
			if _, err := f.st.Stat(context.Background(), "_alerts/state/slack-ops/straggler-job7-rank3.json"); err == nil {
				t.Error("failed delivery recorded as sent")
			}
		})
	}
}

func TestSlackBlocks(t *testing.T) {
	rcv := newReceiver(t)
	f := newFixture(t, Target{Name: "slack", Kind: KindSlack, URL: rcv.URL})
	inc := incident(traces.SeverityCritical, 3.25)
	inc.Simulated = true
	f.n.Notify(context.Background(), []traces.Incident{inc})
	if rcv.received() != 1 {
		t.Fatal("nothing sent")
	}
	var p slackPayload
	if err := json.Unmarshal(rcv.bodies[0], &p); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(p.Text, "[CRITICAL] Rank 3 is a straggler") || !strings.Contains(p.Text, "3.25 GPU-hours") || !strings.Contains(p.Text, "simulated") {
		t.Errorf("fallback text %q", p.Text)
	}
	types := []string{}
	for _, b := range p.Blocks {
		types = append(types, b.Type)
	}
	if strings.Join(types, ",") != "header,section,section,actions" {
		t.Errorf("blocks %v", types)
	}
	fields := p.Blocks[1].Fields
	if len(fields) != 4 || !strings.Contains(fields[2].Text, "ml-infra") {
		t.Errorf("fields %v", fields)
	}
	if u := p.Blocks[3].Elements[0].URL; u != "http://loupe.example:8080/jobs/c1/job7/r1?capture=cap-9" {
		t.Errorf("dashboard link %q", u)
	}
	if rcv.hdrs[0].Get("X-Loupe-Signature") != "" {
		t.Error("slack messages are not signed")
	}
	inc.Resolved = f.now
	f.n.Notify(context.Background(), []traces.Incident{inc})
	if rcv.received() != 2 || json.Unmarshal(rcv.bodies[1], &p) != nil || !strings.HasPrefix(p.Text, "[RESOLVED CRITICAL] Rank 3") {
		t.Errorf("resolved incident: %d sent, text %q", rcv.received(), p.Text)
	}
}

func TestRouting(t *testing.T) {
	crit, warn, info := newReceiver(t), newReceiver(t), newReceiver(t)
	f := newFixture(t,
		Target{Name: "pager", Kind: KindSlack, URL: crit.URL, MinSeverity: traces.SeverityCritical},
		Target{Name: "infra", Kind: KindSlack, URL: warn.URL, Owners: []string{"ml-infra"}},
		Target{Name: "data-team", Kind: KindSlack, URL: info.URL, MinSeverity: traces.SeverityCritical, Owners: []string{"data"}},
	)
	warning := incident(traces.SeverityWarning, 1)
	other := incident(traces.SeverityInfo, 1)
	other.ID, other.Owners, other.Channels = "other", []string{"data"}, []string{"data-team"}
	f.n.Notify(context.Background(), []traces.Incident{warning, other})
	if crit.received() != 0 || warn.received() != 1 || info.received() != 1 {
		t.Errorf("pager %d, infra %d, data-team %d; want 0, 1 (owner match), 1 (named channel)", crit.received(), warn.received(), info.received())
	}
}

func TestConfigErrors(t *testing.T) {
	st, _ := store.NewDir(t.TempDir())
	for _, tc := range []struct {
		target Target
		want   string
	}{
		{Target{Name: "a", Kind: "email", URL: "http://x"}, "kind"},
		{Target{Name: "a", Kind: KindSlack, URL: "ftp://x"}, "http or https"},
		{Target{Name: "a", Kind: KindWebhook, URL: "http://x"}, "signing secret"},
		{Target{Name: "a", Kind: KindSlack, URL: "http://x", MinSeverity: "loud"}, "min_severity"},
		{Target{Name: "../a", Kind: KindSlack, URL: "http://x"}, "name"},
	} {
		_, err := New(Config{Targets: []Target{tc.target}}, st, nil, metrics.NewSet())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err = %v, want mention of %q", tc.target, err, tc.want)
		}
	}
}
