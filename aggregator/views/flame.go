package views

import (
	"bytes"
	"context"
	"fmt"
	"github.com/loupe-dev/loupe/aggregator/httpjson"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/google/pprof/profile"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// Bounds of one flame graph.
const (
	// minFlameShare drops frames below this share of the total: they are
	// narrower than a pixel anyway, and keep the body small.
	minFlameShare = 1.0 / 2000
	maxFlameDepth = 256
)

// FlameNode is one frame of a flame graph: its inclusive value and callees.
type FlameNode struct {
	Name     string       `json:"name"`
	Value    int64        `json:"value"`
	Children []*FlameNode `json:"children,omitempty"`
	// byName finds a callee while the tree is built; prune drops it.
	byName map[string]*FlameNode
}

// FlameGraph is the body of GET /api/v1/views/flamegraph/...: the CPU
// profile of one host, or of one rank on it, as a tree of call stacks.
type FlameGraph struct {
	Host string `json:"host"`
	// Rank is the rank shown, -1 for the whole host.
	Rank int `json:"rank"`
	// Unit is what values count: nanoseconds of CPU time, or samples.
	Unit      string     `json:"unit"`
	Total     int64      `json:"total"`
	Simulated bool       `json:"simulated,omitempty"`
	Note      string     `json:"note,omitempty"`
	Root      *FlameNode `json:"root"`
}

func (h *Handler) flamegraph(r *http.Request) (*FlameGraph, error) {
	q, err := httpjson.Query(r, "host", "rank")
	if err != nil {
		return nil, err
	}
	id, err := pathCapture(r)
	if err != nil {
		return nil, err
	}
	host, err := httpjson.Component(q, "host")
	if err != nil {
		return nil, err
	}
	rank := -1
	if v := q.Get("rank"); v != "" {
		if rank, err = strconv.Atoi(v); err != nil || rank < 0 {
			return nil, httpjson.Bad("parameter rank=%q: want a rank number (0 or more)", v)
		}
	}
	if host == "" && rank < 0 {
		return nil, httpjson.Bad("give host= (a host of the capture) or rank= (a rank of the job)")
	}
	ctx := r.Context()
	c, err := capture.Load(ctx, h.cfg.Store, id, nil)
	if err != nil {
		return nil, err
	}
	var m *traces.Manifest
	for _, hst := range c.Hosts {
		if (host == "" || hst.Manifest.Host == host) && (rank < 0 || slices.Contains(hst.Manifest.Ranks, rank)) {
			m = hst.Manifest
			break
		}
	}
	if m == nil {
		return nil, fmt.Errorf("capture %s: %w: no committed host bundle with host=%q rank=%d", id, store.ErrNotFound, host, rank)
	}
	part, ok := m.Part(traces.PartCPUProfile)
	if !ok {
		return nil, fmt.Errorf("capture %s host %s: %w: the bundle has no CPU profile (%s)", id, m.Host, store.ErrNotFound, traces.PartCPUProfile)
	}
	key := fmt.Sprintf("flame\x00%s\x00%s\x00%d", traces.KeyOf(m).Object(traces.PartCPUProfile), part.SHA256, rank)
	v, err := h.cache.get(key, func() (any, int64, error) {
		fg, err := h.computeFlame(ctx, m, rank)
		if err != nil {
			return nil, 0, err
		}
		return fg, int64(countNodes(fg.Root)) * 96, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*FlameGraph), nil
}

func (h *Handler) computeFlame(ctx context.Context, m *traces.Manifest, rank int) (*FlameGraph, error) {
	data, err := h.readPart(ctx, m, traces.PartCPUProfile)
	if err != nil {
		return nil, err
	}
	p, err := traces.ReadProfile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", traces.KeyOf(m).Object(traces.PartCPUProfile), err)
	}
	return buildFlame(p, m, rank), nil
}

// buildFlame folds the profile's samples into a call tree and drops what
// is too narrow to draw.
func buildFlame(p *profile.Profile, m *traces.Manifest, rank int) *FlameGraph {
	fg := foldFlame(p, m, rank)
	fg.Root.prune(int64(float64(fg.Total) * minFlameShare))
	return fg
}

// foldFlame folds the profile's samples into a call tree. With a rank, it
// keeps the samples labelled with that rank, or, when the agent did not
// label ranks, those of the rank's processes as the manifest lists them.
func foldFlame(p *profile.Profile, m *traces.Manifest, rank int) *FlameGraph {
	fg := &FlameGraph{Host: m.Host, Rank: rank, Unit: "samples", Simulated: m.Simulated, Root: &FlameNode{Name: "all"}}
	vi := 0
	for i, st := range p.SampleType {
		if st.Type == "cpu" {
			vi, fg.Unit = i, st.Unit
		}
	}
	if len(p.SampleType) > 0 && fg.Unit == "samples" {
		fg.Unit = p.SampleType[0].Type
	}
	keep := func(*profile.Sample) bool { return true }
	if rank >= 0 {
		want := strconv.Itoa(rank)
		labelled := slices.ContainsFunc(p.Sample, func(s *profile.Sample) bool { return len(s.Label["rank"]) > 0 })
		pids := map[string]bool{}
		for _, pr := range m.Processes {
			if pr.Rank == rank {
				pids[strconv.Itoa(pr.PID)] = true
			}
		}
		switch {
		case labelled:
			keep = func(s *profile.Sample) bool { return slices.Contains(s.Label["rank"], want) }
		case len(pids) > 0:
			keep = func(s *profile.Sample) bool { return len(s.Label["pid"]) > 0 && pids[s.Label["pid"][0]] }
		default:
			fg.Note = "the profile does not tell ranks apart (no rank or pid labels); showing the whole host"
		}
	}
	var stack []string
	for _, s := range p.Sample {
		if len(s.Value) <= vi || !keep(s) {
			continue
		}
		stack = stack[:0]
		// Locations are leaf first, and so are a location's inlined lines.
		for li := len(s.Location) - 1; li >= 0; li-- {
			loc := s.Location[li]
			for j := len(loc.Line) - 1; j >= 0; j-- {
				if fn := loc.Line[j].Function; fn != nil {
					stack = append(stack, fn.Name)
				}
			}
			if len(loc.Line) == 0 {
				stack = append(stack, fmt.Sprintf("0x%x", loc.Address))
			}
		}
		if len(s.Label["comm"]) > 0 {
			stack = append([]string{s.Label["comm"][0]}, stack...)
		}
		val := s.Value[vi]
		n := fg.Root
		n.Value += val
		for _, name := range stack[:min(len(stack), maxFlameDepth)] {
			n = n.child(name)
			n.Value += val
		}
	}
	fg.Total = fg.Root.Value
	return fg
}

// child returns n's callee of that name, adding it when new.
func (n *FlameNode) child(name string) *FlameNode {
	if c := n.byName[name]; c != nil {
		return c
	}
	if n.byName == nil {
		n.byName = map[string]*FlameNode{}
	}
	c := &FlameNode{Name: name}
	n.byName[name] = c
	n.Children = append(n.Children, c)
	return c
}

// prune drops callees below min and orders the rest by name, as flame
// graphs do (so that the same stacks sit in the same place across ranks).
func (n *FlameNode) prune(min int64) {
	n.byName = nil
	n.Children = slices.DeleteFunc(n.Children, func(c *FlameNode) bool { return c.Value < min || c.Value == 0 })
	slices.SortFunc(n.Children, func(a, b *FlameNode) int { return strings.Compare(a.Name, b.Name) })
	for _, c := range n.Children {
		c.prune(min)
	}
}

func countNodes(n *FlameNode) int {
	k := 1
	for _, c := range n.Children {
		k += countNodes(c)
	}
	return k
}
