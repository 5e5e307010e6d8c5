package views

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"github.com/loupe-dev/loupe/aggregator/httpjson"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// Limits of one job view.
const (
	// MaxStepCells bounds ranks x iterations of the step heatmap; a capture
	// with more keeps its last iterations.
	MaxStepCells = 1 << 18
	// maxTraceHosts is the most hosts the whole-capture trace export takes
	// (the API's own bound); larger captures offer per-host downloads.
	maxTraceHosts = 16
	// maxJobFindings bounds the findings listed on a job page.
	maxJobFindings = 500
	// histogramBins is the number of bins of the step-time histogram.
	histogramBins = 40
)

// Num is a number that encodes NaN as JSON null and rounds to 3 decimals.
type Num float64

// MarshalJSON writes null for NaN and infinities.
func (n Num) MarshalJSON() ([]byte, error) {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, math.Round(f*1000)/1000, 'f', -1, 64), nil
}

// JobView is the body of GET /api/v1/views/jobs/{cluster}/{job}/{run}.
type JobView struct {
	ID capture.ID `json:"id"`
	// Captures are the run's captures, newest first, for a capture picker.
	Captures     []CaptureSummary `json:"captures"`
	Status       string           `json:"status"`
	WorldSize    int              `json:"world_size"`
	MissingRanks []int            `json:"missing_ranks,omitempty"`
	Simulated    bool             `json:"simulated"`
	Start        time.Time        `json:"start"`
	End          time.Time        `json:"end"`
	Hosts        []JobHost        `json:"hosts"`
	// Trace downloads the whole capture as Chrome/Perfetto trace JSON; empty
	// when it has too many hosts (each host has its own link).
	Trace string     `json:"trace,omitempty"`
	Steps StepView   `json:"steps"`
	NCCL  []RankSkew `json:"nccl_skew"`
	// Arrival is the rank x collective heatmap of arrival lateness: where
	// a straggler of synchronous ranks shows, since their step times are
	// equal (every rank waits at the same collective).
	Arrival  ArrivalView      `json:"arrival"`
	Kernels  KernelView       `json:"kernels"`
	Notes    []string         `json:"notes,omitempty"`
	Findings []traces.Finding `json:"findings"`
	// FindingsTotal counts the capture's findings (Findings holds at most 500).
	FindingsTotal int `json:"findings_total"`
}

// CaptureSummary is one capture of the run.
type CaptureSummary struct {
	Capture        string    `json:"capture"`
	Status         string    `json:"status"`
	FirstCommitted time.Time `json:"first_committed"`
	Findings       int       `json:"findings"`
	Simulated      bool      `json:"simulated,omitempty"`
}

// JobHost is one host bundle of the capture.
type JobHost struct {
	Host      string `json:"host"`
	Ranks     []int  `json:"ranks"`
	GPUs      int    `json:"gpus"`
	Simulated bool   `json:"simulated,omitempty"`
	// Profile says whether the bundle has a CPU profile (cpu.pb.gz).
	Profile bool   `json:"profile"`
	Trace   string `json:"trace"`
}

// StepView is the rank x iteration step-time heatmap and its histogram.
type StepView struct {
	Ranks      []int32 `json:"ranks"`
	Iterations []int64 `json:"iterations"`
	// Ms is step time in milliseconds, rank-major: Ms[i*len(Iterations)+j]
	// is rank Ranks[i] at iteration Iterations[j]; null where missing.
	Ms []Num `json:"ms"`
	// RankMedianMs is each rank's median step time; JobMedianMs the median
	// of those, so a straggler is a rank well above it.
	RankMedianMs []Num     `json:"rank_median_ms"`
	JobMedianMs  Num       `json:"job_median_ms"`
	Source       string    `json:"source,omitempty"`
	Truncated    bool      `json:"truncated,omitempty"`
	Histogram    Histogram `json:"histogram"`
}

// Histogram counts values in bins; Edges has one more element than Counts.
type Histogram struct {
	Edges  []Num   `json:"edges"`
	Counts []int64 `json:"counts"`
}

