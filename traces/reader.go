package traces

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"

	"github.com/google/pprof/profile"
)

// MaxEventLine bounds one line of events.jsonl.
const MaxEventLine = 1 << 20

// DecodeManifest reads and validates a manifest. Data past MaxManifestSize is
// an error, so hostile input cannot exhaust memory.
func DecodeManifest(r io.Reader) (*Manifest, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	if len(data) > MaxManifestSize {
		return nil, fmt.Errorf("%w: manifest larger than %d bytes", ErrInvalid, MaxManifestSize)
	}
	// Peek at the version first so that a future format gets the right error
	// rather than a field-type complaint.
	var v struct {
		SchemaVersion json.RawMessage `json:"schema_version"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, fmt.Errorf("%w: not JSON: %v", ErrInvalid, err)
	}
	if string(v.SchemaVersion) != fmt.Sprint(SchemaVersion) {
		return nil, fmt.Errorf("%w: manifest has schema_version %s, this build reads %d; upgrade Loupe",
			ErrSchemaVersion, orMissing(v.SchemaVersion), SchemaVersion)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

func orMissing(raw json.RawMessage) string {
	if len(raw) == 0 {
		return "(missing)"
	}
	return string(raw)
}

// Validate checks the manifest's own consistency: version, key components,
// ranks against world size, and every part's name, size and digest form.
func (m *Manifest) Validate() error {
	if m.SchemaVersion != SchemaVersion {
		return fmt.Errorf("%w: %d, this build reads %d", ErrSchemaVersion, m.SchemaVersion, SchemaVersion)
	}
	if err := KeyOf(m).Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if m.WorldSize < 0 {
		return fmt.Errorf("%w: world_size %d is negative", ErrInvalid, m.WorldSize)
	}
	seenRank := map[int]bool{}
	for _, r := range m.Ranks {
		if r < 0 || (m.WorldSize > 0 && r >= m.WorldSize) {
			return fmt.Errorf("%w: rank %d outside world of size %d", ErrInvalid, r, m.WorldSize)
		}
		if seenRank[r] {
			return fmt.Errorf("%w: rank %d listed twice", ErrInvalid, r)
		}
		seenRank[r] = true
	}
	if len(m.Parts) > MaxParts {
		return fmt.Errorf("%w: %d parts, at most %d allowed", ErrInvalid, len(m.Parts), MaxParts)
	}
	seen := map[string]bool{}
	for _, p := range m.Parts {
		if err := ValidatePartName(p.Name); err != nil {
			return err
		}
		if p.Name == ManifestName || seen[p.Name] {
			return fmt.Errorf("%w: part %q listed twice or shadows the manifest", ErrInvalid, p.Name)
		}
		seen[p.Name] = true
		if p.Size < 0 {
			return fmt.Errorf("%w: part %q has negative size %d", ErrInvalid, p.Name, p.Size)
		}
		if len(p.SHA256) != sha256.Size*2 || !isLowerHex(p.SHA256) {
			return fmt.Errorf("%w: part %q has sha256 %q, want 64 lowercase hex digits", ErrInvalid, p.Name, p.SHA256)
		}
	}
	return nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// Part returns the part with that name.
func (m *Manifest) Part(name string) (Part, bool) {
	for _, p := range m.Parts {
		if p.Name == name {
			return p, true
		}
	}
	return Part{}, false
}

// VerifyReader wraps r, the bytes of part p, so that reading it to the end
// fails with ErrChecksum when the size or digest differ from the manifest,
// and with ErrPartTooLarge as soon as the part is larger than maxSize
// (DefaultMaxPartSize when maxSize <= 0).
func VerifyReader(p Part, r io.Reader, maxSize int64) io.Reader {
	if maxSize <= 0 {
		maxSize = DefaultMaxPartSize
	}
	return &verifier{p: p, r: r, max: maxSize, sum: sha256.New()}
}

type verifier struct {
	p   Part
	r   io.Reader
	max int64
	n   int64
	sum hash.Hash
	err error
}

func (v *verifier) Read(b []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	if v.p.Size > v.max {
		v.err = fmt.Errorf("%w: part %q is %d bytes, limit %d", ErrPartTooLarge, v.p.Name, v.p.Size, v.max)
		return 0, v.err
	}
	n, err := v.r.Read(b)
	v.n += int64(n)
	v.sum.Write(b[:n])
	switch {
	case v.n > v.p.Size:
		v.err = fmt.Errorf("%w: part %q is longer than the %d bytes its manifest lists", ErrChecksum, v.p.Name, v.p.Size)
		return n, v.err
	case err == io.EOF:
		if v.n != v.p.Size {
			v.err = fmt.Errorf("%w: part %q has %d bytes, manifest lists %d", ErrChecksum, v.p.Name, v.n, v.p.Size)
			return n, v.err
		}
		if got := hex.EncodeToString(v.sum.Sum(nil)); got != v.p.SHA256 {
			v.err = fmt.Errorf("%w: part %q has sha256 %s, manifest lists %s", ErrChecksum, v.p.Name, got, v.p.SHA256)
			return n, v.err
		}
	}
	return n, err
}

// ReadDir reads and verifies a bundle in a local directory: the manifest
// must be present (a directory without one is not a committed capture) and
// every part must exist with the listed size and digest.
func ReadDir(dir string, maxPartSize int64) (*Manifest, error) {
	f, err := os.Open(filepath.Join(dir, ManifestName))
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", dir, err)
	}
	m, err := DecodeManifest(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", dir, err)
	}
	for _, p := range m.Parts {
		if err := verifyFile(filepath.Join(dir, filepath.FromSlash(p.Name)), p, maxPartSize); err != nil {
			return nil, fmt.Errorf("bundle %s: %w", dir, err)
		}
	}
	return m, nil
}

func verifyFile(path string, p Part, maxSize int64) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %q", ErrMissingPart, p.Name)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(io.Discard, VerifyReader(p, f, maxSize))
	return err
}

// ReadEvents decodes events.jsonl, calling fn for each record. A malformed
// line is an error that names its line number.
func ReadEvents(r io.Reader, fn func(Event) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), MaxEventLine)
	for line := 1; sc.Scan(); line++ {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var e Event
		if err := json.Unmarshal(b, &e); err != nil {
			return fmt.Errorf("%s line %d: %w", PartEvents, line, err)
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w (lines are limited to %d bytes)", PartEvents, err, MaxEventLine)
	}
	return nil
}

// ReadProfile decodes the bundle's pprof CPU profile.
func ReadProfile(r io.Reader) (*profile.Profile, error) {
	p, err := profile.Parse(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", PartCPUProfile, err)
	}
	return p, nil
}
