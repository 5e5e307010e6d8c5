package views_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/aggregator/views"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// continuousProfile is one interval of a continuous profile: each rank
// (or, without ranks, one process) spends n samples in leaf under main.
func continuousProfile(start time.Time, ranks []int, leaf string, n int64) *profile.Profile {
	p := cpuProfile(nil, -1)
	p.TimeNanos, p.DurationNanos = start.UnixNano(), int64(time.Minute)
	main, leafLoc := p.Location[0], p.Location[2] // main, forward
	if leaf == "data_loader" {
		leafLoc = p.Location[4]
	}
	if len(ranks) == 0 {
		ranks = []int{-1}
	}
	for _, r := range ranks {
		labels := map[string][]string{"pid": {fmt.Sprint(2000 + r)}, "comm": {"python3"}}
		if r >= 0 {
			labels["rank"] = []string{fmt.Sprint(r)}
		}
		p.Sample = append(p.Sample, &profile.Sample{Location: []*profile.Location{leafLoc, main}, Value: []int64{n, cpuNs(n)}, Label: labels})
	}
	return p
}

// seedContinuous commits the continuous profiles of addContinuous to a new
// directory store and returns it with an index fed from a listing, as the
// watcher feeds it.
func seedContinuous(t testing.TB) (store.Store, *findings.Index, string) {
	t.Helper()
	root := t.TempDir()
	addContinuous(t, root)
	st, err := store.NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	ix := findings.NewIndex(nil)
	objs, _, err := st.List(context.Background(), traces.KeyVersion+"/", "", 10000)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		ix.AddProfile(o.Key)
	}
	return st, ix, root
}

// addContinuous commits continuous profile bundles under root as agents
// do: the training job on both hosts (ranks 0, 1 and 8, 9 in forward) and
// an ETL job on node-1 (in data_loader), one a minute for ten minutes from
// t0.
func addContinuous(t testing.TB, root string) {
	t.Helper()
	for i := range 10 {
		start := t0.Add(time.Duration(i) * time.Minute)
		id := traces.ContinuousCaptureID(start, time.Minute)
		for h := range trainHosts {
			ranks := []int{h * gpusPerHost, h*gpusPerHost + 1}
			m := traces.Manifest{CaptureID: id, Cluster: "c1", Job: trainJob, Run: "r1", Host: hostName(h), Ranks: ranks,
				Start: start, End: start.Add(time.Minute), Trigger: traces.Trigger{Kind: traces.TriggerContinuous}, AgentVersion: "test"}
			commitProfile(t, root, m, continuousProfile(start, ranks, "forward", 10))
		}
		m := traces.Manifest{CaptureID: id, Cluster: "c1", Job: "etl", Run: "default", Host: hostName(0),
			Start: start, End: start.Add(time.Minute), Trigger: traces.Trigger{Kind: traces.TriggerContinuous}, AgentVersion: "test"}
		commitProfile(t, root, m, continuousProfile(start, nil, "data_loader", 30))
	}
}

func commitProfile(t testing.TB, root string, m traces.Manifest, p *profile.Profile) {
	t.Helper()
	w, err := traces.NewBundleWriter(filepath.Join(root, filepath.FromSlash(traces.KeyOf(&m).Prefix())), m)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteProfileAs(traces.PartContinuousProfile, p); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
}

func TestProfileView(t *testing.T) {
	st, ix, root := seedContinuous(t)
	srv := httptest.NewServer(views.New(views.Config{Store: st, Index: ix}))
	t.Cleanup(srv.Close)
	at := func(min int) string { return fmt.Sprint(t0.Add(time.Duration(min) * time.Minute).Unix()) }
	for _, tc := range []struct {
		name, query string
		profiles    int
		total       int64
		leaves      []string
	}{
		// Minutes 2 to 5 of the job: 3 intervals x 2 hosts x 2 ranks x 10.
		{"job", "cluster=c1&job=" + trainJob + "&from=" + at(2) + "&to=" + at(5), 6, 12 * cpuNs(10), []string{"forward"}},
		{"host", "job=" + trainJob + "&host=node-2&from=" + at(0) + "&to=" + at(10), 10, 20 * cpuNs(10), []string{"forward"}},
		{"rank", "job=" + trainJob + "&rank=1&from=" + at(0) + "&to=" + at(10), 20, 10 * cpuNs(10), []string{"forward"}},
		// The fleet: both jobs, the ETL one in data_loader.
		{"fleet", "from=" + at(0) + "&to=" + at(1), 3, 4*cpuNs(10) + cpuNs(30), []string{"data_loader", "forward"}},
		// An interval overlapping the range counts.
		{"partial interval", "job=etl&from=" + fmt.Sprint(t0.Add(90*time.Second).Unix()) + "&to=" + at(2), 1, cpuNs(30), []string{"data_loader"}},
		{"nothing", "job=etl&from=" + at(20) + "&to=" + at(30), 0, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pf views.ProfileFlame
			if code := get(t, srv.URL+"/api/v1/views/profile?"+tc.query, &pf); code != http.StatusOK {
				t.Fatalf("status %d", code)
			}
			if pf.Profiles != tc.profiles || pf.Total != tc.total || pf.Unit != "nanoseconds" {
				t.Fatalf("%d profiles, total %d %s; want %d, %d", pf.Profiles, pf.Total, pf.Unit, tc.profiles, tc.total)
			}
			if tc.profiles == 0 {
				if !strings.Contains(pf.Note, "no continuous CPU profile") {
					t.Errorf("note %q", pf.Note)
				}
				return
			}
			// all > comm > main > leaves
			n := pf.Root.Children[0].Children[0]
			var got []string
			for _, c := range n.Children {
				got = append(got, c.Name)
			}
			if n.Name != "main" || strings.Join(got, ",") != strings.Join(tc.leaves, ",") {
				t.Errorf("under %s: %v, want %v", n.Name, got, tc.leaves)
			}
		})
	}

	// A damaged part is left out and said so; the rest still shows.
	bad := traces.Key{Cluster: "c1", Job: "etl", Run: "default", Capture: traces.ContinuousCaptureID(t0.Add(9*time.Minute), time.Minute), Host: hostName(0)}
	if err := os.WriteFile(filepath.Join(root, filepath.FromSlash(bad.Object(traces.PartContinuousProfile))), []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	var pf views.ProfileFlame
	get(t, srv.URL+"/api/v1/views/profile?from="+at(9)+"&to="+at(10), &pf)
	if pf.Total != 4*cpuNs(10) || !strings.Contains(pf.Note, "1 of 3 continuous profiles could not be read") {
		t.Errorf("with a damaged part: total %d, note %q", pf.Total, pf.Note)
	}

	for _, tc := range []struct{ query, want string }{
		{"from=" + at(5) + "&to=" + at(2), "to must be after from"},
		{"from=" + at(0) + "&to=" + fmt.Sprint(t0.Add(8*24*time.Hour).Unix()), "at most"},
		{"job=bad/job", "job"},
		{"rank=-2", "rank"},
		{"from=yesterday", "RFC 3339"},
		{"nope=1", "nope"},
	} {
		var e struct{ Error string }
		if code := get(t, srv.URL+"/api/v1/views/profile?"+tc.query, &e); code != http.StatusBadRequest || !strings.Contains(e.Error, tc.want) {
			t.Errorf("?%s: %d %q, want 400 mentioning %q", tc.query, code, e.Error, tc.want)
		}
	}
}
