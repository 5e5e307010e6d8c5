package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/loupe-dev/loupe/agent/capture"
	"github.com/loupe-dev/loupe/agent/kineto"
	"github.com/loupe-dev/loupe/traces"
)

// kinetoWait bounds how long a capture waits for Kineto to write its traces
// after the window closes.
const kinetoWait = 20 * time.Second

// kinetoAddon asks the job's Kineto processes for a trace covering the
// capture window and puts the traces they write into the bundle.
type kinetoAddon struct {
	srv     *kineto.Server
	dir     string
	roundup int64
	log     *slog.Logger
}

func (k *kinetoAddon) Name() string { return "kineto traces" }

func (k *kinetoAddon) Open(_ context.Context, w capture.Window) (func(context.Context, *traces.BundleWriter) error, error) {
	var pids []int
	rank := map[int]int{}
	for _, p := range w.Processes {
		pids = append(pids, p.PID)
		rank[p.PID] = p.Rank
	}
	// Matched pids name the processes exactly; the job name selects only
	// when none matched, since Kineto's own job ids are not Loupe's names.
	job := w.Job
	if len(pids) > 0 {
		job = ""
	}
	req := kineto.TraceRequest{
		Job: job, PIDs: pids, LogFile: filepath.Join(k.dir, w.ID, "trace.json"),
		Iterations: w.Iterations, RoundUp: k.roundup, Duration: w.Duration,
	}
	res, err := k.srv.Trace(req)
	if err != nil {
		return nil, err
	}
	traced := res.ActivityProfilersTriggered
	if len(traced) == 0 {
		return nil, fmt.Errorf("no Kineto process of job %s polled the agent (start PyTorch with KINETO_USE_DAEMON=1), or all were busy (%d)", w.Job, res.ActivityProfilersBusy)
	}
	return func(ctx context.Context, b *traces.BundleWriter) error {
		wctx, cancel := context.WithTimeout(ctx, kinetoWait)
		defer cancel()
		defer os.RemoveAll(filepath.Dir(req.LogFile))
		found, missing := kineto.WaitForTraces(wctx, req.LogFile, traced, 200*time.Millisecond)
		for pid, path := range found {
			r, ok := rank[pid]
			if !ok {
				r = -1
			}
			dist, err := kineto.AddToBundle(b, path, r, pid)
			if err != nil {
				b.Note("kineto trace of pid %d: %v", pid, err)
				continue
			}
			if !dist {
				b.Note("kineto trace of pid %d has no distributedInfo: the aggregator cannot place it among the job's ranks", pid)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("pids %v wrote no trace within %v of the window's end", missing, kinetoWait)
		}
		return nil
	}, nil
}