// RankSkew is one rank's arrival lateness at NCCL collectives: how long
// after the first rank of each collective it called in.
type RankSkew struct {
	Rank        int32  `json:"rank"`
	Host        string `json:"host"`
	Collectives int    `json:"collectives"`
	MeanMs      Num    `json:"mean_ms"`
	P50Ms       Num    `json:"p50_ms"`
	P95Ms       Num    `json:"p95_ms"`
	MaxMs       Num    `json:"max_ms"`
	// LastShare is the share of collectives this rank arrived at last.
	LastShare Num `json:"last_share"`
}

// ArrivalView is each rank's lateness (ms after the first rank) at each of
// the capture's last complete collectives, in the order they happened.
type ArrivalView struct {
	Ranks []int32 `json:"ranks"`
	// Collectives label the columns, e.g. "AllReduce #41".
	Collectives []string `json:"collectives"`
	// Ms is rank-major: Ms[i*len(Collectives)+j] is rank Ranks[i] at
	// collective j; null where the rank has no call.
	Ms []Num `json:"ms"`
	// Truncated is set when older collectives were left out.
	Truncated bool `json:"truncated,omitempty"`
}

// maxArrivalColumns bounds the collectives of the arrival heatmap.
const maxArrivalColumns = 200

// KernelView is the kernel-duration histogram from the capture's Kineto
// traces: kernel launches binned by duration. Kineto summaries keep
// per-kernel statistics, so each kernel's launches are counted at its mean
// duration.
type KernelView struct {
	// Histogram edges are microseconds, spaced logarithmically.
	Histogram Histogram    `json:"histogram"`
	Top       []KernelLine `json:"top"`
	Ranks     int          `json:"ranks"`
}

// KernelLine is one of the kernels that took the most GPU time.
type KernelLine struct {
	Name    string `json:"name"`
	Count   int64  `json:"count"`
	MeanUs  Num    `json:"mean_us"`
	TotalMs Num    `json:"total_ms"`
}

// job answers the job view: the named capture of the run, or its newest.
func (h *Handler) job(r *http.Request) (*JobView, error) {
	q, err := httpjson.Query(r, "capture")
	if err != nil {
		return nil, err
	}
	id, err := pathCapture(r)
	if err != nil {
		return nil, err
	}
	if id.Capture, err = httpjson.Component(q, "capture"); err != nil {
		return nil, err
	}
	caps, _ := h.cfg.Index.Captures(findings.CaptureQuery{Cluster: id.Cluster, Job: id.Job, Run: id.Run})
	if id.Capture == "" {
		if len(caps) == 0 {
			return nil, fmt.Errorf("job %s/%s/%s: %w: no capture of this run is known", id.Cluster, id.Job, id.Run, store.ErrNotFound)
		}
		id.Capture = caps[0].ID.Capture
	}
	ctx := r.Context()
	c, err := capture.Load(ctx, h.cfg.Store, id, nil)
	if err != nil {
		return nil, err
	}
	if len(c.Hosts) == 0 {
		return nil, fmt.Errorf("capture %s: %w: no committed host manifest under %s", id, store.ErrNotFound, id.Prefix())
	}
	sig := []string{"job", id.String()}
	for _, hst := range c.Hosts {
		sig = append(sig, hst.Key, hst.ETag, hst.Committed.String())
	}
	cached, err := h.cache.get(strings.Join(sig, "\x00"), func() (any, int64, error) {
		v, err := h.computeJob(ctx, c)
		if err != nil {
			return nil, 0, err
		}
		data, _ := json.Marshal(v)
		return v, int64(len(data)), nil
	})
	if err != nil {
		return nil, err
	}
	v := *cached.(*JobView)
	for _, e := range caps {
		v.Captures = append(v.Captures, CaptureSummary{Capture: e.ID.Capture, Status: e.Status, FirstCommitted: e.FirstCommitted, Findings: e.Findings, Simulated: e.Simulated})
	}
	v.Status = findings.StatusWaiting
	if e, ok := h.cfg.Index.Capture(id); ok {
		v.Status = e.Status
	}
	v.Findings, v.FindingsTotal = h.cfg.Index.Findings(findings.Query{Cluster: id.Cluster, Job: id.Job, Run: id.Run, Capture: id.Capture, Limit: maxJobFindings})
	if v.Findings == nil {
		v.Findings = []traces.Finding{}
	}
	return &v, nil
}

