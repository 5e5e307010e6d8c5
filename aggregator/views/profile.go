package views

import (
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/aggregator/httpjson"
	"github.com/loupe-dev/loupe/traces"
)

// Limits of a continuous flame graph.
const (
	// DefaultProfileWindow is the time range shown without from and to.
	DefaultProfileWindow = time.Hour
	// MaxProfileParts bounds the continuous profiles one view merges.
	MaxProfileParts = 4096
)

// ProfileFlame is the body of GET /api/v1/views/profile: the CPU time of a
// job, a host or the fleet over a time range, from the agents' continuous
// profiles, as a flame graph. Host is empty when several hosts are merged.
type ProfileFlame struct {
	FlameGraph
	Cluster string    `json:"cluster,omitempty"`
	Job     string    `json:"job,omitempty"`
	From    time.Time `json:"from"`
	To      time.Time `json:"to"`
	// Profiles is how many continuous profiles (one per job run, host
	// and interval) were merged.
	Profiles int `json:"profiles"`
}

type profileQuery struct {
	q    findings.ProfileQuery
	rank int
}

func parseProfileQuery(r *http.Request, now time.Time) (profileQuery, error) {
	pq := profileQuery{rank: -1}
	q, err := httpjson.Query(r, "cluster", "job", "host", "rank", "from", "to")
	if err != nil {
		return pq, err
	}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"cluster", &pq.q.Cluster}, {"job", &pq.q.Job}, {"host", &pq.q.Host}} {
		if *f.dst, err = httpjson.Component(q, f.name); err != nil {
			return pq, err
		}
	}
	if v := q.Get("rank"); v != "" {
		if pq.rank, err = strconv.Atoi(v); err != nil || pq.rank < 0 {
			return pq, httpjson.Bad("parameter rank=%q: want a rank number (0 or more)", v)
		}
	}
	pq.q.To = now
	if v := q.Get("to"); v != "" {
		if pq.q.To, err = parseTime("to", v); err != nil {
			return pq, err
		}
	}
	pq.q.From = pq.q.To.Add(-DefaultProfileWindow)
	if v := q.Get("from"); v != "" {
		if pq.q.From, err = parseTime("from", v); err != nil {
			return pq, err
		}
	}
	if !pq.q.To.After(pq.q.From) {
		return pq, httpjson.Bad("parameters from=%s and to=%s: to must be after from", pq.q.From.Format(time.RFC3339), pq.q.To.Format(time.RFC3339))
	}
	if pq.q.To.Sub(pq.q.From) > MaxWindow {
		return pq, httpjson.Bad("parameters from and to span %s; at most %s", pq.q.To.Sub(pq.q.From), MaxWindow)
	}
	return pq, nil
}

func (h *Handler) profileFlame(r *http.Request) (*ProfileFlame, error) {
	pq, err := parseProfileQuery(r, time.Now().UTC())
	if err != nil {
		return nil, err
	}
	out := &ProfileFlame{Cluster: pq.q.Cluster, Job: pq.q.Job, From: pq.q.From, To: pq.q.To}
	out.Host, out.Rank, out.Unit = pq.q.Host, pq.rank, "nanoseconds"
	refs := h.cfg.Index.Profiles(pq.q)
	if len(refs) > MaxProfileParts {
		return nil, httpjson.Bad("the range holds %d continuous profiles, at most %d are merged: narrow from and to, or choose a job or host", len(refs), MaxProfileParts)
	}
	out.Profiles = len(refs)
	if len(refs) == 0 {
		out.Root = &FlameNode{Name: "all"}
		out.Note = "no continuous CPU profile in this range (agents spool one per job run, host and minute while cpu.continuous.enabled is on)"
		return out, nil
	}
	sum := fnv.New64a()
	for _, ref := range refs {
		fmt.Fprintln(sum, ref.Key)
	}
	key := fmt.Sprintf("profile\x00%x\x00%d\x00%d\x00%d", sum.Sum64(), pq.rank, pq.q.From.Unix(), pq.q.To.Unix())
	v, err := h.cache.get(key, func() (any, int64, error) {
		fg := h.mergeProfiles(r.Context(), refs, pq.rank)
		return fg, int64(countNodes(fg.Root)) * 96, nil
	})
	if err != nil {
		return nil, err
	}
	fg := v.(*FlameGraph)
	out.Root, out.Total, out.Unit, out.Simulated, out.Note = fg.Root, fg.Total, fg.Unit, fg.Simulated, fg.Note
	return out, nil
}

// mergeProfiles folds the profiles, 8 at a time, into one flame graph.
// Profiles that cannot be read are left out and counted in the note.
func (h *Handler) mergeProfiles(ctx context.Context, refs []findings.ProfileRef, rank int) *FlameGraph {
	trees := make([]*FlameGraph, len(refs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, ref := range refs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fg, err := h.profileTree(ctx, ref.Key, rank)
			if err != nil {
				if ctx.Err() == nil {
					h.log.Warn("continuous profile left out of a flame graph", "manifest", ref.Key, "err", err)
				}
				return
			}
			trees[i] = fg
		}()
	}
	wg.Wait()
	out := &FlameGraph{Rank: rank, Unit: "nanoseconds", Root: &FlameNode{Name: "all"}}
	missing := 0
	for _, t := range trees {
		if t == nil {
			missing++
			continue
		}
		out.Root.merge(t.Root)
		out.Simulated = out.Simulated || t.Simulated
	}
	out.Total = out.Root.Value
	out.Root.prune(int64(float64(out.Total) * minFlameShare))
	if missing > 0 {
		out.Note = fmt.Sprintf("%d of %d continuous profiles could not be read and are left out (see the aggregator's log)", missing, len(trees))
	}
	return out
}

// profileTree is one continuous profile's whole call tree, cached: the
// bundles never change once committed.
func (h *Handler) profileTree(ctx context.Context, manifestKey string, rank int) (*FlameGraph, error) {
	v, err := h.cache.get(fmt.Sprintf("ptree\x00%s\x00%d", manifestKey, rank), func() (any, int64, error) {
		m, err := h.readManifest(ctx, manifestKey)
		if err != nil {
			return nil, 0, err
		}
		data, err := h.readPart(ctx, m, traces.PartContinuousProfile)
		if err != nil {
			return nil, 0, err
		}
		if data == nil {
			return nil, 0, fmt.Errorf("%s lists no %s", manifestKey, traces.PartContinuousProfile)
		}
		p, err := traces.ReadProfile(bytes.NewReader(data))
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", traces.KeyOf(m).Object(traces.PartContinuousProfile), err)
		}
		fg := foldFlame(p, m, rank)
		fg.Root.prune(0) // sorted, and without the lookup maps
		return fg, int64(countNodes(fg.Root)) * 96, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*FlameGraph), nil
}

// merge adds o's values to n, callee by callee; o is not changed.
func (n *FlameNode) merge(o *FlameNode) {
	n.Value += o.Value
	for _, c := range o.Children {
		n.child(c.Name).merge(c)
	}
}
