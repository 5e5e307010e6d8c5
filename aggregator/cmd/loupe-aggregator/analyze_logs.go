package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/analyzers/triage"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/logparse"
)

// LogsResult is what analyze-logs prints (the --json form).
type LogsResult struct {
	Files     []LogFile         `json:"files"`
	Events    int               `json:"events"`
	Start     time.Time         `json:"start"`
	End       time.Time         `json:"end"`
	Hosts     []string          `json:"hosts"`
	Analyzers []AnalyzerRun     `json:"analyzers"`
	Findings  []traces.Finding  `json:"findings"`
	Incidents []traces.Incident `json:"incidents"`
}

// LogFile is one file analyze-logs read.
type LogFile struct {
	Path   string `json:"path"`
	Lines  int    `json:"lines"`
	Events int    `json:"events"`
	Error  string `json:"error,omitempty"`
}

const analyzeLogsUsage = "usage: loupe-aggregator analyze-logs FILE-or-DIR... [--json] [--gpus N] [--host NAME] [--tz ZONE] [--owners FILE]"

// analyzeLogs runs the log parsers over files users already have, then the
// analyzers that read log events (rebalance, hw-faults) and triage, and
// prints findings and incidents. Events keep their own timestamps.
func analyzeLogs(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fset := flag.NewFlagSet("analyze-logs", flag.ContinueOnError)
	fset.SetOutput(stderr)
	jsonOut := fset.Bool("json", false, "print files, findings and incidents as JSON instead of tables")
	gpus := fset.Int("gpus", 0, "GPUs on each host, for the GPU time rebalances and faults cost (0: not estimated)")
	host := fset.String("host", "", "host `NAME` for lines that name none (default: each pod, or else each file, is a host)")
	tz := fset.String("tz", "Local", "time `ZONE` of timestamps printed without one (IANA name, e.g. UTC or Europe/Berlin)")
	owners := fset.String("owners", "", "owners `FILE` (YAML) that maps jobs, hosts and stack frames to teams")
	job := fset.String("job", "logs", "job `NAME` the incidents are filed under")
	maxLine := fset.Int("max-line-bytes", logparse.DefaultMaxLineBytes, "longest line kept whole")
	fset.Usage = func() {
		fmt.Fprintln(stderr, analyzeLogsUsage)
		fmt.Fprintln(stderr, "FILE-or-DIR: log files (plain, rotated .gz, CRI or Docker json-file container logs, syslog,\n"+
			"journalctl -o short-iso-precise / short / json / export output) or folders of them, read recursively.")
		fset.PrintDefaults()
	}
	paths, err := parseInterspersed(fset, args)
	if err != nil {
		return err
	}
	if len(paths) == 0 {
		fset.Usage()
		return usageErr("analyze-logs takes at least one file or folder")
	}
	loc, err := time.LoadLocation(*tz)
	if err != nil {
		return usageErr("--tz %q: %v", *tz, err)
	}
	var tcfg triage.Config
	if *owners != "" {
		if tcfg.Owners, err = triage.LoadOwners(*owners); err != nil {
			return err
		}
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))

	files, err := logFiles(paths)
	if err != nil {
		return err
	}
	res := LogsResult{Analyzers: []AnalyzerRun{}, Findings: []traces.Finding{}, Incidents: []traces.Incident{}}
	var events []traces.Event
	failed := 0
	for _, path := range files {
		lf, evs := readLogFile(path, loc, *maxLine)
		if lf.Error != "" {
			failed++
		}
		res.Files = append(res.Files, lf)
		events = append(events, evs...)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	res.Events = len(events)
	lopts := analyzers.LogOptions{Job: *job, DefaultHost: *host, GPUsPerHost: *gpus}
	in, err := analyzers.LogInput(events, lopts)
	if err != nil {
		if *jsonOut {
			printLogsJSON(stdout, res)
		} else {
			printLogFiles(stdout, res.Files)
		}
		return fmt.Errorf("%d files: %w", len(files), err)
	}
	res.Start, res.End = in.Hosts[0].Manifest.Start, in.Hosts[0].Manifest.End
	for _, h := range in.Hosts {
		res.Hosts = append(res.Hosts, h.Manifest.Host)
	}
	rep := analyzers.Execute(ctx, in, analyzers.All)
	for _, r := range rep.Runs {
		res.Analyzers = append(res.Analyzers, AnalyzerRun{Name: r.Name, Version: r.Version, Status: r.Status, Reason: r.Reason,
			Findings: r.Findings, DurationMs: float64(r.Duration.Microseconds()) / 1e3})
		if r.Status == analyzers.StatusFailed {
			failed++
		}
	}
	res.Findings = append(res.Findings, rep.Findings...)
	var faults []triage.HostEvent
	for _, e := range events {
		if slices.Contains(triage.FaultKinds, e.Kind) {
			faults = append(faults, triage.HostEvent{Host: lopts.HostOf(e), Event: e})
		}
	}
	tcfg.WorldSize = max(1, *gpus*len(in.Hosts))
	scope := traces.Scope{Cluster: "local", Job: *job, Run: "offline", Capture: in.Hosts[0].Manifest.CaptureID, GPU: -1, Rank: -1}
	res.Incidents = append(res.Incidents, triage.Triage(ctx, scope, res.Findings, faults, tcfg)...)
	if *jsonOut {
		if err := printLogsJSON(stdout, res); err != nil {
			return err
		}
	} else {
		printLogs(stdout, res)
	}
	if failed > 0 {
		return fmt.Errorf("%d files or analyzers had errors (see above); the rest was analyzed", failed)
	}
	return nil
}

