package cpuprof

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/pprof/profile"
)

// Profile samples the given processes (all when pids is empty) for d, or
// until ctx is done, with a profiler of its own, and returns the profile.
// It serves on-demand captures and tests; a daemon keeps one Profiler.
func Profile(ctx context.Context, cfg Config, pids []int, d time.Duration, logger *slog.Logger) (*profile.Profile, error) {
	cfg.Continuous.Enabled = false
	p, err := New(cfg, logger, nil)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := p.StartWindow(pids)
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()

	t := time.NewTimer(d)
	defer t.Stop()
	var cut error
	select {
	case <-t.C:
	case <-ctx.Done():
		cut = context.Cause(ctx)
	case err := <-done:
		// Run failed before the window ended, e.g. attaching.
		_, _ = w.Stop()
		return nil, err
	}
	prof, err := w.Stop()
	cancel()
	if runErr := <-done; runErr != nil {
		return nil, runErr
	}
	if err != nil {
		return nil, err
	}
	if cut != nil {
		return prof, fmt.Errorf("cpuprof: profile cut short: %w", cut)
	}
	return prof, nil
}
