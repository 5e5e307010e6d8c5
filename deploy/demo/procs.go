package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"
)

// child is one process the demo started, in a process group of its own so
// that stopping it reaches anything it forks, and so that the terminal's
// Ctrl-C reaches only the demo, which then stops the children in order.
type child struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited
	err  error         // its exit status, once done is closed
}

// children are the demo's processes, stopped in reverse start order.
type children struct {
	logDir string

	mu       sync.Mutex
	list     []*child
	stopping bool
	exited   chan *child // a child that exited while the demo was running
}

func newChildren(logDir string) *children {
	return &children{logDir: logDir, exited: make(chan *child, 64)}
}

// start runs bin with args and extra environment, its output in
// logDir/name.log.
func (c *children) start(name string, env []string, bin string, args ...string) (*child, error) {
	logPath := filepath.Join(c.logDir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	// Pdeathsig: a demo killed with SIGKILL still leaves no orphans.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopping {
		return nil, errors.New("stopping")
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s (%s): %w", name, bin, err)
	}
	ch := &child{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	c.list = append(c.list, ch)
	go func() {
		ch.err = cmd.Wait()
		close(ch.done)
		c.mu.Lock()
		unexpected := !c.stopping
		c.mu.Unlock()
		if unexpected {
			c.exited <- ch
		}
	}()
	return ch, nil
}

// stop sends SIGTERM to the process groups of the named children (all of
// them when names is empty), newest first, and waits up to grace for them
// before SIGKILL. It returns the children that had to be killed. Once stop
// is called the demo is shutting down: exits are no longer unexpected.
func (c *children) stop(grace time.Duration, names ...string) []string {
	c.mu.Lock()
	c.stopping = true
	var todo []*child
	for _, ch := range slices.Backward(c.list) {
		if len(names) == 0 || slices.Contains(names, ch.name) {
			todo = append(todo, ch)
		}
	}
	c.mu.Unlock()
	// Signal a batch at once (the ranks stop together), then wait for each.
	for _, ch := range todo {
		syscall.Kill(-ch.cmd.Process.Pid, syscall.SIGTERM)
	}
	var killed []string
	deadline := time.After(grace)
	for _, ch := range todo {
		select {
		case <-ch.done:
		case <-deadline:
			killed = append(killed, ch.name)
			syscall.Kill(-ch.cmd.Process.Pid, syscall.SIGKILL)
			<-ch.done
		}
	}
	// Anything left in a group (a grandchild) goes too.
	for _, ch := range todo {
		syscall.Kill(-ch.cmd.Process.Pid, syscall.SIGKILL)
	}
	return killed
}

// logTail is the end of a child's log, for error messages.
func (ch *child) logTail() string {
	data, _ := os.ReadFile(ch.log)
	const max = 3000
	if len(data) > max {
		data = data[len(data)-max:]
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
	}
	return string(data)
}
