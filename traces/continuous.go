package traces

import (
	"fmt"
	"strings"
	"time"
)

// Continuous profiles are bundles like captures, one per job run, host and
// interval, under the job run's folder:
//
//	v1/<cluster>/<job>/<run>/continuous-20260301T120000Z-60s/<host>/cpu_continuous.pb.gz
//
// The capture id names the interval, so a reader finds the profiles of a
// time range from a listing alone, in time order within a run.

// ContinuousPrefix starts the capture id of every continuous profile
// bundle; agents refuse it for captures.
const ContinuousPrefix = "continuous-"

const continuousTime = "20060102T150405Z"

// ContinuousCaptureID names the continuous profile bundle of the interval
// of length d starting at start (whole seconds, UTC).
func ContinuousCaptureID(start time.Time, d time.Duration) string {
	return fmt.Sprintf("%s%s-%ds", ContinuousPrefix, start.UTC().Format(continuousTime), int64(d.Round(time.Second)/time.Second))
}

// IsContinuous reports whether a capture id names a continuous profile.
func IsContinuous(captureID string) bool { return strings.HasPrefix(captureID, ContinuousPrefix) }

// ParseContinuousCaptureID returns the interval a continuous profile's
// capture id names.
func ParseContinuousCaptureID(id string) (start time.Time, d time.Duration, err error) {
	rest, ok := strings.CutPrefix(id, ContinuousPrefix)
	ts, secs, ok2 := strings.Cut(rest, "-")
	if !ok || !ok2 || !strings.HasSuffix(secs, "s") {
		return time.Time{}, 0, fmt.Errorf("%w: %q is not %s<UTC time>-<seconds>s", ErrBadKey, id, ContinuousPrefix)
	}
	start, err = time.Parse(continuousTime, ts)
	if err != nil {
		return time.Time{}, 0, fmt.Errorf("%w: %q: %v", ErrBadKey, id, err)
	}
	var n int64
	if _, err := fmt.Sscanf(secs, "%ds", &n); err != nil || n <= 0 || n > 24*3600 {
		return time.Time{}, 0, fmt.Errorf("%w: %q: interval %q", ErrBadKey, id, secs)
	}
	return start, time.Duration(n) * time.Second, nil
}

// ContinuousSeek is the key to list a job run's continuous profiles from:
// a listing of JobPrefix() after it starts with the first interval that
// begins at or after t.
func (k Key) ContinuousSeek(t time.Time) string {
	return k.JobPrefix() + ContinuousPrefix + t.UTC().Format(continuousTime)
}
