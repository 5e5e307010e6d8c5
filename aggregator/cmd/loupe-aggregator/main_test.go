package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loupe-dev/loupe/aggregator/internal/aggtest"
	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces/store"
)

func runCmd(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), err
}

// bundles writes a capture of two hosts (ranks 0-1, 2-3 of 4) as host
// bundle folders under one folder, and returns it.
func bundles(t *testing.T) string {
	root := t.TempDir()
	for i, host := range []string{"node-a", "node-b"} {
		aggtest.WriteSteps(t, filepath.Join(root, host), aggtest.Manifest("train", "cap1", host, 4, 2*i, 2*i+1))
	}
	return root
}

func decode(t *testing.T, out string) []Result {
	t.Helper()
	var res []Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", err, out)
	}
	return res
}

func TestAnalyzeFolders(t *testing.T) {
	capDir := bundles(t)
	kineto := t.TempDir()
	for rank := range 2 {
		os.WriteFile(filepath.Join(kineto, "rank"+string(rune('0'+rank))+".json"), []byte(kinetoTrace(rank)), 0o644)
	}
	storeDir := t.TempDir()
	st, err := store.NewDir(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	aggtest.PutDir(t, st, filepath.Join(capDir, "node-a"))

	tests := []struct {
		name, arg string
		hosts     int
		partial   bool
		capture   string
	}{
		{"capture folder", capDir, 2, false, capDir},
		{"host bundle", filepath.Join(capDir, "node-b"), 1, true, filepath.Join(capDir, "node-b")},
		{"store folder", storeDir, 1, true, "c1/train/r1/cap1"},
		{"store URL", "file://" + storeDir, 1, true, "c1/train/r1/cap1"},
		{"kineto folder", kineto, 1, false, kineto},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, stderr, err := runCmd(t, "analyze", tt.arg, "--json")
			if err != nil {
				t.Fatalf("%v\n%s", err, stderr)
			}
			res := decode(t, out)
			if len(res) != 1 || res[0].Hosts != tt.hosts || res[0].Partial != tt.partial || res[0].Capture != tt.capture || res[0].Error != "" {
				t.Fatalf("result %+v", res)
			}
			// Every analyzer, and the correlation step after them.
			if len(res[0].Analyzers) != len(analyzers.All)+1 || res[0].Analyzers[len(analyzers.All)].Name != analyzers.RootCause.Name {
				t.Fatalf("%d analyzer runs, want %d and %s last", len(res[0].Analyzers), len(analyzers.All)+1, analyzers.RootCause.Name)
			}
			ran := 0
			for _, a := range res[0].Analyzers {
				if a.Status == analyzers.StatusOK {
					ran++
				}
			}
			if ran == 0 {
				t.Fatalf("no analyzer ran: %+v", res[0].Analyzers)
			}
			if !strings.Contains(stderr, "done in") {
				t.Fatalf("no progress on stderr: %q", stderr)
			}
		})
	}
}

func TestAnalyzeTable(t *testing.T) {
	out, stderr, err := runCmd(t, "analyze", filepath.Join(bundles(t), "node-a"))
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	for _, want := range []string{"(1 hosts, PARTIAL: ranks 2-3 missing)", "analyzers: ", " ran, "} {
		if !strings.Contains(out, want) {
			t.Fatalf("table lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(stderr, "capture ") || strings.Contains(stderr, "\r") {
		t.Fatalf("plain progress lines expected off a terminal: %q", stderr)
	}
}

func TestAnalyzeErrors(t *testing.T) {
	foreign := t.TempDir()
	os.WriteFile(filepath.Join(foreign, "results.json"), []byte(`{"accuracy": 0.91, "epochs": 3}`), 0o644)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"analyze"}, "takes one URL or folder"},
		{[]string{"analyze", "/nonexistent/folder"}, "no such file"},
		{[]string{"analyze", "s3://x"}, "bucket"},
		{[]string{"analyze", t.TempDir(), "--capture", "a/b"}, "--capture applies to a store"},
		{[]string{"analyze", "file://" + t.TempDir()}, "no committed capture"},
		{[]string{"analyze", foreign}, "results.json is not a Kineto trace (no traceEvents)"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"backfill"}, "needs --since"},
		{[]string{"backfill", "--since", "yesterday"}, "want a date like"},
	}
	for _, tt := range tests {
		stdout, stderr, err := runCmd(t, tt.args...)
		if err == nil || !strings.Contains(err.Error()+stderr+stdout, tt.want) {
			t.Errorf("%q: error %v (stderr %q, stdout %q), want %q", tt.args, err, stderr, stdout, tt.want)
		}
	}
}

