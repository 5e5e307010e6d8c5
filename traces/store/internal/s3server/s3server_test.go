package s3server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// recorder stands in for the test Binary is given, to see whether it
// fails or skips and with what message; both stop Binary like the real ones.
type recorder struct {
	testing.TB
	fatal, skip string
}

type stopped struct{}

func (r *recorder) Helper()           {}
func (r *recorder) Fatal(args ...any) { r.fatal = args[0].(string); panic(stopped{}) }
func (r *recorder) Skip(args ...any)  { r.skip = args[0].(string); panic(stopped{}) }

func (r *recorder) binary(spec Spec) (path string) {
	defer func() {
		if v := recover(); v != nil && v != (stopped{}) {
			panic(v)
		}
	}()
	return Binary(r, spec)
}

func TestBinary(t *testing.T) {
	dir := t.TempDir()
	fromEnv := filepath.Join(dir, "from-env")
	onPath := filepath.Join(dir, "path", "loupe-s3server-test")
	for _, f := range []string{fromEnv, onPath} {
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	spec := Spec{Name: "loupe-s3server-test", BinEnv: "LOUPE_S3SERVER_TEST_BIN", Module: "example.com/server@v1.2.3"}
	for _, tc := range []struct {
		name            string
		env, path, ci   string
		want            string
		wantFatal, skip bool
	}{
		{name: "env", env: fromEnv, path: filepath.Dir(onPath), want: fromEnv},
		{name: "env missing falls back to PATH", env: filepath.Join(dir, "gone"), path: filepath.Dir(onPath), want: onPath},
		{name: "none in CI fails", env: filepath.Join(dir, "gone"), path: dir, ci: "true", wantFatal: true},
		{name: "none outside CI skips", path: dir, skip: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(spec.BinEnv, tc.env)
			t.Setenv("PATH", tc.path)
			t.Setenv("CI", tc.ci)
			r := &recorder{TB: t}
			got := r.binary(spec)
			if got != tc.want || (r.fatal != "") != tc.wantFatal || (r.skip != "") != tc.skip {
				t.Fatalf("Binary = %q, fatal %q, skip %q; want %q, fatal %v, skip %v", got, r.fatal, r.skip, tc.want, tc.wantFatal, tc.skip)
			}
			msg := r.fatal + r.skip
			if msg == "" {
				return
			}
			for _, want := range []string{"go install example.com/server@v1.2.3", "GOBIN=", spec.BinEnv, "on PATH"} {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q lacks %q", msg, want)
				}
			}
			if tc.env != "" && !strings.Contains(msg, spec.BinEnv+"="+tc.env) {
				t.Errorf("message %q does not name the %s it tried", msg, spec.BinEnv)
			}
		})
	}
}
