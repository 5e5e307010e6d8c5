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
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/traces"
)

// Metric is one GPU metric the fleet heatmap can be coloured by.
type Metric struct {
	Name  string `json:"name"`
	Label string `json:"label"`
	Unit  string `json:"unit"`
	// Max is the top of the colour scale.
	Max float64 `json:"max"`
	// column is the metric's gpu_samples.parquet column, value its field.
	column string
	value  func(*fleetSample) float32
	scale  float64
	// prof marks DCGM profiling fields, valid only where prof_valid is set.
	prof bool
}

// fleetSample is the part of a gpu_samples.parquet row (traces.GPUSample)
// that the fleet view draws. Decoding into it rather than the 40-column
// row keeps a batch in the CPU's cache while it is binned.
type fleetSample struct {
	TimeNs       int64   `parquet:"time_ns"`
	GPU          int32   `parquet:"gpu"`
	ProfValid    bool    `parquet:"prof_valid"`
	SMActive     float32 `parquet:"sm_active"`
	GPUUtil      float32 `parquet:"gpu_util"`
	TensorActive float32 `parquet:"tensor_active"`
	DRAMActive   float32 `parquet:"dram_active"`
	PowerW       float32 `parquet:"power_w"`
}

// Metrics are the fleet heatmap's metrics, the default first.
var Metrics = []Metric{
	{Name: "sm_active", Label: "SM active", Unit: "%", Max: 100, column: "sm_active", value: func(s *fleetSample) float32 { return s.SMActive }, scale: 100, prof: true},
	{Name: "gpu_util", Label: "GPU utilization", Unit: "%", Max: 100, column: "gpu_util", value: func(s *fleetSample) float32 { return s.GPUUtil }, scale: 1},
	{Name: "tensor_active", Label: "Tensor active", Unit: "%", Max: 100, column: "tensor_active", value: func(s *fleetSample) float32 { return s.TensorActive }, scale: 100, prof: true},
	{Name: "dram_active", Label: "DRAM active", Unit: "%", Max: 100, column: "dram_active", value: func(s *fleetSample) float32 { return s.DRAMActive }, scale: 100, prof: true},
	{Name: "power", Label: "Power", Unit: "W", Max: 700, column: "power_w", value: func(s *fleetSample) float32 { return s.PowerW }, scale: 1},
}

// Limits of one fleet view.
const (
	// DefaultWindow is the most time shown when neither from nor to is
	// given: the window then fits the captures that ended in the
	// DefaultWindow up to the newest data, so that a few 20 s captures fill
	// the heatmap instead of being slivers of an hour.
	DefaultWindow = time.Hour
	// minFitWindow is the least time a fitted window spans.
	minFitWindow = 10 * time.Second
	// MaxWindow bounds to-from.
	MaxWindow = 7 * 24 * time.Hour
	// MaxColumns bounds the time buckets of one view.
	MaxColumns = 2000
	// autoColumns is what an automatic bucket size aims at.
	autoColumns = 360
	// maxBundleSeconds bounds the time span one host bundle's GPU samples
	// are binned over.
	maxBundleSeconds = 7 * 24 * 3600
	// maxBundleGPUs bounds the devices of one host bundle.
	maxBundleGPUs = 256
)

// niceBuckets are the bucket sizes an automatic bucket is chosen from.
var niceBuckets = []int64{1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400}

// fleetQuery is a parsed fleet request.
type fleetQuery struct {
	from, to       time.Time
	fromSet, toSet bool
	bucket         int64 // seconds; 0 chooses one
	metric         int   // index into Metrics
	cluster, job   string
}