// computeJob reads the capture's steps, NCCL events and Kineto traces.
func (h *Handler) computeJob(ctx context.Context, c *capture.Capture) (*JobView, error) {
	v := &JobView{ID: c.ID, WorldSize: c.WorldSize(), MissingRanks: c.MissingRanks(), Simulated: c.Simulated(), NCCL: []RankSkew{}}
	slices.SortFunc(c.Hosts, func(a, b capture.Host) int { return compareNatural(a.Manifest.Host, b.Manifest.Host) })
	tracePath := "/api/v1/captures/" + c.ID.String() + "/trace"
	if len(c.Hosts) <= maxTraceHosts {
		v.Trace = tracePath
	}
	steps := &stepAcc{cells: map[stepKey]float64{}}
	skew := &skewAcc{colls: map[collKey]*collArrivals{}}
	hostOfRank := map[int32]string{}
	for _, hst := range c.Hosts {
		m := hst.Manifest
		if v.Start.IsZero() || m.Start.Before(v.Start) {
			v.Start = m.Start
		}
		if m.End.After(v.End) {
			v.End = m.End
		}
		_, prof := m.Part(traces.PartCPUProfile)
		v.Hosts = append(v.Hosts, JobHost{Host: m.Host, Ranks: m.Ranks, GPUs: len(m.GPUs), Simulated: m.Simulated, Profile: prof,
			Trace: tracePath + "?host=" + url.QueryEscape(m.Host)})
		for _, r := range m.Ranks {
			hostOfRank[int32(r)] = m.Host
		}
		for _, n := range m.Notes {
			v.Notes = append(v.Notes, m.Host+": "+n)
		}
		if err := scanPart(ctx, h, m, traces.PartSteps, steps.add, traces.Columns("rank", "iteration", "start_ns", "end_ns", "source")); err != nil {
			return nil, err
		}
		if err := scanPart(ctx, h, m, traces.PartNCCLEvents, skew.add, traces.Columns("time_ns", "rank", "nranks", "comm_id", "op", "seq")); err != nil {
			return nil, err
		}
	}
	v.Steps = steps.view()
	v.NCCL = skew.view(hostOfRank)
	v.Arrival = skew.arrival()
	kv, err := h.kernels(ctx, c)
	if err != nil {
		v.Notes = append(v.Notes, "Kineto traces: "+err.Error())
	}
	v.Kernels = kv
	return v, nil
}

// scanPart decodes the named columns of a host's part, if the bundle has it.
func scanPart[T any](ctx context.Context, h *Handler, m *traces.Manifest, name string, fn func([]T) error, cols traces.ScanOption) error {
	data, err := h.readPart(ctx, m, name)
	if err != nil || data == nil {
		return err
	}
	if err := traces.ScanTable(bytes.NewReader(data), int64(len(data)), make([]T, scanBatch), fn, cols); err != nil {
		return fmt.Errorf("%s: %w", traces.KeyOf(m).Object(name), err)
	}
	return nil
}

type stepKey struct {
	rank int32
	iter int64
}

// stepAcc collects step durations by rank and iteration.
type stepAcc struct {
	cells  map[stepKey]float64
	source string
}

func (a *stepAcc) add(rows []traces.Step) error {
	for _, r := range rows {
		d := float64(r.EndNs-r.StartNs) / 1e6
		if d < 0 {
			continue
		}
		a.cells[stepKey{r.Rank, r.Iteration}] = d
		if a.source == "" {
			a.source = r.Source
		}
	}
	return nil
}

func (a *stepAcc) view() StepView {
	rankSet, iterSet := map[int32]bool{}, map[int64]bool{}
	for k := range a.cells {
		rankSet[k.rank], iterSet[k.iter] = true, true
	}
	sv := StepView{Source: a.source, Ranks: sortedKeys(rankSet), Iterations: sortedKeys(iterSet), Ms: []Num{}, RankMedianMs: []Num{}}
	if n := len(sv.Ranks); n > 0 && n*len(sv.Iterations) > MaxStepCells {
		sv.Iterations = sv.Iterations[len(sv.Iterations)-MaxStepCells/n:]
		sv.Truncated = true
	}
	all := make([]float64, 0, len(a.cells))
	medians := make([]float64, 0, len(sv.Ranks))
	for _, r := range sv.Ranks {
		var mine []float64
		for _, it := range sv.Iterations {
			d, ok := a.cells[stepKey{r, it}]
			if !ok {
				sv.Ms = append(sv.Ms, Num(math.NaN()))
				continue
			}
			sv.Ms = append(sv.Ms, Num(d))
			mine = append(mine, d)
		}
		all = append(all, mine...)
		med := median(mine)
		sv.RankMedianMs = append(sv.RankMedianMs, Num(med))
		if !math.IsNaN(med) {
			medians = append(medians, med)
		}
	}
	sv.JobMedianMs = Num(median(medians))
	sv.Histogram = linearHistogram(all, histogramBins)
	return sv
}

