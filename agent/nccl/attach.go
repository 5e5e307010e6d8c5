package nccl

import (
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	bpfnccl "github.com/loupe-dev/loupe/bpf/nccl"
)

// attachment is one attached file: a libnccl or a dynamic loader.
type attachment struct {
	path  string // as opened, through /proc/<pid>/root
	links []link.Link
	pids  map[int]bool
	// functions is how many NCCL functions report through its probes.
	functions int
	// idleSince is when the last process that maps it went; zero while
	// some process does.
	idleSince time.Time
}

// procState is what the tracer knows of one process.
type procState struct {
	files    []fileID // NCCL libraries it maps
	loader   fileID   // its dynamic loader, once probed
	library  string
	version  string        // the library's (LibraryVersion)
	nextScan time.Time     // when the periodic scan reads its maps again (only while it maps none)
	backoff  time.Duration // grows while it maps none, up to maxBackoff
}

// A process that maps no NCCL is re-read by the scan with a growing
// interval: the load hooks see it load libraries anyway, so the scan is the
// fallback for what they miss (a loader seen for the first time).
const maxBackoffScans = 30

// failRetry is how long a library whose attach failed is left alone.
const failRetry = 10 * time.Minute

// A process named by the load hooks has its maps read once it made no
// loader call for checkQuiet (the burst of one dlopen is over), or at most
// checkMaxWait after the first call (a Python import dlopens hundreds of
// extension modules in a row).
const (
	checkQuiet   = 2 * time.Millisecond
	checkMaxWait = 20 * time.Millisecond
)

// pendingCheck is a process the load hooks named, waiting for its check.
type pendingCheck struct {
	first, last time.Time
}

func (p *pendingCheck) due() time.Time {
	d := p.last.Add(checkQuiet)
	if m := p.first.Add(checkMaxWait); m.Before(d) {
		return m
	}
	return d
}

// watchLoads reads the exec hook's and the loader probe's records and
// checks each process they name once its burst of loads is over.
func (t *Tracer) watchLoads(rd *ringbuf.Reader) {
	pending := map[int]*pendingCheck{}
	var rec ringbuf.Record
	var ev bpfnccl.MapEvent
	for {
		deadline := time.Now().Add(time.Second)
		for _, p := range pending {
			if d := p.due(); d.Before(deadline) {
				deadline = d
			}
		}
		rd.SetDeadline(deadline)
		err := rd.ReadInto(&rec)
		switch {
		case err == nil:
			if bpfnccl.ParseMapEvent(rec.RawSample, &ev) != nil {
				continue
			}
			t.loadEvents.Inc()
			now := time.Now()
			if ev.Kind == bpfnccl.MapExec {
				// At once, not after the burst: the new image maps its
				// libraries, and may create communicators, within
				// milliseconds; what it creates must not be forgotten.
				t.execed(int(ev.PID), now)
			}
			p := pending[int(ev.PID)]
			if p == nil {
				p = &pendingCheck{first: now}
				pending[int(ev.PID)] = p
			}
			p.last = now
		case errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, os.ErrClosed):
			return
		default:
			t.log.Warn("reading the NCCL load ring buffer", "err", err)
			time.Sleep(pollInterval)
		}
		now := time.Now()
		for pid, p := range pending {
			if !now.Before(p.due()) {
				delete(pending, pid)
				t.checkLoaded(pid, now)
			}
		}
	}
}

// execed forgets what the tracer knew of a process's old program image.
func (t *Tracer) execed(pid int, now time.Time) {
	t.scanMu.Lock()
	defer t.scanMu.Unlock()
	if p := t.procs[pid]; p != nil {
		t.dropProcLocked(pid, p, now)
		t.forgetLocked(map[uint32]bool{uint32(pid): true})
	}
}

// checkLoaded reads the maps of a process that exec'd or loaded libraries.
func (t *Tracer) checkLoaded(pid int, now time.Time) {
	t.scanMu.Lock()
	defer t.scanMu.Unlock()
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed || pid == os.Getpid() {
		return
	}
	p := t.procs[pid]
	if p == nil {
		p = &procState{}
		t.procs[pid] = p
	}
	if len(p.files) == 0 {
		t.checkProcLocked(pid, p, now)
	}
	t.countAttachedLocked()
}

