// Package logtail is the agent's log collector: it tails configured log
// files and globs (container logs in the CRI and Docker json-file formats
// and journald or syslog files included), follows rotation and truncation,
// and parses the lines with traces/logparse into traces.Event records:
// group-membership (rebalance) events of Kafka consumers and torch elastic
// agents, and faults (kernel XIDs, NCCL timeouts and errors, CUDA errors,
// out-of-memory errors, Python crash stack traces). The events wait in a
// bounded ring until a capture takes those of its window.
//
// Files are identified by device and inode. A file present when the tailer
// starts is read from its end (old history is not news, and an agent
// restart must not ship it again); a file that appears later is read from
// its start. The lines it already held then are its history: they are
// parsed with their own timestamps (a line without one takes its nearest
// timestamped neighbour's), and the events older than the moment the file
// was found wait, apart from the ring, until History hands them out, once
// every such file has been read to the end it had, so that the daemon can
// ship them as a log-only bundle. When a path's inode changes
// (rotation by rename), the old file is read to its end before the new one
// is opened; when a file shrinks (truncation, copytruncate), reading starts
// over at offset 0. Memory is bounded: lines by MaxLineBytes (the rest of a
// longer line is dropped and counted), each poll reads at most readChunk
// bytes per file, files by maxFiles, events by MaxEvents.
package logtail

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/logparse"
)

// Defaults of Config.
const (
	DefaultPollInterval = time.Second
	DefaultMaxLineBytes = logparse.DefaultMaxLineBytes
	DefaultMaxEvents    = 10000
	// readChunk bounds what one poll reads from one file, so that a burst
	// in one file cannot starve the others or grow memory.
	readChunk = 1 << 20
	// maxFiles bounds the files followed at once.
	maxFiles = 512
)

// Config says what to tail. The zero value tails nothing.
type Config struct {
	// Files are paths or globs (filepath.Match syntax), e.g.
	// /var/log/pods/*/*/*.log or /srv/consumer/logs/*.log.
	Files []string `yaml:"files"`
	// PollInterval is how often files are checked for new lines.
	PollInterval time.Duration `yaml:"poll_interval"`
	// MaxLineBytes cuts longer lines.
	MaxLineBytes int `yaml:"max_line_bytes"`
	// MaxEvents bounds the events kept for captures; the oldest go first.
	MaxEvents int `yaml:"max_events"`
	// HistoryJob names the job of the log-only bundles that carry the
	// history of files found after start-up.
	HistoryJob string `yaml:"history_job"`
}

// DefaultConfig returns the defaults (no files).
func DefaultConfig() Config {
	return Config{PollInterval: DefaultPollInterval, MaxLineBytes: DefaultMaxLineBytes, MaxEvents: DefaultMaxEvents, HistoryJob: "logs"}
}

// Validate checks the globs and bounds.
func (c *Config) Validate() error {
	var errs []error
	for _, g := range c.Files {
		if _, err := filepath.Match(g, ""); err != nil {
			errs = append(errs, fmt.Errorf("logs.files: %q: %w", g, err))
		}
	}
	if c.PollInterval < 0 || c.MaxLineBytes < 0 || c.MaxEvents < 0 {
		errs = append(errs, errors.New("logs: poll_interval, max_line_bytes and max_events must not be negative"))
	}
	if err := traces.ValidateComponent(c.HistoryJob); err != nil {
		errs = append(errs, fmt.Errorf("logs.history_job: %w", err))
	}
	return errors.Join(errs...)
}

// Ring holds the most recent events, oldest first out. It grows to its size
// only as events arrive, so an agent that tails no logs holds none. It is
// safe for concurrent use.
type Ring struct {
	mu      sync.Mutex
	buf     []traces.Event
	size    int
	next    int // the oldest event once buf is full
	dropped *metrics.Counter
}

// NewRing returns a ring of n events; dropped, when not nil, counts the
// events pushed out.
func NewRing(n int, dropped *metrics.Counter) *Ring {
	return &Ring{size: max(n, 1), dropped: dropped}
}

