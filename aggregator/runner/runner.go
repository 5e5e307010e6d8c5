// Package runner analyzes one job capture exactly once per analyzer version,
// however many aggregator replicas ask: it loads the capture, applies the
// partition check (wait for every rank, or for the timeout), takes the
// capture's lease, runs the analyzers and commits their findings with a
// conditional write. Everything it knows between calls lives in the store.
package runner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/aggregator/lease"
	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// DefaultPartitionTimeout is how long after a capture's first manifest the
// aggregator waits for missing ranks before analyzing what arrived.
const DefaultPartitionTimeout = 10 * time.Minute

// Config configures a Runner.
type Config struct {
	Store     store.Store
	Analyzers []*analyzers.Analyzer
	Leases    *lease.Manager
	// Index, when set, is kept up to date with what the runner learns.
	Index *findings.Index
	// PartitionTimeout: DefaultPartitionTimeout when zero.
	PartitionTimeout time.Duration
	// MaxPartSize bounds one part read (0: the traces default).
	MaxPartSize int64
	Logger      *slog.Logger
	// Metrics receives the loupe_aggregator_* series; a private set when nil.
	Metrics *metrics.Set
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Runner analyzes captures.
type Runner struct {
	cfg      Config
	versions map[string]string
	log      *slog.Logger

	analyses, partials, backfills, failures, leaseBusy, written *metrics.Counter
	seconds                                                     *metrics.PrometheusHistogram

	hooks []func(context.Context, *findings.Record)
}

// OnCommit registers fn to run after every record this runner commits:
// exactly once per analysis across all replicas, by the replica that
// wrote it (alerting hangs off this). fn runs in the analysis worker, so
// it should hand slow work off. Register hooks before processing starts.
func (r *Runner) OnCommit(fn func(ctx context.Context, rec *findings.Record)) {
	r.hooks = append(r.hooks, fn)
}

// analysisBuckets are the upper bounds of
// loupe_aggregator_analysis_duration_seconds: 10 ms to about 4 minutes.
var analysisBuckets = metrics.ExponentialBuckets(0.01, 2.5, 12)

// New returns a Runner for cfg.
func New(cfg Config) *Runner {
	if cfg.PartitionTimeout <= 0 {
		cfg.PartitionTimeout = DefaultPartitionTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := cfg.Metrics
	return &Runner{
		cfg: cfg, versions: Versions(cfg.Analyzers), log: cfg.Logger,
		analyses:  m.GetOrCreateCounter(`loupe_aggregator_analyses_total{result="complete"}`),
		partials:  m.GetOrCreateCounter(`loupe_aggregator_analyses_total{result="partial"}`),
		backfills: m.GetOrCreateCounter(`loupe_aggregator_analyses_total{result="backfill"}`),
		failures:  m.GetOrCreateCounter(`loupe_aggregator_analysis_errors_total`),
		leaseBusy: m.GetOrCreateCounter(`loupe_aggregator_lease_busy_total`),
		written:   m.GetOrCreateCounter(`loupe_aggregator_findings_written_total`),
		seconds:   m.GetOrCreatePrometheusHistogramExt(`loupe_aggregator_analysis_duration_seconds`, analysisBuckets),
	}
}

// Versions maps each analyzer's name to its version, and the correlation
// step's (analyzers.RootCause), which runs after any of them.
func Versions(list []*analyzers.Analyzer) map[string]string {
	v := make(map[string]string, len(list)+1)
	for _, a := range list {
		v[a.Name] = a.Version
	}
	v[analyzers.RootCause.Name] = analyzers.RootCause.Version
	return v
}

// Actions an Outcome reports.
const (
	// ActionAnalyzed: the analyzers ran and the findings were committed.
	ActionAnalyzed = "analyzed"
	// ActionCurrent: the stored findings already cover the capture.
	ActionCurrent = "current"
	// ActionWaiting: ranks are missing and the partition timeout has not
	// passed; look again at RetryAt (or when a manifest arrives).
	ActionWaiting = "waiting"
	// ActionBusy: another replica holds the capture's lease; look again
	// at RetryAt (a quarter of the lease TTL, or the lease's expiry).
	ActionBusy = "busy"
	// ActionEmpty: no committed manifest under the capture.
	ActionEmpty = "empty"
)

// Outcome says what Process or Backfill did.
type Outcome struct {
	Action  string
	RetryAt time.Time
	// Ran lists the analyzers run; Partial and MissingRanks describe the
	// committed result.
	Ran          []string
	Partial      bool
	MissingRanks []int
	Findings     int
}

// mode selects what counts as work to do.
type mode int

const (
	modeNew      mode = iota // never analyzed, or its hosts changed
	modeBackfill             // also analyzers whose version changed
)

// Process analyzes the capture if it was never analyzed or its set of
// committed hosts changed since (a late rank after a partial result), once
// the partition check allows. Findings from older analyzer versions are
// left alone: Backfill updates those.
func (r *Runner) Process(ctx context.Context, id capture.ID) (Outcome, error) {
	return r.do(ctx, id, modeNew)
}

// Backfill does what Process does and also re-runs the analyzers whose
// version differs from the one the stored findings were computed with,
// keeping the other analyzers' findings.
func (r *Runner) Backfill(ctx context.Context, id capture.ID) (Outcome, error) {
	return r.do(ctx, id, modeBackfill)
}

// work is what needs running: nil when the stored record is current.
func (r *Runner) work(m mode, c *capture.Capture, rec *findings.Record) []*analyzers.Analyzer {
	if rec == nil || !slices.Equal(rec.Manifests, c.ManifestKeys()) {
		return r.cfg.Analyzers
	}
	if m != modeBackfill {
		return nil
	}
	stale := rec.Stale(r.versions)
	var list []*analyzers.Analyzer
	if slices.Contains(stale, analyzers.RootCause.Name) {
		// Only the correlation is stale: re-correlate the stored findings.
		list = []*analyzers.Analyzer{}
	}
	for _, a := range r.cfg.Analyzers {
		if slices.Contains(stale, a.Name) {
			list = append(list, a)
		}
	}
	return list
}

func (r *Runner) do(ctx context.Context, id capture.ID, m mode) (Outcome, error) {
	c, err := capture.Load(ctx, r.cfg.Store, id, nil)
	if err != nil {
		return Outcome{}, err
	}
	rec, etag, err := r.readRecord(ctx, id)
	if err != nil {
		return Outcome{}, err
	}
	if len(c.Hosts) == 0 {
		return Outcome{Action: ActionEmpty}, nil
	}
	deadline := c.FirstCommitted().Add(r.cfg.PartitionTimeout)
	ready := c.Complete() || !r.cfg.Now().Before(deadline)
	if r.cfg.Index != nil {
		r.cfg.Index.SetCapture(c, ready)
	}
	list := r.work(m, c, rec)
	if list == nil {
		return Outcome{Action: ActionCurrent}, nil
	}
	if !ready {
		return Outcome{Action: ActionWaiting, RetryAt: deadline, MissingRanks: c.MissingRanks()}, nil
	}

	l, err := r.cfg.Leases.Acquire(ctx, findings.LeaseKey(id))
	var held *lease.HeldError
	if errors.As(err, &held) {
		r.leaseBusy.Inc()
		// The holder usually commits well before its lease would expire:
		// look again after a quarter TTL, or at expiry if that is sooner.
		retry := r.cfg.Now().Add(r.cfg.Leases.TTL / 4)
		if held.Expires.Before(retry) {
			retry = held.Expires
		}
		return Outcome{Action: ActionBusy, RetryAt: retry}, nil
	}
	if err != nil {
		return Outcome{}, err
	}
	var out Outcome
	err = l.Hold(ctx, func(ctx context.Context) error {
		// Another replica may have committed between our read and the lease.
		rec, etag, err = r.readRecord(ctx, id)
		if err != nil {
			return err
		}
		if list = r.work(m, c, rec); list == nil {
			out = Outcome{Action: ActionCurrent}
			return nil
		}
		out, err = r.analyze(ctx, c, list, rec, etag, m)
		return err
	})
	// Release even after a failure, with a context of its own, so that
	// another replica need not wait for the lease to expire.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if rerr := l.Release(rctx); rerr != nil && err == nil {
		r.log.Warn("release capture lease", "capture", id.String(), "err", rerr)
	}
	if err != nil {
		r.failures.Inc()
		return Outcome{}, fmt.Errorf("analyze capture %s: %w", id, err)
	}
	return out, nil
}

// readRecord reads the capture's findings, into the index too. A record
// that cannot be decoded is reported and treated as absent, so that the
// capture is analyzed again and the record replaced.
func (r *Runner) readRecord(ctx context.Context, id capture.ID) (*findings.Record, string, error) {
	rec, etag, err := findings.Read(ctx, r.cfg.Store, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, "", nil
	case errors.Is(err, findings.ErrRecord):
		r.log.Error("unreadable findings record; the capture will be analyzed again", "capture", id.String(), "err", err)
		return nil, etag, nil
	case err != nil:
		return nil, "", err
	}
	if r.cfg.Index != nil {
		r.cfg.Index.SetRecord(rec, etag)
	}
	return rec, etag, nil
}

// analyze runs list over the capture and commits the record, replacing the
// one at etag (or creating it when etag is empty).
func (r *Runner) analyze(ctx context.Context, c *capture.Capture, list []*analyzers.Analyzer, old *findings.Record, etag string, m mode) (Outcome, error) {
	start := time.Now()
	in := c.Input(r.cfg.Store, r.cfg.MaxPartSize)
	rep := analyzers.Execute(ctx, in, list)
	if err := ctx.Err(); err != nil {
		return Outcome{}, err
	}
	rec := &findings.Record{
		Capture:          c.ID,
		Analyzed:         r.cfg.Now().UTC(),
		Analyst:          r.cfg.Leases.Owner,
		Manifests:        c.ManifestKeys(),
		Hosts:            findings.Summaries(c),
		WorldSize:        c.WorldSize(),
		Partial:          in.Partial,
		MissingRanks:     in.MissingRanks,
		Simulated:        c.Simulated(),
		Parts:            c.Parts(),
		AnalyzerVersions: map[string]string{},
		Findings:         rep.Findings,
	}
	rec.Start, rec.End = c.Window()
	ran := make([]string, 0, len(list))
	for _, run := range rep.Runs {
		ran = append(ran, run.Name)
		if run.Status == analyzers.StatusFailed {
			// Left out of AnalyzerVersions, so that backfill retries it.
			rec.Errors = append(rec.Errors, fmt.Sprintf("analyzer %s %s: %s", run.Name, run.Version, run.Reason))
			continue
		}
		rec.AnalyzerVersions[run.Name] = run.Version
	}
	if old != nil && slices.Equal(old.Manifests, rec.Manifests) {
		// A backfill of some analyzers: keep the others' results.
		for name, v := range old.AnalyzerVersions {
			if !slices.Contains(ran, name) {
				rec.AnalyzerVersions[name] = v
			}
		}
		for _, f := range old.Findings {
			if !slices.Contains(ran, f.Analyzer) {
				rec.Findings = append(rec.Findings, f)
			}
		}
		for _, e := range old.Errors {
			if !slices.ContainsFunc(ran, func(name string) bool { return strings.HasPrefix(e, "analyzer "+name+" ") }) {
				rec.Errors = append(rec.Errors, e)
			}
		}
	}
	// A backfill re-joins the kept findings with the new ones.
	rec.Findings = dedup(analyzers.Correlate(in, rec.Findings))
	newTag, err := findings.Write(ctx, r.cfg.Store, rec, etag)
	if err != nil {
		return Outcome{}, err
	}
	if r.cfg.Index != nil {
		r.cfg.Index.SetRecord(rec, newTag)
	}
	r.seconds.UpdateDuration(start)
	r.written.Add(len(rec.Findings))
	switch {
	case m == modeBackfill && old != nil:
		r.backfills.Inc()
	case rec.Partial:
		r.partials.Inc()
	default:
		r.analyses.Inc()
	}
	for _, h := range r.hooks {
		h(ctx, rec)
	}
	r.log.Info("capture analyzed", "capture", c.ID.String(), "hosts", len(c.Hosts), "analyzers", len(ran),
		"findings", len(rec.Findings), "partial", rec.Partial, "missing_ranks", rec.MissingRanks,
		"errors", len(rec.Errors), "took", time.Since(start).Round(time.Millisecond))
	return Outcome{Action: ActionAnalyzed, Ran: ran, Partial: rec.Partial, MissingRanks: rec.MissingRanks, Findings: len(rec.Findings)}, nil
}

// dedup keeps the first finding of each ID, in a stable order: IDs are
// stable across runs, so a finding reported twice is one finding.
func dedup(fs []traces.Finding) []traces.Finding {
	seen := make(map[string]bool, len(fs))
	out := fs[:0]
	for _, f := range fs {
		if !seen[f.ID] {
			seen[f.ID] = true
			out = append(out, f)
		}
	}
	slices.SortStableFunc(out, func(a, b traces.Finding) int {
		return cmp.Or(cmp.Compare(a.Analyzer, b.Analyzer), cmp.Compare(a.ID, b.ID))
	})
	return out
}
