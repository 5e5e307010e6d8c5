// Package spool is the agent's durable on-disk queue of capture bundles.
//
// A capture is written into a fresh folder under tmp/ (Begin), parts first
// and manifest.json last; Commit fsyncs it and renames it into ready/, the
// queue the uploader drains oldest first. An entry leaves the queue only when
// the uploader has stored it (Remove), when it is found corrupted
// (Quarantine, into quarantine/), or when the disk cap evicts it; each of the
// last two is logged and counted, never silent.
//
//	<dir>/tmp/<capture>@<host>@<random>/   being written
//	<dir>/ready/<seq>@<capture>@<host>/    committed, waiting for upload
//	<dir>/quarantine/<seq>@<capture>@<host>/  corrupted, kept for inspection
//
// <seq> is the commit time in nanoseconds, zero-padded, so names sort in
// commit order. One process owns a spool directory at a time (a lock file
// enforces it).
package spool

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"golang.org/x/sys/unix"

	"github.com/loupe-dev/loupe/traces"
)

// Options configure a Spool.
type Options struct {
	// MaxBytes caps the bytes of ready and quarantined entries; when a commit
	// goes over it, the oldest quarantined and then the oldest ready entries
	// are evicted. 0 means no cap.
	MaxBytes int64
	// Logger receives evictions, quarantines and discarded temp folders;
	// nil means slog.Default().
	Logger *slog.Logger
	// Metrics is where the spool's metrics live; nil means the default set
	// that metrics.WritePrometheus serves. Use one set per Spool.
	Metrics *metrics.Set
}

// Entry is one committed capture bundle in the queue.
type Entry struct {
	// Name is the entry's folder name: <seq>@<capture>@<host>.
	Name string
	// Dir is the entry's folder; the bundle's files are inside it.
	Dir       string
	CaptureID string
	Host      string
	// Committed is when Commit queued the entry.
	Committed time.Time
}

// Spool is an on-disk queue of capture bundles. Its methods are safe for
// concurrent use.
type Spool struct {
	dir, tmp, ready, quar string
	opts                  Options
	log                   *slog.Logger
	lockFile              *os.File

	mu      sync.Mutex
	lastSeq int64
	sizes   map[string]int64 // ready entries by name
	qsizes  map[string]int64 // quarantined entries by name
	busy    map[string]bool  // entries an uploader holds

	entries, bytes       *metrics.Gauge
	evicted, quarantined *metrics.Counter
}

// Folder names under the spool directory.
const (
	tmpDir        = "tmp"
	readyDir      = "ready"
	quarantineDir = "quarantine"
	lockName      = "lock"
)

// Open opens (creating if needed) the spool in dir. Folders left in tmp/ by
// a crash were never committed and are removed; committed entries stay
// queued.
func Open(dir string, opts Options) (*Spool, error) {
	s := &Spool{
		dir:   dir,
		tmp:   filepath.Join(dir, tmpDir),
		ready: filepath.Join(dir, readyDir),
		quar:  filepath.Join(dir, quarantineDir),
		opts:  opts,
		log:   opts.Logger,
		sizes: map[string]int64{}, qsizes: map[string]int64{}, busy: map[string]bool{},
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	set := opts.Metrics
	if set == nil {
		set = metrics.GetDefaultSet()
	}
	s.entries = set.GetOrCreateGauge("loupe_spool_entries", nil)
	s.bytes = set.GetOrCreateGauge("loupe_spool_bytes", nil)
	s.evicted = set.GetOrCreateCounter("loupe_spool_evicted_total")
	s.quarantined = set.GetOrCreateCounter("loupe_spool_quarantined_total")

	for _, d := range []string{s.tmp, s.ready, s.quar} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("spool %s: %v; point --spool-dir at a writable directory", dir, err)
		}
	}
	lf, err := os.OpenFile(filepath.Join(dir, lockName), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, fmt.Errorf("spool %s: %v", dir, err)
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lf.Close()
		return nil, fmt.Errorf("spool %s is in use by another process (%v); give each agent its own --spool-dir", dir, err)
	}
	s.lockFile = lf
	if err := s.load(); err != nil {
		s.Close()
		return nil, err
	}
	s.mu.Lock()
	s.enforceCap()
	s.mu.Unlock()
	return s, nil
}

// Close releases the spool directory. Entries stay on disk.
func (s *Spool) Close() error {
	if s.lockFile == nil {
		return nil
	}
	err := s.lockFile.Close()
	s.lockFile = nil
	return err
}