// Add appends events.
func (r *Ring) Add(evs ...traces.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range evs {
		if len(r.buf) < r.size {
			r.buf = append(r.buf, e)
			continue
		}
		if r.dropped != nil {
			r.dropped.Inc()
		}
		r.buf[r.next] = e
		r.next = (r.next + 1) % r.size
	}
}

// Events returns copies of the events with from <= time < to, in time order.
func (r *Ring) Events(from, to time.Time) []traces.Event {
	r.mu.Lock()
	var out []traces.Event
	n := len(r.buf)
	lo, hi := from.UnixNano(), to.UnixNano()
	for i := range n {
		e := r.buf[(r.next+i)%n]
		if e.TimeNs >= lo && e.TimeNs < hi {
			e.Attrs = cloneAttrs(e.Attrs)
			out = append(out, e)
		}
	}
	r.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool { return out[i].TimeNs < out[j].TimeNs })
	return out
}

func cloneAttrs(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// Tailer follows the configured files.
type Tailer struct {
	cfg   Config
	log   *slog.Logger
	ring  *Ring
	files map[string]*follow
	now   func() time.Time
	buf   []byte // read buffer, reused: polls run one at a time

	hmu     sync.Mutex
	history []traces.Event // events of files' history, oldest dropped past MaxEvents
	reading int            // files whose history is not read to its end yet
	hdrop   *metrics.Counter

	lines, events, cut, rotations, errs *metrics.Counter
	followed                            *metrics.Gauge
	nfiles                              int
	mu                                  sync.Mutex // guards nfiles for the gauge
}

// follow is one followed path.
type follow struct {
	f        *os.File
	dev, ino uint64
	off      int64
	pending  []byte // an unfinished last line
	skipping bool   // dropping the rest of an over-long line
	parser   *logparse.Parser
	seen     bool // found in the latest glob expansion
	// history is the size the file had when it was found and read from
	// its start; found is when that was. Zero for live files.
	history int64
	found   time.Time
}

// New returns a tailer for cfg, registering its metrics (loupe_logtail_*) in
// set. Run starts it.
func New(cfg Config, logger *slog.Logger, set *metrics.Set) *Tailer {
	def := DefaultConfig()
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = def.PollInterval
	}
	if cfg.MaxLineBytes <= 0 {
		cfg.MaxLineBytes = def.MaxLineBytes
	}
	if cfg.MaxEvents <= 0 {
		cfg.MaxEvents = def.MaxEvents
	}
	if logger == nil {
		logger = slog.Default()
	}
	if set == nil {
		set = metrics.NewSet()
	}
	t := &Tailer{
		cfg: cfg, log: logger, files: map[string]*follow{}, now: time.Now, buf: make([]byte, 64<<10),
		ring:      NewRing(cfg.MaxEvents, set.GetOrCreateCounter(`loupe_logtail_events_dropped_total`)),
		hdrop:     set.GetOrCreateCounter(`loupe_logtail_history_events_dropped_total`),
		lines:     set.GetOrCreateCounter(`loupe_logtail_lines_total`),
		events:    set.GetOrCreateCounter(`loupe_logtail_events_total`),
		cut:       set.GetOrCreateCounter(`loupe_logtail_lines_truncated_total`),
		rotations: set.GetOrCreateCounter(`loupe_logtail_rotations_total`),
		errs:      set.GetOrCreateCounter(`loupe_logtail_errors_total`),
	}
	set.GetOrCreateGauge(`loupe_logtail_files`, func() float64 {
		t.mu.Lock()
		defer t.mu.Unlock()
		return float64(t.nfiles)
	})
	return t
}

// Run polls the files until ctx ends. Files present at the first poll are
// read from their end.
func (t *Tailer) Run(ctx context.Context) {
	t.poll(true)
	tick := time.NewTicker(t.cfg.PollInterval)
	defer tick.Stop()
	defer t.close()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			t.poll(false)
		}
	}
}

