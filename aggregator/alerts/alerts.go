// Package alerts delivers incidents to people: Slack-compatible incoming
// webhooks (blocks with title, severity, impact, owners and links to the
// dashboard and the Perfetto trace) and generic JSON webhooks signed with
// HMAC-SHA256.
//
// Routing: a target receives an incident whose severity is at least the
// target's minimum and, when the target lists owners, that one of them owns;
// a target named in the incident's channels (from the owners file) always
// receives it.
//
// Delivery state lives in the store, so that replicas and restarts agree:
// _alerts/state/<target>/<incident>.json records the fingerprint last sent.
// An incident is sent again only when it changed (severity, title, summary,
// impact, owners or places), and then no more often than MinInterval unless
// its severity rose or it was resolved (a hung job recovered: the message
// says RESOLVED). Failures are retried with exponential backoff and full
// jitter on network errors, 429 and 5xx; a target that keeps failing, or
// answers another 4xx, gets a dead-letter record under
// _alerts/deadletter/<target>/ holding the payload and the last error.
//
// Signature of generic webhooks: the headers X-Loupe-Timestamp (Unix
// seconds) and X-Loupe-Signature ("v1=" + hex HMAC-SHA256 of
// "<timestamp>.<body>" keyed with the target's secret). Verify checks them.
package alerts

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// Target kinds.
const (
	KindSlack   = "slack"
	KindWebhook = "webhook"
)

// Target is one alert destination.
type Target struct {
	Name string `yaml:"name"`
	Kind string `yaml:"kind"` // slack or webhook
	URL  string `yaml:"url"`
	// SecretEnv names the environment variable holding the HMAC secret of a
	// generic webhook (required for that kind).
	SecretEnv string `yaml:"secret_env"`
	// MinSeverity is the least severe incident sent (default warning).
	MinSeverity string `yaml:"min_severity"`
	// Owners limits the target to incidents owned by one of these teams.
	Owners []string `yaml:"owners"`
}

// Config configures delivery.
type Config struct {
	Targets []Target `yaml:"webhooks"`
	// DashboardURL is the aggregator's external base URL, for links.
	DashboardURL string `yaml:"dashboard_url"`
	// MinInterval is the least time between two sends of a changed incident
	// to one target, unless its severity rose.
	MinInterval time.Duration `yaml:"alert_min_interval"`
	// MaxAttempts per send before a dead-letter record is written.
	MaxAttempts int           `yaml:"alert_max_attempts"`
	BackoffBase time.Duration `yaml:"alert_backoff_base"`
	BackoffMax  time.Duration `yaml:"alert_backoff_max"`
	Timeout     time.Duration `yaml:"alert_timeout"`
}

// DefaultConfig returns the delivery defaults.
func DefaultConfig() Config {
	return Config{MinInterval: time.Hour, MaxAttempts: 6, BackoffBase: 500 * time.Millisecond, BackoffMax: 30 * time.Second, Timeout: 10 * time.Second}
}

// Notifier sends incidents to the configured targets.
type Notifier struct {
	cfg     Config
	st      store.Store
	log     *slog.Logger
	client  *http.Client
	secrets map[string][]byte
	now     func() time.Time

	sent, deduped, limited, failed, retries func(target string) *metrics.Counter
}

// New validates the targets and returns a Notifier that keeps its state in st.
func New(cfg Config, st store.Store, logger *slog.Logger, set *metrics.Set) (*Notifier, error) {
	def := DefaultConfig()
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = def.MaxAttempts
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = def.BackoffBase
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = def.BackoffMax
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = def.Timeout
	}
	if logger == nil {
		logger = slog.Default()
	}
	n := &Notifier{cfg: cfg, st: st, log: logger.With("component", "alerts"), client: &http.Client{Timeout: cfg.Timeout},
		secrets: map[string][]byte{}, now: time.Now}
	seen := map[string]bool{}
	for i, t := range cfg.Targets {
		if err := traces.ValidateComponent(t.Name); err != nil {
			return nil, fmt.Errorf("alert target %d: name: %w", i, err)
		}
		if seen[t.Name] {
			return nil, fmt.Errorf("alert target %q is defined twice", t.Name)
		}
		seen[t.Name] = true
		if u, err := url.Parse(t.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("alert target %q: url %q must be an http or https URL", t.Name, t.URL)
		}
		if t.MinSeverity != "" && traces.SeverityRank(t.MinSeverity) == 0 {
			return nil, fmt.Errorf("alert target %q: min_severity %q is not critical, warning or info", t.Name, t.MinSeverity)
		}
		switch t.Kind {
		case KindSlack:
		case KindWebhook:
			secret := os.Getenv(t.SecretEnv)
			if t.SecretEnv == "" || secret == "" {
				return nil, fmt.Errorf("alert target %q: a generic webhook needs a signing secret: set secret_env to the name of an environment variable that holds it", t.Name)
			}
			n.secrets[t.Name] = []byte(secret)
		default:
			return nil, fmt.Errorf("alert target %q: kind %q is not %s or %s", t.Name, t.Kind, KindSlack, KindWebhook)
		}
	}
	counter := func(name string) func(string) *metrics.Counter {
		return func(target string) *metrics.Counter {
			return set.GetOrCreateCounter(fmt.Sprintf(`%s{target=%q}`, name, target))
		}
	}
	n.sent = counter("loupe_alerts_sent_total")
	n.deduped = counter("loupe_alerts_deduplicated_total")
	n.limited = counter("loupe_alerts_rate_limited_total")
	n.failed = counter("loupe_alerts_dead_letters_total")
	n.retries = counter("loupe_alerts_retries_total")
	return n, nil
}

