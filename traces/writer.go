package traces

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/google/pprof/profile"
	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/zstd"
)

// BundleWriter writes one host's bundle into a local directory: each part
// through a temporary file that is fsynced and renamed, and the manifest last,
// so that a directory with a manifest.json always holds every part it lists.
type BundleWriter struct {
	dir   string
	m     Manifest
	names map[string]bool
	// dirs are the folders parts were renamed into; Commit fsyncs them
	// before the manifest so that no committed bundle can lose a part.
	dirs map[string]bool
}

// NewBundleWriter starts a bundle in dir (created if needed) described by m.
// The manifest's parts are filled in as parts are written; its schema version
// is set to SchemaVersion.
func NewBundleWriter(dir string, m Manifest) (*BundleWriter, error) {
	if err := KeyOf(&m).Validate(); err != nil {
		return nil, fmt.Errorf("new bundle in %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("new bundle: %w", err)
	}
	m.SchemaVersion = SchemaVersion
	m.Parts = nil
	return &BundleWriter{dir: dir, m: m, names: map[string]bool{}, dirs: map[string]bool{dir: true}}, nil
}

// Dir is the directory the bundle is written to.
func (w *BundleWriter) Dir() string { return w.dir }

// PartWriter writes one part: a temporary file and the running digest.
// Close commits the part; Abort discards it.
type PartWriter struct {
	w         *BundleWriter
	name      string
	mediaType string
	f         *os.File
	buf       *bufio.Writer
	sum       hash.Hash
	n         int64
}

// Create starts a part; the caller writes it and calls Close to commit it,
// or Abort to discard it.
func (w *BundleWriter) Create(name, mediaType string) (*PartWriter, error) {
	if err := ValidatePartName(name); err != nil {
		return nil, err
	}
	if name == ManifestName || w.names[name] {
		return nil, fmt.Errorf("bundle part %q: %w: name already used", name, ErrInvalid)
	}
	path := filepath.Join(w.dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("bundle part %q: %w", name, err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".part-*")
	if err != nil {
		return nil, fmt.Errorf("bundle part %q: %w", name, err)
	}
	w.names[name] = true
	w.dirs[filepath.Dir(path)] = true
	p := &PartWriter{w: w, name: name, mediaType: mediaType, f: f, sum: sha256.New()}
	p.buf = bufio.NewWriterSize(io.MultiWriter(f, p.sum), 256<<10)
	return p, nil
}

// Write appends b to the part.
func (p *PartWriter) Write(b []byte) (int, error) {
	n, err := p.buf.Write(b)
	p.n += int64(n)
	return n, err
}

// Close flushes, fsyncs and renames the part into place and records it.
func (p *PartWriter) Close() error {
	tmp := p.f.Name()
	err := p.buf.Flush()
	if err == nil {
		err = p.f.Sync()
	}
	if cerr := p.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(p.w.dir, filepath.FromSlash(p.name)))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("bundle part %q: %w", p.name, err)
	}
	p.w.m.Parts = append(p.w.m.Parts, Part{
		Name: p.name, MediaType: p.mediaType, Size: p.n, SHA256: hex.EncodeToString(p.sum.Sum(nil)),
	})
	return nil
}

// WritePart copies r into a new part.
func (w *BundleWriter) WritePart(name, mediaType string, r io.Reader) error {
	pw, err := w.Create(name, mediaType)
	if err != nil {
		return err
	}
	if _, err := io.Copy(pw, r); err != nil {
		pw.Abort()
		return fmt.Errorf("bundle part %q: %w", name, err)
	}
	return pw.Close()
}

// Abort discards the part; its name may be used again.
func (p *PartWriter) Abort() {
	p.f.Close()
	os.Remove(p.f.Name())
	delete(p.w.names, p.name)
}

// Keys of the key-value metadata every bundle table carries.
const (
	// MetaSchemaVersion holds SchemaVersion, in decimal.
	MetaSchemaVersion = "loupe.schema_version"
	// MetaTable holds the part's name, e.g. gpu_samples.parquet.
	MetaTable = "loupe.table"
)

// identifyBatch is how many rows WriteTable copies at a time to fill in
// their identity, leaving the caller's rows as they are.
const identifyBatch = 4096

