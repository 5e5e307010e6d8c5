package kineto

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// TraceRequest asks the matching Kineto processes for a trace, bounded either
// by iterations (starting at the next multiple of RoundUp, so every rank of a
// job starts at the same iteration) or by a duration from StartTime.
type TraceRequest struct {
	// Job selects processes by Kineto job id or Loupe job name; "" for all.
	Job string
	// PIDs selects processes by pid or ancestor pid; empty for all of the job.
	PIDs []int
	// Limit caps the number of processes traced (dyno's --process-limit).
	Limit int
	// LogFile is where Kineto writes; each process writes <stem>_<pid>.json.
	LogFile string

	Iterations int64 // > 0: iteration-bounded
	RoundUp    int64 // start at the next multiple of this iteration (>= 1)
	Duration   time.Duration
	StartTime  time.Time // duration-bounded: when to start (zero: now)

	RecordShapes, ProfileMemory, WithStack, WithFlops, WithModules bool
}

// Validate reports what is wrong with the request, if anything.
func (r *TraceRequest) Validate() error {
	switch {
	case r.LogFile == "" || !filepath.IsAbs(r.LogFile) || !strings.HasSuffix(r.LogFile, ".json"):
		return fmt.Errorf("kineto trace: log file %q must be an absolute path ending in .json", r.LogFile)
	case strings.ContainsAny(r.LogFile, "\n\r="):
		return errors.New("kineto trace: log file must not contain newlines or '='")
	case r.Iterations > 0 && r.Duration > 0:
		return errors.New("kineto trace: give iterations or a duration, not both")
	case r.Iterations <= 0 && r.Duration <= 0:
		return errors.New("kineto trace: give a number of iterations or a duration")
	case r.Iterations > 0 && r.RoundUp < 1:
		return fmt.Errorf("kineto trace: start-iteration round-up %d must be at least 1", r.RoundUp)
	}
	return nil
}

// Config renders the request as Kineto on-demand configuration text, with
// the keys dyno's gputrace sends.
func (r *TraceRequest) Config() string {
	var b strings.Builder
	fmt.Fprintf(&b, "ACTIVITIES_LOG_FILE=%s\n", r.LogFile)
	if r.Iterations > 0 {
		fmt.Fprintf(&b, "PROFILE_START_ITERATION=0\nPROFILE_START_ITERATION_ROUNDUP=%d\nACTIVITIES_ITERATIONS=%d\n", r.RoundUp, r.Iterations)
	} else {
		start := r.StartTime
		if start.IsZero() {
			start = time.Now()
		}
		fmt.Fprintf(&b, "PROFILE_START_TIME=%d\nACTIVITIES_DURATION_MSECS=%d\n", start.UnixMilli(), r.Duration.Milliseconds())
	}
	fmt.Fprintf(&b, "PROFILE_REPORT_INPUT_SHAPES=%t\nPROFILE_PROFILE_MEMORY=%t\nPROFILE_WITH_STACK=%t\nPROFILE_WITH_FLOPS=%t\nPROFILE_WITH_MODULES=%t",
		r.RecordShapes, r.ProfileMemory, r.WithStack, r.WithFlops, r.WithModules)
	return b.String()
}

// TraceFile is where the process with that pid writes the trace for logFile:
// Kineto appends the pid to the file's stem ("/tmp/t.json" -> "/tmp/t_42.json").
func TraceFile(logFile string, pid int) string {
	return strings.TrimSuffix(logFile, ".json") + fmt.Sprintf("_%d.json", pid)
}