// routes reports whether target t should receive inc.
func routes(t Target, inc *traces.Incident) bool {
	if slices.Contains(inc.Channels, t.Name) {
		return true
	}
	min := t.MinSeverity
	if min == "" {
		min = traces.SeverityWarning
	}
	if traces.SeverityRank(inc.Severity) < traces.SeverityRank(min) {
		return false
	}
	return len(t.Owners) == 0 || slices.ContainsFunc(inc.Owners, func(o string) bool { return slices.Contains(t.Owners, o) })
}

// state is what the store remembers of an incident's delivery to a target.
type state struct {
	Fingerprint string    `json:"fingerprint"`
	Severity    string    `json:"severity"`
	SentAt      time.Time `json:"sent_at"`
	Resolved    bool      `json:"resolved,omitempty"`
}

// Fingerprint identifies the content of an incident that matters to a
// reader; impact is rounded so that noise does not re-alert.
func Fingerprint(inc *traces.Incident) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%.1f\x00%v\x00%v\x00%v", inc.Severity, inc.Title, inc.Summary,
		math.Round(inc.ImpactGPUHours*10)/10, inc.Owners, inc.Hosts, inc.Ranks)
	if !inc.Resolved.IsZero() {
		h.Write([]byte("\x00resolved")) // open incidents keep the fingerprints they always had
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// Notify delivers each incident to the targets it routes to. It returns the
// first error of reading or writing delivery state; send failures end in
// dead-letter records and are not returned.
func (n *Notifier) Notify(ctx context.Context, incidents []traces.Incident) error {
	var firstErr error
	for i := range incidents {
		inc := &incidents[i]
		for _, t := range n.cfg.Targets {
			if !routes(t, inc) {
				continue
			}
			if err := n.deliver(ctx, t, inc); err != nil && firstErr == nil {
				firstErr = err
			}
		}
	}
	return firstErr
}

func (n *Notifier) stateKey(t Target, inc *traces.Incident) string {
	return "_alerts/state/" + t.Name + "/" + safeID(inc.ID) + ".json"
}

// safeID makes an incident id usable as a key component.
func safeID(id string) string {
	if traces.ValidateComponent(id) == nil {
		return id
	}
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:16])
}

func (n *Notifier) deliver(ctx context.Context, t Target, inc *traces.Incident) error {
	key := n.stateKey(t, inc)
	var prev state
	etag := ""
	rc, info, err := n.st.Get(ctx, key)
	switch {
	case err == nil:
		derr := json.NewDecoder(io.LimitReader(rc, 1<<16)).Decode(&prev)
		rc.Close()
		if derr != nil {
			n.log.Warn("alert state unreadable; treating the incident as new", "key", key, "err", derr)
		}
		etag = info.ETag
	case errors.Is(err, store.ErrNotFound):
	default:
		return fmt.Errorf("alert state %s: %w", key, err)
	}
	fp := Fingerprint(inc)
	now := n.now()
	if prev.Fingerprint == fp {
		n.deduped(t.Name).Inc()
		return nil
	}
	escalated := traces.SeverityRank(inc.Severity) > traces.SeverityRank(prev.Severity)
	resolved := !inc.Resolved.IsZero() && !prev.Resolved
	if !prev.SentAt.IsZero() && now.Sub(prev.SentAt) < n.cfg.MinInterval && !escalated && !resolved {
		n.limited(t.Name).Inc()
		n.log.Info("alert rate-limited: incident changed but was sent recently", "target", t.Name, "incident", inc.ID, "last_sent", prev.SentAt)
		return nil
	}
	body, headers, err := n.payload(t, inc, now)
	if err != nil {
		return err
	}
	if err := n.send(ctx, t, body, headers); err != nil {
		n.failed(t.Name).Inc()
		n.log.Error("alert target keeps failing; wrote a dead-letter record", "target", t.Name, "incident", inc.ID, "err", err)
		return n.deadLetter(ctx, t, inc, body, err)
	}
	n.sent(t.Name).Inc()
	data, _ := json.Marshal(state{Fingerprint: fp, Severity: inc.Severity, SentAt: now, Resolved: !inc.Resolved.IsZero()})
	opts := store.PutOptions{ContentType: traces.MediaJSON, IfMatch: etag, IfNoneMatch: etag == ""}
	if _, err := n.st.Put(ctx, key, bytes.NewReader(data), int64(len(data)), opts); err != nil {
		if errors.Is(err, store.ErrPrecondition) {
			n.log.Warn("another replica alerted on this incident at the same time; it may have been sent twice", "target", t.Name, "incident", inc.ID)
			return nil
		}
		return fmt.Errorf("alert state %s: %w", key, err)
	}
	return nil
}

