package daemon

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

	"github.com/loupe-dev/loupe/agent/attribution"
	"github.com/loupe-dev/loupe/agent/cpuprof"
	"github.com/loupe-dev/loupe/agent/gpu"
	"github.com/loupe-dev/loupe/agent/hang"
	"github.com/loupe-dev/loupe/agent/kineto"
	"github.com/loupe-dev/loupe/agent/logtail"
	"github.com/loupe-dev/loupe/agent/nccl"
	"github.com/loupe-dev/loupe/agent/steps"
	"github.com/loupe-dev/loupe/agent/trigger"
)

// Config is the agent's configuration: one YAML file, and every key also a
// flag named by its path with dashes (gpu.capture_hz is --gpu.capture-hz).
type Config struct {
	// MetricsAddr serves /metrics and /healthz.
	MetricsAddr string `yaml:"metrics_addr"`
	// APIAddr serves the local control API.
	APIAddr string `yaml:"api_addr"`
	// APIToken is the bearer token of the API; APITokenFile reads it from a
	// file instead (preferred: flags show up in ps).
	APIToken     string `yaml:"api_token"`
	APITokenFile string `yaml:"api_token_file"`
	// Store is where captures go: file:///DIR or s3://BUCKET/PREFIX?endpoint=...
	Store string `yaml:"store"`
	// SpoolDir holds captures until they are uploaded.
	SpoolDir string `yaml:"spool_dir"`
	// SpoolMaxBytes caps the spool; the oldest captures go first (0: no cap).
	SpoolMaxBytes int64 `yaml:"spool_max_bytes"`
	// SimulateGPUs runs N simulated GPUs instead of reading the real ones.
	SimulateGPUs int `yaml:"simulate_gpus"`
	// Cluster and Host name this agent in object keys; Host defaults to the
	// host name.
	Cluster string `yaml:"cluster"`
	Host    string `yaml:"host"`
	// DefaultJob names captures of processes that belong to no known job.
	DefaultJob string `yaml:"default_job"`
	// DefaultRun names the run of a job whose processes carry no
	// TORCHELASTIC_RUN_ID and whose markers name no run.
	DefaultRun string `yaml:"default_run"`
	// LogLevel is debug, info, warn or error; LogFormat text or json.
	LogLevel  string `yaml:"log_level"`
	LogFormat string `yaml:"log_format"`

	Steps   steps.Config   `yaml:"steps"`
	Trigger trigger.Config `yaml:"trigger"`
	Capture CaptureConfig  `yaml:"capture"`
	Upload  UploadConfig   `yaml:"upload"`

	GPU         gpu.Config         `yaml:"gpu"`
	CPU         CPUConfig          `yaml:"cpu"`
	NCCL        NCCLConfig         `yaml:"nccl"`
	Hang        hang.Config        `yaml:"hang"`
	Kineto      kineto.Config      `yaml:"kineto"`
	Attribution attribution.Config `yaml:"attribution"`
	Logs        logtail.Config     `yaml:"logs"`
}

// CaptureConfig bounds captures.
type CaptureConfig struct {
	// DefaultDuration is the window of an on-demand capture that names
	// neither a duration nor iterations.
	DefaultDuration time.Duration `yaml:"default_duration"`
	// MaxDuration bounds a timed window.
	MaxDuration time.Duration `yaml:"max_duration"`
	// MaxConcurrent bounds the captures pending or running at once.
	MaxConcurrent int `yaml:"max_concurrent"`
	// StartTimeout bounds the wait for a start iteration.
	StartTimeout time.Duration `yaml:"start_timeout"`
}

// UploadConfig tunes the uploader.
type UploadConfig struct {
	Interval    time.Duration `yaml:"interval"`
	BackoffBase time.Duration `yaml:"backoff_base"`
	BackoffMax  time.Duration `yaml:"backoff_max"`
}

// CPUConfig switches the eBPF CPU profiler and tunes it.
type CPUConfig struct {
	Enabled        bool `yaml:"enabled"`
	cpuprof.Config `yaml:",inline"`
}

