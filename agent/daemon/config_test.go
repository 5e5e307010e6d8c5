package daemon

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadPrecedence(t *testing.T) {
	file := writeFile(t, `
cluster: from-file
metrics_addr: ":9500"
simulate_gpus: 2
trigger:
  at_iteration: 100
  max_cv: 0.2
gpu:
  capture_hz: 50
  dcgm:
    enabled: false
cpu:
  hz: 99
nccl:
  enabled: false
  step_interval: 7s
attribution:
  job_env_vars: [A, B]
`)
	for _, tc := range []struct {
		name  string
		args  []string
		check func(t *testing.T, c Config)
	}{
		{"defaults", nil, func(t *testing.T, c Config) {
			if !reflect.DeepEqual(c, DefaultConfig()) {
				t.Errorf("no arguments gave %+v", c)
			}
		}},
		{"file", []string{"--config", file}, func(t *testing.T, c Config) {
			if c.Cluster != "from-file" || c.MetricsAddr != ":9500" || c.SimulateGPUs != 2 || c.Trigger.AtIteration != 100 ||
				c.Trigger.MaxCV != 0.2 || c.Trigger.Window != 50 || c.GPU.CaptureHz != 50 || c.GPU.DCGM.Enabled ||
				c.GPU.Interval != time.Second || c.CPU.Hz != 99 || !c.CPU.Enabled || c.NCCL.Enabled || c.NCCL.StepInterval != 7*time.Second ||
				!slices.Equal(c.Attribution.JobEnvVars, []string{"A", "B"}) {
				t.Errorf("from file: %+v", c)
			}
		}},
		{"flags beat the file, wherever they are", []string{"--cluster", "from-flag", "--config", file, "--trigger.at-iteration=7",
			"--gpu.dcgm.enabled", "--nccl.step-interval", "1m", "--attribution.job-env-vars", "X", "--attribution.job-env-vars", "Y,Z"},
			func(t *testing.T, c Config) {
				if c.Cluster != "from-flag" || c.Trigger.AtIteration != 7 || c.Trigger.MaxCV != 0.2 || !c.GPU.DCGM.Enabled ||
					c.NCCL.StepInterval != time.Minute || c.GPU.CaptureHz != 50 || !slices.Equal(c.Attribution.JobEnvVars, []string{"X", "Y", "Z"}) {
					t.Errorf("flags over file: %+v", c)
				}
			}},
		{"design flags", []string{"--metrics-addr", ":1", "--api-addr", "127.0.0.1:2", "--store", "s3://b/p?endpoint=h:1",
			"--spool-dir", "/s", "--simulate-gpus", "3", "--cluster", "c", "--host", "h"}, func(t *testing.T, c Config) {
			if c.MetricsAddr != ":1" || c.APIAddr != "127.0.0.1:2" || c.Store != "s3://b/p?endpoint=h:1" || c.SpoolDir != "/s" ||
				c.SimulateGPUs != 3 || c.Cluster != "c" || c.Host != "h" {
				t.Errorf("%+v", c)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(tc.args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--config", writeFile(t, "trigger:\n  at_iteraton: 5\n")}, "field at_iteraton not found"},
		{[]string{"--config", writeFile(t, "gpu: [1, 2]\n")}, "cannot unmarshal"},
		{[]string{"--config", "/nonexistent/agent.yaml"}, "no such file"},
		{[]string{"--trigger.max-cv", "low"}, "invalid value"},
		{[]string{"--gpu.interval", "5"}, "missing unit"},
		{[]string{"--no-such-flag"}, "not defined"},
		{[]string{"serve"}, `unexpected argument "serve"`},
	} {
		_, err := Load(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Load(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
	var out bytes.Buffer
	if _, err := Load([]string{"--help"}, &out); err != flag.ErrHelp || !strings.Contains(out.String(), "-gpu.capture-hz number") {
		t.Errorf("--help: %v\n%s", err, out.String())
	}
}

// Every key of the YAML file has a flag, so nothing is configurable only
// one way.
func TestEveryKeyIsAFlag(t *testing.T) {
	data, err := yaml.Marshal(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	var tree map[string]any
	if err := yaml.Unmarshal(data, &tree); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	fs, _ := flagSet(&cfg, io.Discard)
	var keys []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			if sub, ok := v.(map[string]any); ok {
				walk(prefix+k+".", sub)
				continue
			}
			keys = append(keys, prefix+k)
		}
	}
	walk("", tree)
	if len(keys) < 40 {
		t.Fatalf("only %d keys found: %v", len(keys), keys)
	}
	for _, k := range keys {
		if hiddenKeys[k] || isRecordList(reflect.TypeFor[Config](), strings.Split(k, ".")) {
			continue // a top-level flag, or a list of records only YAML can say
		}
		if fs.Lookup(strings.ReplaceAll(k, "_", "-")) == nil {
			t.Errorf("YAML key %s has no flag", k)
		}
	}
}

// Every flag says what it does: a new configuration key gets its line in
// flagDocs (config.go) or this test names it.
func TestEveryFlagDescribed(t *testing.T) {
	cfg := DefaultConfig()
	fs, _ := flagSet(&cfg, io.Discard)
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		n++
		if f.Name != "config" && flagDocs[strings.ReplaceAll(f.Name, "-", "_")] == "" {
			t.Errorf("flag --%s has no description: add its YAML key to flagDocs in agent/daemon/config.go", f.Name)
		}
	})
	if n < 60 {
		t.Fatalf("only %d flags", n)
	}
}

// isRecordList says whether the YAML path names a list of structs.
func isRecordList(t reflect.Type, path []string) bool {
	for i := range t.NumField() {
		f := t.Field(i)
		name, inline := yamlName(f)
		switch {
		case inline && f.Type.Kind() == reflect.Struct:
			if isRecordList(f.Type, path) {
				return true
			}
		case name != path[0]:
		case len(path) == 1:
			return f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct
		case f.Type.Kind() == reflect.Struct:
			return isRecordList(f.Type, path[1:])
		}
	}
	return false
}
