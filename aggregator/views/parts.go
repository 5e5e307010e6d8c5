package views

import (
	"context"
	"fmt"
	"io"

	"github.com/loupe-dev/loupe/traces"
)

// readPart reads and verifies one part of a host bundle; nil when the
// bundle has no such part.
func (h *Handler) readPart(ctx context.Context, m *traces.Manifest, name string) ([]byte, error) {
	p, ok := m.Part(name)
	if !ok {
		return nil, nil
	}
	key := traces.KeyOf(m).Object(name)
	rc, _, err := h.cfg.Store.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(traces.VerifyReader(p, rc, h.cfg.MaxPartSize))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	return data, nil
}

// scanBatch is how many rows of a table a view decodes at a time.
const scanBatch = 1024