// NCCLConfig is the NCCL tracer's configuration plus how often its calls
// are searched for iterations.
type NCCLConfig struct {
	nccl.Config `yaml:",inline"`
	// StepInterval is how often recent NCCL calls are searched for
	// iteration boundaries (for jobs without markers or Kineto).
	StepInterval time.Duration `yaml:"step_interval"`
	// StepLookback is how much NCCL history each search covers.
	StepLookback time.Duration `yaml:"step_lookback"`
}

// DefaultConfig works on a single host with no configuration at all.
func DefaultConfig() Config {
	return Config{
		MetricsAddr: ":9400",
		APIAddr:     "127.0.0.1:9401",
		Store:       "file:///var/lib/loupe/store",
		SpoolDir:    "/var/lib/loupe/spool",
		Cluster:     "default",
		DefaultJob:  "adhoc",
		DefaultRun:  "default",
		LogLevel:    "info",
		LogFormat:   "text",
		Steps:       steps.DefaultConfig(),
		Trigger:     trigger.DefaultConfig(),
		Capture: CaptureConfig{
			DefaultDuration: 30 * time.Second, MaxDuration: 5 * time.Minute,
			MaxConcurrent: 4, StartTimeout: 15 * time.Minute,
		},
		Upload:      UploadConfig{Interval: 30 * time.Second, BackoffBase: time.Second, BackoffMax: 2 * time.Minute},
		GPU:         gpu.DefaultConfig(),
		CPU:         CPUConfig{Enabled: true, Config: cpuprof.DefaultConfig()},
		NCCL:        NCCLConfig{Config: nccl.DefaultConfig(), StepInterval: 5 * time.Second, StepLookback: time.Minute},
		Hang:        hang.DefaultConfig(),
		Kineto:      kineto.DefaultConfig(),
		Attribution: attribution.DefaultConfig(),
		Logs:        logtail.DefaultConfig(),
	}
}

// hiddenKeys are YAML keys that have a shorter top-level flag or are set by
// the daemon itself.
var hiddenKeys = map[string]bool{"gpu.simulate_gpus": true}

// Load builds the configuration from defaults, then the YAML file named by
// --config, then the flags given on the command line, in that order.
func Load(args []string, stderr io.Writer) (Config, error) {
	cfg := DefaultConfig()
	fs, configPath := flagSet(&cfg, stderr)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q (commands: capture, status, dcgm, version; see --help)", fs.Arg(0))
	}
	if *configPath == "" {
		return cfg, nil
	}
	// Read the file into fresh defaults, then replay the flags that were
	// set so that they win over the file.
	fromFile := DefaultConfig()
	if err := readYAML(*configPath, &fromFile); err != nil {
		return Config{}, err
	}
	fs2, _ := flagSet(&fromFile, io.Discard)
	var err error
	fs.Visit(func(f *flag.Flag) {
		if err == nil && f.Name != "config" {
			err = fs2.Set(f.Name, f.Value.String())
		}
	})
	return fromFile, err
}

func readYAML(path string, cfg *Config) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

func flagSet(cfg *Config, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("loupe-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML configuration `file`; flags override its keys")
	bindFlags(fs, reflect.ValueOf(cfg).Elem(), "")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: loupe-agent [flags]              run the agent\n"+
			"       loupe-agent capture [flags]      ask the local agent for a capture\n"+
			"       loupe-agent status | dcgm pause|resume | version\n\n"+
			"Every flag is also a key of the --config YAML file: --gpu.capture-hz is gpu: {capture_hz: ...}.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	return fs, configPath
}

var durationType = reflect.TypeFor[time.Duration]()

