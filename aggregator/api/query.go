package api

import (
	"errors"
	"fmt"
	"github.com/loupe-dev/loupe/aggregator/httpjson"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// Limits of list endpoints.
const (
	DefaultLimit = 100
	MaxLimit     = 10000
)

var (
	severities = []string{traces.SeverityCritical, traces.SeverityWarning, traces.SeverityInfo}
	statuses   = []string{findings.StatusWaiting, findings.StatusPending, findings.StatusAnalyzed, findings.StatusPartial}
)

// limit reads the limit parameter.
func limit(q url.Values) (int, error) {
	v := q.Get("limit")
	if v == "" {
		return DefaultLimit, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > MaxLimit {
		return 0, httpjson.Bad("parameter limit=%q: want a whole number from 1 to %d", v, MaxLimit)
	}
	return n, nil
}

// components reads several component filters into the given fields.
func components(q url.Values, dst map[string]*string) error {
	for name, p := range dst {
		v, err := httpjson.Component(q, name)
		if err != nil {
			return err
		}
		*p = v
	}
	return nil
}

// FindingsResponse is the body of GET /api/v1/findings.
type FindingsResponse struct {
	// Total counts the matching findings; Findings holds at most limit of
	// them, most costly first.
	Total    int              `json:"total"`
	Findings []traces.Finding `json:"findings"`
}

func (s *Server) findings(w http.ResponseWriter, r *http.Request) {
	resp, err := s.findingsQuery(r)
	httpjson.Answer(w, r, s.log, resp, err)
}

func (s *Server) findingsQuery(r *http.Request) (*FindingsResponse, error) {
	q, err := httpjson.Query(r, "cluster", "job", "run", "capture", "host", "analyzer", "severity", "limit")
	if err != nil {
		return nil, err
	}
	var fq findings.Query
	if err := components(q, map[string]*string{
		"cluster": &fq.Cluster, "job": &fq.Job, "run": &fq.Run, "capture": &fq.Capture,
		"host": &fq.Host, "analyzer": &fq.Analyzer,
	}); err != nil {
		return nil, err
	}
	if fq.Severities, err = severityParam(q); err != nil {
		return nil, err
	}
	if fq.Limit, err = limit(q); err != nil {
		return nil, err
	}
	list, total := s.cfg.Index.Findings(fq)
	if list == nil {
		list = []traces.Finding{}
	}
	return &FindingsResponse{Total: total, Findings: list}, nil
}

func (s *Server) finding(w http.ResponseWriter, r *http.Request) {
	if _, err := httpjson.Query(r); err != nil {
		httpjson.Answer(w, r, s.log, nil, err)
		return
	}
	id := r.PathValue("id")
	f, ok := s.cfg.Index.Finding(id)
	if !ok {
		httpjson.Answer(w, r, s.log, nil, fmt.Errorf("finding %q: %w (IDs change when an analyzer's version does)", id, store.ErrNotFound))
		return
	}
	httpjson.Answer(w, r, s.log, f, nil)
}

// AnalyzerInfo describes one analyzer in GET /api/v1/analyzers.
type AnalyzerInfo struct {
	Name     string   `json:"name"`
	Version  string   `json:"version"`
	Doc      string   `json:"doc"`
	Requires []string `json:"requires"`
}

func (s *Server) analyzers(w http.ResponseWriter, r *http.Request) {
	if _, err := httpjson.Query(r); err != nil {
		httpjson.Answer(w, r, s.log, nil, err)
		return
	}
	list := make([]AnalyzerInfo, 0, len(s.cfg.Analyzers))
	for _, a := range s.cfg.Analyzers {
		list = append(list, AnalyzerInfo{Name: a.Name, Version: a.Version, Doc: a.Doc, Requires: a.Requires})
	}
	httpjson.Answer(w, r, s.log, map[string]any{"analyzers": list}, nil)
}

// CapturesResponse is the body of GET /api/v1/captures.
type CapturesResponse struct {
	Total    int              `json:"total"`
	Captures []findings.Entry `json:"captures"`
}

func (s *Server) captures(w http.ResponseWriter, r *http.Request) {
	resp, err := s.capturesQuery(r)
	httpjson.Answer(w, r, s.log, resp, err)
}

func (s *Server) capturesQuery(r *http.Request) (*CapturesResponse, error) {
	q, err := httpjson.Query(r, "cluster", "job", "run", "status", "limit")
	if err != nil {
		return nil, err
	}
	var cq findings.CaptureQuery
	if err := components(q, map[string]*string{"cluster": &cq.Cluster, "job": &cq.Job, "run": &cq.Run}); err != nil {
		return nil, err
	}
	if v := q.Get("status"); v != "" {
		if !slices.Contains(statuses, v) {
			return nil, httpjson.Bad("parameter status=%q: want one of %s", v, strings.Join(statuses, ", "))
		}
		cq.Status = v
	}
	if cq.Limit, err = limit(q); err != nil {
		return nil, err
	}
	list, total := s.cfg.Index.Captures(cq)
	if list == nil {
		list = []findings.Entry{}
	}
	return &CapturesResponse{Total: total, Captures: list}, nil
}

// captureID reads the capture named by the path.
func captureID(r *http.Request) (capture.ID, error) {
	id := capture.ID{Cluster: r.PathValue("cluster"), Job: r.PathValue("job"), Run: r.PathValue("run"), Capture: r.PathValue("capture")}
	if err := id.Validate(); err != nil {
		return capture.ID{}, httpjson.Bad("capture path %s: %v", id, err)
	}
	return id, nil
}

// CaptureResponse is the body of GET /api/v1/captures/{cluster}/{job}/{run}/{capture}.
type CaptureResponse struct {
	ID capture.ID `json:"id"`
	// Status, completeness and missing ranks as the partition check sees
	// them now.
	Status       string             `json:"status"`
	WorldSize    int                `json:"world_size"`
	Complete     bool               `json:"complete"`
	MissingRanks []int              `json:"missing_ranks,omitempty"`
	Manifests    []*traces.Manifest `json:"manifests"`
	// InvalidManifests are host manifests that could not be read.
	InvalidManifests []string `json:"invalid_manifests,omitempty"`
	// Record is the stored findings record, absent before analysis.
	Record *findings.Record `json:"record,omitempty"`
}

// capture answers from the store, not the index: it is the truth, and one
// capture is cheap to read.
func (s *Server) capture(w http.ResponseWriter, r *http.Request) {
	resp, err := s.captureDetail(r)
	httpjson.Answer(w, r, s.log, resp, err)
}

func (s *Server) captureDetail(r *http.Request) (*CaptureResponse, error) {
	if _, err := httpjson.Query(r); err != nil {
		return nil, err
	}
	id, err := captureID(r)
	if err != nil {
		return nil, err
	}
	c, err := capture.Load(r.Context(), s.cfg.Store, id, nil)
	if err != nil {
		return nil, err
	}
	rec, _, err := findings.Read(r.Context(), s.cfg.Store, id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	if len(c.Hosts) == 0 && rec == nil {
		return nil, fmt.Errorf("capture %s: %w: no committed host manifest under %s", id, store.ErrNotFound, id.Prefix())
	}
	resp := &CaptureResponse{
		ID: id, WorldSize: c.WorldSize(), Complete: c.Complete(), MissingRanks: c.MissingRanks(),
		InvalidManifests: c.Invalid, Record: rec, Manifests: []*traces.Manifest{},
	}
	for _, h := range c.Hosts {
		resp.Manifests = append(resp.Manifests, h.Manifest)
	}
	switch e, ok := s.cfg.Index.Capture(id); {
	case ok:
		resp.Status = e.Status
	case rec != nil && rec.Partial:
		resp.Status = findings.StatusPartial
	case rec != nil:
		resp.Status = findings.StatusAnalyzed
	case resp.Complete:
		resp.Status = findings.StatusPending
	default:
		resp.Status = findings.StatusWaiting
	}
	return resp, nil
}
