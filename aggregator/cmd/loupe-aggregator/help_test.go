package main

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestMain lets the test binary act as loupe-aggregator itself, so that
// the help test sees the real exit status.
func TestMain(m *testing.M) {
	if os.Getenv("LOUPE_AGGREGATOR_TEST_MAIN") == "1" {
		os.Args = append([]string{"loupe-aggregator"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// --help, -h and help exit 0 and list every command.
func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
	}{{[]string{"--help"}, 0}, {[]string{"-h"}, 0}, {[]string{"help"}, 0}, {[]string{"serve", "--help"}, 0}} {
		cmd := exec.Command(os.Args[0], tc.args...)
		cmd.Env = append(os.Environ(), "LOUPE_AGGREGATOR_TEST_MAIN=1")
		out, err := cmd.CombinedOutput()
		code := 0
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code {
			t.Errorf("%v: exit %d, want %d\n%s", tc.args, code, tc.code, out)
		}
		for _, want := range []string{"serve ", "analyze ", "backfill ", "help "} {
			if !strings.Contains(string(out), "\n  "+want) {
				t.Errorf("%v: output does not list %q:\n%s", tc.args, want, out)
			}
		}
		if tc.code == 0 && tc.args[0] != "help" && !strings.Contains(string(out), "-store string") {
			t.Errorf("%v: no flags in the help:\n%s", tc.args, out)
		}
	}
}
