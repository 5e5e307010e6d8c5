package kineto

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// WaitForTraces waits until each pid has written its trace for logFile, or
// ctx ends. Kineto writes "<file>.tmp" and renames it when complete, so a
// file that exists under its final name is whole. It returns the files
// found by pid and the pids still missing.
func WaitForTraces(ctx context.Context, logFile string, pids []int, poll time.Duration) (map[int]string, []int) {
	found := map[int]string{}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		var missing []int
		for _, pid := range pids {
			if _, ok := found[pid]; ok {
				continue
			}
			path := TraceFile(logFile, pid)
			if st, err := os.Stat(path); err == nil && st.Mode().IsRegular() {
				found[pid] = path
			} else {
				missing = append(missing, pid)
			}
		}
		if len(missing) == 0 {
			return found, nil
		}
		select {
		case <-ctx.Done():
			return found, missing
		case <-tick.C:
		}
	}
}

// PartName is the bundle part a process's Kineto trace is stored under.
func PartName(rank, pid int) string {
	if rank < 0 {
		return fmt.Sprintf("%spid%d.json.gz", traces.KinetoDir, pid)
	}
	return fmt.Sprintf("%srank%d-%d.json.gz", traces.KinetoDir, rank, pid)
}

// AddToBundle stores the trace at path in the bundle, gzip-compressed (a
// trace Kineto already compressed is stored as it is), and reports whether
// it carries distributedInfo; when it does not, the manifest says so,
// because the aggregator cannot place such a trace in its job.
func AddToBundle(w *traces.BundleWriter, path string, rank, pid int) (hasDistributedInfo bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("kineto trace of pid %d: %w", pid, err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 256<<10)
	magic, _ := br.Peek(2)
	gzipped := len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b

	pw, err := w.Create(PartName(rank, pid), traces.MediaKineto)
	if err != nil {
		return false, err
	}
	det := &keyDetector{needle: []byte(`"distributedInfo"`)}
	if err := copyTrace(pw, f, br, gzipped, det); err != nil {
		pw.Abort()
		return false, fmt.Errorf("kineto trace %s: %w", path, err)
	}
	if err := pw.Close(); err != nil {
		return false, err
	}
	if !det.found {
		w.Note("kineto trace of pid %d (rank %d) has no distributedInfo: it cannot be matched to the other ranks of its job", pid, rank)
	}
	return det.found, nil
}

// copyTrace stores the trace gzip-compressed in dst (as produced when it
// already is) and feeds the uncompressed bytes to det.
func copyTrace(dst io.Writer, f *os.File, br *bufio.Reader, gzipped bool, det io.Writer) error {
	if !gzipped {
		zw := gzip.NewWriter(dst)
		if _, err := io.Copy(zw, io.TeeReader(br, det)); err != nil {
			return err
		}
		return zw.Close()
	}
	if _, err := io.Copy(dst, br); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	zr, err := gzip.NewReader(f)
	if err != nil {
		return err
	}
	_, err = io.Copy(det, zr)
	return err
}

// keyDetector reports whether a byte stream contains needle, across chunk
// boundaries, in constant memory.
type keyDetector struct {
	needle []byte
	tail   []byte
	found  bool
}

func (d *keyDetector) Write(b []byte) (int, error) {
	if d.found {
		return len(b), nil
	}
	n := len(d.needle) - 1
	// A match across the previous write lies in tail + the first n bytes.
	edge := append(d.tail, b[:min(n, len(b))]...)
	if bytes.Contains(edge, d.needle) || bytes.Contains(b, d.needle) {
		d.found = true
		return len(b), nil
	}
	if len(b) >= n {
		d.tail = append(d.tail[:0], b[len(b)-n:]...)
	} else {
		d.tail = append([]byte(nil), edge[len(edge)-min(n, len(edge)):]...)
	}
	return len(b), nil
}
