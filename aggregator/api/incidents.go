package api

import (
	"context"
	"github.com/loupe-dev/loupe/aggregator/httpjson"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/loupe-dev/loupe/aggregator/incidents"
	"github.com/loupe-dev/loupe/traces"
)

// IncidentSource answers incident queries; *incidents.Manager is one.
type IncidentSource interface {
	Incidents(ctx context.Context, q incidents.Query) ([]traces.Incident, int, error)
}

// IncidentsResponse is the body of GET /api/v1/incidents.
type IncidentsResponse struct {
	// Total counts the matching incidents; Incidents holds at most limit of
	// them, most severe and costly first.
	Total     int               `json:"total"`
	Incidents []traces.Incident `json:"incidents"`
}

func (s *Server) incidents(w http.ResponseWriter, r *http.Request) {
	resp, err := s.incidentsQuery(r)
	httpjson.Answer(w, r, s.log, resp, err)
}

func (s *Server) incidentsQuery(r *http.Request) (*IncidentsResponse, error) {
	q, err := httpjson.Query(r, "cluster", "job", "severity", "limit")
	if err != nil {
		return nil, err
	}
	var iq incidents.Query
	if err := components(q, map[string]*string{"cluster": &iq.Cluster, "job": &iq.Job}); err != nil {
		return nil, err
	}
	if iq.Severities, err = severityParam(q); err != nil {
		return nil, err
	}
	if iq.Limit, err = limit(q); err != nil {
		return nil, err
	}
	list, total, err := s.cfg.Incidents.Incidents(r.Context(), iq)
	if err != nil {
		return nil, err
	}
	if list == nil {
		list = []traces.Incident{}
	}
	return &IncidentsResponse{Total: total, Incidents: list}, nil
}

// severityParam reads severity=a,b: any of critical, warning, info.
func severityParam(q url.Values) ([]string, error) {
	v := q.Get("severity")
	if v == "" {
		return nil, nil
	}
	var out []string
	for _, sev := range strings.Split(v, ",") {
		if !slices.Contains(severities, sev) {
			return nil, httpjson.Bad("parameter severity=%q: %q is not one of %s (give several separated by commas)", v, sev, strings.Join(severities, ", "))
		}
		out = append(out, sev)
	}
	return out, nil
}
