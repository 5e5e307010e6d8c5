// Package promtext serves Prometheus text exposition with HELP and TYPE
// for every family. Both binaries write their metrics with
// VictoriaMetrics/metrics, which writes TYPE lines (once ExposeMetadata is
// on) but only empty HELP lines; Write fills in each family's help from a
// Help table and groups a family's samples under one header, however many
// metric sets wrote them. The agent and the aggregator each keep one table
// (agent/daemon/metrics_help.go, aggregator/metrics_help.go); a family
// missing from it is served with empty help, and each binary's test fails
// naming it. The package lives under traces/, where the two binaries meet.
package promtext

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/VictoriaMetrics/metrics"
)

// Help maps a metric family name to its one-line description.
type Help map[string]string

// ContentType is the media type of the text exposition format.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

var exposeOnce sync.Once

// Handler serves write's metrics with HELP text from the tables (the first
// that has a family wins) at every request.
func Handler(write func(io.Writer), tables ...Help) http.HandlerFunc {
	exposeOnce.Do(func() { metrics.ExposeMetadata(true) })
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ContentType)
		Write(w, write, tables...)
	}
}

// Write runs write into a buffer and writes its output to w with one HELP
// and one TYPE line per family, each family's samples together in the order
// they first appeared. It turns VictoriaMetrics' metadata on for good:
// without it families have no type.
func Write(w io.Writer, write func(io.Writer), tables ...Help) error {
	exposeOnce.Do(func() { metrics.ExposeMetadata(true) })
	var in bytes.Buffer
	write(&in)
	fams := parse(in.Bytes())
	bw := bufio.NewWriterSize(w, min(max(in.Len()+in.Len()/4, 4096), 1<<20))
	for _, f := range fams {
		if runtimeCounters[f.name] {
			f.typ = "counter"
		}
		bw.WriteString("# HELP ")
		bw.WriteString(f.name)
		if h := lookup(tables, f.name); h != "" {
			bw.WriteByte(' ')
			helpEscaper.WriteString(bw, h)
		}
		bw.WriteString("\n# TYPE ")
		bw.WriteString(f.name)
		bw.WriteByte(' ')
		bw.WriteString(f.typ)
		bw.WriteByte('\n')
		for _, l := range f.lines {
			bw.Write(l)
			bw.WriteByte('\n')
		}
	}
	return bw.Flush()
}

func lookup(tables []Help, name string) string {
	for _, t := range tables {
		if h := t[name]; h != "" {
			return h
		}
	}
	return ""
}

// helpEscaper escapes HELP text as the format requires: backslash and newline.
var helpEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`)

// family is one metric family of a scrape.
type family struct {
	name  string
	typ   string
	lines [][]byte // samples, pointing into the scrape
}

// parse groups a scrape's sample lines by family. A family is named by its
// TYPE line; the _sum, _count and _bucket lines of a summary or histogram
// belong to it, and samples with no TYPE line before them form untyped
// families of their own name.
func parse(b []byte) []*family {
	var out []*family
	byName := map[string]*family{}
	get := func(name string) *family {
		f := byName[name]
		if f == nil {
			f = &family{name: name, typ: "untyped"}
			byName[name] = f
			out = append(out, f)
		}
		return f
	}
	for len(b) > 0 {
		var line []byte
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			line, b = b, nil
		}
		if len(line) == 0 {
			continue
		}
		if line[0] == '#' {
			if rest, ok := bytes.CutPrefix(line, []byte("# TYPE ")); ok {
				name, typ, _ := strings.Cut(string(rest), " ")
				if f := get(name); f.typ == "untyped" && typ != "" {
					f.typ = typ
				}
			}
			continue // HELP lines are written anew; other comments dropped
		}
		name := line[:sampleNameEnd(line)]
		f := byName[string(name)] // no allocation for a lookup
		if f == nil {
			f = baseOf(name, byName)
		}
		if f == nil {
			f = get(string(name))
		}
		f.lines = append(f.lines, line)
	}
	return out
}

func sampleNameEnd(line []byte) int {
	if i := bytes.IndexAny(line, "{ "); i >= 0 {
		return i
	}
	return len(line)
}

// baseOf returns the summary or histogram family that a _sum, _count or
// _bucket sample belongs to, or nil when it belongs to none.
func baseOf(name []byte, fams map[string]*family) *family {
	for _, suffix := range []string{"_sum", "_count", "_bucket"} {
		base, ok := bytes.CutSuffix(name, []byte(suffix))
		if !ok {
			continue
		}
		if f := fams[string(base)]; f != nil && (f.typ == "histogram" || f.typ == "summary" && suffix != "_bucket") {
			return f
		}
	}
	return nil
}
