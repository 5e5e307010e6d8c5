// Package dashboards is Loupe's web UI and its Grafana dashboards. The UI
// is a handful of static pages (plain ES modules drawing with Apache
// ECharts) embedded into the aggregator binary; they read the aggregator's
// JSON API (/api/v1/ and the view models under /api/v1/views/), so this
// package serves files only and needs nothing but the traces package.
//
//	/fleet                                   every GPU over time, by job
//	/jobs/{cluster}/{job}/{run}?capture=ID   one job capture
//	/findings                                all findings, filtered
//	/cpu?cluster=&job=&host=&from=&to=       CPU flame graph from continuous profiles
//	/goodput                                 jobs ranked by GPU-hours lost
//	/ui/...                                  scripts, styles, ECharts
//
// The files under static/ are committed, so `go build` needs no npm;
// static/ui/vendor/ is copied from the npm package pinned by
// web/package-lock.json with `make ui`. The Grafana dashboards in grafana/
// read the agents' /metrics (dcgm-exporter compatible names plus loupe_*).
package dashboards

import (
	"embed"
	"io/fs"
	"net/http"

	"github.com/loupe-dev/loupe/traces"
)

//go:embed static
var static embed.FS

//go:embed grafana/*.json
var grafana embed.FS

// Grafana returns the Grafana dashboards (grafana/*.json).
func Grafana() fs.FS {
	sub, _ := fs.Sub(grafana, "grafana")
	return sub
}

// Static returns the UI's files: the pages at the top, assets under ui/.
func Static() fs.FS {
	sub, _ := fs.Sub(static, "static")
	return sub
}

// Handler serves the UI. Mount it at "/" beside the API (the aggregator
// does: Service.API.Handle("/", dashboards.Handler())).
func Handler() http.Handler {
	files := Static()
	mux := http.NewServeMux()
	page := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Cache-Control", "no-cache")
			http.ServeFileFS(w, r, files, name)
		}
	}
	mux.Handle("GET /{$}", http.RedirectHandler("/fleet", http.StatusFound))
	mux.HandleFunc("GET /fleet", page("fleet.html"))
	mux.HandleFunc("GET /findings", page("findings.html"))
	mux.HandleFunc("GET /cpu", page("cpu.html"))
	mux.HandleFunc("GET /goodput", page("goodput.html"))
	jobPage := page("job.html")
	mux.HandleFunc("GET /jobs/{cluster}/{job}/{run}", func(w http.ResponseWriter, r *http.Request) {
		for _, k := range []string{"cluster", "job", "run"} {
			if err := traces.ValidateComponent(r.PathValue(k)); err != nil {
				http.Error(w, "bad job path: "+k+": "+err.Error(), http.StatusBadRequest)
				return
			}
		}
		if c := r.URL.Query().Get("capture"); c != "" {
			if err := traces.ValidateComponent(c); err != nil {
				http.Error(w, "bad capture parameter: "+err.Error(), http.StatusBadRequest)
				return
			}
		}
		jobPage(w, r)
	})
	assets := http.FileServerFS(files)
	mux.Handle("GET /ui/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Assets change only with the binary; revalidate rather than cache
		// stale scripts across an upgrade.
		w.Header().Set("Cache-Control", "no-cache")
		assets.ServeHTTP(w, r)
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no page "+r.URL.Path+"; the UI has /fleet, /jobs/{cluster}/{job}/{run}, /findings, /goodput and /cpu", http.StatusNotFound)
	})
	return mux
}
