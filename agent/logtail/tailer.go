// Package logtail is the agent's log collector: it tails configured log
// files and globs (container logs included, in the CRI and Docker json-file
// formats), follows rotation and truncation, and parses the lines into
// traces.Event records: group-membership (rebalance) events of Kafka
// consumers and torch elastic agents, and faults (NCCL watchdog timeouts,
// CUDA errors, out-of-memory errors, Python crash stack traces). The events
// wait in a bounded ring until a capture takes those of its window.
//
// Files are identified by device and inode. A file present when the tailer
// starts is read from its end (old history is not news); a file that
// appears later is read from its start. When a path's inode changes
// (rotation by rename), the old file is read to its end before the new one
// is opened; when a file shrinks (truncation, copytruncate), reading starts
// over at offset 0. Memory is bounded: lines by MaxLineBytes (the rest of a
// longer line is dropped and counted), each poll reads at most readChunk
// bytes per file, files by maxFiles, events by MaxEvents.
package logtail

import (
	"bytes"
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
)

// Defaults of Config.
const (
	DefaultPollInterval = time.Second
	DefaultMaxLineBytes = 64 << 10
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
}

// DefaultConfig returns the defaults (no files).
func DefaultConfig() Config {
	return Config{PollInterval: DefaultPollInterval, MaxLineBytes: DefaultMaxLineBytes, MaxEvents: DefaultMaxEvents}
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
	parser   *Parser
	seen     bool // found in the latest glob expansion
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
			fl = &follow{parser: NewParser(t.cfg.MaxLineBytes)}
			fl.parser.Source = SourceOf(p)
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
	}
	return nil
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
func (t *Tailer) drain(p string, fl *follow) {
	var out []traces.Event
	now := t.now()
	for total := 0; total < readChunk; {
		n, err := fl.f.ReadAt(t.buf, fl.off)
		fl.off += int64(n)
		total += n
		out = t.split(fl, t.buf[:n], now, out)
		if err != nil {
			if err != io.EOF {
				t.log.Warn("read log file", "path", p, "err", err)
				t.errs.Inc()
			}
			break
		}
	}
	if len(out) > 0 {
		for i := range out {
			out[i].Attrs[AttrSource] = p
		}
		t.events.Add(len(out))
		t.ring.Add(out...)
	}
}

// split cuts data into lines, keeping an unfinished last line for later
// and cutting lines longer than MaxLineBytes.
func (t *Tailer) split(fl *follow, data []byte, now time.Time, out []traces.Event) []traces.Event {
	for len(data) > 0 {
		nl := bytes.IndexByte(data, '\n')
		chunk := data
		if nl >= 0 {
			chunk = data[:nl]
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
		data = data[nl+1:]
		out = t.emit(fl, now, out)
	}
	return out
}

func (t *Tailer) emit(fl *follow, now time.Time, out []traces.Event) []traces.Event {
	line := bytes.TrimSuffix(fl.pending, []byte{'\r'})
	t.lines.Inc()
	out = fl.parser.Feed(line, now, out)
	fl.pending, fl.skipping = fl.pending[:0], false
	return out
}

// flushPending parses an unterminated last line of a file rotated away.
func (t *Tailer) flushPending(p string, fl *follow) {
	if len(fl.pending) == 0 {
		return
	}
	out := t.emit(fl, t.now(), nil)
	for i := range out {
		out[i].Attrs[AttrSource] = p
	}
	t.events.Add(len(out))
	t.ring.Add(out...)
}
