package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// target is one job capture to analyze offline.
type target struct {
	name string
	load func(ctx context.Context) (*analyzers.Input, error)
}

// Result is what analyze prints for one capture (the --json form).
type Result struct {
	Capture      string           `json:"capture"`
	Hosts        int              `json:"hosts"`
	Partial      bool             `json:"partial"`
	MissingRanks []int            `json:"missing_ranks,omitempty"`
	Error        string           `json:"error,omitempty"`
	Analyzers    []AnalyzerRun    `json:"analyzers"`
	Findings     []traces.Finding `json:"findings"`
	// Kineto holds every rank's Kineto measures, with --report.
	Kineto []*analyzers.KinetoRank `json:"kineto,omitempty"`
}

// AnalyzerRun is how one analyzer fared on one capture.
type AnalyzerRun struct {
	Name       string  `json:"name"`
	Version    string  `json:"version"`
	Status     string  `json:"status"`
	Reason     string  `json:"reason,omitempty"`
	Findings   int     `json:"findings"`
	DurationMs float64 `json:"duration_ms"`
}

func analyze(ctx context.Context, args []string, stdout, stderr io.Writer, tty bool) error {
	fs := flag.NewFlagSet("analyze", flag.ContinueOnError)
	fs.SetOutput(stderr)
	jsonOut := fs.Bool("json", false, "print findings as JSON (for scripts) instead of a table")
	only := fs.String("capture", "", "analyze only `CLUSTER/JOB/RUN/CAPTURE` of a store")
	maxPart := fs.Int64("max-part-size", 0, "largest part read, in bytes (0: 8 GiB)")
	kf := addKinetoFlags(fs)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: loupe-aggregator analyze URL-or-DIR [--json] [--capture CLUSTER/JOB/RUN/CAPTURE] [--report] [--launch-apis hta|extended]")
		fmt.Fprintln(stderr, "URL-or-DIR: a store URL (file:///DIR, s3://...), a store folder (holding v1/), a capture folder\n(host folders with manifest.json), a host bundle folder, or a folder of Kineto traces (*.json, *.json.gz).")
		fs.PrintDefaults()
	}
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	kopts, err := kf.options()
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		fs.Usage()
		return usageErr("analyze takes one URL or folder, got %d arguments", len(rest))
	}
	// The analyzers log through slog.Default; keep their info lines from
	// tearing the progress bar.
	slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	targets, err := findTargets(ctx, rest[0], *only, *maxPart)
	if err != nil {
		return err
	}
	list := analyzers.All
	prog := newProgress(stderr, tty, len(targets)*len(list))
	var results []Result
	failed := 0
	for i, t := range targets {
		prog.Note("capture %s (%d of %d)", t.name, i+1, len(targets))
		res := analyzeOne(ctx, t, list, prog, kf, kopts)
		if res.Error != "" || hasFailure(res) {
			failed++
		}
		results = append(results, res)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	prog.Finish()
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(results); err != nil {
			return err
		}
	} else {
		printTable(stdout, results)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d captures had errors (see above)", failed, len(results))
	}
	return nil
}

func hasFailure(r Result) bool {
	for _, a := range r.Analyzers {
		if a.Status == analyzers.StatusFailed {
			return true
		}
	}
	return false
}

// analyzeOne loads and analyzes one capture; failures end up in the result.
func analyzeOne(ctx context.Context, t target, list []*analyzers.Analyzer, prog *progress, kf *kinetoFlags, kopts *analyzers.KinetoOptions) Result {
	res := Result{Capture: t.name, Analyzers: []AnalyzerRun{}, Findings: []traces.Finding{}}
	in, err := t.load(ctx)
	if err != nil {
		res.Error = err.Error()
		for range list {
			prog.Step()
		}
		return res
	}
	res.Hosts, res.Partial, res.MissingRanks = len(in.Hosts), in.Partial, in.MissingRanks
	in.Kineto = kopts
	rep := analyzers.Execute(ctx, in, withProgress(list, prog))
	res.Kineto, _ = kf.kinetoReport(ctx, in) // unreadable traces are a finding already
	for _, r := range rep.Runs {
		if r.Status == analyzers.StatusSkipped {
			prog.Step() // skipped analyzers never run, so never step
		}
		res.Analyzers = append(res.Analyzers, AnalyzerRun{Name: r.Name, Version: r.Version, Status: r.Status, Reason: r.Reason,
			Findings: r.Findings, DurationMs: float64(r.Duration.Microseconds()) / 1e3})
	}
	res.Findings = append(res.Findings, rep.Findings...)
	return res
}

// withProgress wraps each analyzer so that finishing it steps the bar.
func withProgress(list []*analyzers.Analyzer, prog *progress) []*analyzers.Analyzer {
	out := make([]*analyzers.Analyzer, len(list))
	for i, a := range list {
		w := *a
		w.Run = func(p *analyzers.Pass) error {
			defer prog.Step()
			return a.Run(p)
		}
		out[i] = &w
	}
	return out
}