// WriteTable writes rows as a zstd-compressed Parquet part. T is one of the
// row types of this package (GPUSample, NCCLEvent, Step). The identity
// columns of each row written are filled from the bundle's manifest; the
// caller's rows are not changed.
func WriteTable[T any](w *BundleWriter, name string, rows []T) error {
	pw, err := w.Create(name, MediaParquet)
	if err != nil {
		return err
	}
	tw := parquet.NewGenericWriter[T](pw, parquet.Compression(&zstd.Codec{}),
		parquet.CreatedBy("loupe", "v1", ""),
		parquet.KeyValueMetadata(MetaSchemaVersion, strconv.Itoa(SchemaVersion)),
		parquet.KeyValueMetadata(MetaTable, name))
	batch := make([]T, 0, min(len(rows), identifyBatch))
	for len(rows) > 0 {
		n := min(len(rows), identifyBatch)
		batch = append(batch[:0], rows[:n]...)
		rows = rows[n:]
		for i := range batch {
			if r, ok := any(&batch[i]).(identified); ok {
				r.identify(&w.m)
			}
		}
		if _, err := tw.Write(batch); err != nil {
			pw.Abort()
			return fmt.Errorf("bundle part %q: write parquet: %w", name, err)
		}
	}
	if err := tw.Close(); err != nil {
		pw.Abort()
		return fmt.Errorf("bundle part %q: close parquet: %w", name, err)
	}
	return pw.Close()
}

// WriteProfile writes p as the bundle's gzip-compressed pprof CPU profile.
func (w *BundleWriter) WriteProfile(p *profile.Profile) error {
	return w.WriteProfileAs(PartCPUProfile, p)
}

// WriteProfileAs writes p as a gzip-compressed pprof part of that name.
func (w *BundleWriter) WriteProfileAs(name string, p *profile.Profile) error {
	pw, err := w.Create(name, MediaPprof)
	if err != nil {
		return err
	}
	if err := p.Write(pw); err != nil {
		pw.Abort()
		return fmt.Errorf("bundle part %q: %w", name, err)
	}
	return pw.Close()
}

// WriteEvents writes evs as the bundle's JSON-lines event records.
func (w *BundleWriter) WriteEvents(evs []Event) error {
	pw, err := w.Create(PartEvents, MediaJSONL)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(pw)
	for i := range evs {
		if err := enc.Encode(&evs[i]); err != nil {
			pw.Abort()
			return fmt.Errorf("bundle part %q: event %d: %w", PartEvents, i, err)
		}
	}
	return pw.Close()
}

// Note adds a human-readable remark about the capture to the manifest.
func (w *BundleWriter) Note(format string, args ...any) {
	w.m.Notes = append(w.m.Notes, fmt.Sprintf(format, args...))
}

// Commit writes manifest.json last (temporary file, fsync, rename, fsync of
// the directory) and returns the manifest as written. After Commit the
// bundle is complete; the writer must not be used again.
func (w *BundleWriter) Commit() (*Manifest, error) {
	sort.Slice(w.m.Parts, func(i, j int) bool { return w.m.Parts[i].Name < w.m.Parts[j].Name })
	if w.m.End.IsZero() {
		w.m.End = time.Now().UTC()
	}
	if err := w.m.Validate(); err != nil {
		return nil, fmt.Errorf("commit bundle %s: %w", w.dir, err)
	}
	for d := range w.dirs {
		if err := SyncDir(d); err != nil {
			return nil, fmt.Errorf("commit bundle %s: %w", w.dir, err)
		}
	}
	data, err := json.MarshalIndent(&w.m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("commit bundle %s: %w", w.dir, err)
	}
	if err := WriteFileAtomic(filepath.Join(w.dir, ManifestName), data); err != nil {
		return nil, fmt.Errorf("commit bundle %s: %w", w.dir, err)
	}
	m := w.m
	return &m, nil
}

// WriteFileAtomic writes data to path through a temporary file in the same
// directory that is fsynced and renamed, then fsyncs the directory, so that
// after a crash path holds either the old content or all of the new.
func WriteFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return SyncDir(dir)
}

// SyncDir fsyncs a directory so that renames into it are durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
