package logparse

import (
	"strconv"
	"strings"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

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

// ncclResults are NCCL's error names (ncclResult_t) as they appear in
// messages.
var ncclResults = []string{"ncclUnhandledCudaError", "ncclSystemError", "ncclInternalError", "ncclInvalidArgument",
	"ncclInvalidUsage", "ncclRemoteError"}

func isNCCLError(text string) bool {
	if strings.Contains(text, "NCCL error") || strings.Contains(text, "DistBackendError") {
		return true
	}
	if !strings.Contains(text, "nccl") {
		return false
	}
	for _, r := range ncclResults {
		if strings.Contains(text, r) {
			return true
		}
	}
	return false
}

func ncclError(text string, when time.Time, rank int) traces.Event {
	if rank < 0 {
		if r, err := strconv.Atoi(number(after(text, "[Rank "))); err == nil {
			rank = r
		}
	}
	e := newEvent(traces.EventNCCLError, text, when, rank)
	msg := text
	if v := after(text, "NCCL error in: "); v != "" {
		// "<file>:<line>, <what> (run with NCCL_DEBUG=INFO for details), NCCL version X"
		_, msg, _ = strings.Cut(v, ", ")
	} else if _, v, ok := strings.Cut(text, "Error: "); ok {
		msg = v
	}
	if v, ver, ok := strings.Cut(msg, ", NCCL version "); ok {
		msg = v
		e.Attrs["nccl_version"] = strings.TrimSpace(ver)
	}
	msg, _, _ = strings.Cut(msg, " (run with NCCL_DEBUG")
	e.Attrs[AttrError] = strings.TrimSpace(msg)
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
	low := strings.ToLower(text)
	for _, w := range []string{"retry", "retrying", "trying again", "try again", "will retry"} {
		if strings.Contains(low, w) {
			e.Attrs[AttrRetry] = "true"
			break
		}
	}
	return e
}

func cudaError(text string, when time.Time, rank int) traces.Event {
	e := newEvent(traces.EventCUDAError, text, when, rank)
	e.Attrs[AttrError] = strings.TrimSpace(after(text, "CUDA error: "))
	return e
}

// nvrm parses the NVIDIA kernel driver's XID and fallen-off-the-bus lines.
func nvrm(text string, when time.Time, out []traces.Event) []traces.Event {
	msg := after(text, "NVRM: ")
	switch {
	case strings.HasPrefix(msg, "Xid ("):
		// Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.
		addr, rest, ok := strings.Cut(msg[len("Xid ("):], "): ")
		if !ok {
			return out
		}
		code, err := strconv.ParseInt(number(rest), 10, 64)
		if err != nil || code <= 0 || code > 1<<16 {
			return out
		}
		e := newEvent(traces.EventXID, text, when, -1)
		e.Code = code
		e.Attrs[AttrPCI] = pciAddr(addr)
		rest = strings.TrimPrefix(strings.TrimPrefix(rest[len(number(rest)):], ","), " ")
		for _, key := range []string{"pid=", "name="} {
			if v, r, ok := strings.Cut(rest, ", "); ok && strings.HasPrefix(v, key) {
				v = strings.Trim(v[len(key):], "'")
				if key == "pid=" {
					e.PID, _ = strconv.Atoi(v)
				} else if v != "<unknown>" {
					e.Attrs["process"] = v
				}
				rest = r
			}
		}
		e.Attrs["xid_message"] = strings.TrimSpace(rest)
		return append(out, e)
	case strings.HasPrefix(msg, "GPU ") && strings.Contains(msg, "fallen off the bus"):
		// "GPU 0000:3b:00.0: GPU has fallen off the bus." or
		// "GPU at PCI:0000:3b:00: ... has fallen off the bus."
		addr, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(msg, "GPU "), "at "), " ")
		e := newEvent(traces.EventGPULost, text, when, -1)
		e.Attrs[AttrPCI] = pciAddr(strings.TrimSuffix(addr, ":"))
		return append(out, e)
	}
	return out
}

