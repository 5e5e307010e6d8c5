package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/loupe-dev/loupe/aggregator"
	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/findings"
	"github.com/loupe-dev/loupe/aggregator/runner"
	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces/store"
)

func backfill(ctx context.Context, args []string, stdout, stderr io.Writer, tty bool) error {
	fs := flag.NewFlagSet("backfill", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sinceFlag := fs.String("since", "", "re-run for captures first committed at or after `DATE` (2006-01-02 or RFC 3339); required")
	dry := fs.Bool("dry-run", false, "list what would be re-run and change nothing")
	cfg, rest, err := aggregator.LoadConfig(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usageErr("backfill takes no arguments, got %q", rest)
	}
	since, err := parseDate(*sinceFlag)
	if err != nil {
		return err
	}
	// Logs would tear the progress bar: only warnings and errors.
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	slog.SetDefault(log)
	svc, err := aggregator.New(ctx, cfg, analyzers.All, log)
	if err != nil {
		return err
	}
	var ids []capture.ID
	err = capture.List(ctx, svc.Store, func(l capture.Listed) error {
		if !l.FirstCommitted.Before(since) {
			ids = append(ids, l.ID)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if *dry {
		return backfillPlan(ctx, svc.Store, ids, runner.Versions(analyzers.All), stdout)
	}
	prog := newProgress(stderr, tty, len(ids))
	counts := map[string]int{}
	var failed []string
	for _, id := range ids {
		prog.Note("capture %s", id)
		out, err := svc.Runner.Backfill(ctx, id)
		prog.Step()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			failed = append(failed, fmt.Sprintf("%s: %v", id, err))
			continue
		}
		counts[out.Action]++
		if out.Action == runner.ActionAnalyzed {
			fmt.Fprintf(stdout, "%s: re-ran %s (%d findings)\n", id, strings.Join(out.Ran, ", "), out.Findings)
		}
	}
	prog.Finish()
	fmt.Fprintf(stdout, "backfill since %s: %d captures, %d re-analyzed, %d current, %d waiting for ranks, %d busy on another replica, %d failed\n",
		since.Format(time.RFC3339), len(ids), counts[runner.ActionAnalyzed], counts[runner.ActionCurrent],
		counts[runner.ActionWaiting], counts[runner.ActionBusy], len(failed))
	if len(failed) > 0 {
		return fmt.Errorf("backfill failed for %d captures:\n%s", len(failed), strings.Join(failed, "\n"))
	}
	return nil
}

// backfillPlan prints, per capture, the analyzers a backfill would re-run.
func backfillPlan(ctx context.Context, st store.Store, ids []capture.ID, versions map[string]string, w io.Writer) error {
	for _, id := range ids {
		rec, _, err := findings.Read(ctx, st, id)
		switch {
		case errors.Is(err, store.ErrNotFound):
			fmt.Fprintf(w, "%s: never analyzed: all analyzers\n", id)
		case err != nil:
			return err
		default:
			if stale := rec.Stale(versions); len(stale) > 0 {
				fmt.Fprintf(w, "%s: %s\n", id, strings.Join(slices.Sorted(slices.Values(stale)), ", "))
			}
		}
	}
	return nil
}

// parseDate reads --since: a date (UTC midnight) or an RFC 3339 time.
func parseDate(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, usageErr("backfill needs --since DATE (2006-01-02 or RFC 3339)")
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, usageErr("--since %q: want a date like 2026-11-01 or a time like 2026-11-01T08:00:00Z", s)
	}
	return t, nil
}