func parseFleetQuery(r *http.Request) (fleetQuery, error) {
	var fq fleetQuery
	q, err := httpjson.Query(r, "from", "to", "bucket", "metric", "cluster", "job")
	if err != nil {
		return fq, err
	}
	if fq.cluster, err = httpjson.Component(q, "cluster"); err != nil {
		return fq, err
	}
	if fq.job, err = httpjson.Component(q, "job"); err != nil {
		return fq, err
	}
	if v := q.Get("from"); v != "" {
		if fq.from, err = parseTime("from", v); err != nil {
			return fq, err
		}
		fq.fromSet = true
	}
	if v := q.Get("to"); v != "" {
		if fq.to, err = parseTime("to", v); err != nil {
			return fq, err
		}
		fq.toSet = true
	}
	if fq.fromSet && fq.toSet {
		if !fq.to.After(fq.from) {
			return fq, httpjson.Bad("parameters from=%s and to=%s: to must be after from", q.Get("from"), q.Get("to"))
		}
		if fq.to.Sub(fq.from) > MaxWindow {
			return fq, httpjson.Bad("parameters from and to span %s; at most %s", fq.to.Sub(fq.from), MaxWindow)
		}
	}
	if v := q.Get("bucket"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			n, nerr := strconv.ParseInt(v, 10, 64)
			if nerr != nil {
				return fq, httpjson.Bad("parameter bucket=%q: want a duration such as 10s or 1m, or whole seconds", v)
			}
			d = time.Duration(n) * time.Second
		}
		if d < time.Second || d%time.Second != 0 || d > 24*time.Hour {
			return fq, httpjson.Bad("parameter bucket=%q: want whole seconds from 1s to 24h", v)
		}
		fq.bucket = int64(d / time.Second)
	}
	if v := q.Get("metric"); v != "" {
		fq.metric = slices.IndexFunc(Metrics, func(m Metric) bool { return m.Name == v })
		if fq.metric < 0 {
			names := make([]string, len(Metrics))
			for i, m := range Metrics {
				names[i] = m.Name
			}
			return fq, httpjson.Bad("parameter metric=%q: want one of %s", v, strings.Join(names, ", "))
		}
	}
	return fq, nil
}

// parseTime reads RFC 3339 or Unix seconds.
func parseTime(name, v string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t.UTC(), nil
	}
	if f, err := strconv.ParseFloat(v, 64); err == nil && f > 0 && f < 1e11 {
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(frac*1e9)).UTC(), nil
	}
	return time.Time{}, httpjson.Bad("parameter %s=%q: want an RFC 3339 time (2026-11-25T12:00:00Z) or Unix seconds", name, v)
}

// hostEntry is one committed host bundle as the fleet view knows it.
type hostEntry struct {
	key       string // manifest key
	committed time.Time
	once      sync.Once
	m         *traces.Manifest
	err       error
}

// hostTable caches decoded manifests by manifest key.
type hostTable struct {
	h       *Handler
	mu      sync.Mutex
	entries map[string]*hostEntry
}

// manifests returns the manifests of every host of the captures, reading
// the ones not seen before 8 at a time. Hosts whose manifest cannot be read
// are logged and left out: one bad bundle must not blank the fleet.
func (t *hostTable) manifests(ctx context.Context, caps []findings.Entry) []*hostEntry {
	var out []*hostEntry
	t.mu.Lock()
	for _, c := range caps {
		for _, hs := range c.Hosts {
			e := t.entries[hs.Manifest]
			if e == nil || !e.committed.Equal(hs.Committed) {
				e = &hostEntry{key: hs.Manifest, committed: hs.Committed}
				t.entries[hs.Manifest] = e
			}
			out = append(out, e)
		}
	}
	t.mu.Unlock()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, e := range out {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			e.once.Do(func() { e.m, e.err = t.h.readManifest(ctx, e.key) })
		}()
	}
	wg.Wait()
	ok := out[:0]
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range out {
		if e.err != nil {
			// Forget the failure, so that the next view tries again (the
			// store may have been unreachable, or this request cancelled).
			if t.entries[e.key] == e {
				delete(t.entries, e.key)
			}
			if ctx.Err() == nil {
				t.h.log.Warn("fleet view: host bundle left out", "manifest", e.key, "err", e.err)
			}
			continue
		}
		ok = append(ok, e)
	}
	return ok
}

// prune forgets manifests whose keys are not in keep.
func (t *hostTable) prune(keep map[string]bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k := range t.entries {
		if !keep[k] {
			delete(t.entries, k)
		}
	}
}

func (h *Handler) readManifest(ctx context.Context, key string) (*traces.Manifest, error) {
	rc, _, err := h.cfg.Store.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", key, err)
	}
	defer rc.Close()
	m, err := traces.DecodeManifest(rc)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", key, err)
	}
	return m, nil
}

