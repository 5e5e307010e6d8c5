// Package promtexttest checks a binary's /metrics for tests: every family
// has HELP text and a TYPE, promtool (the Prometheus project's own linter)
// accepts the scrape, and every metric name written in the binary's Go
// source has help even when the scrape did not show it.
//
// promtool is $LOUPE_PROMTOOL_BIN, else <repo>/.cache/bin/promtool (built
// by `make tools`), else promtool on PATH. Without one, Lint fails the test
// under CI=true and skips it otherwise, naming the command that installs it.
package promtexttest

import (
	"bytes"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/loupe-dev/loupe/traces/promtext"
)

// PromtoolVersion is the Prometheus module version `make tools` builds
// promtool from.
const PromtoolVersion = "v0.316.0"

// Family is one family of a scrape as its metadata says.
type Family struct {
	Name, Help, Type string
	Samples          int
}

// Families parses a scrape's HELP and TYPE lines and counts each family's
// samples; it fails the test on a sample before its family's metadata, a
// family described twice, or a HELP without a TYPE.
func Families(t testing.TB, scrape []byte) map[string]*Family {
	t.Helper()
	out := map[string]*Family{}
	var cur *Family
	for i, line := range strings.Split(string(scrape), "\n") {
		switch {
		case line == "":
		case strings.HasPrefix(line, "# HELP "):
			name, help, _ := strings.Cut(strings.TrimPrefix(line, "# HELP "), " ")
			if out[name] != nil {
				t.Errorf("line %d: family %s described twice", i+1, name)
			}
			cur = &Family{Name: name, Help: help}
			out[name] = cur
		case strings.HasPrefix(line, "# TYPE "):
			name, typ, _ := strings.Cut(strings.TrimPrefix(line, "# TYPE "), " ")
			if cur == nil || cur.Name != name || cur.Type != "" {
				t.Errorf("line %d: TYPE of %s is not right after its HELP", i+1, name)
				continue
			}
			cur.Type = typ
		case line[0] == '#':
		default:
			name := line[:strings.IndexAny(line+" ", "{ ")]
			if cur == nil || !belongs(name, cur) {
				t.Errorf("line %d: sample %s is not under its family's HELP and TYPE", i+1, name)
				continue
			}
			cur.Samples++
		}
	}
	return out
}

func belongs(sample string, f *Family) bool {
	if sample == f.Name {
		return true
	}
	for _, s := range []string{"_sum", "_count", "_bucket"} {
		if sample == f.Name+s && (f.Type == "histogram" || f.Type == "summary" && s != "_bucket") {
			return true
		}
	}
	return false
}

// RequireHelp fails the test for every family of the scrape without HELP
// text or TYPE, naming the table to add it to.
func RequireHelp(t testing.TB, scrape []byte, table string) {
	t.Helper()
	for _, f := range Families(t, scrape) {
		if f.Help == "" {
			t.Errorf("metric family %s has no help text: add a line for it to %s", f.Name, table)
		}
		if f.Type == "" || f.Type == "untyped" {
			t.Errorf("metric family %s has no type", f.Name)
		}
	}
}

// Lint runs `promtool check metrics` over the scrape and fails the test on
// every problem that allowed (family -> why it keeps its name, e.g.
// dcgm-exporter compatibility) or promtext.RuntimeLintExcused does not
// excuse. An excused family that promtool no longer flags fails too, so
// the list stays true.
func Lint(t testing.TB, scrape []byte, allowed map[string]string) {
	t.Helper()
	bin := Promtool(t)
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = bytes.NewReader(scrape)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run %s: %v", bin, err)
	}
	// Exit 3 means lint problems only, one "family problem" per line.
	if err != nil && exit.ExitCode() != 3 {
		t.Fatalf("promtool check metrics failed (exit %d): %s", exit.ExitCode(), out)
	}
	excused := func(name string) bool {
		_, a := allowed[name]
		_, r := promtext.RuntimeLintExcused[name]
		return a || r
	}
	flagged := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if name == "" {
			continue
		}
		flagged[name] = true
		if !metricName.MatchString(name) || !excused(name) {
			t.Errorf("promtool check metrics: %s", line)
		}
	}
	fams := Families(t, scrape)
	for _, ex := range []map[string]string{allowed, promtext.RuntimeLintExcused} {
		for name, why := range ex {
			if !flagged[name] && fams[name] != nil {
				t.Errorf("%s is excused (%s) but promtool no longer flags it: drop it from the list", name, why)
			}
		}
	}
}

var metricName = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)

// Promtool returns the path of the promtool binary, failing (CI=true) or
// skipping the test when there is none.
func Promtool(t testing.TB) string {
	t.Helper()
	var tried []string
	if p := os.Getenv("LOUPE_PROMTOOL_BIN"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
		tried = append(tried, "LOUPE_PROMTOOL_BIN="+p)
	}
	root, err := repoRoot()
	if err == nil {
		p := filepath.Join(root, ".cache", "bin", "promtool")
		if _, err := os.Stat(p); err == nil {
			return p
		}
		tried = append(tried, p)
	}
	if p, err := exec.LookPath("promtool"); err == nil {
		return p
	}
	tried = append(tried, "promtool on PATH")
	msg := fmt.Sprintf("no promtool (tried %s); install it with `make tools`, or:\n\tGOBIN=%s go install github.com/prometheus/prometheus/cmd/promtool@%s",
		strings.Join(tried, ", "), filepath.Join(root, ".cache", "bin"), PromtoolVersion)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// repoRoot is the module root, three folders above this file.
func repoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("no caller information to find the repository")
	}
	return filepath.Abs(filepath.Join(filepath.Dir(file), "..", "..", ".."))
}

// SourceNames returns the metric families named at the start of string
// literals (as metric sets are given names) in the non-test Go files under
// dir whose names match prefix, e.g. ^(loupe|DCGM)_. A _sum, _count or
// _bucket literal whose base is also named counts as its base.
func SourceNames(t testing.TB, dir string, prefix *regexp.Regexp) []string {
	t.Helper()
	seen := map[string]bool{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil || !prefix.MatchString(s) {
				return true
			}
			if name := s[:strings.IndexAny(s+"{ ", "{ ")]; metricName.MatchString(name) {
				seen[name] = true
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for name := range seen {
		base := name
		for _, s := range []string{"_sum", "_count", "_bucket"} {
			if b, ok := strings.CutSuffix(name, s); ok && seen[b] {
				base = b
			}
		}
		if !slices.Contains(out, base) {
			out = append(out, base)
		}
	}
	slices.Sort(out)
	return out
}

// RequireSourceHelp fails the test for every family SourceNames finds under
// dir that none of the tables describes.
func RequireSourceHelp(t testing.TB, dir string, prefix *regexp.Regexp, table string, tables ...promtext.Help) {
	t.Helper()
	for _, name := range SourceNames(t, dir, prefix) {
		if !slices.ContainsFunc(tables, func(h promtext.Help) bool { return h[name] != "" }) {
			t.Errorf("metric %s (named in the Go source under %s) has no help text: add a line for it to %s", name, dir, table)
		}
	}
}