// Links returns the dashboard and Perfetto trace URLs of an incident's capture.
func (n *Notifier) Links(inc *traces.Incident) (dashboard, perfetto string) {
	base := strings.TrimRight(n.cfg.DashboardURL, "/")
	s := inc.Scope
	path := url.PathEscape(s.Cluster) + "/" + url.PathEscape(s.Job) + "/" + url.PathEscape(s.Run)
	dashboard = base + "/jobs/" + path + "?capture=" + url.QueryEscape(s.Capture)
	perfetto = base + "/api/v1/captures/" + path + "/" + url.PathEscape(s.Capture) + "/trace"
	return dashboard, perfetto
}

func (n *Notifier) payload(t Target, inc *traces.Incident, now time.Time) ([]byte, http.Header, error) {
	dash, perfetto := n.Links(inc)
	h := http.Header{"Content-Type": {"application/json"}}
	var v any
	if t.Kind == KindSlack {
		v = slackMessage(inc, dash, perfetto)
	} else {
		v = map[string]any{"version": "1", "type": "incident", "sent_at": now.UTC(), "incident": inc,
			"links": map[string]string{"dashboard": dash, "perfetto": perfetto}}
	}
	body, err := json.Marshal(v)
	if err != nil {
		return nil, nil, err
	}
	if secret, ok := n.secrets[t.Name]; ok {
		ts := strconv.FormatInt(now.Unix(), 10)
		h.Set("X-Loupe-Timestamp", ts)
		h.Set("X-Loupe-Signature", Sign(secret, ts, body))
	}
	return body, h, nil
}

// Sign returns the X-Loupe-Signature value for body sent at timestamp ts.
func Sign(secret []byte, ts string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte("."))
	m.Write(body)
	return "v1=" + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a generic webhook's signature and that its timestamp is
// within tolerance of now, so that a receiver can reject forged or replayed
// requests.
func Verify(secret []byte, ts, signature string, body []byte, now time.Time, tolerance time.Duration) error {
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("bad X-Loupe-Timestamp %q", ts)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("X-Loupe-Timestamp %s is %s away from now, beyond %s", ts, d.Round(time.Second), tolerance)
	}
	if !hmac.Equal([]byte(Sign(secret, ts, body)), []byte(signature)) {
		return errors.New("X-Loupe-Signature does not match the body")
	}
	return nil
}

// errPermanent marks an answer that retrying will not change.
var errPermanent = errors.New("permanent failure")

// send posts body with retries; it returns the last error once attempts
// are spent or on a permanent failure.
func (n *Notifier) send(ctx context.Context, t Target, body []byte, h http.Header) error {
	var last error
	for attempt := 0; attempt < n.cfg.MaxAttempts; attempt++ {
		if attempt > 0 {
			n.retries(t.Name).Inc()
			backoff := min(n.cfg.BackoffMax, n.cfg.BackoffBase<<(attempt-1))
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(rand.N(backoff) + 1):
			}
		}
		last = n.post(ctx, t.URL, body, h)
		if last == nil || errors.Is(last, errPermanent) || ctx.Err() != nil {
			return last
		}
	}
	return fmt.Errorf("after %d attempts: %w", n.cfg.MaxAttempts, last)
}

func (n *Notifier) post(ctx context.Context, target string, body []byte, h http.Header) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: %v", errPermanent, err)
	}
	req.Header = h.Clone()
	req.Header.Set("User-Agent", "loupe-aggregator")
	resp, err := n.client.Do(req)
	if err != nil {
		return err
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	switch {
	case resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(msg))
	default:
		return fmt.Errorf("%w: HTTP %d: %s", errPermanent, resp.StatusCode, bytes.TrimSpace(msg))
	}
}

// DeadLetter is the record kept for an alert that could not be delivered.
type DeadLetter struct {
	Target   string          `json:"target"`
	Incident string          `json:"incident"`
	Error    string          `json:"error"`
	Failed   time.Time       `json:"failed"`
	Payload  json.RawMessage `json:"payload"`
}

func (n *Notifier) deadLetter(ctx context.Context, t Target, inc *traces.Incident, body []byte, sendErr error) error {
	now := n.now()
	rec, _ := json.Marshal(DeadLetter{Target: t.Name, Incident: inc.ID, Error: sendErr.Error(), Failed: now.UTC(), Payload: body})
	key := fmt.Sprintf("_alerts/deadletter/%s/%s-%d.json", t.Name, safeID(inc.ID), now.UnixNano())
	if _, err := n.st.Put(ctx, key, bytes.NewReader(rec), int64(len(rec)), store.PutOptions{ContentType: traces.MediaJSON}); err != nil {
		return fmt.Errorf("dead-letter record %s: %w", key, err)
	}
	return nil
}