// gpuBins is one host bundle's GPU samples averaged per second: what the
// fleet view caches, so that any window and bucket size is a walk over
// arrays. Seconds without a sample (or without valid profiling fields) are
// NaN.
type gpuBins struct {
	start int64   // Unix second of the first bin
	secs  int64   // bins per GPU
	gpus  []int32 // device indices, one slot each
	// vals[m][slot*secs+s] is Metrics[m] of GPU slot at second start+s.
	vals [][]float32
}

func (b *gpuBins) size() int64 { return int64(len(Metrics))*int64(len(b.gpus))*b.secs*4 + 256 }

// bins returns the per-second GPU bins of the host bundle, from the cache
// or by reading its gpu_samples.parquet.
func (h *Handler) bins(ctx context.Context, e *hostEntry) (*gpuBins, error) {
	v, err := h.cache.get("gpu\x00"+e.key+"\x00"+e.committed.String(), func() (any, int64, error) {
		data, err := h.readPart(ctx, e.m, traces.PartGPUSamples)
		if err != nil {
			return nil, 0, err
		}
		b, err := binGPUSamples(e.m, data)
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", traces.KeyOf(e.m).Object(traces.PartGPUSamples), err)
		}
		return b, b.size(), nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*gpuBins), nil
}

// binGPUSamples averages the samples per GPU and second over the bundle's
// window, reading only the columns the fleet view draws.
func binGPUSamples(m *traces.Manifest, data []byte) (*gpuBins, error) {
	start, end := m.Start.Unix(), m.End.Unix()+1
	if m.Start.IsZero() || end <= start || end-start > maxBundleSeconds {
		return nil, fmt.Errorf("capture window %s to %s is empty or longer than %d s", m.Start, m.End, maxBundleSeconds)
	}
	b := &gpuBins{start: start, secs: end - start, vals: make([][]float32, len(Metrics))}
	names := []string{"time_ns", "gpu", "prof_valid"}
	for _, mt := range Metrics {
		names = append(names, mt.column)
	}
	// Per GPU slot, the sum and count of metric m at second s are at
	// s*nm+m: a sample updates neighbouring cells rather than one cell in
	// each of nm arrays, which keeps binning a cold fleet view in cache.
	nm := len(Metrics)
	slot := map[int32]int{}
	var sums [][]float64
	var counts [][]uint16
	buf := make([]fleetSample, scanBatch)
	err := traces.ScanTable(bytes.NewReader(data), int64(len(data)), buf, func(rows []fleetSample) error {
		for i := range rows {
			r := &rows[i]
			s := r.TimeNs/1e9 - start
			if s < 0 || s >= b.secs {
				continue // outside the announced window
			}
			g, ok := slot[r.GPU]
			if !ok {
				if len(slot) == maxBundleGPUs {
					return fmt.Errorf("more than %d GPUs in one bundle", maxBundleGPUs)
				}
				g = len(slot)
				slot[r.GPU] = g
				b.gpus = append(b.gpus, r.GPU)
				sums = append(sums, make([]float64, b.secs*int64(nm)))
				counts = append(counts, make([]uint16, b.secs*int64(nm)))
			}
			sum, count := sums[g][s*int64(nm):][:nm], counts[g][s*int64(nm):][:nm]
			for m := range Metrics {
				mt := &Metrics[m]
				if mt.prof && !r.ProfValid {
					continue
				}
				sum[m] += float64(mt.value(r)) * mt.scale
				if count[m] < math.MaxUint16 {
					count[m]++
				}
			}
		}
		return nil
	}, traces.Columns(names...))
	if err != nil {
		return nil, err
	}
	for m := range Metrics {
		vals := make([]float32, int64(len(b.gpus))*b.secs)
		for g := range b.gpus {
			row := vals[int64(g)*b.secs : int64(g+1)*b.secs]
			for s := range row {
				if n := counts[g][s*nm+m]; n > 0 {
					row[s] = float32(sums[g][s*nm+m] / float64(n))
				} else {
					row[s] = float32(math.NaN())
				}
			}
		}
		b.vals[m] = vals
	}
	return b, nil
}

