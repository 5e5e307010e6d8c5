package main

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err == nil && !strings.Contains(string(stat), ") Z ")
}

// Stopping reaches a child's whole process group: a child that ignores
// SIGTERM is killed after the grace period, and so is what it forked; a
// child that exits on SIGTERM is not reported as killed.
func TestChildrenStop(t *testing.T) {
	c := newChildren(t.TempDir())
	polite, err := c.start("polite", nil, "sleep", "100")
	if err != nil {
		t.Fatal(err)
	}
	// The shell ignores SIGTERM and writes its child's pid; the child (a
	// grandchild of the demo) sleeps in the same group.
	pidFile := t.TempDir() + "/pid"
	stubborn, err := c.start("stubborn", nil, "sh", "-c", `trap "" TERM; sleep 100 & echo $! > `+pidFile+`; wait`)
	if err != nil {
		t.Fatal(err)
	}
	var grandchild int
	for deadline := time.Now().Add(10 * time.Second); grandchild == 0; time.Sleep(10 * time.Millisecond) {
		data, _ := os.ReadFile(pidFile)
		grandchild, _ = strconv.Atoi(strings.TrimSpace(string(data)))
		if time.Now().After(deadline) {
			t.Fatal("the shell did not start its child")
		}
	}
	killed := c.stop(500 * time.Millisecond)
	if !slices.Equal(killed, []string{"stubborn"}) {
		t.Errorf("killed %q, want just stubborn", killed)
	}
	for _, pid := range []int{polite.cmd.Process.Pid, stubborn.cmd.Process.Pid, grandchild} {
		for deadline := time.Now().Add(5 * time.Second); alive(pid); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Errorf("pid %d still runs", pid)
				syscall.Kill(pid, syscall.SIGKILL)
				break
			}
		}
	}
	// Exits during stop are expected, not reported.
	select {
	case ch := <-c.exited:
		t.Errorf("%s reported as an unexpected exit", ch.name)
	default:
	}
	if _, err := c.start("late", nil, "true"); err == nil {
		t.Error("start after stop succeeded")
	}
}

// A child that dies on its own is reported, with its log.
func TestChildrenUnexpectedExit(t *testing.T) {
	c := newChildren(t.TempDir())
	if _, err := c.start("crash", nil, "sh", "-c", "echo boom; exit 3"); err != nil {
		t.Fatal(err)
	}
	select {
	case ch := <-c.exited:
		if ch.name != "crash" || ch.err == nil || !strings.Contains(ch.logTail(), "boom") {
			t.Errorf("exit of %s: %v, log %q", ch.name, ch.err, ch.logTail())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the exit was not reported")
	}
	c.stop(time.Second)
}
