package aggregator

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/loupe-dev/loupe/aggregator/alerts"
	"github.com/loupe-dev/loupe/aggregator/runner"
	"github.com/loupe-dev/loupe/aggregator/watcher"
)

// Config is the aggregator's configuration: a YAML file (--config) whose
// every key is also a flag of the same name with dashes (lease_ttl is
// --lease-ttl). Flags override the file; the defaults work on one host.
type Config struct {
	// Store is the store URL (file:///DIR or s3://BUCKET/PREFIX?endpoint=...).
	Store string `yaml:"store" help:"store URL: file:///DIR or s3://BUCKET/PREFIX?endpoint=HOST:PORT&secure=false"`
	// Addr is the HTTP listen address of the API, webhook endpoint and UI.
	Addr string `yaml:"addr" help:"HTTP listen address (API, S3 webhook, /metrics, UI)"`
	// WebhookToken is the bearer token S3 event notifications must carry.
	WebhookToken string `yaml:"webhook_token" help:"bearer token required on POST /api/v1/s3-events (empty: none; or set LOUPE_WEBHOOK_TOKEN)"`
	// WebhookTokenFile holds the token instead (first line).
	WebhookTokenFile string `yaml:"webhook_token_file" help:"file whose first line is the webhook token"`
	// PartitionTimeout is how long to wait for missing ranks after a
	// capture's first manifest before analyzing it as partial.
	PartitionTimeout time.Duration `yaml:"partition_timeout" help:"wait this long after a capture's first manifest for missing ranks, then analyze it as partial"`
	// LeaseTTL is how long a replica's claim on a capture lasts unrenewed.
	LeaseTTL time.Duration `yaml:"lease_ttl" help:"how long a replica's claim on a capture lasts without renewal (keep well above clock skew)"`
	// Workers is how many captures one replica analyzes at once.
	Workers int `yaml:"workers" help:"captures analyzed at once by this replica"`
	// SweepInterval is the pause between listing steps (negative: off).
	SweepInterval time.Duration `yaml:"sweep_interval" help:"pause between store listing steps that catch missed notifications (negative: off)"`
	// IndexRefresh is how often the whole store is listed again to rebuild
	// the in-memory index (0: only at start).
	IndexRefresh time.Duration `yaml:"index_refresh" help:"how often to list the whole store again to rebuild the API's index, dropping deleted captures (0: only at start)"`
	// SweepPages is how many pages of 1000 keys one listing step reads.
	SweepPages int `yaml:"sweep_pages" help:"pages of 1000 keys one listing step reads"`
	// MaxPartSize bounds a part the analyzers read, in bytes.
	MaxPartSize int64 `yaml:"max_part_size" help:"largest part read, in bytes (0: 8 GiB)"`
	// Replica names this replica in leases and records (default host-pid).
	Replica string `yaml:"replica" help:"name of this replica in leases and findings records (default HOSTNAME-PID)"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level" help:"log level: debug, info, warn, error"`

	// OwnersFile maps jobs, hosts, code paths and stack frames to teams and
	// their alert channels (triage).
	OwnersFile string `yaml:"owners_file" help:"owners file (YAML teams and rules) that assigns incidents to teams; empty: no owners"`
	// OllamaURL turns on incident summaries by a local LLM through Ollama.
	OllamaURL     string        `yaml:"ollama_url" help:"Ollama base URL (e.g. http://127.0.0.1:11434) for optional LLM incident summaries; empty: off"`
	OllamaModel   string        `yaml:"ollama_model" help:"Ollama model for incident summaries (e.g. llama3.2)"`
	OllamaTimeout time.Duration `yaml:"ollama_timeout" help:"time limit of one LLM summary; triage goes on without it after that"`
	// Webhooks are the alert targets.
	Webhooks []alerts.Target `yaml:"webhooks" help:"alert targets, a YAML or JSON list of {name, kind: slack|webhook, url, secret_env, min_severity, owners}"`
	// DashboardURL is the aggregator's external URL, for links in alerts.
	DashboardURL     string        `yaml:"dashboard_url" help:"external base URL of this aggregator, for links in alerts"`
	AlertMinInterval time.Duration `yaml:"alert_min_interval" help:"least time between two alerts of a changed incident to one target, unless its severity rose"`
	AlertMaxAttempts int           `yaml:"alert_max_attempts" help:"attempts per alert before a dead-letter record is written"`
	AlertBackoffBase time.Duration `yaml:"alert_backoff_base" help:"first retry delay of a failed alert (exponential, full jitter)"`
	AlertBackoffMax  time.Duration `yaml:"alert_backoff_max" help:"longest retry delay of a failed alert"`
	AlertTimeout     time.Duration `yaml:"alert_timeout" help:"time limit of one alert request"`

	// GPUHourPrice prices lost GPU time on the goodput pages and API.
	GPUHourPrice float64 `yaml:"gpu_hour_price" help:"price of one GPU-hour, to show what lost GPU time costs on the goodput pages and API (0: no cost)"`
	Currency     string  `yaml:"currency" help:"currency of gpu_hour_price, shown beside costs"`
	// FLOPsPerStep gives MFU to jobs whose Kineto traces carry no flops.
	FLOPsPerStep map[string]float64 `yaml:"flops_per_step" help:"model FLOPs per training iteration of a job, all ranks together, for MFU: JOB=FLOPS,JOB=FLOPS (YAML: a map); other jobs use the flops of their Kineto traces"`
	PeakFLOPS    float64            `yaml:"peak_flops" help:"peak FLOP/s of one GPU for MFU (0: from the GPU model's dense BF16 tensor throughput)"`
}

