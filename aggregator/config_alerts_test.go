package aggregator_test

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/aggregator"
	"github.com/loupe-dev/loupe/aggregator/alerts"
)

// Webhooks as the Helm chart renders them, and as a flag; triage keys.
func TestLoadAlertConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "aggregator.yaml")
	os.WriteFile(file, []byte(`owners_file: /etc/loupe/owners.yaml
ollama_url: http://127.0.0.1:11434
ollama_model: llama3.2
dashboard_url: https://loupe.example.com
webhooks:
- kind: slack
  min_severity: warning
  name: gpu-oncall
  url: https://hooks.slack.com/services/T/B/X
- {name: pager, kind: webhook, url: "https://pager.example.com/loupe", secret_env: LOUPE_WEBHOOK_SECRET, owners: [ml-infra]}
`), 0o644)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("webhooks:\n- {name: x, kind: slack, url: https://h, colour: red}\n"), 0o644)
	tests := []struct {
		name  string
		args  []string
		check func(aggregator.Config) bool
		err   string
	}{
		{name: "defaults: triage without owners, no LLM, no targets", check: func(c aggregator.Config) bool {
			return c.OwnersFile == "" && c.OllamaURL == "" && len(c.Webhooks) == 0 && c.OllamaTimeout == 30*time.Second && c.AlertMaxAttempts == 6
		}},
		{name: "file", args: []string{"--config", file}, check: func(c aggregator.Config) bool {
			a := c.Alerts()
			return len(a.Targets) == 2 && a.Targets[0].Name == "gpu-oncall" && a.Targets[0].MinSeverity == "warning" &&
				a.Targets[1].SecretEnv == "LOUPE_WEBHOOK_SECRET" && a.Targets[1].Owners[0] == "ml-infra" &&
				a.DashboardURL == "https://loupe.example.com" && c.OllamaModel == "llama3.2" && c.OwnersFile == "/etc/loupe/owners.yaml"
		}},
		{name: "flag overrides the file's list", args: []string{"--config", file, "--webhooks", `[{"name":"only","kind":"slack","url":"https://h/x"}]`, "--alert-min-interval", "5m"},
			check: func(c aggregator.Config) bool {
				return len(c.Webhooks) == 1 && c.Webhooks[0].Name == "only" && c.AlertMinInterval == 5*time.Minute
			}},
		{name: "unknown target key", args: []string{"--config", bad}, err: "field colour not found"},
		{name: "bad flag list", args: []string{"--webhooks", "{name: x"}, err: "list of targets"},
		{name: "ollama without model", args: []string{"--ollama-url", "http://127.0.0.1:11434"}, err: "ollama_model"},
		{name: "no attempts", args: []string{"--alert-max-attempts", "0"}, err: "alert_max_attempts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			cfg, _, err := aggregator.LoadConfig(fs, tt.args)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || !tt.check(cfg) {
				t.Fatalf("config %+v, err %v", cfg, err)
			}
		})
	}
}

// Bad triage or alert settings stop the service at start with the key named.
func TestServiceRefusesBadAlertConfig(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		edit func(*aggregator.Config)
		want string
	}{
		{func(c *aggregator.Config) { c.OwnersFile = filepath.Join(dir, "missing.yaml") }, "owners_file"},
		{func(c *aggregator.Config) {
			c.Webhooks = []alerts.Target{{Name: "pager", Kind: alerts.KindWebhook, URL: "https://p.example.com"}}
		}, "secret_env"},
	} {
		cfg := aggregator.DefaultConfig()
		cfg.Store = "file://" + filepath.Join(dir, "store")
		tc.edit(&cfg)
		if _, err := aggregator.New(t.Context(), cfg, nil, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New: %v, want an error naming %s", err, tc.want)
		}
	}
}