// Events returns the parsed events with from <= time < to.
func (t *Tailer) Events(from, to time.Time) []traces.Event { return t.ring.Events(from, to) }

func (t *Tailer) close() {
	for p, fl := range t.files {
		fl.f.Close()
		delete(t.files, p)
	}
}

// poll expands the globs and reads what every file gained.
func (t *Tailer) poll(initial bool) {
	for _, fl := range t.files {
		fl.seen = false
	}
	var paths []string
	for _, g := range t.cfg.Files {
		m, _ := filepath.Glob(g) // patterns were validated
		paths = append(paths, m...)
	}
	slices.Sort(paths)
	paths = slices.Compact(paths)
	for _, p := range paths {
		fl := t.files[p]
		if fl == nil {
			if len(t.files) >= maxFiles {
				t.log.Warn("log tailer follows too many files; narrow logs.files", "limit", maxFiles, "skipped", p)
				t.errs.Inc()
				continue
			}
			fl = &follow{parser: logparse.NewParser(t.cfg.MaxLineBytes)}
			fl.parser.Source = logparse.SourceOf(p)
			if err := t.open(p, fl, initial); err != nil {
				continue
			}
			t.files[p] = fl
		}
		fl.seen = true
		t.read(p, fl)
	}
	for p, fl := range t.files {
		if !fl.seen {
			t.read(p, fl) // the last lines of a removed file
			t.historyRead(fl)
			fl.f.Close()
			delete(t.files, p)
		}
	}
	t.mu.Lock()
	t.nfiles = len(t.files)
	t.mu.Unlock()
}

// open starts following p, at its end when atEnd.
func (t *Tailer) open(p string, fl *follow, atEnd bool) error {
	f, err := os.Open(p)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			t.log.Warn("cannot open log file", "path", p, "err", err)
			t.errs.Inc()
		}
		return err
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		f.Close()
		return fmt.Errorf("%s is not a regular file", p)
	}
	fl.f = f
	fl.dev, fl.ino = devIno(st)
	fl.off, fl.pending, fl.skipping = 0, fl.pending[:0], false
	if atEnd {
		fl.off = st.Size()
	} else if st.Size() > 0 && fl.history == 0 {
		fl.history, fl.found = st.Size(), t.now()
		fl.parser.Ref = st.ModTime()
		t.hmu.Lock()
		t.reading++
		t.hmu.Unlock()
	}
	return nil
}

// History hands out the events of the files' history, oldest first, once
// every file found with history has been read to the end it had then; nil
// before, or when there is none.
func (t *Tailer) History() []traces.Event {
	t.hmu.Lock()
	defer t.hmu.Unlock()
	if t.reading > 0 || len(t.history) == 0 {
		return nil
	}
	out := t.history
	t.history = nil
	slices.SortStableFunc(out, func(a, b traces.Event) int { return cmp.Compare(a.TimeNs, b.TimeNs) })
	return out
}

// historyGrace separates history from news: an event of a file's history
// at most this much older than the moment the file was found is news.
const historyGrace = 5 * time.Second

// keep routes parsed events: those of a file's history older than when it
// was found (less historyGrace) to the history, the rest to the ring.
func (t *Tailer) keep(p string, fl *follow, out []traces.Event, history bool) {
	if len(out) == 0 {
		return
	}
	for i := range out {
		out[i].Attrs[logparse.AttrSource] = p
	}
	t.events.Add(len(out))
	live := out
	if history {
		cut := fl.found.Add(-historyGrace).UnixNano()
		live = out[:0:0]
		t.hmu.Lock()
		for _, e := range out {
			if e.TimeNs >= cut {
				live = append(live, e)
				continue
			}
			if len(t.history) >= t.cfg.MaxEvents {
				t.history = t.history[1:]
				t.hdrop.Inc()
			}
			t.history = append(t.history, e)
		}
		t.hmu.Unlock()
	}
	t.ring.Add(live...)
}

