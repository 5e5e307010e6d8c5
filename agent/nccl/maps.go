package nccl

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// fileID is a file's identity as /proc/<pid>/maps reports it. Uprobes belong
// to the inode, so one attachment serves every process mapping that file,
// whatever path or mount namespace it was reached through.
type fileID struct {
	Dev   uint64 // major<<32 | minor, as written in maps (not a dev_t)
	Inode uint64
}

// mapping is one file-backed line of /proc/<pid>/maps.
type mapping struct {
	ID      fileID
	Path    string
	Deleted bool // the file was unlinked or replaced after it was mapped
}

// isNCCLLibrary reports whether path names NCCL itself: libnccl.so or
// libnccl.so.<version>, wherever it lies (system directories, conda, or the
// nvidia-nccl wheel's site-packages/nvidia/nccl/lib). NCCL's plugins
// (libnccl-net.so, libnccl-tuner.so, ...) are not NCCL and are left alone.
func isNCCLLibrary(path string) bool {
	base := filepath.Base(path)
	return base == "libnccl.so" || strings.HasPrefix(base, "libnccl.so.")
}

// selected reports whether path, or a folder above it, matches one of
// patterns; every path is selected when there are none.
func selected(patterns []string, path string) bool {
	if len(patterns) == 0 {
		return true
	}
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		for _, pat := range patterns {
			if ok, _ := filepath.Match(filepath.Clean(pat), p); ok {
				return true
			}
		}
		if p == "/" || p == "." {
			return false
		}
	}
}

// isLoader reports whether path names a dynamic loader whose
// _dl_debug_state the loader probe can watch: glibc's ld-linux*.so* or
// musl's ld-musl-*.so*.
func isLoader(path string) bool {
	base := filepath.Base(path)
	return strings.HasPrefix(base, "ld-linux") || strings.HasPrefix(base, "ld-musl")
}

// ncclMappings returns the distinct NCCL libraries mapped in one
// /proc/<pid>/maps text, and the process's dynamic loader (ok false when it
// has none: a static binary). A malformed line is an error naming the
// line: the kernel's format is fixed, so it means the input is not a maps
// file.
func ncclMappings(r io.Reader) (libs []mapping, loader mapping, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		// Cheap filter first: most lines of a large process are neither.
		nccl := bytes.Contains(line, []byte("libnccl"))
		if !nccl && (loader.ID != fileID{} || !bytes.Contains(line, []byte("/ld-"))) {
			continue
		}
		m, ok, err := parseMapsLine(string(line))
		if err != nil {
			return nil, mapping{}, fmt.Errorf("maps line %d: %w", n, err)
		}
		switch {
		case !ok:
		case isNCCLLibrary(m.Path):
			if !slices.ContainsFunc(libs, func(o mapping) bool { return o.ID == m.ID }) {
				libs = append(libs, m)
			}
		case isLoader(m.Path) && !m.Deleted:
			loader = m
		}
	}
	if err := sc.Err(); err != nil {
		return nil, mapping{}, fmt.Errorf("reading maps: %w", err)
	}
	return libs, loader, nil
}

// parseMapsLine parses "start-end perms offset major:minor inode   path".
// ok is false for anonymous and pseudo mappings ([heap], [vdso], ...).
func parseMapsLine(line string) (m mapping, ok bool, err error) {
	rest := line
	var fields [5]string
	for i := range fields {
		rest = strings.TrimLeft(rest, " ")
		end := strings.IndexByte(rest, ' ')
		if end < 0 {
			end = len(rest)
		}
		fields[i], rest = rest[:end], rest[end:]
		if fields[i] == "" {
			return m, false, fmt.Errorf("%q: want address, perms, offset, device, inode and path", line)
		}
	}
	if !strings.Contains(fields[0], "-") || len(fields[1]) != 4 {
		return m, false, fmt.Errorf("%q: bad address range or permissions", line)
	}
	major, minor, found := strings.Cut(fields[3], ":")
	if !found {
		return m, false, fmt.Errorf("%q: device %q is not major:minor", line, fields[3])
	}
	maj, err1 := strconv.ParseUint(major, 16, 32)
	mnr, err2 := strconv.ParseUint(minor, 16, 32)
	ino, err3 := strconv.ParseUint(fields[4], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return m, false, fmt.Errorf("%q: bad device or inode", line)
	}
	path := strings.TrimLeft(rest, " ")
	if ino == 0 || !strings.HasPrefix(path, "/") {
		return m, false, nil
	}
	if p, gone := strings.CutSuffix(path, " (deleted)"); gone {
		path, m.Deleted = p, true
	}
	m.ID = fileID{Dev: maj<<32 | mnr, Inode: ino}
	m.Path = path
	return m, true, nil
}