// FleetRow is one GPU row of the fleet heatmap.
type FleetRow struct {
	// Job indexes FleetView.Jobs.
	Job       int    `json:"job"`
	Host      string `json:"host"`
	GPU       int32  `json:"gpu"`
	UUID      string `json:"uuid,omitempty"`
	Model     string `json:"model,omitempty"`
	Simulated bool   `json:"simulated,omitempty"`
}

// FleetJob is one job run of the fleet heatmap; its rows are contiguous.
type FleetJob struct {
	Cluster string `json:"cluster"`
	Job     string `json:"job"`
	Run     string `json:"run"`
	// Capture is the latest capture in the window, which the job link opens.
	Capture   string `json:"capture"`
	FirstRow  int    `json:"first_row"`
	Rows      int    `json:"rows"`
	Simulated bool   `json:"simulated,omitempty"`
	// Unowned marks the group of GPUs that no captured job's process uses
	// (a host's idle GPUs, or another tenant's, sampled with a capture that
	// matched no process): Job, Run and Capture are empty, and its rows
	// are the host's, whichever capture sampled them.
	Unowned bool `json:"unowned,omitempty"`
}

// FleetView is the body of GET /api/v1/views/fleet, minus Values, which is
// written after it: Rows x Columns numbers, row-major, null where no sample
// fell into the bucket.
type FleetView struct {
	Metric  Metric    `json:"metric"`
	Metrics []Metric  `json:"metrics"`
	From    time.Time `json:"from"`
	To      time.Time `json:"to"`
	// FromMs is From in Unix milliseconds: column i starts at FromMs +
	// i*BucketS*1000.
	FromMs    int64      `json:"from_ms"`
	BucketS   int64      `json:"bucket_s"`
	Columns   int        `json:"columns"`
	Rows      []FleetRow `json:"rows"`
	Jobs      []FleetJob `json:"jobs"`
	Captures  int        `json:"captures"`
	Simulated bool       `json:"simulated"`
}

// fitWindow is the default window: from the earliest start to the newest
// end of the GPU captures that ended within DefaultWindow of the newest
// data (at least minFitWindow, whole seconds); the hour before now when
// there is none.
func fitWindow(hosts []*hostEntry, now time.Time) (from, to time.Time) {
	for _, e := range hosts {
		if _, ok := e.m.Part(traces.PartGPUSamples); ok && e.m.End.After(to) {
			to = e.m.End
		}
	}
	if to.IsZero() {
		to = now.Truncate(time.Second).Add(time.Second)
		return to.Add(-DefaultWindow), to
	}
	if end := to; to.Truncate(time.Second).Before(end) {
		to = end.Truncate(time.Second).Add(time.Second)
	}
	from = to
	for _, e := range hosts {
		if _, ok := e.m.Part(traces.PartGPUSamples); ok && e.m.End.After(to.Add(-DefaultWindow)) && e.m.Start.Before(from) {
			from = e.m.Start
		}
	}
	from = from.Truncate(time.Second)
	if earliest := to.Add(-DefaultWindow); from.Before(earliest) {
		from = earliest
	}
	if to.Sub(from) < minFitWindow {
		from = to.Add(-minFitWindow)
	}
	return from, to
}

type rowKey struct {
	cluster, job, run, host string
	gpu                     int32
}

type jobKey struct{ cluster, job, run string }

