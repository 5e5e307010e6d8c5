package gpu

import (
	"context"
	"testing"
	"time"
)

func TestTickerCountsMissedTicks(t *testing.T) {
	const period = 10 * time.Millisecond
	start := time.Now()
	tk := newTicker(period, start)
	ctx := context.Background()
	first, ok := tk.wait(ctx, nil)
	if !ok || first.missed != 0 || !first.at.Equal(start) {
		t.Fatalf("first tick = %+v, want the start with nothing missed", first)
	}
	time.Sleep(45 * time.Millisecond) // sleep through about four grid points
	late, ok := tk.wait(ctx, nil)
	if !ok {
		t.Fatal("wait failed")
	}
	if late.missed < 3 || late.missed != int64(late.lag/period) {
		t.Errorf("after a 45 ms stall: missed %d with lag %v, want >= 3 and lag/period", late.missed, late.lag)
	}
	if off := late.at.Sub(start) % period; off != 0 {
		t.Errorf("tick at %v is off the grid by %v", late.at, off)
	}
	next, _ := tk.wait(ctx, nil)
	if next.at.Sub(late.at) != time.Duration(next.missed+1)*period {
		t.Errorf("tick after the stall = %+v, want the next grid point", next)
	}
}

func TestTickerStopsAndWakes(t *testing.T) {
	tk := newTicker(time.Hour, time.Now())
	tk.wait(context.Background(), nil) // the first tick is immediate
	wake := make(chan struct{}, 1)
	wake <- struct{}{}
	if _, ok := tk.wait(context.Background(), wake); ok {
		t.Error("wait ignored a wake-up")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, ok := tk.wait(ctx, nil); ok {
		t.Error("wait ignored a cancelled context")
	}
}
