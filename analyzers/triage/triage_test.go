package triage

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

var scope = traces.Scope{Cluster: "c1", Job: "llama-70b", Run: "r1", Capture: "cap-1", GPU: -1, Rank: -1}

func finding(analyzer, sev, title, host string, gpu, rank int, gpuSec, share float64) traces.Finding {
	return traces.Finding{
		ID: analyzer + title + host, Analyzer: analyzer, Severity: sev, Title: title,
		Scope:  traces.Scope{Cluster: "c1", Job: "llama-70b", Run: "r1", Capture: "cap-1", Host: host, GPU: gpu, Rank: rank},
		Impact: traces.Impact{GPUSeconds: gpuSec, WindowShare: share}, Recommendation: "fix " + analyzer,
		Evidence: []traces.Metric{{Name: "x", Value: 1}},
	}
}

func byCategory(incs []traces.Incident) map[string][]traces.Incident {
	m := map[string][]traces.Incident{}
	for _, i := range incs {
		m[i.Category] = append(m[i.Category], i)
	}
	return m
}

func TestTriageRulesAndDedup(t *testing.T) {
	findings := []traces.Finding{
		// Throttling seen on two hosts: one incident listing both.
		finding("throttle", traces.SeverityWarning, "GPU thermal throttling", "h1", 3, -1, 360, 0.02),
		finding("throttle", traces.SeverityWarning, "GPU thermal throttling", "h2", 5, -1, 720, 0.03),
		// The same straggling rank from two analyzers: one incident.
		finding("nccl-straggler", traces.SeverityWarning, "NCCL straggler", "h2", -1, 3, 1800, 0.30),
		finding("step-imbalance", traces.SeverityInfo, "Step-time imbalance", "h2", -1, 3, 100, 0.01),
		// Hardware faults stay per GPU.
		finding("hw-faults", traces.SeverityCritical, "XID 79", "h1", 0, -1, 10, 0.001),
		finding("hw-faults", traces.SeverityCritical, "XID 79", "h2", 0, -1, 10, 0.001),
		// A negligible informational finding, and a report: no incident.
		finding("sm-underuse", traces.SeverityInfo, "slightly low SM", "h1", 1, -1, 1, 0.0001),
		finding("kineto-temporal-breakdown", traces.SeverityInfo, "breakdown", "h1", -1, 0, 0, 0),
	}
	events := []HostEvent{
		{Host: "h1", Event: traces.Event{Kind: traces.EventNCCLWatchdog, Rank: 0, Message: "Watchdog caught collective operation timeout", Attrs: map[string]string{"timeout_ms": "600000"}}},
		{Host: "h2", Event: traces.Event{Kind: traces.EventNCCLWatchdog, Rank: 5, Message: "Watchdog caught collective operation timeout"}},
		{Host: "h1", Event: traces.Event{Kind: traces.EventOOM, Rank: 1, Message: "CUDA out of memory. Tried to allocate 2.00 GiB"}},
		{Host: "h2", Event: traces.Event{Kind: traces.EventCUDAError, Rank: 6, Message: "CUDA error: uncorrectable ECC error encountered"}},
		{Host: "h1", Event: traces.Event{Kind: traces.EventXID, GPU: 0, Code: 79}}, // left to hw-faults
	}
	cfg := DefaultConfig()
	cfg.WorldSize = 16
	incs := Triage(context.Background(), scope, findings, events, cfg)
	cats := byCategory(incs)

	th := cats[CategoryThrottling]
	if len(th) != 1 || !reflect.DeepEqual(th[0].Hosts, []string{"h1", "h2"}) || th[0].Severity != traces.SeverityWarning || th[0].Rule != "R3" {
		t.Errorf("throttling = %+v, want one warning on h1 and h2", th)
	}
	if got := th[0].ImpactGPUHours; got < 0.2999 || got > 0.3001 {
		t.Errorf("throttling impact %v GPU-h, want 0.3 (1080 s)", got)
	}
	st := cats[CategoryStraggler]
	if len(st) != 1 || st[0].Scope.Rank != 3 || len(st[0].Findings) != 2 || st[0].Severity != traces.SeverityCritical || st[0].Rule != "R2" {
		t.Errorf("straggler = %+v, want one critical (share 0.31 >= 0.25) incident for rank 3 from two findings", st)
	}
	if hw := cats[CategoryHardware]; len(hw) != 2 || hw[0].Rule != "R1" {
		t.Errorf("hardware = %d incidents, want one per host GPU, rule R1", len(hw))
	}
	if len(cats[CategoryGPUEfficiency]) != 0 || len(cats[categoryReport]) != 0 {
		t.Errorf("negligible info finding or report became an incident: %v", cats)
	}
	nt := cats[CategoryNCCLTimeout]
	if len(nt) != 1 || nt[0].Severity != traces.SeverityCritical || nt[0].Rule != "F1" || !reflect.DeepEqual(nt[0].Ranks, []int{0, 5}) {
		t.Errorf("nccl timeout = %+v, want one critical incident from both hosts", nt)
	}
	if got := nt[0].ImpactGPUHours; got < 2.66 || got > 2.67 { // 16 GPUs x 10 min
		t.Errorf("nccl timeout impact %v GPU-h, want 16 x 10 min = 2.67", got)
	}
	if oom := cats[CategoryOOM]; len(oom) != 1 || oom[0].Severity != traces.SeverityWarning || oom[0].Rule != "F5" {
		t.Errorf("oom = %+v, want a warning", oom)
	}
	if ce := cats[CategoryCUDAError]; len(ce) != 1 || ce[0].Rule != "F3" || ce[0].Severity != traces.SeverityCritical {
		t.Errorf("cuda error = %+v, want critical by F3", ce)
	}
	if incs[0].Severity != traces.SeverityCritical || incs[len(incs)-1].Severity == traces.SeverityCritical {
		t.Error("incidents are not ordered by severity")
	}
	for _, i := range incs {
		if i.SuggestedFix == "" || i.DocURL == "" {
			t.Errorf("incident %s lacks a fix or doc link", i.Category)
		}
	}

	// Stable ids: a later capture of the same run gives the same ids.
	later := scope
	later.Capture = "cap-2"
	again := Triage(context.Background(), later, findings, events, cfg)
	for i := range incs {
		if incs[i].ID != again[i].ID {
			t.Errorf("incident id changed between captures: %s vs %s", incs[i].ID, again[i].ID)
		}
	}
}

