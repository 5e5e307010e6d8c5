// Command loupe-agent is Loupe's per-host daemon, and the CLI that talks to
// it.
//
//	loupe-agent [--config FILE] [flags]   run the agent (see --help for every flag)
//	loupe-agent capture [--job J] [--pids P,...] [--duration 30s | --iterations K] [--wait]
//	loupe-agent status
//	loupe-agent dcgm pause|resume
//	loupe-agent version
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/loupe-dev/loupe/agent/api"
	"github.com/loupe-dev/loupe/agent/capture"
	"github.com/loupe-dev/loupe/agent/daemon"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the whole command; it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "capture":
			return cmdCapture(ctx, args[1:], stdout, stderr)
		case "status":
			return cmdStatus(ctx, args[1:], stdout, stderr)
		case "dcgm":
			return cmdDCGM(ctx, args[1:], stdout, stderr)
		case "version":
			fmt.Fprintln(stdout, "loupe-agent", daemon.Version)
			return 0
		}
	}
	cfg, err := daemon.Load(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "loupe-agent:", err)
		return 2
	}
	logger, err := newLogger(cfg, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "loupe-agent:", err)
		return 2
	}
	d, err := daemon.New(ctx, cfg, logger)
	if err != nil {
		logger.Error("loupe-agent cannot start", "err", err)
		return 1
	}
	if err := d.Run(ctx); err != nil {
		logger.Error("loupe-agent stopped", "err", err)
		return 1
	}
	return 0
}

func newLogger(cfg daemon.Config, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return nil, fmt.Errorf("log_level %q: use debug, info, warn or error", cfg.LogLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch cfg.LogFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log_format %q: use text or json", cfg.LogFormat)
}

// clientFlags are the flags every CLI command shares.
func clientFlags(fs *flag.FlagSet) func() (*api.Client, error) {
	addr := fs.String("api-addr", envOr("LOUPE_API_ADDR", "127.0.0.1:9401"), "the agent's API `address` (env LOUPE_API_ADDR)")
	token := fs.String("token", "", "bearer `token` (env LOUPE_API_TOKEN)")
	tokenFile := fs.String("token-file", "", "read the bearer token from `file`")
	return func() (*api.Client, error) {
		t := *token
		if t == "" {
			t = os.Getenv("LOUPE_API_TOKEN")
		}
		if *tokenFile != "" {
			data, err := os.ReadFile(*tokenFile)
			if err != nil {
				return nil, err
			}
			t = strings.TrimSpace(string(data))
		}
		return &api.Client{Addr: *addr, Token: t}, nil
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func cmdCapture(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loupe-agent capture", flag.ContinueOnError)
	fs.SetOutput(stderr)
	client := clientFlags(fs)
	job := fs.String("job", "", "capture the processes of this `job`")
	pids := fs.String("pids", "", "capture these process ids (`P,...`)")
	dur := fs.Duration("duration", 0, "window length (default: the agent's capture.default_duration, 30s)")
	iters := fs.Int64("iterations", 0, "capture `K` iterations, starting at the next multiple of trigger.roundup")
	id := fs.String("id", "", "capture `id`; give the same one on every host to group their shares")
	wait := fs.Bool("wait", false, "wait until the bundle is committed to the spool")
	asJSON := fs.Bool("json", false, "print the reply as JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	req := api.CaptureRequest{ID: *id, Job: *job, Duration: *dur, Iterations: *iters}
	for p := range strings.SplitSeq(*pids, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 {
			fmt.Fprintf(stderr, "loupe-agent capture: --pids: %q is not a process id\n", p)
			return 2
		}
		req.PIDs = append(req.PIDs, n)
	}
	c, err := client()
	if err != nil {
		fmt.Fprintln(stderr, "loupe-agent capture:", err)
		return 2
	}
	reply, err := c.Capture(ctx, req)
	if err != nil {
		fmt.Fprintln(stderr, "loupe-agent capture:", err)
		return 1
	}
	st := reply.Status
	if *wait {
		for st.State != capture.StateCommitted && st.State != capture.StateFailed {
			select {
			case <-ctx.Done():
				fmt.Fprintln(stderr, "loupe-agent capture: interrupted while waiting; the capture goes on in the agent")
				return 1
			case <-time.After(250 * time.Millisecond):
			}
			if st, err = c.CaptureStatus(ctx, st.ID); err != nil {
				fmt.Fprintln(stderr, "loupe-agent capture:", err)
				return 1
			}
		}
		reply.Status = st
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(reply)
	} else {
		printCapture(stdout, reply)
	}
	if len(st.Processes) == 0 {
		fmt.Fprintln(stderr, "loupe-agent capture: no process matched; the capture holds host-wide data only")
		return 1
	}
	if st.State == capture.StateFailed {
		fmt.Fprintln(stderr, "loupe-agent capture: failed:", st.Error)
		return 1
	}
	return 0
}

func printCapture(w io.Writer, r api.CaptureReply) {
	st := r.Status
	fmt.Fprintf(w, "capture %s: %s\n", st.ID, st.State)
	fmt.Fprintf(w, "%s\n", r.Message)
	if len(st.Processes) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PID\tRANK\tGPU\tCOMMAND")
		for _, p := range st.Processes {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", p.PID, orDash(p.Rank), orDash(p.GPU), p.Comm)
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "store key: %s\n", st.Key)
	for _, n := range st.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

func orDash(n int) string {
	if n < 0 {
		return "-"
	}
	return strconv.Itoa(n)
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loupe-agent status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	client := clientFlags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c, err := client()
	if err == nil {
		var st api.StatusReply
		if st, err = c.Status(ctx); err == nil {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			err = enc.Encode(st)
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "loupe-agent status:", err)
		return 1
	}
	return 0
}

func cmdDCGM(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loupe-agent dcgm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	client := clientFlags(fs)
	// The verb may come before or after the flags.
	verb := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		verb, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if verb == "" && fs.NArg() == 1 {
		verb = fs.Arg(0)
	} else if fs.NArg() != 0 {
		verb = ""
	}
	if verb != "pause" && verb != "resume" {
		fmt.Fprintln(stderr, "usage: loupe-agent dcgm pause|resume [--api-addr A] [--token T]")
		return 2
	}
	c, err := client()
	if err == nil {
		err = c.PauseProfiling(ctx, verb == "pause")
	}
	if err != nil {
		fmt.Fprintln(stderr, "loupe-agent dcgm:", err)
		return 1
	}
	fmt.Fprintf(stdout, "DCGM profiling %sd\n", verb)
	return 0
}