// collKey is one collective: every rank of the communicator calls it with
// the same sequence number.
type collKey struct {
	comm uint64
	seq  int64
}

type collArrivals struct {
	op     string
	nranks int32
	ranks  []int32
	times  []int64
}

// skewAcc collects the arrivals of every collective.
type skewAcc struct {
	colls map[collKey]*collArrivals
}

// collectiveOps are the NCCL calls every rank makes with the same sequence
// number; point-to-point and group calls do not line up across ranks.
var collectiveOps = map[string]bool{"AllReduce": true, "AllGather": true, "ReduceScatter": true, "Broadcast": true, "Reduce": true, "AllToAll": true}

func (a *skewAcc) add(rows []traces.NCCLEvent) error {
	for i := range rows {
		r := &rows[i]
		if !collectiveOps[r.Op] {
			continue
		}
		k := collKey{r.CommID, r.Seq}
		c := a.colls[k]
		if c == nil {
			c = &collArrivals{op: r.Op, nranks: r.NRanks}
			a.colls[k] = c
		}
		c.ranks = append(c.ranks, r.Rank)
		c.times = append(c.times, r.TimeNs)
	}
	return nil
}

// view measures, for every collective all of whose ranks arrived in the
// window, each rank's lateness behind the first arrival.
func (a *skewAcc) view(hostOfRank map[int32]string) []RankSkew {
	late := map[int32][]float64{}
	last := map[int32]int{}
	for _, c := range a.colls {
		if c.nranks < 2 || len(c.ranks) != int(c.nranks) {
			continue
		}
		first, lastI := slices.Min(c.times), 0
		for i, t := range c.times {
			late[c.ranks[i]] = append(late[c.ranks[i]], float64(t-first)/1e6)
			if t > c.times[lastI] {
				lastI = i
			}
		}
		last[c.ranks[lastI]]++
	}
	out := make([]RankSkew, 0, len(late))
	for _, r := range sortedKeys(late) {
		xs := late[r]
		slices.Sort(xs)
		sum := 0.0
		for _, x := range xs {
			sum += x
		}
		out = append(out, RankSkew{
			Rank: r, Host: hostOfRank[r], Collectives: len(xs), MeanMs: Num(sum / float64(len(xs))),
			P50Ms: Num(quantile(xs, 0.5)), P95Ms: Num(quantile(xs, 0.95)), MaxMs: Num(xs[len(xs)-1]),
			LastShare: Num(float64(last[r]) / float64(len(xs))),
		})
	}
	return out
}

// arrival lays out the last complete collectives, oldest first, as a
// rank x collective heatmap of lateness.
func (a *skewAcc) arrival() ArrivalView {
	type coll struct {
		key   collKey
		c     *collArrivals
		first int64
	}
	var cs []coll
	ranks := map[int32]bool{}
	for k, c := range a.colls {
		if c.nranks < 2 || len(c.ranks) != int(c.nranks) {
			continue
		}
		cs = append(cs, coll{k, c, slices.Min(c.times)})
		for _, r := range c.ranks {
			ranks[r] = true
		}
	}
	slices.SortFunc(cs, func(x, y coll) int {
		return cmp.Or(cmp.Compare(x.first, y.first), cmp.Compare(x.key.comm, y.key.comm), cmp.Compare(x.key.seq, y.key.seq))
	})
	v := ArrivalView{Ranks: sortedKeys(ranks), Collectives: []string{}, Ms: []Num{}}
	if len(cs) > maxArrivalColumns {
		cs, v.Truncated = cs[len(cs)-maxArrivalColumns:], true
	}
	row := make(map[int32]int, len(v.Ranks))
	for i, r := range v.Ranks {
		row[r] = i
	}
	v.Ms = make([]Num, len(v.Ranks)*len(cs))
	for i := range v.Ms {
		v.Ms[i] = Num(math.NaN())
	}
	for j, c := range cs {
		v.Collectives = append(v.Collectives, fmt.Sprintf("%s #%d", c.c.op, c.key.seq))
		for i, r := range c.c.ranks {
			v.Ms[row[r]*len(cs)+j] = Num(float64(c.c.times[i]-c.first) / 1e6)
		}
	}
	return v
}