// Alerts is the alert configuration.
func (c *Config) Alerts() alerts.Config {
	return alerts.Config{
		Targets: c.Webhooks, DashboardURL: c.DashboardURL, MinInterval: c.AlertMinInterval, MaxAttempts: c.AlertMaxAttempts,
		BackoffBase: c.AlertBackoffBase, BackoffMax: c.AlertBackoffMax, Timeout: c.AlertTimeout,
	}
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Store:            "file:///var/lib/loupe/store",
		Addr:             ":8080",
		PartitionTimeout: runner.DefaultPartitionTimeout,
		LeaseTTL:         2 * time.Minute,
		Workers:          watcher.DefaultWorkers,
		SweepInterval:    watcher.DefaultSweepInterval,
		SweepPages:       watcher.DefaultSweepPages,
		IndexRefresh:     watcher.DefaultIndexRefresh,
		LogLevel:         "info",
		OllamaTimeout:    30 * time.Second,
		AlertMinInterval: alerts.DefaultConfig().MinInterval,
		AlertMaxAttempts: alerts.DefaultConfig().MaxAttempts,
		AlertBackoffBase: alerts.DefaultConfig().BackoffBase,
		AlertBackoffMax:  alerts.DefaultConfig().BackoffMax,
		AlertTimeout:     alerts.DefaultConfig().Timeout,
		Currency:         "USD",
	}
}

