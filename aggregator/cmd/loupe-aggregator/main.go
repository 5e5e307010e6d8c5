// Command loupe-aggregator is Loupe's fleet service and its offline tools.
//
//	loupe-aggregator [serve] [--config FILE] [--store URL] [--addr :8080] ...
//	loupe-aggregator analyze URL-or-DIR [--json] [--capture CLUSTER/JOB/RUN/CAPTURE]
//	loupe-aggregator backfill --since DATE [--dry-run] [--config FILE] [--store URL]
//	loupe-aggregator analyze-logs FILE-or-DIR... [--json] [--gpus N] [--host NAME] [--tz ZONE]
//
// serve (the default) watches the store, analyzes every capture once all of
// its ranks committed (or the partition timeout passed), stores findings
// beside the capture and serves the API, the S3 webhook endpoint, /metrics
// and the web UI. analyze runs the analyzers over a store, a bundle folder
// or a plain folder of Kineto traces and prints the findings without
// writing anything. backfill re-runs, for captures since DATE, the analyzers
// whose version changed, and stores the results. analyze-logs parses log
// files users already have (rotated, container, journald) and prints the
// rebalance, hardware-fault findings and the incidents they make.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/loupe-dev/loupe/aggregator"
	"github.com/loupe-dev/loupe/analyzers"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp): // -h, --help: the usage was printed
		os.Exit(0)
	case errors.Is(err, errUsage):
		fmt.Fprintln(os.Stderr, "loupe-aggregator:", err)
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "loupe-aggregator:", err)
		os.Exit(1)
	}
}

// errUsage marks command-line mistakes (exit status 2).
var errUsage = errors.New("usage")

func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
}

// run dispatches a command line (without the program name).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(ctx, args, stderr)
	case "analyze":
		return analyze(ctx, args, stdout, stderr, isTerminal(stderr))
	case "backfill":
		return backfill(ctx, args, stdout, stderr, isTerminal(stderr))
	case "analyze-logs":
		return analyzeLogs(ctx, args, stdout, stderr)
	case "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return usageErr("unknown command %q\n%s", cmd, usage)
}

const usage = `usage:
  loupe-aggregator [serve] [--config FILE] [--store URL] [--addr :8080] [flags]
  loupe-aggregator analyze URL-or-DIR [--json] [--capture CLUSTER/JOB/RUN/CAPTURE] [--report] [--launch-apis hta|extended]
  loupe-aggregator analyze-logs FILE-or-DIR... [--json] [--gpus N] [--host NAME] [--tz ZONE]
  loupe-aggregator backfill --since DATE [--dry-run] [--config FILE] [--store URL]
  loupe-aggregator help

commands:
  serve         the fleet service (the default): watch the store, analyze captures, serve the API and web UI
  analyze       analyze a store, a capture or a folder of Kineto traces offline and print the findings
  analyze-logs  diagnose from existing log files (rebalances, faults, incidents) with their own timestamps
  backfill      re-run the analyzers whose version changed over captures since DATE
  help          print this

Run a command with -h for its flags.
`

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage+"\nserve flags (each also a key of the --config YAML file, - as _):\n")
		fs.PrintDefaults()
	}
	cfg, rest, err := aggregator.LoadConfig(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usageErr("serve takes no arguments, got %q", rest)
	}
	log := cfg.Logger()
	svc, err := aggregator.New(ctx, cfg, analyzers.All, log)
	if err != nil {
		return err
	}
	return svc.Run(ctx)
}