// kernels builds the kernel-duration histogram from the Kineto traces.
func (h *Handler) kernels(ctx context.Context, c *capture.Capture) (KernelView, error) {
	kv := KernelView{Histogram: Histogram{Edges: []Num{}, Counts: []int64{}}, Top: []KernelLine{}}
	ranks, err := analyzers.KernelBreakdown(ctx, c.Input(h.cfg.Store, h.cfg.MaxPartSize))
	if len(ranks) == 0 {
		return kv, err
	}
	kv.Ranks = len(ranks)
	type agg struct {
		count int64
		total time.Duration
	}
	byName := map[string]*agg{}
	var durs []float64
	var weights []int64
	for _, r := range ranks {
		for _, k := range r.Kernels {
			if k.Count <= 0 {
				continue
			}
			a := byName[k.Name]
			if a == nil {
				a = &agg{}
				byName[k.Name] = a
			}
			a.count += k.Count
			a.total += k.Total
			durs = append(durs, float64(k.Mean())/1e3)
			weights = append(weights, k.Count)
		}
	}
	kv.Histogram = logHistogram(durs, weights)
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Or(cmp.Compare(byName[b].total, byName[a].total), cmp.Compare(a, b)) })
	for _, n := range names[:min(len(names), 20)] {
		a := byName[n]
		kv.Top = append(kv.Top, KernelLine{Name: n, Count: a.count, MeanUs: Num(float64(a.total) / float64(a.count) / 1e3), TotalMs: Num(float64(a.total) / 1e6)})
	}
	return kv, err
}

// linearHistogram bins xs into n equal bins over [min, max].
func linearHistogram(xs []float64, n int) Histogram {
	hg := Histogram{Edges: []Num{}, Counts: []int64{}}
	if len(xs) == 0 {
		return hg
	}
	lo, hi := slices.Min(xs), slices.Max(xs)
	if hi == lo {
		hi = lo + 1
	}
	w := (hi - lo) / float64(n)
	for i := 0; i <= n; i++ {
		hg.Edges = append(hg.Edges, Num(lo+float64(i)*w))
	}
	hg.Counts = make([]int64, n)
	for _, x := range xs {
		hg.Counts[min(int((x-lo)/w), n-1)]++
	}
	return hg
}

// logHistogram bins positive xs (with weights) into 4 bins per decade.
func logHistogram(xs []float64, weights []int64) Histogram {
	hg := Histogram{Edges: []Num{}, Counts: []int64{}}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, x := range xs {
		if x > 0 {
			lo, hi = min(lo, x), max(hi, x)
		}
	}
	if math.IsInf(lo, 1) {
		return hg
	}
	const perDecade = 4
	first, last := math.Floor(math.Log10(lo)*perDecade), math.Floor(math.Log10(hi)*perDecade)+1
	for e := first; e <= last; e++ {
		hg.Edges = append(hg.Edges, Num(math.Pow(10, e/perDecade)))
	}
	hg.Counts = make([]int64, len(hg.Edges)-1)
	for i, x := range xs {
		if x > 0 {
			b := int(math.Floor(math.Log10(x)*perDecade) - first)
			hg.Counts[min(max(b, 0), len(hg.Counts)-1)] += weights[i]
		}
	}
	return hg
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return quantile(s, 0.5)
}

// quantile of sorted xs, interpolated.
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	pos := q * float64(len(xs)-1)
	i := int(pos)
	if i+1 >= len(xs) {
		return xs[len(xs)-1]
	}
	return xs[i] + (xs[i+1]-xs[i])*(pos-float64(i))
}

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