// load discards unfinished captures and accounts for queued ones.
func (s *Spool) load() error {
	tmps, err := os.ReadDir(s.tmp)
	if err != nil {
		return fmt.Errorf("spool %s: %v", s.dir, err)
	}
	for _, e := range tmps {
		s.log.Warn("spool: discarding a capture that was never committed (the agent stopped while writing it)", "folder", filepath.Join(s.tmp, e.Name()))
		if err := os.RemoveAll(filepath.Join(s.tmp, e.Name())); err != nil {
			return fmt.Errorf("spool %s: removing unfinished capture: %v", s.dir, err)
		}
	}
	for dir, sizes := range map[string]map[string]int64{s.ready: s.sizes, s.quar: s.qsizes} {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("spool %s: %v", s.dir, err)
		}
		for _, e := range ents {
			n, err := treeSize(filepath.Join(dir, e.Name()))
			if err != nil {
				return fmt.Errorf("spool %s: %v", s.dir, err)
			}
			sizes[e.Name()] = n
			if seq, _, ok := strings.Cut(e.Name(), "@"); ok {
				if v, err := strconv.ParseInt(seq, 10, 64); err == nil && v > s.lastSeq {
					s.lastSeq = v
				}
			}
		}
	}
	s.updateGauges()
	return nil
}

// Begin returns a fresh folder where the capture's bundle is written: its
// parts, then manifest.json last. Pass the folder to Commit or Abort. Each
// call gets its own folder, so two jobs of a shared host captured within
// the same millisecond (the same capture ID) are written side by side.
func (s *Spool) Begin(captureID, host string) (string, error) {
	if err := traces.ValidateComponent(captureID); err != nil {
		return "", fmt.Errorf("spool: capture id: %w", err)
	}
	if err := traces.ValidateComponent(host); err != nil {
		return "", fmt.Errorf("spool: host: %w", err)
	}
	d, err := os.MkdirTemp(s.tmp, captureID+"@"+host+"@")
	if err != nil {
		return "", fmt.Errorf("spool: %v", err)
	}
	return d, nil
}

// Commit makes the capture written into dir (a folder Begin returned)
// durable and queues it for upload: every file and folder is fsynced, then
// the folder is renamed into ready/ and the rename fsynced. The bundle must
// hold manifest.json.
func (s *Spool) Commit(dir string) error {
	captureID, host, err := s.pending(dir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, traces.ManifestName)); err != nil {
		return fmt.Errorf("spool: commit %s on %s: %v; write %s last, then Commit", captureID, host, err, traces.ManifestName)
	}
	size, err := syncTree(dir)
	if err != nil {
		return fmt.Errorf("spool: commit %s on %s: %v", captureID, host, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	seq := max(time.Now().UnixNano(), s.lastSeq+1)
	name := fmt.Sprintf("%020d@%s@%s", seq, captureID, host)
	if err := os.Rename(dir, filepath.Join(s.ready, name)); err != nil {
		return fmt.Errorf("spool: commit %s on %s: %v", captureID, host, err)
	}
	// Queued from here on, even if an fsync below fails.
	s.lastSeq = seq
	s.sizes[name] = size
	s.enforceCap()
	s.updateGauges()
	for _, d := range []string{s.ready, s.tmp} {
		if err := syncDir(d); err != nil {
			return fmt.Errorf("spool: commit %s on %s: queued, but not yet durable: %v", captureID, host, err)
		}
	}
	return nil
}

// Abort discards the capture folder dir that Begin returned.
func (s *Spool) Abort(dir string) error {
	captureID, host, err := s.pending(dir)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("spool: abort %s on %s: %v", captureID, host, err)
	}
	return nil
}

// pending names the capture and host of a folder Begin returned.
func (s *Spool) pending(dir string) (captureID, host string, err error) {
	parts := strings.Split(filepath.Base(dir), "@")
	if filepath.Dir(filepath.Clean(dir)) != s.tmp || len(parts) != 3 {
		return "", "", fmt.Errorf("spool: %s is not a folder Begin returned", dir)
	}
	return parts[0], parts[1], nil
}

