package logtail

import (
	"strconv"
	"strings"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// Fault lines, as PyTorch and the CUDA runtime print them:
//
//	[Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1024, OpType=ALLREDUCE, NumelIn=..., NumelOut=..., Timeout(ms)=600000) ran for 600042 milliseconds before timing out.
//	torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.11 GiB ...
//	RuntimeError: CUDA error: an illegal memory access was encountered
//	Traceback (most recent call last):
//	  File "/app/train.py", line 42, in <module>
//	    main()
//	ValueError: ...

func ncclWatchdog(text string, when time.Time, rank int) traces.Event {
	if rank < 0 {
		if r, err := strconv.Atoi(number(after(text, "Rank "))); err == nil {
			rank = r
		}
	}
	e := newEvent(traces.EventNCCLWatchdog, text, when, rank)
	for k, key := range map[string]string{AttrTimeoutMs: "Timeout(ms)=", "seq": "SeqNum=", "op": "OpType="} {
		if v := field(text, key); v != "" {
			e.Attrs[k] = v
		}
	}
	if v := number(after(text, " ran for ")); v != "" {
		e.Attrs["ran_ms"] = v
	}
	return e
}

func oom(text string, when time.Time, rank int) traces.Event {
	e := newEvent(traces.EventOOM, text, when, rank)
	if g, err := strconv.Atoi(number(after(text, " GPU "))); err == nil {
		e.GPU = g
	}
	if v := after(text, "Tried to allocate "); v != "" {
		if i := strings.Index(v, "iB"); i > 0 && i < 16 {
			e.Attrs["tried_to_allocate"] = v[:i+2]
		}
	}
	return e
}

func cudaError(text string, when time.Time, rank int) traces.Event {
	e := newEvent(traces.EventCUDAError, text, when, rank)
	e.Attrs["error"] = strings.TrimSpace(after(text, "CUDA error: "))
	return e
}

// traceback collects one Python traceback.
type traceback struct {
	start  time.Time
	rank   int
	frames []string // outermost first, as Python prints them
}

// traceback follows Python tracebacks. It reports whether the line was part
// of one (a frame or source line), so that the single-line parsers skip
// source code such as `raise RuntimeError("CUDA error: ...")`. The line
// that ends a traceback, the exception, is not consumed.
func (p *Parser) traceback(text string, when time.Time, rank int, out []traces.Event) ([]traces.Event, bool) {
	if strings.HasPrefix(text, "Traceback (most recent call last):") {
		p.tb = &traceback{start: when, rank: rank}
		return out, true
	}
	tb := p.tb
	if tb == nil {
		return out, false
	}
	if strings.HasPrefix(text, "  File \"") {
		if len(tb.frames) == maxFrames {
			tb.frames = append(tb.frames[:0], tb.frames[1:]...)
		}
		tb.frames = append(tb.frames, frame(text))
		return out, true
	}
	if text == "" || text[0] == ' ' || text[0] == '\t' {
		return out, true
	}
	p.tb = nil
	e := newEvent(traces.EventCrash, text, tb.start, tb.rank)
	if e.Rank < 0 {
		e.Rank = rank
	}
	exc, _, _ := strings.Cut(strings.TrimSpace(text), ":")
	e.Attrs["exception"] = exc
	var b strings.Builder
	for i := len(tb.frames) - 1; i >= 0; i-- {
		b.WriteString(tb.frames[i])
		if i > 0 {
			b.WriteByte('\n')
		}
	}
	e.Attrs[AttrStack] = b.String()
	return append(out, e), false
}

// frame turns `  File "/app/x.py", line 42, in step` into "step (/app/x.py:42)".
func frame(line string) string {
	rest := strings.TrimPrefix(line, "  File \"")
	file, rest, _ := strings.Cut(rest, "\"")
	num := number(after(rest, ", line "))
	fn := strings.TrimSpace(after(rest, ", in "))
	if fn == "" {
		fn = "?"
	}
	return fn + " (" + file + ":" + num + ")"
}