// findTargets turns the command's argument into captures.
func findTargets(ctx context.Context, arg, only string, maxPart int64) ([]target, error) {
	if strings.Contains(arg, "://") {
		st, err := store.Open(ctx, arg)
		if err != nil {
			return nil, err
		}
		return storeTargets(ctx, st, arg, only, maxPart)
	}
	info, err := os.Stat(arg)
	if err != nil {
		return nil, fmt.Errorf("analyze %s: %w", arg, err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("analyze %s: not a folder or store URL; give the folder that holds the trace files", arg)
	}
	switch {
	case exists(filepath.Join(arg, traces.KeyVersion)):
		st, err := store.NewDir(arg)
		if err != nil {
			return nil, err
		}
		return storeTargets(ctx, st, arg, only, maxPart)
	case only != "":
		return nil, usageErr("--capture applies to a store, and %s is not one (it has no %s/ folder)", arg, traces.KeyVersion)
	case exists(filepath.Join(arg, traces.ManifestName)):
		return []target{{name: arg, load: func(context.Context) (*analyzers.Input, error) { return bundleInput([]string{arg}) }}}, nil
	}
	hosts, _ := filepath.Glob(filepath.Join(arg, "*", traces.ManifestName))
	if len(hosts) > 0 {
		dirs := make([]string, len(hosts))
		for i, h := range hosts {
			dirs[i] = filepath.Dir(h)
		}
		return []target{{name: arg, load: func(context.Context) (*analyzers.Input, error) { return bundleInput(dirs) }}}, nil
	}
	return []target{{name: arg, load: func(context.Context) (*analyzers.Input, error) { return analyzers.KinetoFolderInput(arg) }}}, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// bundleInput reads host bundle folders of one capture; ranks the
// manifests announce but no folder holds make the input partial.
func bundleInput(dirs []string) (*analyzers.Input, error) {
	c := &capture.Capture{}
	in := &analyzers.Input{}
	for _, d := range dirs {
		h, err := analyzers.HostFromDir(d)
		if err != nil {
			return nil, err
		}
		if len(in.Hosts) > 0 && traces.KeyOf(h.Manifest).CapturePrefix() != traces.KeyOf(in.Hosts[0].Manifest).CapturePrefix() {
			return nil, fmt.Errorf("bundles %s and %s belong to different captures; analyze them one at a time",
				dirs[0], d)
		}
		in.Hosts = append(in.Hosts, h)
		c.Hosts = append(c.Hosts, capture.Host{Manifest: h.Manifest})
	}
	in.MissingRanks = c.MissingRanks()
	in.Partial = len(in.MissingRanks) > 0
	return in, nil
}

// storeTargets lists the captures of a store (or the one named by only).
func storeTargets(ctx context.Context, st store.Store, where, only string, maxPart int64) ([]target, error) {
	load := func(id capture.ID) target {
		return target{name: id.String(), load: func(ctx context.Context) (*analyzers.Input, error) {
			c, err := capture.Load(ctx, st, id, nil)
			if err != nil {
				return nil, err
			}
			if len(c.Hosts) == 0 {
				return nil, fmt.Errorf("capture %s has no committed host manifest", id)
			}
			return c.Input(st, maxPart), nil
		}}
	}
	if only != "" {
		parts := strings.Split(only, "/")
		if len(parts) != 4 {
			return nil, usageErr("--capture %q: want CLUSTER/JOB/RUN/CAPTURE", only)
		}
		id := capture.ID{Cluster: parts[0], Job: parts[1], Run: parts[2], Capture: parts[3]}
		if err := id.Validate(); err != nil {
			return nil, usageErr("--capture %q: %v", only, err)
		}
		return []target{load(id)}, nil
	}
	var targets []target
	err := capture.List(ctx, st, func(l capture.Listed) error {
		targets = append(targets, load(l.ID))
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("no committed capture in %s (nothing under %s/ with a %s)", where, traces.KeyVersion, traces.ManifestName)
	}
	return targets, nil
}

// printTable writes the findings of every capture as aligned columns.
func printTable(w io.Writer, results []Result) {
	for i, r := range results {
		if i > 0 {
			fmt.Fprintln(w)
		}
		state := "complete"
		if r.Partial {
			state = fmt.Sprintf("PARTIAL: ranks %s missing", ranges(r.MissingRanks))
		}
		fmt.Fprintf(w, "capture %s (%d hosts, %s)\n", r.Capture, r.Hosts, state)
		if r.Error != "" {
			fmt.Fprintf(w, "  error: %s\n", r.Error)
			continue
		}
		if len(r.Findings) == 0 {
			fmt.Fprintln(w, "  no findings")
		} else {
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "  SEVERITY\tANALYZER\tSCOPE\tGPU-s LOST\tSHARE\tTITLE")
			for _, f := range r.Findings {
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%.1f\t%.1f%%\t%s\n", f.Severity, f.Analyzer, f.Scope, f.Impact.GPUSeconds, 100*f.Impact.WindowShare, f.Title)
			}
			tw.Flush()
		}
		var ran, skipped, failed []string
		for _, a := range r.Analyzers {
			switch a.Status {
			case analyzers.StatusOK:
				ran = append(ran, a.Name)
			case analyzers.StatusSkipped:
				skipped = append(skipped, a.Name)
			default:
				failed = append(failed, a.Name+": "+a.Reason)
			}
		}
		fmt.Fprintf(w, "  analyzers: %d ran, %d skipped (their parts are absent)", len(ran), len(skipped))
		if len(failed) > 0 {
			fmt.Fprintf(w, ", %d FAILED:\n    %s", len(failed), strings.Join(failed, "\n    "))
		}
		fmt.Fprintln(w)
		printKinetoReport(w, r.Kineto)
	}
}

// ranges renders sorted ranks compactly: 0-3,7.
func ranges(rs []int) string {
	var b strings.Builder
	for i := 0; i < len(rs); {
		j := i
		for j+1 < len(rs) && rs[j+1] == rs[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if j > i {
			fmt.Fprintf(&b, "%d-%d", rs[i], rs[j])
		} else {
			fmt.Fprintf(&b, "%d", rs[i])
		}
		i = j + 1
	}
	return b.String()
}

// parseInterspersed parses flags that may come before or after the
// positional arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return rest, nil
		}
		rest = append(rest, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