// Ready returns the queued entries, oldest first. Folders in ready/ whose
// names the spool did not write are quarantined.
func (s *Spool) Ready() ([]Entry, error) {
	s.mu.Lock()
	names := make([]string, 0, len(s.sizes))
	for n := range s.sizes {
		names = append(names, n)
	}
	s.mu.Unlock()
	slices.Sort(names)
	out := make([]Entry, 0, len(names))
	for _, n := range names {
		e, err := s.entry(n)
		if err != nil {
			s.Quarantine(Entry{Name: n, Dir: filepath.Join(s.ready, n)}, err)
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// entry parses an entry folder name.
func (s *Spool) entry(name string) (Entry, error) {
	parts := strings.Split(name, "@")
	if len(parts) != 3 {
		return Entry{}, fmt.Errorf("%w: folder name %q is not <seq>@<capture>@<host>", ErrCorrupt, name)
	}
	seq, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil || traces.ValidateComponent(parts[1]) != nil || traces.ValidateComponent(parts[2]) != nil {
		return Entry{}, fmt.Errorf("%w: folder name %q is not <seq>@<capture>@<host>", ErrCorrupt, name)
	}
	return Entry{Name: name, Dir: filepath.Join(s.ready, name), CaptureID: parts[1], Host: parts[2], Committed: time.Unix(0, seq)}, nil
}

// Acquire marks e as being uploaded so the disk cap does not evict it
// under the uploader. It reports false when e is no longer queued.
func (s *Spool) Acquire(e Entry) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.sizes[e.Name]; !ok || s.busy[e.Name] {
		return false
	}
	s.busy[e.Name] = true
	return true
}

// Release undoes Acquire for an entry that stays queued.
func (s *Spool) Release(e Entry) {
	s.mu.Lock()
	delete(s.busy, e.Name)
	s.mu.Unlock()
}

// Remove deletes an entry the store has confirmed.
func (s *Spool) Remove(e Entry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.busy, e.Name)
	if err := os.RemoveAll(e.Dir); err != nil {
		return fmt.Errorf("spool: removing uploaded capture %s: %v", e.Name, err)
	}
	delete(s.sizes, e.Name)
	s.updateGauges()
	return syncDir(s.ready)
}

// Quarantine moves a corrupted entry to quarantine/, where it stays for
// inspection (until the disk cap evicts it), and logs why.
func (s *Spool) Quarantine(e Entry, reason error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.busy, e.Name)
	size, ok := s.sizes[e.Name]
	if !ok {
		return nil
	}
	dst := filepath.Join(s.quar, e.Name)
	if err := os.Rename(e.Dir, dst); errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("spool: entry vanished from the spool (removed by hand?)", "capture", e.CaptureID, "host", e.Host, "entry", e.Name)
		delete(s.sizes, e.Name)
		s.updateGauges()
		return nil
	} else if err != nil {
		return fmt.Errorf("spool: quarantining %s: %v", e.Name, err)
	}
	delete(s.sizes, e.Name)
	s.qsizes[e.Name] = size
	s.quarantined.Inc()
	s.log.Error("spool: corrupted capture moved to quarantine; it will not be uploaded",
		"capture", e.CaptureID, "host", e.Host, "reason", reason, "folder", dst)
	s.updateGauges()
	return syncDir(s.ready)
}

// enforceCap evicts entries, oldest quarantined first, then oldest ready,
// until the spool fits MaxBytes. Entries an uploader holds are kept.
// s.mu is held.
func (s *Spool) enforceCap() {
	if s.opts.MaxBytes <= 0 {
		return
	}
	total := s.totalBytes()
	for _, q := range []struct {
		dir   string
		sizes map[string]int64
		what  string
	}{{s.quar, s.qsizes, "quarantined"}, {s.ready, s.sizes, "queued"}} {
		names := make([]string, 0, len(q.sizes))
		for n := range q.sizes {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			if total <= s.opts.MaxBytes {
				return
			}
			if s.busy[n] {
				continue
			}
			if err := os.RemoveAll(filepath.Join(q.dir, n)); err != nil {
				s.log.Error("spool: evicting capture failed", "entry", n, "err", err)
				continue
			}
			total -= q.sizes[n]
			e, _ := s.entry(n)
			s.log.Warn("spool: disk cap reached; evicted the oldest "+q.what+" capture, it will not be uploaded",
				"capture", e.CaptureID, "host", e.Host, "bytes", q.sizes[n], "max_bytes", s.opts.MaxBytes, "entry", n)
			delete(q.sizes, n)
			s.evicted.Inc()
		}
	}
}

func (s *Spool) totalBytes() int64 {
	var n int64
	for _, v := range s.sizes {
		n += v
	}
	for _, v := range s.qsizes {
		n += v
	}
	return n
}

func (s *Spool) updateGauges() {
	s.entries.Set(float64(len(s.sizes)))
	s.bytes.Set(float64(s.totalBytes()))
}

// syncTree fsyncs every file and folder under root and returns the bytes
// of its files.
func syncTree(root string) (int64, error) {
	var total int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !d.Type().IsRegular() {
			return fmt.Errorf("%s is not a regular file", p)
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		if st, err := f.Stat(); err == nil && !st.IsDir() {
			total += st.Size()
		}
		return f.Sync()
	})
	return total, err
}

// treeSize returns the bytes of the files under root.
func treeSize(root string) (int64, error) {
	var total int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		}
		return nil
	})
	return total, err
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
