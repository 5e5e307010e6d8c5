package analyzers

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/analyzers/triage"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/logparse"
)

// The folders of testdata/logs are log files in their emitters' exact
// layouts (see each want.txt for which), with the answers worked out by
// hand in want.txt. TestLogFixtures parses every file of a folder as
// analyze-logs does, runs the analyzers that read logs and triage, and
// compares every finding and every number in it, and every incident,
// with want.txt:
//
//	ref TIME             dates timestamps without a year (a file's mtime)
//	gpus N               GPUs per host (analyze-logs --gpus)
//	finding ANALYZER "TITLE"      a finding; the lines below belong to it
//	severity S
//	gpu_seconds X        Impact.GPUSeconds
//	share X              Impact.WindowShare
//	recommendation "TEXT"         a substring of the recommendation
//	metric NAME X        one evidence number; every one must be listed
//	incident CATEGORY "TITLE"     an incident; every one must be listed
//	rule R / hosts H... / ranks R... / gpu_hours X / cause "TITLE"
//
// A TITLE is matched exactly for findings and as a substring for incidents
// and causes. Numbers are compared to 1e-6 relative.
func TestLogFixtures(t *testing.T) {
	dirs, err := filepath.Glob("testdata/logs/*/want.txt")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, w := range dirs {
		dir := filepath.Dir(w)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			want := readWant(t, w)
			var events []traces.Event
			err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
				if err != nil || d.IsDir() || filepath.Base(p) == "want.txt" {
					return err
				}
				f, err := os.Open(p)
				if err != nil {
					return err
				}
				defer f.Close()
				rel, _ := filepath.Rel(dir, p)
				opts := logparse.StreamOptions{Ref: want.ref, Location: time.UTC, Source: logparse.SourceOf("/" + rel)}
				_, err = logparse.ReadStream(f, opts, func(e traces.Event) error {
					e.Attrs[logparse.AttrSource] = rel
					events = append(events, e)
					return nil
				})
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			in, err := LogInput(events, LogOptions{GPUsPerHost: want.gpus})
			if err != nil {
				t.Fatal(err)
			}
			rep := Execute(t.Context(), in, []*Analyzer{Rebalance, HWFaults})
			for _, r := range rep.Runs {
				if r.Status == StatusFailed {
					t.Fatalf("%s failed: %s", r.Name, r.Reason)
				}
			}
			checkFindings(t, rep.Findings, want.findings)
			var faults []triage.HostEvent
			for i := range in.Hosts {
				h := &in.Hosts[i]
				err := EachEvent(&Pass{Context: t.Context(), Input: &Input{Hosts: []Host{*h}}}, func(_ *Host, e *traces.Event) error {
					if slices.Contains(triage.FaultKinds, e.Kind) {
						faults = append(faults, triage.HostEvent{Host: h.Manifest.Host, Event: *e})
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			cfg := triage.DefaultConfig()
			cfg.WorldSize = max(1, want.gpus*len(in.Hosts))
			scope := traces.Scope{Cluster: "local", Job: "logs", Run: "offline", GPU: -1, Rank: -1}
			checkIncidents(t, triage.Triage(t.Context(), scope, rep.Findings, faults, cfg), want.incidents)
		})
	}
}

// wantBlock is one finding or incident of want.txt.
type wantBlock struct {
	kind, title string
	fields      map[string]string
	metrics     map[string]float64
	line        int
}

type wantFile struct {
	ref                 time.Time
	gpus                int
	findings, incidents []*wantBlock
}

func readWant(t *testing.T, path string) wantFile {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var w wantFile
	var cur *wantBlock
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if i := strings.Index(line, " #"); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" || line[0] == '#' {
			continue
		}
		key, rest, _ := strings.Cut(line, " ")
		switch key {
		case "ref":
			if w.ref, err = time.Parse(time.RFC3339, rest); err != nil {
				t.Fatalf("%s:%d: %v", path, n, err)
			}
		case "gpus":
			w.gpus, _ = strconv.Atoi(rest)
		case "finding", "incident":
			kind, title, _ := strings.Cut(rest, " ")
			cur = &wantBlock{kind: kind, title: strings.Trim(title, `"`), fields: map[string]string{}, metrics: map[string]float64{}, line: n}
			if key == "finding" {
				w.findings = append(w.findings, cur)
			} else {
				w.incidents = append(w.incidents, cur)
			}
		case "metric":
			name, v, _ := strings.Cut(rest, " ")
			if i := strings.LastIndexByte(rest, ' '); i > 0 { // names may hold spaces
				name, v = rest[:i], rest[i+1:]
			}
			x, err := strconv.ParseFloat(v, 64)
			if err != nil || cur == nil {
				t.Fatalf("%s:%d: bad metric line", path, n)
			}
			cur.metrics[strings.Trim(name, `"`)] = x
		default:
			if cur == nil {
				t.Fatalf("%s:%d: %q outside a finding or incident", path, n, key)
			}
			cur.fields[key] = strings.Trim(rest, `"`)
		}
	}
	return w
}

func wantNumber(t *testing.T, b *wantBlock, key string, got float64) {
	t.Helper()
	if s, ok := b.fields[key]; ok {
		x, err := strconv.ParseFloat(s, 64)
		if err != nil || !near(got, x) {
			t.Errorf("want.txt:%d %q: %s = %v, want %s", b.line, b.title, key, got, s)
		}
	}
}