func TestRepeatedOOMIsCritical(t *testing.T) {
	var events []HostEvent
	for i := 0; i < 3; i++ {
		events = append(events, HostEvent{Host: "h1", Event: traces.Event{Kind: traces.EventOOM, Rank: i, Message: "CUDA out of memory"}})
	}
	incs := Triage(context.Background(), scope, nil, events, DefaultConfig())
	if len(incs) != 1 || incs[0].Severity != traces.SeverityCritical || incs[0].Rule != "F4" {
		t.Fatalf("incidents %+v, want one critical by F4", incs)
	}
}

const ownersFile = `
teams:
  - name: data-platform
    channels: [data-slack]
  - name: ml-infra
    channels: [infra-slack, infra-pager]
  - name: model-team
  - name: fleet-ops
rules:
  - team: fleet-ops
    categories: [hardware, throttling]
  - team: ml-infra
    jobs: ["llama-*"]
  - team: data-platform
    jobs: ["llama-*"]
    frames: ["*DataLoader*", "*/data/loader.py*"]
  - team: model-team
    jobs: ["llama-*"]
    frames: ["*modeling_llama*"]
  - team: fleet-ops
    hosts: ["h9"]
    priority: 5
`

func TestOwnersConflicts(t *testing.T) {
	o, err := ParseOwners([]byte(ownersFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		s         Subject
		teams     []string
		channels  []string
		frameHint string
	}{
		{"job rule alone", Subject{Job: "llama-70b", Category: "straggler", Hosts: []string{"h1"}}, []string{"ml-infra"}, []string{"infra-slack", "infra-pager"}, ""},
		{"more specific rule beats the job rule", Subject{Job: "llama-70b", Category: "input-pipeline", Frames: []string{"torch.utils.data.DataLoader.__next__"}}, []string{"data-platform"}, []string{"data-slack"}, ""},
		{"code path matches", Subject{Job: "llama-70b", Frames: []string{"/src/data/loader.py:88"}}, []string{"data-platform"}, []string{"data-slack"}, ""},
		{"equally specific rules both win", Subject{Job: "llama-70b", Frames: []string{"DataLoader.next", "modeling_llama.forward"}}, []string{"data-platform", "model-team"}, []string{"data-slack"}, ""},
		{"priority beats specificity", Subject{Job: "llama-70b", Hosts: []string{"h9"}, Frames: []string{"DataLoader"}}, []string{"fleet-ops"}, nil, ""},
		{"category rule for other jobs", Subject{Job: "bert", Category: "hardware"}, []string{"fleet-ops"}, nil, ""},
		{"nothing matches", Subject{Job: "bert", Category: "oom"}, nil, nil, ""},
	} {
		teams, channels := o.Match(tc.s)
		if !reflect.DeepEqual(teams, tc.teams) || !reflect.DeepEqual(channels, tc.channels) {
			t.Errorf("%s: teams %v channels %v, want %v %v", tc.name, teams, channels, tc.teams, tc.channels)
		}
	}
	for _, bad := range []string{"rules:\n  - team: nobody\n", "teams:\n  - name: a\nrules:\n  - team: a\n    jobs: ['']\n", "teams: []\nbogus: 1\n"} {
		if _, err := ParseOwners([]byte(bad)); err == nil {
			t.Errorf("owners file %q accepted", bad)
		}
	}
	if o, err := ParseOwners(nil); err != nil || len(o.Rules) != 0 {
		t.Errorf("empty owners file: %v, %v", o, err)
	}
}

func TestTriageUsesOwnersAndFrames(t *testing.T) {
	o, _ := ParseOwners([]byte(ownersFile))
	f := finding("input-bound", traces.SeverityWarning, "CPU-bound input pipeline", "h1", 0, 2, 600, 0.1)
	f.Frames = []string{"torch.utils.data.dataloader._MultiProcessingDataLoaderIter._next_data"}
	crash := HostEvent{Host: "h1", Event: traces.Event{Kind: traces.EventCrash, Rank: 2, Message: "Traceback",
		Attrs: map[string]string{"stack": "modeling_llama.LlamaAttention.forward\ntorch.nn.Module._call_impl"}}}
	cfg := DefaultConfig()
	cfg.Owners = o
	cats := byCategory(Triage(context.Background(), scope, []traces.Finding{f}, []HostEvent{crash}, cfg))
	if got := cats[CategoryInputPipeline][0]; !reflect.DeepEqual(got.Owners, []string{"data-platform"}) || got.SuggestedFix != "fix input-bound" {
		t.Errorf("input pipeline owners %v fix %q", got.Owners, got.SuggestedFix)
	}
	if got := cats[CategoryCrash][0]; !reflect.DeepEqual(got.Owners, []string{"model-team"}) || got.Title != "Process crashed in modeling_llama.LlamaAttention.forward" {
		t.Errorf("crash owners %v title %q", got.Owners, got.Title)
	}
}

// ollamaServer speaks Ollama's /api/generate, answering after delay.
func ollamaServer(t *testing.T, delay time.Duration, got *map[string]any) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/generate" {
			http.NotFound(w, r)
			return
		}
		json.NewDecoder(r.Body).Decode(got)
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"model": (*got)["model"], "created_at": "2026-11-25T00:00:00Z",
			"response": "Rank 3 stalls the all-reduce; check its host.", "done": true})
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestOllamaSummary(t *testing.T) {
	var req map[string]any
	srv := ollamaServer(t, 0, &req)
	cfg := DefaultConfig()
	cfg.Summarizer = &Ollama{URL: srv.URL, Model: "llama3.2:3b", Timeout: 5 * time.Second}
	f := finding("nccl-straggler", traces.SeverityWarning, "NCCL straggler", "h2", -1, 3, 1800, 0.1)
	incs := Triage(context.Background(), scope, []traces.Finding{f}, nil, cfg)
	g := incs[0].Generated
	if g == nil || g.Model != "llama3.2:3b" || g.Note != GeneratedNote || !strings.Contains(g.Text, "Rank 3") {
		t.Fatalf("generated = %+v", g)
	}
	if incs[0].Title != "Rank 3 is slower than its peers" || incs[0].Severity != traces.SeverityWarning {
		t.Error("the generated summary replaced rule-based fields")
	}
	if req["stream"] != false || req["model"] != "llama3.2:3b" || !strings.Contains(req["prompt"].(string), "Impact: 0.50 GPU-hours") {
		t.Errorf("request %v", req)
	}
}