// scan reads /proc: new processes' maps, exits, attaches and detaches.
func (t *Tracer) scan(now time.Time) {
	entries, err := os.ReadDir(t.cfg.ProcRoot)
	if err != nil {
		t.log.Error("listing processes; is the host's /proc mounted?", "dir", t.cfg.ProcRoot, "err", err)
		return
	}
	live := make(map[int]bool, len(entries))
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		live[pid] = true
	}

	t.scanMu.Lock()
	defer t.scanMu.Unlock()
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return
	}
	gone := map[uint32]bool{}
	for pid, p := range t.procs {
		if !live[pid] {
			gone[uint32(pid)] = true
			t.dropProcLocked(pid, p, now)
		}
	}
	t.forgetLocked(gone)
	for pid := range live {
		p := t.procs[pid]
		if p == nil {
			p = &procState{}
			t.procs[pid] = p
		}
		if len(p.files) > 0 || now.Before(p.nextScan) {
			continue
		}
		p.backoff = min(max(2*p.backoff, t.cfg.ScanInterval), maxBackoffScans*t.cfg.ScanInterval)
		p.nextScan = now.Add(p.backoff)
		t.checkProcLocked(pid, p, now)
	}
	for _, files := range []map[fileID]*attachment{t.files, t.loaders} {
		for id, a := range files {
			if len(a.pids) == 0 && now.Sub(a.idleSince) >= t.cfg.DetachAfter {
				t.detachLocked(files, id, a)
			}
		}
	}
	t.countAttachedLocked()
}

// forgetLocked drops the communicator state of processes that exited (or
// exec'd), so that a recycled PID starts afresh.
func (t *Tracer) forgetLocked(gone map[uint32]bool) {
	if len(gone) == 0 {
		return
	}
	if err := t.objs.ForgetPIDs(gone); err != nil {
		t.log.Warn("forgetting communicators of exited processes", "err", err)
	}
	t.mu.Lock()
	for k := range t.comms {
		if gone[uint32(k.pid)] {
			delete(t.comms, k)
		}
	}
	for pid := range gone {
		delete(t.ranks, int32(pid))
	}
	t.mu.Unlock()
	t.plugin.forget(gone)
}

func (t *Tracer) countAttachedLocked() {
	var n int64
	for _, p := range t.procs {
		if len(p.files) > 0 {
			n++
		}
	}
	t.attached.Set(float64(n))
}

// checkProcLocked reads one process's maps: it probes the process's
// dynamic loader if no probe watches that file yet, and attaches to the
// NCCL libraries it maps.
func (t *Tracer) checkProcLocked(pid int, p *procState, now time.Time) {
	f, err := os.Open(filepath.Join(t.cfg.ProcRoot, strconv.Itoa(pid), "maps"))
	if err != nil {
		// Exited meanwhile, or not readable (no CAP_SYS_PTRACE): both are
		// normal for some processes on a host; do not flood the log.
		t.log.Debug("reading maps", "pid", pid, "err", err)
		return
	}
	ms, loader, err := ncclMappings(f)
	f.Close()
	if errors.Is(err, unix.ESRCH) {
		return // exited while being read
	}
	if err != nil {
		t.log.Warn("parsing maps", "pid", pid, "err", err)
		return
	}
	if loader.ID != (fileID{}) && p.loader == (fileID{}) {
		if a := t.attachFileLocked(t.loaders, pid, loader, now, t.attachLoaderLocked); a != nil {
			p.loader = loader.ID
		}
	}
	for _, m := range ms {
		if !selected(t.cfg.Libraries, m.Path) {
			continue
		}
		if m.Deleted {
			t.log.Info("process maps a libnccl that was deleted or replaced on disk; not tracing it", "pid", pid, "library", m.Path)
			continue
		}
		if a := t.attachFileLocked(t.files, pid, m, now, t.attachLocked); a != nil {
			p.files = append(p.files, m.ID)
			if p.library == "" {
				p.library = m.Path
				p.version = LibraryVersion(filepath.Join(t.cfg.ProcRoot, strconv.Itoa(pid), "root"), m.Path)
			}
		}
	}
	if len(p.files) > 0 {
		if err := t.objs.SetTraced(uint32(pid), true); err != nil {
			t.log.Debug("marking a traced process", "pid", pid, "err", err)
		}
		t.log.Info("tracing NCCL", "pid", pid, "library", p.library, "version", p.version)
	}
}

