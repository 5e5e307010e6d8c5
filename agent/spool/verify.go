package spool

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/loupe-dev/loupe/traces"
)

// ErrCorrupt marks an entry that can never be uploaded as it is: its
// manifest is unreadable or invalid, or a part is missing or differs from
// what the manifest says. Such entries belong in quarantine.
var ErrCorrupt = errors.New("corrupted spool entry")

// Load reads and checks an entry and returns its manifest, decoded and as
// the bytes on disk. The manifest must decode and validate
// (traces.DecodeManifest) and name this entry's capture and host; every part
// must be present with the size and SHA-256 it lists. A damaged entry gives
// an error that wraps ErrCorrupt and the traces error saying which check
// failed; other errors are I/O errors worth retrying.
func (s *Spool) Load(e Entry) (*traces.Manifest, []byte, error) {
	raw, err := readManifest(e.Dir)
	if err != nil {
		return nil, nil, err
	}
	m, err := traces.DecodeManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, nil, corrupt(err)
	}
	if m.CaptureID != e.CaptureID || m.Host != e.Host {
		return nil, nil, corrupt(fmt.Errorf("%w: manifest is for capture %s on %s, the spool entry for %s on %s",
			traces.ErrInvalid, m.CaptureID, m.Host, e.CaptureID, e.Host))
	}
	// Parts are hashed in parallel: verifying a big capture is CPU-bound.
	errs := make([]error, len(m.Parts))
	slots := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i, p := range m.Parts {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			errs[i] = checkPart(e.Dir, p)
		})
	}
	wg.Wait()
	// A corruption wins over an I/O error: retrying cannot fix it.
	var ioErr error
	for _, err := range errs {
		if errors.Is(err, ErrCorrupt) {
			return nil, nil, err
		}
		ioErr = cmp.Or(ioErr, err)
	}
	if ioErr != nil {
		return nil, nil, ioErr
	}
	return m, raw, nil
}

func readManifest(dir string) ([]byte, error) {
	f, err := os.Open(filepath.Join(dir, traces.ManifestName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, corrupt(fmt.Errorf("%w: no %s", traces.ErrInvalid, traces.ManifestName))
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// DecodeManifest enforces the size limit; reading one byte past it lets
	// it say so.
	return io.ReadAll(io.LimitReader(f, traces.MaxManifestSize+1))
}

// checkPart verifies one part file against the manifest.
func checkPart(dir string, p traces.Part) error {
	f, err := os.Open(filepath.Join(dir, filepath.FromSlash(p.Name)))
	if errors.Is(err, os.ErrNotExist) {
		return corrupt(fmt.Errorf("%w: %q", traces.ErrMissingPart, p.Name))
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return err
	} else if !st.Mode().IsRegular() {
		return corrupt(fmt.Errorf("%w: %q is not a regular file", traces.ErrMissingPart, p.Name))
	}
	_, err = io.Copy(io.Discard, traces.VerifyReader(p, f, 0))
	if errors.Is(err, traces.ErrChecksum) || errors.Is(err, traces.ErrPartTooLarge) {
		return corrupt(err)
	}
	return err
}

func corrupt(err error) error { return fmt.Errorf("%w: %w", ErrCorrupt, err) }