func TestOllamaTimeout(t *testing.T) {
	var req map[string]any
	srv := ollamaServer(t, 3*time.Second, &req)
	cfg := DefaultConfig()
	cfg.Summarizer = &Ollama{URL: srv.URL, Model: "m", Timeout: 100 * time.Millisecond}
	start := time.Now()
	incs := Triage(context.Background(), scope, []traces.Finding{finding("throttle", traces.SeverityWarning, "t", "h", 0, -1, 1, 0.1)}, nil, cfg)
	if incs[0].Generated != nil {
		t.Error("summary present although the model timed out")
	}
	if incs[0].Severity != traces.SeverityWarning || incs[0].SuggestedFix == "" {
		t.Error("incident lost its rule-based fields when the model timed out")
	}
	if time.Since(start) > 2*time.Second {
		t.Error("triage waited for the model past its timeout")
	}
}

func TestWildcard(t *testing.T) {
	for _, tc := range []struct {
		p, s string
		want bool
	}{
		{"*", "", true}, {"*", "a/b.c", true}, {"llama-*", "llama-70b", true}, {"llama-*", "xllama-7", false},
		{"*/data/*.py*", "/src/data/loader.py:88", true}, {"a?c", "abc", true}, {"a?c", "ac", false},
		{"*a*b*", "xxaxxbxx", true}, {"*a*b", "ba", false}, {"", "", true}, {"", "x", false}, {"abc", "abc", true},
	} {
		if got := wildcard(tc.p, tc.s); got != tc.want {
			t.Errorf("wildcard(%q, %q) = %v, want %v", tc.p, tc.s, got, tc.want)
		}
	}
}