// attachFileLocked returns the attachment of m, attaching it first when no
// process brought it yet, and counts pid among its users. It returns nil
// when the file cannot be attached (and will not be tried again for a
// while).
func (t *Tracer) attachFileLocked(files map[fileID]*attachment, pid int, m mapping, now time.Time,
	attach func(pid int, m mapping) (*attachment, error)) *attachment {
	if now.Before(t.failed[m.ID]) {
		return nil
	}
	a := files[m.ID]
	if a == nil {
		var err error
		a, err = attach(pid, m)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			// The process exited before the file could be opened through
			// it; the next process that maps it will do.
			t.log.Debug("process gone before attach", "pid", pid, "file", m.Path, "err", err)
			return nil
		}
		if err != nil {
			t.failed[m.ID] = now.Add(failRetry)
			t.log.Warn("cannot probe this file; will retry", "pid", pid, "file", m.Path, "in", failRetry, "err", err)
			return nil
		}
		delete(t.failed, m.ID)
		files[m.ID] = a
	}
	a.pids[pid] = true
	a.idleSince = time.Time{}
	return a
}

// attachLocked puts the entry and return probes on every NCCL function the
// file exports. The file is opened through the process's root, so a library
// inside a container is found from the host.
func (t *Tracer) attachLocked(pid int, m mapping) (*attachment, error) {
	ex, path, err := t.openExecutable(pid, m)
	if err != nil {
		return nil, err
	}
	if entry, ret, ok := t.objs.Multi(); ok {
		a, err := t.attachMultiLocked(ex, path, entry, ret)
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return a, err
		}
	}
	a := &attachment{path: path, pids: map[int]bool{}}
	var missing []string
	reporting := 0 // functions that send records
	for _, pr := range t.objs.Probes {
		l, err := ex.Uprobe(pr.Symbol, pr.Program, nil)
		if errors.Is(err, link.ErrNoSymbol) {
			// Older NCCL versions lack some functions (ncclAlltoAll,
			// ncclCommInitRankConfig, ncclCommSplit).
			missing = append(missing, pr.Symbol)
			continue
		}
		if err != nil {
			closeLinks(a.links)
			return nil, fmt.Errorf("uprobe %s in %s: %w", pr.Symbol, path, err)
		}
		a.links = append(a.links, l)
		if pr.Return == nil {
			continue
		}
		r, err := ex.Uretprobe(pr.Symbol, pr.Return, nil)
		if err != nil {
			closeLinks(a.links)
			return nil, fmt.Errorf("uretprobe %s in %s: %w", pr.Symbol, path, err)
		}
		a.links = append(a.links, r)
		reporting++
	}
	if reporting == 0 {
		closeLinks(a.links)
		return nil, fmt.Errorf("%s exports none of the NCCL functions: not NCCL, or stripped", path)
	}
	t.log.Info("attached NCCL uprobes", "library", path, "functions", reporting, "missing", missing)
	a.functions = reporting
	return a, nil
}

