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
)

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "aggregator.yaml")
	os.WriteFile(file, []byte("store: s3://loupe/prod?endpoint=minio:9000\npartition_timeout: 3m\nworkers: 4\nmax_part_size: 1048576\n"), 0o644)
	typo := filepath.Join(dir, "typo.yaml")
	os.WriteFile(typo, []byte("partition_timout: 3m\n"), 0o644)
	tests := []struct {
		name  string
		args  []string
		check func(aggregator.Config) bool
		err   string
	}{
		{name: "defaults", check: func(c aggregator.Config) bool {
			return c.Store == "file:///var/lib/loupe/store" && c.Addr == ":8080" && c.PartitionTimeout == 10*time.Minute
		}},
		{name: "file", args: []string{"--config", file}, check: func(c aggregator.Config) bool {
			return strings.HasPrefix(c.Store, "s3://loupe/prod") && c.PartitionTimeout == 3*time.Minute && c.Workers == 4 && c.MaxPartSize == 1<<20 && c.Addr == ":8080"
		}},
		{name: "flags override the file", args: []string{"--workers", "8", "--config", file, "--partition-timeout", "90s"}, check: func(c aggregator.Config) bool {
			return c.Workers == 8 && c.PartitionTimeout == 90*time.Second && strings.HasPrefix(c.Store, "s3://")
		}},
		{name: "goodput keys", args: []string{"--gpu-hour-price", "2.5", "--flops-per-step", "llm=3.2e15, vit=1e12", "--peak-flops", "9.89e14"}, check: func(c aggregator.Config) bool {
			return c.GPUHourPrice == 2.5 && c.Currency == "USD" && c.PeakFLOPS == 9.89e14 && c.FLOPsPerStep["llm"] == 3.2e15 && c.FLOPsPerStep["vit"] == 1e12
		}},
		{name: "bad flops", args: []string{"--flops-per-step", "llm"}, err: "want JOB=NUMBER"},
		{name: "negative price", args: []string{"--gpu-hour-price", "-1"}, err: "gpu_hour_price"},
		{name: "unknown key", args: []string{"--config", typo}, err: "field partition_timout not found"},
		{name: "bad value", args: []string{"--workers", "0"}, err: "workers: 0, want 1 to 256"},
		{name: "bad level", args: []string{"--log-level", "loud"}, err: "log_level"},
		{name: "missing file", args: []string{"--config", filepath.Join(dir, "nope.yaml")}, err: "no such file"},
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