func FuzzOwnersFile(f *testing.F) {
	f.Add([]byte(ownersFile))
	f.Add([]byte("teams: [{name: a}]\nrules: [{team: a, jobs: ['*']}]"))
	f.Add([]byte("{{{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := ParseOwners(data)
		if err != nil {
			return
		}
		o.Match(Subject{Job: "j", Category: "c", Hosts: []string{"h"}, Frames: []string{"f"}})
	})
}

// An NCCL hang finding is a critical incident on the missing rank, owned
// through its stack; the finding of its recovery, in a later capture,
// gives the same incident, resolved.
func TestNCCLHangIncident(t *testing.T) {
	hung := finding("nccl-hang", traces.SeverityCritical, "NCCL hang: rank 2 never arrived at collective 140 (AllReduce); 3 rank(s) wait inside it",
		"h2", 2, 2, 240, 0.5)
	hung.Subject = "hang-abc"
	hung.Frames = []string{"load_batch", "main"}
	owners, err := ParseOwners([]byte("teams: [{name: data-team}]\nrules: [{team: data-team, frames: [load_batch]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	incs := Triage(context.Background(), scope, []traces.Finding{hung}, nil, Config{Owners: owners})
	if len(incs) != 1 {
		t.Fatalf("incidents %+v", incs)
	}
	inc := incs[0]
	if inc.Category != CategoryNCCLHang || inc.Severity != traces.SeverityCritical || inc.Rule != "H1" || inc.Title != hung.Title ||
		!slices.Equal(inc.Ranks, []int{2}) || inc.Scope.Rank != 2 || !inc.Resolved.IsZero() || !slices.Equal(inc.Owners, []string{"data-team"}) {
		t.Fatalf("incident %+v", inc)
	}
	back := hung
	back.ID, back.Severity = "f-2", traces.SeverityInfo
	back.Title = "NCCL hang at collective 140 (AllReduce) recovered after 90 s: rank 2 arrived late"
	back.Evidence = append(back.Evidence, traces.Metric{Name: "recovered", Value: 1}, traces.Metric{Name: "recovered_at", Value: 1.7e9})
	later := scope
	later.Capture = "cap-2"
	res := Triage(context.Background(), later, []traces.Finding{back}, nil, Config{Owners: owners})
	if len(res) != 1 || res[0].ID != inc.ID || res[0].Rule != "H2" || res[0].Resolved.Unix() != 1_700_000_000 || res[0].Title != back.Title {
		t.Fatalf("recovery incident %+v, want %s resolved", res, inc.ID)
	}
}

// Throttling on a GPU of the job and on a GPU no process of the job uses:
// two incidents; the host-wide one is the host's (fleet-ops by category,
// not ml-infra by the job rule) and says whose GPU it is not.
func TestHostWideFindingIsNotTheJobs(t *testing.T) {
	o, _ := ParseOwners([]byte(ownersFile))
	cfg := DefaultConfig()
	cfg.Owners = o
	own := finding("throttle", traces.SeverityCritical, "GPU thermal throttling", "h1", 2, 2, 360, 0.2)
	other := finding("throttle", traces.SeverityCritical, "GPU thermal throttling", "h1", 5, -1, 360, 0.2)
	other.Scope.HostWide = true
	incs := Triage(context.Background(), scope, []traces.Finding{own, other}, nil, cfg)
	if len(incs) != 2 {
		t.Fatalf("want 2 incidents, got %+v", incs)
	}
	for _, inc := range incs {
		if inc.Scope.HostWide {
			if inc.Scope.GPU != 5 || inc.Scope.Host != "h1" || !reflect.DeepEqual(inc.Owners, []string{"fleet-ops"}) ||
				!strings.Contains(inc.Title, "no process of job llama-70b uses it") {
				t.Errorf("host-wide incident %+v", inc)
			}
		} else if !slices.Contains(inc.Owners, "ml-infra") {
			t.Errorf("job incident owners %v lack the job's team", inc.Owners)
		}
	}
}

// A root-cause finding about a straggling rank names that rank's one
// incident and puts its fix first, without counting the wait twice; one
// about no rank stays an incident of its own.
func TestRootCauseJoinsTheStragglerIncident(t *testing.T) {
	rc := finding("root-cause", traces.SeverityWarning, "Input-bound straggler: data loading starves the rank every other rank waits for", "h2", 3, 3, 1800, 0.30)
	findings := []traces.Finding{
		finding("nccl-straggler", traces.SeverityWarning, "NCCL straggler", "h2", -1, 3, 1800, 0.30),
		finding("input-bound", traces.SeverityWarning, "Input pipeline starves the GPU", "h2", 3, 3, 900, 0.15),
		rc,
	}
	incs := byCategory(Triage(context.Background(), scope, findings, nil, DefaultConfig()))
	if len(incs) != 2 || len(incs[CategoryStraggler]) != 1 || len(incs[CategoryInputPipeline]) != 1 {
		t.Fatalf("incidents %+v, want one straggler and one input-pipeline incident", incs)
	}
	s := incs[CategoryStraggler][0]
	if s.Title != "Rank 3: "+rc.Title || !strings.HasPrefix(s.SuggestedFix, "fix root-cause") || !slices.Contains(s.Findings, rc.ID) {
		t.Errorf("straggler incident %q, fix %q, findings %v", s.Title, s.SuggestedFix, s.Findings)
	}
	if want := 1800.0 / 3600; math.Abs(s.ImpactGPUHours-want) > 1e-9 {
		t.Errorf("impact %v GPU-hours, want the straggler's %v alone", s.ImpactGPUHours, want)
	}
}