func checkFindings(t *testing.T, got []traces.Finding, want []*wantBlock) {
	t.Helper()
	if len(got) != len(want) {
		var titles []string
		for _, f := range got {
			titles = append(titles, f.Analyzer+": "+f.Title)
		}
		t.Errorf("%d findings, want %d:\n  %s", len(got), len(want), strings.Join(titles, "\n  "))
	}
	for _, w := range want {
		i := slices.IndexFunc(got, func(f traces.Finding) bool { return f.Analyzer == w.kind && f.Title == w.title })
		if i < 0 {
			t.Errorf("want.txt:%d: no %s finding %q", w.line, w.kind, w.title)
			continue
		}
		f := got[i]
		if s := w.fields["severity"]; s != "" && f.Severity != s {
			t.Errorf("want.txt:%d %q: severity %s, want %s", w.line, w.title, f.Severity, s)
		}
		if s := w.fields["recommendation"]; !strings.Contains(f.Recommendation, s) {
			t.Errorf("want.txt:%d %q: recommendation lacks %q: %s", w.line, w.title, s, f.Recommendation)
		}
		wantNumber(t, w, "gpu_seconds", f.Impact.GPUSeconds)
		wantNumber(t, w, "share", f.Impact.WindowShare)
		seen := map[string]bool{}
		for _, m := range f.Evidence {
			seen[m.Name] = true
			x, ok := w.metrics[m.Name]
			switch {
			case !ok:
				t.Errorf("want.txt:%d %q: evidence %q = %v is not in want.txt", w.line, w.title, m.Name, m.Value)
			case !near(m.Value, x):
				t.Errorf("want.txt:%d %q: evidence %q = %v, want %v", w.line, w.title, m.Name, m.Value, x)
			}
		}
		for name := range w.metrics {
			if !seen[name] {
				t.Errorf("want.txt:%d %q: evidence %q missing", w.line, w.title, name)
			}
		}
	}
}

func checkIncidents(t *testing.T, got []traces.Incident, want []*wantBlock) {
	t.Helper()
	if len(got) != len(want) {
		var titles []string
		for _, i := range got {
			titles = append(titles, fmt.Sprintf("%s: %s (%s %s)", i.Category, i.Title, i.Severity, i.Rule))
		}
		t.Errorf("%d incidents, want %d:\n  %s", len(got), len(want), strings.Join(titles, "\n  "))
	}
	for _, w := range want {
		i := slices.IndexFunc(got, func(inc traces.Incident) bool {
			return inc.Category == w.kind && strings.Contains(inc.Title, w.title)
		})
		if i < 0 {
			t.Errorf("want.txt:%d: no %s incident %q", w.line, w.kind, w.title)
			continue
		}
		inc := got[i]
		for k, v := range w.fields {
			var have string
			switch k {
			case "severity":
				have = inc.Severity
			case "rule":
				have = inc.Rule
			case "hosts":
				have = strings.Join(inc.Hosts, " ")
			case "ranks":
				have = strings.Trim(fmt.Sprint(inc.Ranks), "[]")
			case "cause":
				c := slices.IndexFunc(got, func(o traces.Incident) bool { return o.ID == inc.Cause })
				if c >= 0 && strings.Contains(got[c].Title, v) {
					have = v
				} else {
					have = "cause " + inc.Cause
				}
			case "gpu_hours":
				wantNumber(t, w, k, inc.ImpactGPUHours)
				continue
			default:
				t.Fatalf("want.txt:%d: unknown incident field %q", w.line, k)
			}
			if have != v {
				t.Errorf("want.txt:%d %s %q: %s = %q, want %q", w.line, w.kind, inc.Title, k, have, v)
			}
		}
	}
}

// An XID read from a journal names its GPU by PCI address; hw-faults maps
// it to the manifest's GPU (NVML's "00000000:18:00.0" spelling) and keeps
// the address only when no GPU matches.
func TestXIDMappedByPCI(t *testing.T) {
	p := logparse.NewParser(0)
	var events []traces.Event
	for _, l := range []string{
		"2026-11-25T10:01:00.000200+0000 gpu-node-1 kernel: NVRM: Xid (PCI:0000:18:00): 79, pid=3131, name=python3, GPU has fallen off the bus.",
		"2026-11-25T10:02:00.000000+0000 gpu-node-1 kernel: NVRM: Xid (PCI:0000:c1:00): 13, pid=3131, name=python3, Graphics Exception",
	} {
		events = p.Feed([]byte(l), time.Time{}, events)
	}
	in, err := LogInput(events, LogOptions{GPUsPerHost: 2})
	if err != nil {
		t.Fatal(err)
	}
	in.Hosts[0].Manifest.GPUs[1].PCIBusID = "00000000:18:00.0"
	in.Hosts[0].Manifest.GPUs[1].Ranks = []int{9}
	fs := run(t, HWFaults, in)
	if len(fs) != 2 {
		t.Fatalf("findings %+v", fs)
	}
	slices.SortFunc(fs, func(a, b traces.Finding) int { return strings.Compare(a.Title, b.Title) })
	if f := fs[1]; f.Title != "XID 79: GPU has fallen off the bus" || f.Scope.GPU != 1 || f.Scope.Rank != 9 {
		t.Errorf("XID 79 not mapped to GPU 1 (rank 9): %+v", f)
	}
	if f := fs[0]; f.Title != "XID 13: graphics engine exception (GPU at PCI 0000:c1:00)" || f.Scope.GPU != -1 {
		t.Errorf("unmatched XID: %+v", f)
	}
}
