package gpu

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/loupe-dev/loupe/traces"
)

// eventLog keeps the most recent GPU events (XIDs, ECC, lost GPUs) in
// arrival order; the oldest are dropped past its capacity.
type eventLog struct {
	mu     sync.Mutex
	events []traces.Event
	max    int
}

func (l *eventLog) add(e traces.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.events) >= l.max {
		n := copy(l.events, l.events[len(l.events)-l.max/2:])
		clear(l.events[n:])
		l.events = l.events[:n]
	}
	l.events = append(l.events, e)
}

func (l *eventLog) between(fromNs, toNs int64) []traces.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []traces.Event
	for _, e := range l.events {
		if e.TimeNs >= fromNs && e.TimeNs <= toNs {
			out = append(out, e)
		}
	}
	return out
}

// Event types the watcher registers: XIDs and ECC errors.
const watchedEvents = nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError | nvml.EventTypeSingleBitEccError

// watchEvents waits on an NVML event set until ctx is done. The wait has a
// short timeout so that cancellation is noticed promptly; NVML returns
// ERROR_TIMEOUT then, which is not an error.
func (c *Collector) watchEvents(ctx context.Context) error {
	set, ret := c.lib.EventSetCreate()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("creating the NVML event set: %w", ret)
	}
	defer set.Free()
	registered := 0
	for _, d := range c.devs {
		// Devices that do not support a type reject the whole mask, so fall
		// back to XIDs alone.
		if ret := d.h.RegisterEvents(watchedEvents, set); ret == nvml.SUCCESS {
			registered++
		} else if ret := d.h.RegisterEvents(nvml.EventTypeXidCriticalError, set); ret == nvml.SUCCESS {
			registered++
		} else {
			c.log.Warn("gpu events not available on this device", "gpu", d.info.Index, "err", ret)
		}
	}
	if registered == 0 {
		return errors.New("no device accepts NVML event registration")
	}
	const waitMs = 200
	for ctx.Err() == nil {
		data, ret := set.Wait(waitMs)
		switch ret {
		case nvml.SUCCESS:
			c.recordEvent(data)
		case nvml.ERROR_TIMEOUT:
		case nvml.ERROR_GPU_IS_LOST:
			// Wait reports a lost GPU without saying which; the sampling
			// loops find out which one on their next read.
			c.metrics.errors("events")
			sleepCtx(ctx, waitMs*time.Millisecond)
		default:
			c.metrics.errors("events")
			c.log.Debug("waiting for gpu events", "err", ret)
			sleepCtx(ctx, waitMs*time.Millisecond)
		}
	}
	return nil
}

func (c *Collector) recordEvent(data nvml.EventData) {
	d := c.deviceOf(data.Device)
	e := traces.Event{TimeNs: time.Now().UnixNano(), GPU: -1, Rank: -1, Code: int64(data.EventData)}
	if d != nil {
		e.GPU = d.info.Index
		e.Attrs = map[string]string{"uuid": d.info.UUID}
	}
	switch data.EventType {
	case nvml.EventTypeXidCriticalError:
		e.Kind = traces.EventXID
		e.Message = "XID " + strconv.FormatUint(data.EventData, 10)
		if d != nil {
			d.mu.Lock()
			d.lastXID = int64(data.EventData)
			d.mu.Unlock()
		}
	case nvml.EventTypeDoubleBitEccError:
		e.Kind, e.Message = traces.EventECC, "double-bit (uncorrectable) ECC error"
	case nvml.EventTypeSingleBitEccError:
		e.Kind, e.Message = traces.EventECC, "single-bit (corrected) ECC error"
	default:
		return
	}
	c.events.add(e)
	c.metrics.event(e.Kind)
	c.log.Warn("gpu event", "kind", e.Kind, "gpu", e.GPU, "code", e.Code, "message", e.Message)
}

// deviceOf finds the collector's device for an event's device handle.
func (c *Collector) deviceOf(h nvml.Device) *device {
	if h == nil {
		return nil
	}
	uuid, ret := h.GetUUID()
	if ret != nvml.SUCCESS {
		return nil
	}
	for _, d := range c.devs {
		if d.info.UUID == uuid {
			return d
		}
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
