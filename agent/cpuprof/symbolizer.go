package cpuprof

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// frame is one symbolized stack frame. It is comparable, so windows intern
// frames as pprof locations by value.
type frame struct {
	Function string // symbol, demangled; "" when unknown
	// File and Line are the source position, when known: from DWARF for
	// native code, from the code object for Python.
	File string
	Line int64
	// Object is the mapped file, [kernel.kallsyms], [perf-map], [vdso],
	// [python] or [unknown].
	Object  string
	BuildID string
	// Address is the ELF virtual address for file-backed code (the same in
	// every process), else the absolute address; 0 for Python frames.
	Address uint64
}

// Object names for frames that are not in a mapped file.
const (
	kernelObject  = "[kernel.kallsyms]"
	perfMapObject = "[perf-map]"
	pythonObject  = "[python]"
	unknownObject = "[unknown]"
)

// maxObjects bounds the object cache; the least recently used are closed.
const maxObjects = 256

// symbolizer turns raw stack addresses into frames. It reads processes
// through procRoot (normally /proc), so their files are seen in their own
// mount namespace (containers). It is used by one goroutine at a time.
type symbolizer struct {
	procRoot  string
	logger    *slog.Logger
	gen       uint64 // drain generation, for per-drain reloads and LRU
	procs     map[uint32]*procInfo
	byFile    map[fileKey]*object
	byBuildID map[string]*object
	kernel    *kernelSymbols
	kernelErr error
	// debugDirs are where debuginfo files are looked for by build id,
	// after the process's own /usr/lib/debug.
	debugDirs []string
}

type fileKey struct {
	dev, ino uint64
	size     int64
	mtime    int64
}

// procInfo caches what the symbolizer knows about one process.
type procInfo struct {
	maps      []mapping
	objs      []*object // parallel to maps; nil until opened
	failed    []bool    // parallel to maps; opening failed, do not retry
	mapsGen   uint64    // generation maps were read at
	perf      []perfSym
	perfSize  int64
	perfMtime int64
	perfGen   uint64
	lastSeen  uint64
	// py is the process's interpreter, mem its memory (for code objects)
	// and code the code objects read so far, by address.
	py   *pyProcess
	mem  *os.File
	code map[uint64]*pyCode
}

// maxPyCodes bounds the code objects remembered per process.
const maxPyCodes = 8192

func newSymbolizer(procRoot string, logger *slog.Logger) *symbolizer {
	return &symbolizer{
		procRoot:  procRoot,
		logger:    logger,
		procs:     map[uint32]*procInfo{},
		byFile:    map[fileKey]*object{},
		byBuildID: map[string]*object{},
		debugDirs: []string{"/usr/lib/debug"},
	}
}

// beginDrain starts a new generation and forgets processes not seen for a
// while (their pids may be reused).
func (s *symbolizer) beginDrain() {
	s.gen++
	for pid, p := range s.procs {
		if s.gen-p.lastSeen > 30 {
			p.close()
			delete(s.procs, pid)
		}
	}
}

func (p *procInfo) close() {
	if p.mem != nil {
		p.mem.Close()
		p.mem = nil
	}
}

// prepare takes a process's memory map (and interpreter) as the unwinder
// read it, and opens its objects now, while the process lives: one that
// exits before the next drain is named all the same.
func (s *symbolizer) prepare(pid uint32, maps []mapping, py *pyProcess) {
	if old, ok := s.procs[pid]; ok {
		old.close()
	}
	p := &procInfo{maps: maps, objs: make([]*object, len(maps)), failed: make([]bool, len(maps)), mapsGen: s.gen, lastSeen: s.gen}
	s.procs[pid] = p
	for i := range maps {
		if m := &maps[i]; !m.anonymous() && !m.pseudo() {
			s.object(pid, p, i)
		}
	}
	if py != nil {
		p.py, p.code = py, map[uint64]*pyCode{}
		p.mem, _ = os.Open(filepath.Join(s.procRoot, strconv.Itoa(int(pid)), "mem"))
	}
}

