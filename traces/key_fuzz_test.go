package traces_test

import (
	"errors"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loupe-dev/loupe/traces"
)

// FuzzParseKey checks that any key ParseKey accepts is one Loupe could have
// written: its components are valid, and rebuilding it from the parsed parts
// gives back the same key.
func FuzzParseKey(f *testing.F) {
	for _, s := range []string{
		"v1/c/j/r/cap/h/", "v1/c/j/r/cap/h/manifest.json", "v1/c/j/r/cap/h/kineto/rank0.json.gz",
		"v1/c/j/r/cap/h", "v2/c/j/r/cap/h/x", "v1/c/j/r/cap/h/../x", "v1/c/j/r/../h/x", "v1//j/r/c/h/",
		"v1/c/j/r/cap/h/a//b", "v1/.c/j/r/cap/h/", "v1/c/j/r/cap/h/\x00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, name, err := traces.ParseKey(s)
		if err != nil {
			if !errors.Is(err, traces.ErrBadKey) {
				t.Fatalf("ParseKey(%q) error %v does not wrap ErrBadKey", s, err)
			}
			return
		}
		if err := k.Validate(); err != nil {
			t.Fatalf("ParseKey(%q) accepted invalid key %+v: %v", s, k, err)
		}
		var back string
		switch {
		case name != "":
			back = k.Object(name)
		case strings.HasSuffix(s, "/"):
			back = k.Prefix()
		default:
			back = strings.TrimSuffix(k.Prefix(), "/")
		}
		if back != s {
			t.Fatalf("ParseKey(%q) = %+v %q, which rebuilds as %q", s, k, name, back)
		}
		if name != "" {
			checkContained(t, name)
		}
	})
}

// FuzzValidatePartName checks that an accepted part name stays inside its
// folder on every file system and object store path Loupe uses.
func FuzzValidatePartName(f *testing.F) {
	for _, s := range []string{
		"gpu_samples.parquet", "kineto/rank0.json.gz", "../x", "a/../../b", "/etc/passwd", `a\b`, ".", "a/./b",
		"a//b", "a/", "", "-x", strings.Repeat("a", 129),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := traces.ValidatePartName(name)
		if err != nil {
			if !errors.Is(err, traces.ErrUnsafeName) {
				t.Fatalf("ValidatePartName(%q) error %v does not wrap ErrUnsafeName", name, err)
			}
			return
		}
		checkContained(t, name)
	})
}

func checkContained(t *testing.T, name string) {
	t.Helper()
	if path.Clean(name) != name || path.IsAbs(name) || strings.ContainsAny(name, "\\\x00") {
		t.Fatalf("part name %q is not a clean relative path", name)
	}
	root := "/spool/entry"
	if p := filepath.Join(root, filepath.FromSlash(name)); !strings.HasPrefix(p, root+"/") {
		t.Fatalf("part name %q escapes its folder: %s", name, p)
	}
	for _, c := range strings.Split(name, "/") {
		if c == "" || c == "." || c == ".." || strings.HasPrefix(c, ".") {
			t.Fatalf("part name %q has component %q", name, c)
		}
	}
}