// attachMultiLocked puts the same probes on as two uprobe_multi links,
// the attach cookie naming each function: on detach the kernel waits for
// its uprobe grace period once per link instead of once per probe.
func (t *Tracer) attachMultiLocked(ex *link.Executable, path string, entry, ret *ebpf.Program) (*attachment, error) {
	have, err := functions(path)
	if err != nil {
		return nil, err
	}
	var syms, retSyms, missing []string
	var cookies, retCookies []uint64
	for _, pr := range t.objs.Probes {
		if !have[pr.Symbol] {
			missing = append(missing, pr.Symbol)
			continue
		}
		syms, cookies = append(syms, pr.Symbol), append(cookies, pr.Cookie())
		if pr.Return != nil {
			retSyms, retCookies = append(retSyms, pr.Symbol), append(retCookies, pr.Cookie())
		}
	}
	if len(retSyms) == 0 {
		return nil, fmt.Errorf("%s exports none of the NCCL functions: not NCCL, or stripped", path)
	}
	in, err := ex.UprobeMulti(syms, entry, &link.UprobeMultiOptions{Cookies: cookies})
	if err != nil {
		return nil, fmt.Errorf("uprobe_multi on %s: %w", path, err)
	}
	out, err := ex.UretprobeMulti(retSyms, ret, &link.UprobeMultiOptions{Cookies: retCookies})
	if err != nil {
		in.Close()
		return nil, fmt.Errorf("uretprobe_multi on %s: %w", path, err)
	}
	t.log.Info("attached NCCL uprobes", "library", path, "functions", len(retSyms), "missing", missing, "links", "uprobe_multi")
	return &attachment{path: path, links: []link.Link{in, out}, pids: map[int]bool{}, functions: len(retSyms)}, nil
}

// functions are the function symbols an ELF file defines.
func functions(path string) (map[string]bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading the symbols of %s: %w", path, err)
	}
	defer f.Close()
	out := map[string]bool{}
	dyn, _ := f.DynamicSymbols()
	syms, _ := f.Symbols()
	for _, s := range append(dyn, syms...) {
		if elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Section != elf.SHN_UNDEF {
			out[s.Name] = true
		}
	}
	return out, nil
}

// attachLoaderLocked probes a dynamic loader's _dl_debug_state.
func (t *Tracer) attachLoaderLocked(pid int, m mapping) (*attachment, error) {
	ex, path, err := t.openExecutable(pid, m)
	if err != nil {
		return nil, err
	}
	l, err := ex.Uprobe(bpfnccl.LoaderSymbol, t.objs.LoaderProbe(), nil)
	if err != nil {
		return nil, fmt.Errorf("uprobe %s in %s: %w", bpfnccl.LoaderSymbol, path, err)
	}
	t.log.Debug("probing a dynamic loader for library loads", "loader", path)
	return &attachment{path: path, links: []link.Link{l}, pids: map[int]bool{}}, nil
}

func (t *Tracer) openExecutable(pid int, m mapping) (*link.Executable, string, error) {
	path := filepath.Join(t.cfg.ProcRoot, strconv.Itoa(pid), "root", m.Path)
	ex, err := link.OpenExecutable(path)
	if err != nil {
		return nil, path, fmt.Errorf("opening %s (the agent needs CAP_SYS_PTRACE to reach other processes' files): %w", path, err)
	}
	return ex, path, nil
}

// dropProcLocked forgets a process that exited (or exec'd); files no
// process maps any more start their DetachAfter.
func (t *Tracer) dropProcLocked(pid int, p *procState, now time.Time) {
	delete(t.procs, pid)
	if len(p.files) > 0 {
		if err := t.objs.SetTraced(uint32(pid), false); err != nil {
			t.log.Debug("unmarking a traced process", "pid", pid, "err", err)
		}
	}
	release := func(files map[fileID]*attachment, id fileID) {
		a := files[id]
		if a == nil || !a.pids[pid] {
			return
		}
		delete(a.pids, pid)
		if len(a.pids) == 0 {
			a.idleSince = now
			if t.cfg.DetachAfter == 0 {
				t.detachLocked(files, id, a)
			}
		}
	}
	for _, id := range p.files {
		release(t.files, id)
	}
	if p.loader != (fileID{}) {
		release(t.loaders, p.loader)
	}
}

func (t *Tracer) detachLocked(files map[fileID]*attachment, id fileID, a *attachment) {
	closeLinks(a.links)
	delete(files, id)
	t.log.Info("detached probes: no process has mapped the file for nccl.detach_after", "file", a.path)
}

func closeLinks(ls []link.Link) {
	for _, l := range ls {
		l.Close()
	}
}
