// Package trigger decides when a training job is worth capturing on its own.
//
// The stable-iteration trigger waits until a job has run AtIteration
// iterations and its step time has settled (the coefficient of variation
// over the last Window steps is under MaxCV and the steps show no trend
// beyond MaxTrend, so a slowly falling warm-up does not count), then asks for a capture of
// Iterations iterations starting at the next multiple of Roundup, as Kineto's
// PROFILE_START_ITERATION_ROUNDUP does. Every host decides alone, so the
// start iteration depends only on the iteration at which the condition first
// held: ranks that settle within the same Roundup block pick the same start,
// and their captures line up across hosts.
package trigger

import (
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/loupe-dev/loupe/agent/steps"
)

// Config tunes the stable-iteration trigger. The zero value of a field means
// its default.
type Config struct {
	// Disabled turns automatic captures off.
	Disabled bool `yaml:"disabled"`
	// AtIteration is the first iteration at which a capture may be decided.
	AtIteration int64 `yaml:"at_iteration"`
	// Window is how many recent steps must be known and settled.
	Window int `yaml:"window"`
	// MaxCV is the coefficient of variation of step time below which the
	// job counts as settled.
	MaxCV float64 `yaml:"max_cv"`
	// MaxTrend bounds how much step time may still drift across the window
	// (relative change of the least-squares fit): a slow warm-up has a low
	// CV, but not a flat trend.
	MaxTrend float64 `yaml:"max_trend"`
	// Iterations is how many iterations a capture covers.
	Iterations int64 `yaml:"iterations"`
	// Roundup aligns the start iteration to a multiple of this.
	Roundup int64 `yaml:"roundup"`
	// MaxPerRun bounds automatic captures per job run; negative is unlimited.
	MaxPerRun int `yaml:"max_per_run"`
	// Cooldown is the least time between two automatic captures of a job run.
	Cooldown time.Duration `yaml:"cooldown"`
}

// DefaultConfig returns the defaults: after iteration 550, once the CV over
// 50 steps is under 0.1 and step time drifts by less than 5% across them, capture 20 iterations from the next multiple of 100,
// once per job run.
func DefaultConfig() Config {
	return Config{AtIteration: 550, Window: 50, MaxCV: 0.1, MaxTrend: 0.05, Iterations: 20, Roundup: 100, MaxPerRun: 1, Cooldown: 10 * time.Minute}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.AtIteration <= 0 {
		c.AtIteration = d.AtIteration
	}
	if c.Window <= 1 {
		c.Window = d.Window
	}
	if c.MaxCV <= 0 {
		c.MaxCV = d.MaxCV
	}
	if c.MaxTrend <= 0 {
		c.MaxTrend = d.MaxTrend
	}
	if c.Iterations <= 0 {
		c.Iterations = d.Iterations
	}
	if c.Roundup <= 0 {
		c.Roundup = d.Roundup
	}
	if c.MaxPerRun == 0 {
		c.MaxPerRun = d.MaxPerRun
	}
	return c
}

// Decision is a capture the trigger asks for.
type Decision struct {
	Job, Run string
	// CaptureID is the same on every host that makes the same decision, so
	// the aggregator sees one capture with a share from each host.
	CaptureID      string
	StartIteration int64
	Iterations     int64
	Reason         string
}

// Trigger tracks the job runs on a host and decides their automatic
// captures. It is safe for concurrent use.
type Trigger struct {
	cfg Config
	now func() time.Time

	mu   sync.Mutex
	runs map[runKey]*runState
}

type runKey struct{ job, run string }

type runState struct {
	fired    int
	last     time.Time // time of the last decision
	busyTill int64     // iteration the last decided capture ends at
	lastSeen time.Time
}

// maxRuns bounds the job runs remembered; the least recently seen goes first.
const maxRuns = 4096

// New returns a Trigger with cfg's zero fields set to their defaults.
func New(cfg Config) *Trigger {
	return &Trigger{cfg: cfg.withDefaults(), now: time.Now, runs: map[runKey]*runState{}}
}

// Config returns the trigger's effective configuration.
func (t *Trigger) Config() Config { return t.cfg }

// StartIteration is the first multiple of roundup strictly after iter: the
// iteration in progress is never captured half-way.
func StartIteration(iter, roundup int64) int64 {
	if roundup <= 0 {
		return iter + 1
	}
	return (iter/roundup + 1) * roundup
}

// Observe considers a rank's fresh statistics and returns a decision when
// its job should be captured.
func (t *Trigger) Observe(s steps.Stats) (Decision, bool) {
	if t.cfg.Disabled || s.Iteration < t.cfg.AtIteration || s.Window < t.cfg.Window ||
		s.CV >= t.cfg.MaxCV || math.Abs(s.Trend) >= t.cfg.MaxTrend {
		return Decision{}, false
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	k := runKey{s.Job, s.Run}
	st := t.runs[k]
	if st == nil {
		if len(t.runs) >= maxRuns {
			t.evictLocked()
		}
		st = &runState{}
		t.runs[k] = st
	}
	st.lastSeen = now
	switch {
	case s.Iteration < st.busyTill:
		return Decision{}, false // another rank of the job already decided this window
	case t.cfg.MaxPerRun > 0 && st.fired >= t.cfg.MaxPerRun:
		return Decision{}, false
	case st.fired > 0 && now.Sub(st.last) < t.cfg.Cooldown:
		return Decision{}, false
	}
	start := StartIteration(s.Iteration, t.cfg.Roundup)
	st.fired++
	st.last = now
	st.busyTill = start + t.cfg.Iterations
	return Decision{
		Job: s.Job, Run: s.Run,
		CaptureID:      CaptureID(start, t.cfg.Iterations),
		StartIteration: start,
		Iterations:     t.cfg.Iterations,
		Reason: fmt.Sprintf("rank %d reached iteration %d with step time settled (CV %.3f < %g and drift %+.3f over the last %d steps, mean %v, from %s); capturing %d iterations from iteration %d (next multiple of %d)",
			s.Rank, s.Iteration, s.CV, t.cfg.MaxCV, s.Trend, s.Window, s.Mean.Round(time.Microsecond), s.Source, t.cfg.Iterations, start, t.cfg.Roundup),
	}, true
}

// CaptureID names an iteration-bounded capture. It depends only on the
// iterations, so every host of a job run derives the same one; the job and
// run are already part of the object key.
func CaptureID(start, iterations int64) string {
	return fmt.Sprintf("iter%d-n%d", start, iterations)
}

func (t *Trigger) evictLocked() {
	var oldest runKey
	var at time.Time
	for k, st := range t.runs {
		if at.IsZero() || st.lastSeen.Before(at) {
			oldest, at = k, st.lastSeen
		}
	}
	delete(t.runs, oldest)
}