// pciAddr normalises a kernel PCI address ("PCI:0000:3b:00", "0000:3B:00.0")
// to domain:bus:device in lower case, "0000:3b:00".
func pciAddr(s string) string {
	s = strings.ToLower(strings.TrimPrefix(s, "PCI:"))
	if i := strings.IndexByte(s, '.'); i > 0 {
		s = s[:i]
	}
	return s
}

// PCIKey is the domain, bus and device of a PCI address, in any of the
// spellings the kernel ("0000:3b:00") and NVML ("00000000:3B:00.0") use,
// so that an XID's address can be matched to a GPU; "" when s is not one.
func PCIKey(s string) string {
	parts := strings.Split(pciAddr(s), ":")
	if len(parts) != 3 {
		return ""
	}
	var vals [3]uint64
	for i, p := range parts {
		v, err := strconv.ParseUint(p, 16, 32)
		if err != nil {
			return ""
		}
		vals[i] = v
	}
	return strconv.FormatUint(vals[0], 16) + ":" + strconv.FormatUint(vals[1], 16) + ":" + strconv.FormatUint(vals[2], 16)
}

// traceback collects one Python traceback.
type traceback struct {
	start  time.Time
	rank   int
	frames []string // outermost first, as Python prints them
}

// traceback follows Python tracebacks. It reports whether the line was part
// of one (a frame or source line), so that the single-line parsers skip
// source code such as `raise RuntimeError("CUDA error: ...")`; and, on the
// line that ends a traceback (the exception, which is not consumed), the
// crash event.
func (p *Parser) traceback(text string, when time.Time, rank int) (crash traces.Event, ended, inTraceback bool) {
	if strings.HasPrefix(text, "Traceback (most recent call last):") {
		p.tb = &traceback{start: when, rank: rank}
		return crash, false, true
	}
	tb := p.tb
	if tb == nil {
		return crash, false, false
	}
	if strings.HasPrefix(text, "  File \"") {
		if len(tb.frames) == maxFrames {
			tb.frames = append(tb.frames[:0], tb.frames[1:]...)
		}
		tb.frames = append(tb.frames, frame(text))
		return crash, false, true
	}
	if text == "" || text[0] == ' ' || text[0] == '\t' {
		return crash, false, true
	}
	p.tb = nil
	if tb.start.IsZero() {
		tb.start = when
	}
	crash = newEvent(traces.EventCrash, text, tb.start, tb.rank)
	if crash.Rank < 0 {
		crash.Rank = rank
	}
	exc, _, _ := strings.Cut(strings.TrimSpace(text), ":")
	crash.Attrs[AttrException] = exc
	var b strings.Builder
	for i := len(tb.frames) - 1; i >= 0; i-- {
		b.WriteString(tb.frames[i])
		if i > 0 {
			b.WriteByte('\n')
		}
	}
	crash.Attrs[AttrStack] = b.String()
	return crash, true, false
}

// endTraceback puts a finished traceback's crash into out, whose events
// from n on came from the traceback's last line: when one of those is a
// fault, the fault takes the stack (it is what the process died of);
// otherwise the crash goes in before them.
func (p *Parser) endTraceback(crash traces.Event, out []traces.Event, n int) []traces.Event {
	for i := n; i < len(out); i++ {
		e := &out[i]
		switch e.Kind {
		case traces.EventOOM, traces.EventCUDAError, traces.EventNCCLError, traces.EventNCCLWatchdog:
			e.Attrs[AttrStack], e.Attrs[AttrException], e.Attrs[AttrFatal] = crash.Attrs[AttrStack], crash.Attrs[AttrException], "true"
			e.TimeNs = crash.TimeNs
			if e.Rank < 0 {
				e.Rank = crash.Rank
			}
			return out
		}
	}
	out = append(out, traces.Event{})
	copy(out[n+1:], out[n:])
	out[n] = crash
	return out
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
