package gpu

import (
	"fmt"
	"time"
)

// Config configures a Collector. Every key is also a flag of the daemon.
type Config struct {
	// Interval is the steady sampling period.
	Interval time.Duration `yaml:"interval"`
	// CaptureHz is the sampling rate while a capture window is open, 10-100.
	CaptureHz float64 `yaml:"capture_hz"`
	// RingSeconds is how much history each GPU's ring buffer keeps.
	RingSeconds int `yaml:"ring_seconds"`
	// DCGM configures the profiling-field collector.
	DCGM DCGMConfig `yaml:"dcgm"`
	// Collectors is a counters file in dcgm-exporter's format (its
	// --collectors): the families /metrics serves, with their types and
	// help. Empty: every family the agent collects.
	Collectors string `yaml:"collectors"`
	// Simulate is the number of simulated GPUs; 0 reads the real devices.
	Simulate int `yaml:"simulate_gpus"`
	// Sim plants problems on simulated GPUs (demos, tests).
	Sim SimOptions `yaml:"simulate_problems"`
	// Hostname is the Hostname label; os.Hostname() when empty.
	Hostname string `yaml:"-"`
	// Pods, when set, names the pod, namespace and container that hold a
	// GPU (by UUID) for the metric labels. attribution.Resolver fits.
	Pods PodLookup `yaml:"-"`
}

// PodLookup maps a GPU UUID to the Kubernetes pod that holds it. It must
// answer from a cache: it is called once per steady interval per GPU.
type PodLookup interface {
	GPU(uuid string) (pod, namespace, container string)
}

// DCGM modes.
const (
	DCGMEmbedded   = "embedded"
	DCGMStandalone = "standalone"
)

// DCGMConfig configures the DCGM profiling collector.
type DCGMConfig struct {
	// Enabled turns the DCGM collector on; a host without libdcgm then only
	// logs it once and reports loupe_dcgm_available 0.
	Enabled bool `yaml:"enabled"`
	// Mode is "embedded" (a host engine inside the agent) or "standalone"
	// (connect to a running nv-hostengine at Address).
	Mode string `yaml:"mode"`
	// Address of nv-hostengine in standalone mode: host:port, or a unix
	// socket path.
	Address string `yaml:"address"`
	// FieldsInterval is how often DCGM updates the profiling fields.
	FieldsInterval time.Duration `yaml:"fields_interval"`
}

// DefaultConfig returns the configuration used when nothing is set: 1 Hz
// steady, 100 Hz in captures, five minutes of history, embedded DCGM.
func DefaultConfig() Config {
	return Config{
		Interval:    time.Second,
		CaptureHz:   100,
		RingSeconds: 300,
		DCGM: DCGMConfig{
			Enabled:        true,
			Mode:           DCGMEmbedded,
			FieldsInterval: time.Second,
		},
	}
}

// Validate reports the first setting that is out of range.
func (c Config) Validate() error {
	switch {
	case c.Interval < 10*time.Millisecond || c.Interval > time.Minute:
		return fmt.Errorf("gpu interval %v is out of range: use 10ms to 1m (default 1s)", c.Interval)
	case c.CaptureHz < 10 || c.CaptureHz > 100:
		return fmt.Errorf("gpu capture_hz %g is out of range: use 10 to 100 (default 100)", c.CaptureHz)
	case c.RingSeconds < 10 || c.RingSeconds > 3600:
		return fmt.Errorf("gpu ring_seconds %d is out of range: use 10 to 3600 (default 300)", c.RingSeconds)
	case c.Simulate < 0 || c.Simulate > 64:
		return fmt.Errorf("simulate_gpus %d is out of range: use 0 to 64", c.Simulate)
	}
	if c.DCGM.Enabled {
		switch c.DCGM.Mode {
		case DCGMEmbedded:
		case DCGMStandalone:
			if c.DCGM.Address == "" {
				return fmt.Errorf("dcgm mode standalone needs dcgm.address (host:port of nv-hostengine, or its unix socket path)")
			}
		default:
			return fmt.Errorf("dcgm mode %q is unknown: use %q or %q", c.DCGM.Mode, DCGMEmbedded, DCGMStandalone)
		}
		if c.DCGM.FieldsInterval < 100*time.Millisecond {
			return fmt.Errorf("dcgm fields_interval %v is too short: DCGM profiling needs at least 100ms", c.DCGM.FieldsInterval)
		}
	}
	return nil
}
