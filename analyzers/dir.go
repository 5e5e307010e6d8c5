package analyzers

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/loupe-dev/loupe/traces"
)

// HostFromDir opens a host bundle stored in a local directory (as the
// agent's spool or a file:// store holds it). Parts are verified against the
// manifest as they are read; Key returns the part's file path.
func HostFromDir(dir string) (Host, error) {
	f, err := os.Open(filepath.Join(dir, traces.ManifestName))
	if err != nil {
		return Host{}, fmt.Errorf("bundle %s: %w (a folder without %s is not a committed capture)", dir, err, traces.ManifestName)
	}
	m, err := traces.DecodeManifest(f)
	f.Close()
	if err != nil {
		return Host{}, fmt.Errorf("bundle %s: %w", dir, err)
	}
	path := func(name string) string { return filepath.Join(dir, filepath.FromSlash(name)) }
	return Host{
		Manifest: m,
		Key:      path,
		Open: func(ctx context.Context, name string) (io.ReadCloser, error) {
			p, ok := m.Part(name)
			if !ok {
				return nil, fmt.Errorf("bundle %s: %w: %q is not in the manifest", dir, traces.ErrMissingPart, name)
			}
			f, err := os.Open(path(name))
			if err != nil {
				return nil, fmt.Errorf("bundle %s: %w", dir, err)
			}
			return struct {
				io.Reader
				io.Closer
			}{traces.VerifyReader(p, f, 0), f}, nil
		},
	}, nil
}