// python names a Python frame of process pid: the code object at code,
// running instruction lasti.
func (s *symbolizer) python(pid uint32, code uint64, lasti uint32) frame {
	p := s.proc(pid)
	f := frame{Function: "[unknown python]", Object: pythonObject}
	if p.py == nil || p.mem == nil {
		return f
	}
	c, ok := p.code[code]
	if !ok {
		var err error
		c, err = readPyCode(p.mem, p.py.layout, code, p.py.codeType)
		if err != nil {
			s.logger.Debug("cpuprof: unreadable Python code object", "pid", pid, "addr", fmt.Sprintf("%#x", code), "err", err)
		}
		if len(p.code) >= maxPyCodes {
			clear(p.code)
		}
		p.code[code] = c // nil too: do not retry
	}
	if c == nil {
		return f
	}
	return frame{Function: c.name, File: c.file, Line: c.line(p.py.layout.lines, lasti), Object: pythonObject}
}

func (s *symbolizer) proc(pid uint32) *procInfo {
	p, ok := s.procs[pid]
	if !ok {
		p = &procInfo{}
		s.procs[pid] = p
		s.readMaps(pid, p)
	}
	p.lastSeen = s.gen
	return p
}

func (s *symbolizer) readMaps(pid uint32, p *procInfo) {
	p.mapsGen = s.gen
	b, err := os.ReadFile(filepath.Join(s.procRoot, strconv.Itoa(int(pid)), "maps"))
	if err != nil {
		return // the process exited; its frames stay unnamed
	}
	maps, err := parseMaps(string(b))
	if err != nil {
		s.logger.Debug("cpuprof: unreadable memory map", "pid", pid, "err", err)
		return
	}
	p.maps, p.objs, p.failed = maps, make([]*object, len(maps)), make([]bool, len(maps))
}

// user names a user-space address of process pid, with its source line
// when lines is set.
func (s *symbolizer) user(pid uint32, addr uint64, lines bool) frame {
	p := s.proc(pid)
	i, ok := findMapping(p.maps, addr)
	if !ok && p.mapsGen != s.gen {
		// New code was mapped since we last looked.
		s.readMaps(pid, p)
		i, ok = findMapping(p.maps, addr)
	}
	var m *mapping
	if ok {
		m = &p.maps[i]
	}
	switch {
	case !ok || m.anonymous():
		if name, ok := s.perfMap(pid, p, addr); ok {
			return frame{Function: name, Object: perfMapObject, Address: addr}
		}
		return frame{Object: unknownObject, Address: addr}
	case m.pseudo():
		return frame{Function: m.path, Object: m.path, Address: addr}
	}
	obj := s.object(pid, p, i)
	if obj == nil {
		return frame{Object: m.path, Address: addr}
	}
	f := frame{Object: m.path, BuildID: obj.buildID, Address: addr}
	vaddr, ok := obj.vaddr(addr - m.start + m.offset)
	if !ok {
		return f
	}
	f.Address = vaddr
	f.Function, _ = obj.symbolize(vaddr)
	if f.Function != "" && lines {
		dirs := append([]string{filepath.Join(s.procRoot, strconv.Itoa(int(pid)), "root", "usr/lib/debug")}, s.debugDirs...)
		if l, ok := obj.sourceLine(vaddr, dirs); ok {
			f.File, f.Line = l.file, l.line
		}
	}
	return f
}

// object returns the opened ELF file of mapping m, from the cache when the
// same file (or the same build id) was seen before.
func (s *symbolizer) object(pid uint32, p *procInfo, i int) *object {
	m := &p.maps[i]
	if p.objs[i] != nil || p.failed[i] {
		if o := p.objs[i]; o != nil {
			o.lastUse = s.gen
		}
		return p.objs[i]
	}
	o, err := s.open(pid, m)
	if err != nil {
		p.failed[i] = true
		s.logger.Debug("cpuprof: cannot read mapped file", "pid", pid, "path", m.path, "err", err)
		return nil
	}
	o.lastUse = s.gen
	p.objs[i] = o
	return o
}