func TestBackfill(t *testing.T) {
	storeDir := t.TempDir()
	st, err := store.NewDir(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	capDir := bundles(t)
	aggtest.PutDir(t, st, filepath.Join(capDir, "node-a"))
	aggtest.PutDir(t, st, filepath.Join(capDir, "node-b"))
	args := []string{"backfill", "--store", "file://" + storeDir, "--since", "2000-01-01"}
	out, stderr, err := runCmd(t, append(args, "--dry-run")...)
	if err != nil || !strings.Contains(out, "c1/train/r1/cap1: never analyzed") {
		t.Fatalf("dry run: %v %q %q", err, out, stderr)
	}
	out, stderr, err = runCmd(t, args...)
	if err != nil || !strings.Contains(out, "1 captures, 1 re-analyzed") {
		t.Fatalf("backfill: %v %q %q", err, out, stderr)
	}
	out, _, err = runCmd(t, args...)
	if err != nil || !strings.Contains(out, "0 re-analyzed, 1 current") {
		t.Fatalf("second backfill: %v %q", err, out)
	}
	out, _, err = runCmd(t, "backfill", "--store", "file://"+storeDir, "--since", "2999-01-01T00:00:00Z")
	if err != nil || !strings.Contains(out, ": 0 captures") {
		t.Fatalf("backfill of the future: %v %q", err, out)
	}
}

func TestProgressBar(t *testing.T) {
	var b bytes.Buffer
	p := newProgress(&b, true, 4)
	p.Note("capture x")
	p.Step()
	p.Step()
	p.Finish()
	if !strings.Contains(b.String(), "\r\033[K[===============               ] 2/4 capture x") || !strings.Contains(b.String(), "2/4 done in") {
		t.Fatalf("bar: %q", b.String())
	}
	if got := ranges([]int{0, 1, 2, 5, 7, 8}); got != "0-2,5,7-8" {
		t.Fatalf("ranges: %s", got)
	}
}

// kinetoTrace is a minimal torch.profiler trace of one rank: a launch and
// its kernel, matched by correlation id.
func kinetoTrace(rank int) string {
	return `{"schemaVersion":1,"distributedInfo":{"backend":"nccl","rank":` + string(rune('0'+rank)) + `,"world_size":2},
"traceEvents":[
{"ph":"X","cat":"cuda_runtime","name":"cudaLaunchKernel","pid":100,"tid":100,"ts":1000.0,"dur":8.0,"args":{"correlation":1}},
{"ph":"X","cat":"kernel","name":"ampere_sgemm_128x64_nn","pid":0,"tid":7,"ts":1020.0,"dur":400.0,"args":{"correlation":1,"stream":7,"device":0}},
{"ph":"X","cat":"cuda_runtime","name":"cudaLaunchKernel","pid":100,"tid":100,"ts":1500.0,"dur":8.0,"args":{"correlation":2}},
{"ph":"X","cat":"kernel","name":"ncclDevKernel_AllReduce_Sum_f32_RING_LL","pid":0,"tid":13,"ts":1520.0,"dur":300.0,"args":{"correlation":2,"stream":13,"device":0}}
]}`
}
