package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// isTerminal reports whether w is a terminal, where a progress bar can
// redraw itself; elsewhere progress is plain lines.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progress reports steps done out of a total on stderr: a redrawn bar on a
// terminal, one line per Note otherwise.
type progress struct {
	w     io.Writer
	tty   bool
	mu    sync.Mutex
	total int
	done  int
	label string
	start time.Time
}

func newProgress(w io.Writer, tty bool, total int) *progress {
	return &progress{w: w, tty: tty, total: total, start: time.Now()}
}

// Note names what is being worked on.
func (p *progress) Note(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.label = fmt.Sprintf(format, args...)
	if p.tty {
		p.draw()
	} else {
		fmt.Fprintf(p.w, "%s (%d/%d done)\n", p.label, p.done, p.total)
	}
}

// Step marks one step done.
func (p *progress) Step() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done++
	if p.tty {
		p.draw()
	}
}

// Finish ends the bar.
func (p *progress) Finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintf(p.w, "%d/%d done in %v\n", p.done, p.total, time.Since(p.start).Round(time.Millisecond))
}

const barWidth = 30

func (p *progress) draw() {
	fill := 0
	if p.total > 0 {
		fill = min(barWidth, p.done*barWidth/p.total)
	}
	label := p.label
	if len(label) > 60 {
		label = "…" + label[len(label)-59:]
	}
	fmt.Fprintf(p.w, "\r\033[K[%s%s] %d/%d %s", strings.Repeat("=", fill), strings.Repeat(" ", barWidth-fill), p.done, p.total, label)
}