// flagDocs explain the keys users reach for first; --help shows every key.
var flagDocs = map[string]string{
	"metrics_addr":             "serve /metrics and /healthz here",
	"api_addr":                 "serve the control API here; a token is required unless it is loopback",
	"api_token":                "bearer token of the control API (prefer api_token_file)",
	"api_token_file":           "read the API bearer token from this file",
	"store":                    "where captures go: file:///DIR or s3://BUCKET/PREFIX?endpoint=HOST:PORT&secure=false",
	"spool_dir":                "captures wait here until uploaded",
	"spool_max_bytes":          "cap on the spool; oldest captures go first (0: no cap)",
	"simulate_gpus":            "run N simulated GPUs (demo, tests)",
	"cluster":                  "cluster name in object keys",
	"host":                     "host name in object keys (default: the host name)",
	"default_job":              "job name for processes that belong to no known job",
	"default_run":              "run name when neither TORCHELASTIC_RUN_ID nor the markers name one",
	"log_level":                "debug, info, warn or error",
	"log_format":               "text or json",
	"trigger.disabled":         "no automatic captures",
	"trigger.at_iteration":     "first iteration at which an automatic capture may be decided",
	"trigger.window":           "steps over which step time must have settled",
	"trigger.max_cv":           "settled: coefficient of variation of step time below this",
	"trigger.max_trend":        "settled: step time drifts by less than this share across the window",
	"trigger.iterations":       "iterations an automatic capture covers",
	"trigger.roundup":          "captures start at the next multiple of this iteration",
	"trigger.max_per_run":      "automatic captures per job run (negative: unlimited)",
	"trigger.cooldown":         "least time between automatic captures of a job run",
	"capture.default_duration": "window of an on-demand capture that names no duration or iterations",
	"capture.max_duration":     "longest timed window accepted",
	"capture.max_concurrent":   "captures pending or running at once",
	"capture.start_timeout":    "how long a capture waits for its start (or end) iteration",

	"attribution.job_env_vars":          "environment variables that name a process's job, tried in order",
	"attribution.pod_resources_socket":  "the kubelet's pod-resources socket, for pod and container names",
	"attribution.proc_root":             "where the host's /proc is mounted (a container's view of it)",
	"attribution.refresh_interval":      "how often the pods' GPUs are listed from the kubelet",
	"attribution.container_state_dirs":  "container runtimes' state folders on the host (containerd, CRI-O, Docker), where a process's image is named",
	"attribution.timeout":               "bound on one call to the kubelet",
	"attribution.kubernetes_api":        "Kubernetes API server that names pods' jobs from their owners and labels (empty: in-cluster when in a pod; off: never)",
	"attribution.kubernetes_token_file": "bearer token for the Kubernetes API (the pod's service account)",
	"attribution.kubernetes_ca_file":    "CA certificate of the Kubernetes API server",
	"attribution.job_cache_ttl":         "how long a pod's job looked up in the Kubernetes API is trusted",

	"gpu.interval":                         "steady GPU sampling period",
	"gpu.capture_hz":                       "GPU sampling rate inside a capture window (10-100)",
	"gpu.ring_seconds":                     "GPU sample history kept per device; a capture window cannot be longer",
	"gpu.dcgm.enabled":                     "collect the DCGM profiling fields (SM active, tensor, DRAM, ...)",
	"gpu.dcgm.mode":                        "embedded (a host engine inside the agent) or standalone (connect to nv-hostengine)",
	"gpu.dcgm.address":                     "nv-hostengine address in standalone mode: host:port or a unix socket path",
	"gpu.dcgm.fields_interval":             "how often DCGM updates the profiling fields (inside a capture window: at the capture rate)",
	"gpu.collectors":                       "counters file in dcgm-exporter's format: the DCGM_FI_* families /metrics serves",
	"gpu.simulate_problems.throttled_gpus": "simulated GPUs that run hot and throttle (demo, tests)",
	"gpu.simulate_problems.starved_gpus":   "simulated GPUs that wait for input most of every step (demo, tests)",
	"gpu.simulate_problems.pids":           "pids shown as the simulated GPUs' processes, round-robin; 0 leaves a GPU without one",

	"cpu.enabled":             "eBPF CPU stack sampling",
	"cpu.hz":                  "CPU samples per second per CPU inside capture windows (up to 999)",
	"cpu.drain_interval":      "how often the kernel's sample counts are read and symbolized",
	"cpu.frame_pointers_only": "follow frame pointers only: no unwinding by .eh_frame tables or CPython frame walking in the kernel",
	"cpu.unwind_rows":         "room for unwind table rows in the kernel, 8 bytes each; objects that do not fit follow frame pointers",
	"cpu.unwind_mappings":     "room for the executable mappings of the processes described to the unwinder, 32 bytes each; processes that do not fit follow frame pointers",
	"cpu.continuous.enabled":  "profile every process all the time and spool one continuous profile per interval",
	"cpu.continuous.hz":       "CPU samples per second per CPU outside capture windows",
	"cpu.continuous.interval": "time one continuous profile bundle covers (1s to 1h)",

	"nccl.enabled":           "eBPF uprobes on libnccl",
	"nccl.scan_interval":     "how often /proc is scanned for processes that map libnccl",
	"nccl.buffer_events":     "recent NCCL calls kept in memory for capture windows (80 bytes each; the plugin's records get a quarter of that)",
	"nccl.ring_buffer_bytes": "size of the kernel ring buffer for NCCL calls (a power of two)",
	"nccl.step_interval":     "how often recent NCCL calls are searched for iteration boundaries",
	"nccl.step_lookback":     "NCCL history each search for iteration boundaries covers",
	"nccl.detach_after":      "keep a libnccl's uprobes this long after its last process exits, so a restarted job is traced from its first call",
	"nccl.plugin_socket":     "unix datagram socket for Loupe's NCCL profiler plugin (GPU-side times); empty turns the receiver off",
	"nccl.libraries":         "trace only the libnccl files matching these path patterns, or under folders that match (empty: every libnccl.so*)",

	"hang.enabled":        "watch NCCL communicators for hangs and take a hang capture when one stalls",
	"hang.timeout":        "how long a communicator may make no progress, with ranks inside a collective others never reached, before it is a hang",
	"hang.check_interval": "how often communicators are checked for hangs",
	"hang.lookback":       "history before the detection a hang capture holds (GPU samples, NCCL calls, log faults)",
	"hang.stack_sample":   "how long the CPU profiler samples the stuck processes right after a hang is detected",

	"kineto.enabled":    "dynolog-compatible Kineto daemon (PyTorch traces with no code change)",
	"kineto.endpoint":   "Kineto IPC endpoint name the jobs send to",
	"kineto.socket_dir": "socket files here instead of the abstract namespace; must match the jobs' KINETO_IPC_SOCKET_DIR",
	"kineto.rpc_addr":   "dynolog JSON RPC address for the dyno CLI (empty: off)",
	"kineto.keepalive":  "drop Kineto processes that have not polled for this long",
	"kineto.trace_dir":  "where requested Kineto traces are written; the jobs must see the same path",

	"steps.history":       "steps kept per rank for capture bundles",
	"steps.stale":         "silence after which a less preferred step source of the rank takes over",
	"steps.forget":        "drop a job's rank that has been silent this long",
	"steps.max_ranks":     "(job, rank) pairs tracked at once",
	"steps.history_head":  "steps of a run the step history keeps at full resolution from the first one seen",
	"steps.history_spans": "rows that summarize the rest of a run's step history (merged pairwise beyond)",

	"logs.files":          "log files and globs to tail for faults and rebalances (container logs too)",
	"logs.poll_interval":  "how often the log files are checked for new lines",
	"logs.max_line_bytes": "longer log lines are cut",
	"logs.max_events":     "log events kept for captures; the oldest go first",

	"upload.interval":     "how often the spool is rescanned for captures to upload",
	"upload.backoff_base": "first upload retry's maximum delay; each retry doubles it",
	"upload.backoff_max":  "longest delay between upload retries",
	"logs.history_job":    "job name of the log-only bundles carrying the history of log files found after start-up",
}

