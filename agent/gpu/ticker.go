package gpu

import (
	"context"
	"time"
)

// ticker fires on a fixed grid (start + k*period) without drift. When a
// wake-up comes later than a whole period (the process was descheduled, or
// sampling took too long) the grid points it slept through are counted as
// missed and skipped, never fired in a burst: a capture's samples then stay
// evenly spaced and the gap is visible in loupe_gpu_missed_ticks_total.
type ticker struct {
	period time.Duration
	next   time.Time
	timer  *time.Timer
}

func newTicker(period time.Duration, now time.Time) *ticker {
	t := &ticker{timer: time.NewTimer(time.Hour)}
	t.timer.Stop()
	t.reset(period, now)
	return t
}

// reset starts a new grid with the given period; the first tick is now.
func (t *ticker) reset(period time.Duration, now time.Time) {
	t.period = period
	t.next = now
}

// tick is one wake-up of the ticker.
type tick struct {
	at     time.Time     // the grid point this wake-up serves
	lag    time.Duration // how late the wake-up came
	missed int64         // grid points skipped before this one
}

// wait sleeps until the next grid point. It returns early with ok=false
// when ctx is done or wake receives (the caller then resets the period).
func (t *ticker) wait(ctx context.Context, wake <-chan struct{}) (tk tick, ok bool) {
	if d := time.Until(t.next); d > 0 {
		t.timer.Reset(d)
		select {
		case <-ctx.Done():
			t.timer.Stop()
			return tick{}, false
		case <-wake:
			t.timer.Stop()
			return tick{}, false
		case <-t.timer.C:
		}
	}
	now := time.Now()
	tk.lag = now.Sub(t.next)
	tk.missed = int64(tk.lag / t.period)
	tk.at = t.next.Add(time.Duration(tk.missed) * t.period)
	t.next = tk.at.Add(t.period)
	return tk, true
}