// fleet computes the fleet view and its values (NaN where empty).
func (h *Handler) fleet(ctx context.Context, fq fleetQuery) (*FleetView, []float32, error) {
	caps, _ := h.cfg.Index.Captures(findings.CaptureQuery{Cluster: fq.cluster, Job: fq.job})
	hosts := h.hosts.manifests(ctx, caps)
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if fq.cluster == "" && fq.job == "" {
		keep := make(map[string]bool, len(hosts))
		for _, e := range hosts {
			keep[e.key] = true
		}
		h.hosts.prune(keep)
	}
	// The window: what was asked, else fitted to the data (fitWindow).
	from, to := fq.from, fq.to
	switch {
	case fq.fromSet && !fq.toSet:
		to = from.Add(DefaultWindow)
	case !fq.fromSet && fq.toSet:
		from = to.Add(-DefaultWindow)
	case !fq.fromSet:
		from, to = fitWindow(hosts, time.Now())
	}
	fromSec, toSec := from.Unix(), to.Unix()
	if to.After(time.Unix(toSec, 0)) {
		toSec++
	}
	bucket := fq.bucket
	if bucket == 0 {
		bucket = niceBuckets[len(niceBuckets)-1]
		for _, b := range niceBuckets {
			if (toSec-fromSec+b-1)/b <= autoColumns {
				bucket = b
				break
			}
		}
	}
	ncols := (toSec - fromSec + bucket - 1) / bucket
	if ncols > MaxColumns {
		return nil, nil, httpjson.Bad("from %s to %s in buckets of %ds gives %d columns, at most %d; use a larger bucket", from.Format(time.RFC3339), to.Format(time.RFC3339), bucket, ncols, MaxColumns)
	}

	var sel []*hostEntry
	for _, e := range hosts {
		if _, ok := e.m.Part(traces.PartGPUSamples); ok && e.m.End.Unix() >= fromSec && e.m.Start.Unix() < toSec {
			sel = append(sel, e)
		}
	}
	bins := make([]*gpuBins, len(sel))
	errs := make([]error, len(sel))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, e := range sel {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			bins[i], errs[i] = h.bins(ctx, e)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}

	// Rows: one per (job run, host, GPU), sorted so that a job's rows are
	// contiguous.
	type rowInfo struct {
		FleetRow
		key rowKey
	}
	// A GPU the bundle's job does not use is the host's row, not the job's,
	// and no row at all when another job of the window uses it: that job's
	// row shows the device.
	type device struct {
		cluster, host string
		gpu           int32
	}
	owned := map[device]bool{}
	for i, e := range sel {
		if errs[i] != nil {
			continue
		}
		for _, gpu := range bins[i].gpus {
			if e.m.OwnsGPU(int(gpu)) {
				owned[device{e.m.Cluster, e.m.Host, gpu}] = true
			}
		}
	}
	keyOf := func(m *traces.Manifest, gpu int32) (rowKey, bool) {
		if m.OwnsGPU(int(gpu)) {
			return rowKey{m.Cluster, m.Job, m.Run, m.Host, gpu}, true
		}
		return rowKey{cluster: m.Cluster, host: m.Host, gpu: gpu}, !owned[device{m.Cluster, m.Host, gpu}]
	}
	rowIdx := map[rowKey]int{}
	var rows []rowInfo
	latest := map[jobKey]*traces.Manifest{}
	simJob := map[jobKey]bool{}
	for i, e := range sel {
		if errs[i] != nil {
			h.log.Warn("fleet view: GPU samples left out", "manifest", e.key, "err", errs[i])
			continue
		}
		m := e.m
		jk := jobKey{m.Cluster, m.Job, m.Run}
		if l := latest[jk]; l == nil || m.Start.After(l.Start) || m.Start.Equal(l.Start) && m.CaptureID > l.CaptureID {
			latest[jk] = m
		}
		simJob[jk] = simJob[jk] || m.Simulated
		for _, gpu := range bins[i].gpus {
			k, ok := keyOf(m, gpu)
			if !ok {
				continue
			}
			if j, ok := rowIdx[k]; ok {
				rows[j].Simulated = rows[j].Simulated || m.Simulated
				continue
			}
			r := rowInfo{key: k, FleetRow: FleetRow{Host: m.Host, GPU: gpu, Simulated: m.Simulated}}
			for _, g := range m.GPUs {
				if int32(g.Index) == gpu {
					r.UUID, r.Model = g.UUID, g.Name
				}
			}
			rowIdx[k] = len(rows)
			rows = append(rows, r)
		}
	}
	slices.SortFunc(rows, func(a, b rowInfo) int {
		return cmp.Or(cmp.Compare(a.key.cluster, b.key.cluster), cmp.Compare(a.key.job, b.key.job),
			cmp.Compare(a.key.run, b.key.run), compareNatural(a.key.host, b.key.host), cmp.Compare(a.key.gpu, b.key.gpu))
	})
	v := &FleetView{
		Metric: Metrics[fq.metric], Metrics: Metrics, From: time.Unix(fromSec, 0).UTC(), To: time.Unix(toSec, 0).UTC(),
		FromMs: fromSec * 1000, BucketS: bucket, Columns: int(ncols), Rows: make([]FleetRow, len(rows)), Jobs: []FleetJob{},
	}
	capSeen := map[string]bool{}
	for _, e := range sel {
		capSeen[traces.KeyOf(e.m).CapturePrefix()] = true
	}
	v.Captures = len(capSeen)
	for i, r := range rows {
		rowIdx[r.key] = i
		jk := jobKey{r.key.cluster, r.key.job, r.key.run}
		if n := len(v.Jobs); n == 0 || v.Jobs[n-1].Cluster != jk.cluster || v.Jobs[n-1].Job != jk.job || v.Jobs[n-1].Run != jk.run {
			fj := FleetJob{Cluster: jk.cluster, Job: jk.job, Run: jk.run, FirstRow: i, Simulated: simJob[jk]}
			if l := latest[jk]; l != nil && jk.job != "" {
				fj.Capture = l.CaptureID
			} else {
				fj.Unowned = true
			}
			v.Jobs = append(v.Jobs, fj)
		}
		r.Job = len(v.Jobs) - 1
		v.Jobs[r.Job].Rows++
		v.Jobs[r.Job].Simulated = v.Jobs[r.Job].Simulated || r.Simulated
		v.Rows[i] = r.FleetRow
		v.Simulated = v.Simulated || r.Simulated
	}

	// Cells: average the per-second bins that fall into each bucket.
	sums := make([]float64, len(rows)*int(ncols))
	counts := make([]uint32, len(sums))
	for i, e := range sel {
		b := bins[i]
		if errs[i] != nil {
			continue
		}
		lo, hi := max(fromSec, b.start), min(toSec, b.start+b.secs)
		for g, gpu := range b.gpus {
			k, ok := keyOf(e.m, gpu)
			if !ok {
				continue
			}
			row := rowIdx[k]
			vals := b.vals[fq.metric][int64(g)*b.secs : int64(g+1)*b.secs]
			base := row * int(ncols)
			for t := lo; t < hi; t++ {
				x := vals[t-b.start]
				if x != x { // NaN: no sample
					continue
				}
				c := base + int((t-fromSec)/bucket)
				sums[c] += float64(x)
				counts[c]++
			}
		}
	}
	values := make([]float32, len(sums))
	for i, n := range counts {
		if n == 0 {
			values[i] = float32(math.NaN())
		} else {
			values[i] = float32(sums[i] / float64(n))
		}
	}
	return v, values, nil
}