// historyRead notes that fl's history has been read to its end.
func (t *Tailer) historyRead(fl *follow) {
	if fl.history == 0 {
		return
	}
	fl.history = 0
	t.hmu.Lock()
	t.reading--
	t.hmu.Unlock()
}

func devIno(st os.FileInfo) (uint64, uint64) {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return uint64(s.Dev), uint64(s.Ino)
	}
	return 0, 0
}

// read consumes what fl gained, then checks for rotation and truncation.
func (t *Tailer) read(p string, fl *follow) {
	t.drain(p, fl)
	st, err := os.Stat(p)
	if err != nil {
		return // removed: the open handle was drained above
	}
	if dev, ino := devIno(st); dev != fl.dev || ino != fl.ino {
		// Rotated: the old file was read to its end; the new one from 0.
		t.rotations.Inc()
		t.flushPending(p, fl)
		fl.f.Close()
		if t.open(p, fl, false) == nil {
			t.drain(p, fl)
		}
		return
	}
	if st.Size() < fl.off {
		t.rotations.Inc()
		fl.off, fl.pending, fl.skipping = 0, fl.pending[:0], false
		t.drain(p, fl)
	}
}

// drain reads up to readChunk new bytes of fl and parses the whole lines.
// Lines of the file's history are parsed without a read time, so that a
// line without a timestamp takes its neighbours'.
func (t *Tailer) drain(p string, fl *follow) {
	var out, hist []traces.Event
	now := t.now()
	for total := 0; total < readChunk; {
		n, err := fl.f.ReadAt(t.buf, fl.off)
		base := fl.off
		fl.off += int64(n)
		total += n
		out, hist = t.split(fl, t.buf[:n], base, now, out, hist)
		if err != nil {
			if err != io.EOF {
				t.log.Warn("read log file", "path", p, "err", err)
				t.errs.Inc()
			}
			break
		}
	}
	if fl.history > 0 && fl.off >= fl.history {
		hist = fl.parser.Flush(fl.parser.Ref, hist) // undated history: the file's mtime
		t.keep(p, fl, hist, true)
		t.historyRead(fl)
		hist = nil
	}
	t.keep(p, fl, hist, true)
	t.keep(p, fl, out, false)
}

// split cuts data, read at offset base, into lines, keeping an
// unfinished last line for later and cutting lines longer than
// MaxLineBytes. Events of lines that end inside the file's history go to
// hist, the others to out.
func (t *Tailer) split(fl *follow, data []byte, base int64, now time.Time, out, hist []traces.Event) ([]traces.Event, []traces.Event) {
	for pos := 0; pos < len(data); {
		nl := bytes.IndexByte(data[pos:], '\n')
		chunk := data[pos:]
		if nl >= 0 {
			chunk = chunk[:nl]
		}
		if !fl.skipping {
			room := t.cfg.MaxLineBytes - len(fl.pending)
			if len(chunk) > room {
				fl.pending = append(fl.pending, chunk[:room]...)
				fl.skipping = true
				t.cut.Inc()
			} else {
				fl.pending = append(fl.pending, chunk...)
			}
		}
		if nl < 0 {
			break
		}
		if base+int64(pos+nl) < fl.history {
			hist = t.emit(fl, time.Time{}, hist)
		} else {
			out = t.emit(fl, now, out)
		}
		pos += nl + 1
	}
	return out, hist
}

func (t *Tailer) emit(fl *follow, readAt time.Time, out []traces.Event) []traces.Event {
	line := bytes.TrimSuffix(fl.pending, []byte{'\r'})
	t.lines.Inc()
	out = fl.parser.Feed(line, readAt, out)
	fl.pending, fl.skipping = fl.pending[:0], false
	return out
}

// flushPending parses an unterminated last line of a file rotated away.
func (t *Tailer) flushPending(p string, fl *follow) {
	if len(fl.pending) == 0 {
		return
	}
	t.keep(p, fl, t.emit(fl, t.now(), nil), false)
}
