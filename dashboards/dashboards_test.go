package dashboards

import (
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestHandler(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tc := range []struct {
		path     string
		code     int
		contains string
	}{
		{"/", http.StatusFound, ""},
		{"/fleet", http.StatusOK, `src="/ui/fleet.js"`},
		{"/fleet?metric=power", http.StatusOK, `src="/ui/fleet.js"`},
		{"/findings", http.StatusOK, `src="/ui/findings.js"`},
		{"/cpu?job=train", http.StatusOK, `src="/ui/cpu.js"`},
		{"/goodput", http.StatusOK, `src="/ui/goodput.js"`},
		{"/jobs/c1/train/r1", http.StatusOK, `src="/ui/job.js"`},
		{"/jobs/c1/train/r1?capture=cap-1", http.StatusOK, `src="/ui/job.js"`},
		{"/jobs/c1/tr%20ain/r1", http.StatusBadRequest, "bad job path: job"},
		{"/jobs/c1/train/r1?capture=..", http.StatusBadRequest, "bad capture parameter"},
		{"/jobs/c1/train", http.StatusNotFound, "/jobs/{cluster}/{job}/{run}"},
		{"/ui/vendor/echarts.min.js", http.StatusOK, "Apache"},
		{"/ui/fleet.js", http.StatusOK, "import "},
		{"/ui/loupe.css", http.StatusOK, "banner-sim"},
		{"/ui/nope.js", http.StatusNotFound, ""},
		{"/nope", http.StatusNotFound, "the UI has"},
	} {
		res, err := client.Get(srv.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != tc.code || !strings.Contains(string(body), tc.contains) {
			t.Errorf("GET %s: %d, want %d with %q; body %.200q", tc.path, res.StatusCode, tc.code, tc.contains, body)
		}
	}
}

// TestAssetsResolve checks that every script and stylesheet a page loads
// and every module a script imports is embedded, so a missing file shows
// here rather than as a blank page.
func TestAssetsResolve(t *testing.T) {
	files := Static()
	ref := regexp.MustCompile(`(?:src|href)="(/ui/[^"]+)"`)
	imp := regexp.MustCompile(`(?m)^import .* from "\./([^"]+)";`)
	pages, _ := fs.Glob(files, "*.html")
	if len(pages) != 5 {
		t.Fatalf("pages %v, want fleet, job, findings, goodput and cpu", pages)
	}
	for _, p := range pages {
		data, _ := fs.ReadFile(files, p)
		for _, m := range ref.FindAllStringSubmatch(string(data), -1) {
			if _, err := fs.Stat(files, strings.TrimPrefix(m[1], "/")); err != nil {
				t.Errorf("%s loads %s: %v", p, m[1], err)
			}
		}
	}
	scripts, _ := fs.Glob(files, "ui/*.js")
	for _, s := range scripts {
		data, _ := fs.ReadFile(files, s)
		for _, m := range imp.FindAllStringSubmatch(string(data), -1) {
			if _, err := fs.Stat(files, "ui/"+m[1]); err != nil {
				t.Errorf("%s imports %s: %v", s, m[1], err)
			}
		}
	}
}

// TestVendoredECharts checks that the embedded ECharts is the version the
// lockfile pins, and byte for byte the npm package's file when
// node_modules is present (after make ui).
func TestVendoredECharts(t *testing.T) {
	var lock struct {
		Packages map[string]struct{ Version string } `json:"packages"`
	}
	data, err := os.ReadFile(filepath.Join("web", "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &lock); err != nil {
		t.Fatal(err)
	}
	want := lock.Packages["node_modules/echarts"].Version
	versions, err := fs.ReadFile(Static(), "ui/vendor/VERSIONS")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(versions)); got != "echarts "+want {
		t.Errorf("vendored %q, lockfile pins echarts %s; run make ui and commit dashboards/static/ui/vendor", got, want)
	}
	npm, err := os.ReadFile(filepath.Join("web", "node_modules", "echarts", "dist", "echarts.min.js"))
	if err != nil {
		t.Logf("no node_modules (npm ci not run): compared versions only")
		return
	}
	embedded, _ := fs.ReadFile(Static(), "ui/vendor/echarts.min.js")
	if string(npm) != string(embedded) {
		t.Errorf("ui/vendor/echarts.min.js differs from node_modules; run make ui and commit the result")
	}
}