func (s *symbolizer) open(pid uint32, m *mapping) (*object, error) {
	// Through the process's root, so a container's files are found; a
	// deleted or replaced file is still reachable through map_files.
	dir := filepath.Join(s.procRoot, strconv.Itoa(int(pid)))
	f, err := os.Open(filepath.Join(dir, "root", m.path))
	if err != nil {
		f, err = os.Open(filepath.Join(dir, "map_files", fmt.Sprintf("%x-%x", m.start, m.end)))
		if err != nil {
			return nil, err
		}
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	key := fileKey{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		key.dev, key.ino = st.Dev, st.Ino
	}
	if o, ok := s.byFile[key]; ok {
		f.Close()
		return o, nil
	}
	o, err := openObject(f, m.path)
	if err != nil {
		f.Close()
		return nil, err
	}
	if o.buildID != "" {
		if prev, ok := s.byBuildID[o.buildID]; ok {
			// The same binary in another container image.
			o.close()
			s.byFile[key] = prev
			return prev, nil
		}
		s.byBuildID[o.buildID] = o
	}
	s.byFile[key] = o
	s.evict()
	return o, nil
}

// evict closes the least recently used objects beyond maxObjects.
func (s *symbolizer) evict() {
	live := map[*object]bool{}
	for _, o := range s.byFile {
		live[o] = true
	}
	for len(live) > maxObjects {
		var oldest *object
		for o := range live {
			if oldest == nil || o.lastUse < oldest.lastUse {
				oldest = o
			}
		}
		delete(live, oldest)
		for k, o := range s.byFile {
			if o == oldest {
				delete(s.byFile, k)
			}
		}
		delete(s.byBuildID, oldest.buildID)
		for _, p := range s.procs {
			for i, o := range p.objs {
				if o == oldest {
					p.objs[i] = nil
				}
			}
		}
		oldest.close()
	}
}

// perfMap looks addr up in the process's perf map file, re-reading the file
// at most once per drain when it changed (JITs append as they compile).
func (s *symbolizer) perfMap(pid uint32, p *procInfo, addr uint64) (string, bool) {
	if name, ok := lookupPerfMap(p.perf, addr); ok {
		return name, true
	}
	if p.perfGen == s.gen {
		return "", false
	}
	p.perfGen = s.gen
	// /tmp as the process sees it, named with its pid as it sees it:
	// inside its container, if any.
	dir := filepath.Join(s.procRoot, strconv.Itoa(int(pid)))
	path := filepath.Join(dir, "root", "tmp", fmt.Sprintf("perf-%d.map", nsPID(dir, pid)))
	fi, err := os.Stat(path)
	if err != nil || (fi.Size() == p.perfSize && fi.ModTime().UnixNano() == p.perfMtime) {
		return "", false
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", false
	}
	var bad int
	p.perf, bad = parsePerfMap(string(b))
	p.perfSize, p.perfMtime = fi.Size(), fi.ModTime().UnixNano()
	if bad > 0 {
		s.logger.Debug("cpuprof: skipped malformed perf map lines", "path", path, "lines", bad)
	}
	return lookupPerfMap(p.perf, addr)
}

// loadKernel reads /proc/kallsyms once; without it kernel frames keep
// their addresses only.
func (s *symbolizer) loadKernel() {
	if s.kernel != nil || s.kernelErr != nil {
		return
	}
	f, err := os.Open(filepath.Join(s.procRoot, "kallsyms"))
	if err == nil {
		size := sizeKallsyms(f)
		if _, err = f.Seek(0, io.SeekStart); err == nil {
			s.kernel, err = parseKallsyms(f, size)
		}
		f.Close()
	}
	if err != nil {
		s.kernelErr = err
		s.logger.Warn("cpuprof: kernel frames stay unnamed", "err", err)
	}
}

// kernelFrame names a kernel address.
func (s *symbolizer) kernelFrame(addr uint64) frame {
	s.loadKernel()
	f := frame{Object: kernelObject, Address: addr}
	if sym, ok := s.kernel.lookup(addr); ok {
		f.Function = sym.name
		if sym.module != "" {
			f.Object = "[" + sym.module + "]"
		}
	}
	return f
}

// close releases every cached object.
func (s *symbolizer) close() {
	seen := map[*object]bool{}
	for _, o := range s.byFile {
		if !seen[o] {
			seen[o] = true
			o.close()
		}
	}
	for _, p := range s.procs {
		p.close()
	}
	s.byFile, s.byBuildID, s.procs = map[fileKey]*object{}, map[string]*object{}, map[uint32]*procInfo{}
}

// nsPID returns the process's pid in its own pid namespace (the last
// NSpid of /proc/<pid>/status), which is what it names its perf map after.
func nsPID(procDir string, pid uint32) uint64 {
	b, err := os.ReadFile(filepath.Join(procDir, "status"))
	if err != nil {
		return uint64(pid)
	}
	return parseNSpid(string(b), uint64(pid))
}

// parseNSpid finds the innermost pid on the NSpid line of a status file.
func parseNSpid(status string, fallback uint64) uint64 {
	for _, line := range strings.Split(status, "\n") {
		rest, ok := strings.CutPrefix(line, "NSpid:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			break
		}
		if n, err := strconv.ParseUint(f[len(f)-1], 10, 32); err == nil && n > 0 {
			return n
		}
		break
	}
	return fallback
}
