package api

import (
	"context"
	"net/http"

	"github.com/loupe-dev/loupe/aggregator/goodput"
	"github.com/loupe-dev/loupe/aggregator/httpjson"
	"github.com/loupe-dev/loupe/traces"
)

// GoodputSource answers goodput queries; *goodput.Manager is one.
type GoodputSource interface {
	RunGoodput(ctx context.Context, cluster, job, run string) (*traces.Goodput, error)
	JobGoodput(ctx context.Context, cluster, job string) (*goodput.Job, error)
	Fleet(ctx context.Context, q goodput.FleetQuery) (*goodput.Fleet, error)
}

func (s *Server) goodputFleet(w http.ResponseWriter, r *http.Request) {
	resp, err := func() (*goodput.Fleet, error) {
		q, err := httpjson.Query(r, "cluster", "limit")
		if err != nil {
			return nil, err
		}
		var fq goodput.FleetQuery
		if err := components(q, map[string]*string{"cluster": &fq.Cluster}); err != nil {
			return nil, err
		}
		if fq.Limit, err = limit(q); err != nil {
			return nil, err
		}
		return s.cfg.Goodput.Fleet(r.Context(), fq)
	}()
	httpjson.Answer(w, r, s.log, resp, err)
}

func (s *Server) goodputJob(w http.ResponseWriter, r *http.Request) {
	resp, err := func() (*goodput.Job, error) {
		id, err := pathRun(r)
		if err != nil {
			return nil, err
		}
		return s.cfg.Goodput.JobGoodput(r.Context(), id.Cluster, id.Job)
	}()
	httpjson.Answer(w, r, s.log, resp, err)
}

func (s *Server) goodputRun(w http.ResponseWriter, r *http.Request) {
	resp, err := func() (*traces.Goodput, error) {
		id, err := pathRun(r)
		if err != nil {
			return nil, err
		}
		return s.cfg.Goodput.RunGoodput(r.Context(), id.Cluster, id.Job, id.Run)
	}()
	httpjson.Answer(w, r, s.log, resp, err)
}

// pathRun reads cluster, job and run (when the pattern has it) from the
// path, each a valid key component.
func pathRun(r *http.Request) (traces.Key, error) {
	k := traces.Key{Cluster: r.PathValue("cluster"), Job: r.PathValue("job"), Run: r.PathValue("run"), Capture: "c", Host: "h"}
	if k.Run == "" {
		k.Run = "r"
	}
	if err := k.Validate(); err != nil {
		return traces.Key{}, httpjson.Bad("path %s: %v", r.URL.Path, err)
	}
	return k, nil
}