// writeFleet answers a fleet request. The values are written by hand, one
// decimal each: for a thousand GPUs over an hour they are most of the
// body, and encoding/json would spend most of the request on them.
func (h *Handler) writeFleet(w http.ResponseWriter, r *http.Request, fq fleetQuery) {
	v, values, err := h.fleet(r.Context(), fq)
	if err != nil {
		httpjson.Answer(w, r, h.log, nil, err)
		return
	}
	head, err := json.Marshal(v)
	if err != nil {
		httpjson.Answer(w, r, h.log, nil, err)
		return
	}
	buf := bytes.NewBuffer(make([]byte, 0, len(head)+len(values)*5+32))
	buf.Write(head[:len(head)-1])
	buf.WriteString(`,"values":[`)
	b := buf.AvailableBuffer()
	for i, x := range values {
		if i > 0 {
			b = append(b, ',')
		}
		if x != x {
			b = append(b, "null"...)
		} else {
			b = strconv.AppendFloat(b, math.Round(float64(x)*10)/10, 'f', -1, 64)
		}
	}
	buf.Write(b)
	buf.WriteString("]}\n")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.Write(buf.Bytes())
}

// compareNatural orders host names so that node-2 comes before node-10.
func compareNatural(a, b string) int {
	for a != "" && b != "" {
		da, db := digits(a), digits(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if c := cmp.Or(cmp.Compare(len(na), len(nb)), cmp.Compare(na, nb)); c != 0 {
				return c
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return cmp.Compare(a[0], b[0])
		}
		a, b = a[1:], b[1:]
	}
	return cmp.Compare(len(a), len(b))
}

func digits(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}