// bindFlags registers a flag for every YAML key of the struct v, named by
// its dotted path with underscores as dashes.
func bindFlags(fs *flag.FlagSet, v reflect.Value, prefix string) {
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, inline := yamlName(f)
		if name == "-" {
			continue
		}
		fv := v.Field(i)
		key := prefix + name
		if inline {
			key = strings.TrimSuffix(prefix, ".")
		}
		if f.Type.Kind() == reflect.Struct && f.Type != durationType {
			p := key + "."
			if inline {
				p = prefix
			}
			bindFlags(fs, fv, p)
			continue
		}
		if hiddenKeys[key] {
			continue
		}
		val := newValue(fv)
		if val == nil {
			continue // funcs and interfaces are set by the daemon, not by users
		}
		usage := fmt.Sprintf("YAML key %s (`%s`)", key, kindName(fv))
		if doc := flagDocs[key]; doc != "" {
			usage = fmt.Sprintf("%s (`%s`; YAML key %s)", doc, kindName(fv), key)
		}
		fs.Var(val, strings.ReplaceAll(key, "_", "-"), usage)
	}
}

func kindName(v reflect.Value) string {
	switch {
	case v.Type() == durationType:
		return "duration"
	case v.Kind() == reflect.Slice:
		return "list"
	case v.Kind() == reflect.Float32 || v.Kind() == reflect.Float64:
		return "number"
	case v.Kind() == reflect.String:
		return "string"
	case v.Kind() == reflect.Bool:
		return "bool"
	}
	return "integer"
}