// Validate checks values a typo could make nonsensical.
func (c *Config) Validate() error {
	var errs []error
	if c.Store == "" {
		errs = append(errs, errors.New("store: empty; use file:///DIR or s3://BUCKET/PREFIX?endpoint=HOST:PORT"))
	}
	if c.PartitionTimeout <= 0 {
		errs = append(errs, fmt.Errorf("partition_timeout: %v must be positive", c.PartitionTimeout))
	}
	if c.LeaseTTL < 3*time.Second {
		errs = append(errs, fmt.Errorf("lease_ttl: %v is too short; use at least 3s (renewal runs every third of it)", c.LeaseTTL))
	}
	if c.Workers < 1 || c.Workers > 256 {
		errs = append(errs, fmt.Errorf("workers: %d, want 1 to 256", c.Workers))
	}
	if c.SweepPages < 1 {
		errs = append(errs, fmt.Errorf("sweep_pages: %d, want at least 1", c.SweepPages))
	}
	if c.IndexRefresh < 0 {
		errs = append(errs, fmt.Errorf("index_refresh: %v is negative; use 0 to turn it off", c.IndexRefresh))
	}
	if c.MaxPartSize < 0 {
		errs = append(errs, fmt.Errorf("max_part_size: %d is negative", c.MaxPartSize))
	}
	if c.OllamaURL != "" && c.OllamaModel == "" {
		errs = append(errs, fmt.Errorf("ollama_model: empty while ollama_url is %q; name a model Ollama has pulled (ollama list)", c.OllamaURL))
	}
	if c.AlertMaxAttempts < 1 {
		errs = append(errs, fmt.Errorf("alert_max_attempts: %d, want at least 1", c.AlertMaxAttempts))
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	if c.GPUHourPrice < 0 || c.PeakFLOPS < 0 {
		errs = append(errs, fmt.Errorf("gpu_hour_price %v, peak_flops %v: neither may be negative", c.GPUHourPrice, c.PeakFLOPS))
	}
	for job, f := range c.FLOPsPerStep {
		if f <= 0 {
			errs = append(errs, fmt.Errorf("flops_per_step: job %s has %v, want a positive number of FLOPs", job, f))
		}
	}
	return errors.Join(errs...)
}

// Token returns the webhook token from the config, the token file or
// LOUPE_WEBHOOK_TOKEN, in that order.
func (c *Config) Token() (string, error) {
	if c.WebhookToken != "" {
		return c.WebhookToken, nil
	}
	if c.WebhookTokenFile != "" {
		data, err := os.ReadFile(c.WebhookTokenFile)
		if err != nil {
			return "", fmt.Errorf("webhook_token_file: %w", err)
		}
		tok, _, _ := strings.Cut(string(data), "\n")
		if tok = strings.TrimSpace(tok); tok == "" {
			return "", fmt.Errorf("webhook_token_file %s: first line is empty", c.WebhookTokenFile)
		}
		return tok, nil
	}
	return os.Getenv("LOUPE_WEBHOOK_TOKEN"), nil
}

// LoadConfig parses args (flags only; the caller has taken the command
// name off): --config FILE is read first, then the other flags override
// its keys. It returns the remaining arguments.
func LoadConfig(fs *flag.FlagSet, args []string) (Config, []string, error) {
	cfg := DefaultConfig()
	path := fs.String("config", "", "YAML configuration `FILE`; every key is also a flag")
	bind(fs, &cfg)
	if err := fs.Parse(args); err != nil {
		return cfg, nil, err
	}
	if *path == "" {
		return cfg, fs.Args(), cfg.Validate()
	}
	// Read the file over the defaults, then apply the flags given again.
	file := DefaultConfig()
	data, err := os.ReadFile(*path)
	if err != nil {
		return cfg, nil, fmt.Errorf("config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil && !errors.Is(err, io.EOF) {
		return cfg, nil, fmt.Errorf("config %s: %w", *path, err)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	fields(&file, func(name string, v reflect.Value, _ string) {
		if !set[name] {
			fields(&cfg, func(n string, dst reflect.Value, _ string) {
				if n == name {
					dst.Set(v)
				}
			})
		}
	})
	return cfg, fs.Args(), cfg.Validate()
}

// fields calls fn for every configuration key of c with its flag name.
func fields(c *Config, fn func(flagName string, v reflect.Value, help string)) {
	v := reflect.ValueOf(c).Elem()
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name := strings.ReplaceAll(f.Tag.Get("yaml"), "_", "-")
		fn(name, v.Field(i), f.Tag.Get("help"))
	}
}

// bind registers a flag for every key of c, writing into c.
func bind(fs *flag.FlagSet, c *Config) {
	fields(c, func(name string, v reflect.Value, help string) {
		switch p := v.Addr().Interface().(type) {
		case *string:
			fs.StringVar(p, name, *p, help)
		case *time.Duration:
			fs.DurationVar(p, name, *p, help)
		case *int:
			fs.IntVar(p, name, *p, help)
		case *int64:
			fs.Func(name, help+" (default "+strconv.FormatInt(*p, 10)+")", func(s string) error {
				n, err := strconv.ParseInt(s, 10, 64)
				*p = n
				return err
			})
		case *float64:
			fs.Float64Var(p, name, *p, help)
		case *map[string]float64:
			fs.Func(name, help, func(s string) error {
				m := map[string]float64{}
				for _, kv := range strings.Split(s, ",") {
					k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
					f, err := strconv.ParseFloat(v, 64)
					if !ok || k == "" || err != nil {
						return fmt.Errorf("want JOB=NUMBER,JOB=NUMBER, got %q", kv)
					}
					m[k] = f
				}
				*p = m
				return nil
			})
		case *[]alerts.Target:
			fs.Func(name, help, func(s string) error {
				dec := yaml.NewDecoder(strings.NewReader(s))
				dec.KnownFields(true)
				var v []alerts.Target
				if err := dec.Decode(&v); err != nil {
					return fmt.Errorf("want a YAML or JSON list of targets: %w", err)
				}
				*p = v
				return nil
			})
		default:
			panic(fmt.Sprintf("config key %s has unsupported type %T", name, p))
		}
	})
}
