package goodput

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// What a change between two runs must reach to be called a regression or
// to be listed.
const (
	// RegressionStepTime: the steady step got this much slower.
	RegressionStepTime = 0.10
	// RegressionGoodput: goodput fell by this many points (share).
	RegressionGoodput = 0.05
	// CauseChangeMin: a cause's share moved this much.
	CauseChangeMin = 0.01
)

// RunSummary is one run of a job as a comparison lists it.
type RunSummary struct {
	Run          string          `json:"run"`
	Capture      string          `json:"capture"`
	Start        time.Time       `json:"start"`
	End          time.Time       `json:"end"`
	Goodput      float64         `json:"goodput"`
	ETTR         float64         `json:"ettr"`
	MFU          float64         `json:"mfu,omitempty"`
	StepSeconds  float64         `json:"step_seconds"`
	GPUHours     float64         `json:"gpu_hours"`
	LostGPUHours float64         `json:"lost_gpu_hours"`
	Software     traces.Software `json:"software"`
	Simulated    bool            `json:"simulated,omitempty"`
}

// Change is what changed from one run of a job to the next.
type Change struct {
	From string    `json:"from"`
	To   string    `json:"to"`
	At   time.Time `json:"at"` // when the later run started
	// StepTimeChange is the relative change of the steady step (0.15: 15 %
	// slower); GoodputChange and ETTRChange are in points of share.
	StepTimeChange float64          `json:"step_time_change"`
	GoodputChange  float64          `json:"goodput_change"`
	ETTRChange     float64          `json:"ettr_change"`
	Causes         []CauseChange    `json:"causes,omitempty"`
	Software       []SoftwareChange `json:"software,omitempty"`
	Regression     bool             `json:"regression"`
	Summary        string           `json:"summary"`
}

// CauseChange is a badput cause whose share moved between two runs.
type CauseChange struct {
	Cause string  `json:"cause"`
	From  float64 `json:"from"`
	To    float64 `json:"to"`
}

// SoftwareChange is a field of traces.Software that differs between runs.
type SoftwareChange struct {
	Field string `json:"field"` // image, driver, cuda, nccl
	From  string `json:"from"`
	To    string `json:"to"`
}

// Comparison is a job's runs, oldest first, and what changed between each
// run and the next; the last change is the latest run's against the one
// before it.
type Comparison struct {
	Cluster string       `json:"cluster"`
	Job     string       `json:"job"`
	Runs    []RunSummary `json:"runs"`
	Changes []Change     `json:"changes"`
}

// Summarize is the comparison's view of one run.
func Summarize(g *traces.Goodput) RunSummary {
	return RunSummary{Run: g.Run, Capture: g.Capture, Start: g.Start, End: g.End, Goodput: g.Goodput, ETTR: g.ETTR, MFU: g.MFU,
		StepSeconds: g.StepSeconds, GPUHours: g.GPUSeconds / 3600, LostGPUHours: g.LostGPUHours(), Software: g.Software, Simulated: g.Simulated}
}

// Compare compares the runs of one job (their latest goodput each) in the
// order they started. Between each run and the next it reports the change
// of steady step time, goodput, ETTR and every cause's share that moved by
// CauseChangeMin, and which of image, driver, CUDA and NCCL versions
// changed (from the manifests). A step that got RegressionStepTime slower,
// or goodput that fell RegressionGoodput, is a regression; its summary
// names the software that changed with it, or says that none did.
func Compare(runs []*traces.Goodput) *Comparison {
	runs = slices.Clone(runs)
	slices.SortFunc(runs, func(a, b *traces.Goodput) int { return cmp.Or(a.Start.Compare(b.Start), cmp.Compare(a.Run, b.Run)) })
	c := &Comparison{Runs: []RunSummary{}, Changes: []Change{}}
	for i, g := range runs {
		c.Cluster, c.Job = g.Cluster, g.Job
		c.Runs = append(c.Runs, Summarize(g))
		if i > 0 {
			c.Changes = append(c.Changes, change(runs[i-1], g))
		}
	}
	return c
}

func change(a, b *traces.Goodput) Change {
	ch := Change{From: a.Run, To: b.Run, At: b.Start, GoodputChange: b.Goodput - a.Goodput, ETTRChange: b.ETTR - a.ETTR}
	if a.StepSeconds > 0 {
		ch.StepTimeChange = b.StepSeconds/a.StepSeconds - 1
	}
	for _, cause := range traces.Causes {
		from, to := a.Cause(cause).Share, b.Cause(cause).Share
		if math.Abs(to-from) >= CauseChangeMin {
			ch.Causes = append(ch.Causes, CauseChange{Cause: cause, From: from, To: to})
		}
	}
	for _, f := range []struct{ name, from, to string }{
		{"image", a.Software.Image, b.Software.Image}, {"driver", a.Software.Driver, b.Software.Driver},
		{"cuda", a.Software.CUDA, b.Software.CUDA}, {"nccl", a.Software.NCCL, b.Software.NCCL},
	} {
		if f.from != f.to && f.from != "" && f.to != "" {
			ch.Software = append(ch.Software, SoftwareChange{Field: f.name, From: f.from, To: f.to})
		}
	}
	slowdown := ch.StepTimeChange >= RegressionStepTime
	ch.Regression = slowdown || -ch.GoodputChange >= RegressionGoodput
	var what []string
	if slowdown || ch.StepTimeChange <= -RegressionStepTime {
		word := "rose"
		if !slowdown {
			word = "fell"
		}
		what = append(what, fmt.Sprintf("step time %s %.0f%% (%s to %s)", word, 100*math.Abs(ch.StepTimeChange),
			seconds(a.StepSeconds), seconds(b.StepSeconds)))
	}
	if math.Abs(ch.GoodputChange) >= CauseChangeMin {
		what = append(what, fmt.Sprintf("goodput %.1f%% to %.1f%%", 100*a.Goodput, 100*b.Goodput))
	}
	for _, cc := range ch.Causes {
		what = append(what, fmt.Sprintf("%s %.1f%% to %.1f%%", cc.Cause, 100*cc.From, 100*cc.To))
	}
	if len(what) == 0 {
		what = append(what, "no change of step time, goodput or badput worth naming")
	}
	var sw []string
	for _, s := range ch.Software {
		sw = append(sw, fmt.Sprintf("the %s changed from %s to %s", s.Field, s.From, s.To))
	}
	ch.Summary = fmt.Sprintf("Run %s (started %s) against run %s: %s", b.Run, b.Start.UTC().Format(time.DateTime), a.Run, strings.Join(what, "; "))
	switch {
	case len(sw) > 0 && ch.Regression:
		ch.Summary += ", after " + strings.Join(sw, " and ") + "."
	case len(sw) > 0:
		ch.Summary += "; " + strings.Join(sw, " and ") + "."
	case ch.Regression:
		ch.Summary += "; image, driver, CUDA and NCCL versions did not change (look at the code, data or configuration)."
	default:
		ch.Summary += "."
	}
	return ch
}

// seconds formats a step time.
func seconds(s float64) string {
	if s < 0.9995 { // what rounds to 1.00 s reads as such
		return fmt.Sprintf("%.0f ms", s*1e3)
	}
	return fmt.Sprintf("%.2f s", s)
}