func yamlName(f reflect.StructField) (name string, inline bool) {
	tag := f.Tag.Get("yaml")
	parts := strings.Split(tag, ",")
	for _, p := range parts[1:] {
		if p == "inline" {
			return "", true
		}
	}
	if parts[0] != "" {
		return parts[0], false
	}
	if f.Anonymous {
		return "", true
	}
	return strings.ToLower(f.Name), false
}

// value is a flag.Value over one configuration field.
type value struct {
	v   reflect.Value
	set bool // a slice flag given twice appends
}

func newValue(v reflect.Value) flag.Value {
	switch v.Kind() {
	case reflect.String, reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return &value{v: v}
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.String || v.Type().Elem().Kind() == reflect.Int {
			return &value{v: v}
		}
	}
	return nil
}

func (x *value) String() string {
	if !x.v.IsValid() {
		return ""
	}
	switch x.v.Kind() {
	case reflect.Slice:
		s := make([]string, x.v.Len())
		for i := range s {
			s[i] = fmt.Sprint(x.v.Index(i).Interface())
		}
		return strings.Join(s, ",")
	case reflect.Int64:
		if x.v.Type() == durationType {
			return time.Duration(x.v.Int()).String()
		}
	}
	return fmt.Sprint(x.v.Interface())
}

// IsBoolFlag lets --nccl.enabled stand for --nccl.enabled=true.
func (x *value) IsBoolFlag() bool { return x.v.Kind() == reflect.Bool }

func (x *value) Set(s string) error {
	v := x.v
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if v.Type() == durationType {
			d, err := time.ParseDuration(s)
			if err != nil {
				return err
			}
			v.SetInt(int64(d))
			return nil
		}
		n, err := strconv.ParseInt(s, 0, v.Type().Bits())
		if err != nil {
			return err
		}
		v.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(s, 0, v.Type().Bits())
		if err != nil {
			return err
		}
		v.SetUint(n)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(s, v.Type().Bits())
		if err != nil {
			return err
		}
		v.SetFloat(f)
	case reflect.Slice:
		if !x.set {
			v.Set(reflect.MakeSlice(v.Type(), 0, 0))
			x.set = true
		}
		for _, item := range strings.Split(s, ",") {
			if item = strings.TrimSpace(item); item == "" {
				continue
			}
			e := reflect.New(v.Type().Elem()).Elem()
			if err := (&value{v: e}).Set(item); err != nil {
				return err
			}
			v.Set(reflect.Append(v, e))
		}
	}
	return nil
}