// logFiles expands folders (recursively) into the files they hold, in
// lexical order; binary journal files are refused with what to do instead.
func logFiles(paths []string) ([]string, error) {
	var out []string
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("analyze-logs %s: %w", p, err)
		}
		if !info.IsDir() {
			out = append(out, p)
			continue
		}
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.Type().IsRegular() && !strings.HasPrefix(d.Name(), ".") {
				out = append(out, path)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("analyze-logs %s: %w", p, err)
		}
	}
	for _, p := range out {
		if strings.HasSuffix(p, ".journal") || strings.HasSuffix(p, ".journal~") {
			return nil, usageErr("%s is a binary journal file: export it first, e.g. journalctl --file %s -o export > journal.export (or -o short-iso-precise)", p, p)
		}
	}
	return out, nil
}

// readLogFile parses one file, dating year-less timestamps by its
// modification time. A read error keeps the events read before it.
func readLogFile(path string, loc *time.Location, maxLine int) (LogFile, []traces.Event) {
	lf := LogFile{Path: path}
	f, err := os.Open(path)
	if err != nil {
		lf.Error = err.Error()
		return lf, nil
	}
	defer f.Close()
	var ref time.Time
	if st, err := f.Stat(); err == nil {
		ref = st.ModTime()
	}
	var evs []traces.Event
	abs, _ := filepath.Abs(path)
	opts := logparse.StreamOptions{Ref: ref, Location: loc, MaxLine: maxLine, Source: logparse.SourceOf(abs)}
	lf.Lines, err = logparse.ReadStream(f, opts, func(e traces.Event) error {
		e.Attrs[logparse.AttrSource] = path
		evs = append(evs, e)
		return nil
	})
	if err != nil && !errors.Is(err, io.EOF) {
		lf.Error = fmt.Sprintf("after %d lines: %v", lf.Lines, err)
	}
	lf.Events = len(evs)
	return lf, evs
}

func printLogsJSON(w io.Writer, res LogsResult) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(res)
}

func printLogFiles(w io.Writer, files []LogFile) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FILE\tLINES\tEVENTS\t")
	for _, f := range files {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", f.Path, f.Lines, f.Events, f.Error)
	}
	tw.Flush()
}

// printLogs writes files, findings and incidents as aligned tables.
func printLogs(w io.Writer, res LogsResult) {
	printLogFiles(w, res.Files)
	fmt.Fprintf(w, "\n%d events from %s to %s (%s) on %d hosts: %s\n", res.Events,
		res.Start.Format(time.RFC3339Nano), res.End.Format(time.RFC3339Nano), res.End.Sub(res.Start).Round(time.Millisecond),
		len(res.Hosts), strings.Join(res.Hosts, ", "))
	printTable(w, []Result{{Capture: "logs", Hosts: len(res.Hosts), Analyzers: res.Analyzers, Findings: res.Findings}})
	for _, f := range res.Findings {
		fmt.Fprintf(w, "\n%s: %s\n", f.Analyzer, f.Title)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, m := range f.Evidence {
			fmt.Fprintf(tw, "  %s\t%g\t%s\n", m.Name, m.Value, m.Unit)
		}
		tw.Flush()
		if f.Recommendation != "" {
			fmt.Fprintf(w, "  recommendation: %s\n", f.Recommendation)
		}
	}
	fmt.Fprintf(w, "\n%d incidents\n", len(res.Incidents))
	if len(res.Incidents) == 0 {
		return
	}
	ids := map[string]string{}
	for _, i := range res.Incidents {
		ids[i.ID] = i.Title
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  SEVERITY\tRULE\tCATEGORY\tHOSTS\tRANKS\tGPU-h\tTITLE")
	for _, i := range res.Incidents {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%.3f\t%s\n", i.Severity, i.Rule, i.Category, strings.Join(i.Hosts, ","),
			ranges(i.Ranks), i.ImpactGPUHours, i.Title)
	}
	tw.Flush()
	for _, i := range res.Incidents {
		if c, ok := ids[i.Cause]; ok {
			fmt.Fprintf(w, "  %q most likely follows from %q\n", i.Title, c)
		}
	}
}
