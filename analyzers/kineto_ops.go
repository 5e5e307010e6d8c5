package analyzers

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
)

// kOp is the compact record kept for one GPU event between reading a trace
// and sweeping it in time order: 48 bytes, whatever the event's JSON size.
type kOp struct {
	start, end       int64 // ns
	cpuStart, cpuEnd int64 // ns, of the host call that launched it (opHasCPU)
	stream           int64
	name             uint32 // index into the rank's name table
	flags            uint8
	api              LaunchAPI
}

// kOp flags.
const (
	opHasCPU   = 1 << iota // matched to a host call by correlation id
	opStreamOp             // a kernel, memcpy or memset (not a sync or annotation)
)

const opSize = 8*5 + 4 + 1 + 1

func compareOps(a, b kOp) int {
	return cmp.Or(cmp.Compare(a.start, b.start), cmp.Compare(a.stream, b.stream), cmp.Compare(a.end, b.end))
}

func (o *kOp) put(b []byte) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], uint64(o.start))
	le.PutUint64(b[8:], uint64(o.end))
	le.PutUint64(b[16:], uint64(o.cpuStart))
	le.PutUint64(b[24:], uint64(o.cpuEnd))
	le.PutUint64(b[32:], uint64(o.stream))
	le.PutUint32(b[40:], o.name)
	b[44], b[45] = o.flags, byte(o.api)
}

func (o *kOp) get(b []byte) {
	le := binary.LittleEndian
	o.start = int64(le.Uint64(b[0:]))
	o.end = int64(le.Uint64(b[8:]))
	o.cpuStart = int64(le.Uint64(b[16:]))
	o.cpuEnd = int64(le.Uint64(b[24:]))
	o.stream = int64(le.Uint64(b[32:]))
	o.name = le.Uint32(b[40:])
	o.flags, o.api = b[44], LaunchAPI(b[45])
}

// opSorter orders the GPU events of one trace by start time in bounded
// memory: it sorts chunks of at most chunk records and spills each full chunk
// to a temporary file as a sorted run; Each merges the runs. A trace whose
// GPU events fit one chunk never touches the disk. Sorting compact records
// (rather than trusting the file's order, which Kineto does not guarantee
// across CUPTI buffers) makes the results exact for any event order.
type opSorter struct {
	chunk   int
	tempDir string
	buf     []kOp
	runs    []*os.File
}

func (s *opSorter) add(o kOp) error {
	if s.buf == nil {
		s.buf = make([]kOp, 0, min(s.chunk, 1<<14))
	}
	s.buf = append(s.buf, o)
	if len(s.buf) >= s.chunk {
		return s.spill()
	}
	return nil
}

func (s *opSorter) spill() error {
	slices.SortFunc(s.buf, compareOps)
	f, err := os.CreateTemp(s.tempDir, "loupe-kineto-run-*")
	if err != nil {
		return fmt.Errorf("spill sorted GPU events (set a writable temporary directory): %w", err)
	}
	os.Remove(f.Name()) // unlinked: the space is freed when f closes, even after a crash
	s.runs = append(s.runs, f)
	w := bufio.NewWriterSize(f, 256<<10)
	var rec [opSize]byte
	for i := range s.buf {
		s.buf[i].put(rec[:])
		if _, err := w.Write(rec[:]); err != nil {
			return fmt.Errorf("spill sorted GPU events: %w", err)
		}
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("spill sorted GPU events: %w", err)
	}
	s.buf = s.buf[:0]
	return nil
}

// close releases the runs.
func (s *opSorter) close() {
	for _, f := range s.runs {
		f.Close()
	}
	s.runs, s.buf = nil, nil
}

// each calls fn for every record in start order.
func (s *opSorter) each(fn func(*kOp)) error {
	slices.SortFunc(s.buf, compareOps)
	if len(s.runs) == 0 {
		for i := range s.buf {
			fn(&s.buf[i])
		}
		return nil
	}
	// k-way merge of the in-memory tail and the runs on disk.
	type source struct {
		r   *bufio.Reader
		mem []kOp
		cur kOp
	}
	srcs := make([]*source, 0, len(s.runs)+1)
	next := func(src *source) (bool, error) {
		if src.r == nil {
			if len(src.mem) == 0 {
				return false, nil
			}
			src.cur, src.mem = src.mem[0], src.mem[1:]
			return true, nil
		}
		var rec [opSize]byte
		if _, err := io.ReadFull(src.r, rec[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return false, nil
			}
			return false, fmt.Errorf("read back sorted GPU events: %w", err)
		}
		src.cur.get(rec[:])
		return true, nil
	}
	add := func(src *source) error {
		ok, err := next(src)
		if ok {
			srcs = append(srcs, src)
		}
		return err
	}
	for _, f := range s.runs {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("read back sorted GPU events: %w", err)
		}
		if err := add(&source{r: bufio.NewReaderSize(f, 64<<10)}); err != nil {
			return err
		}
	}
	if err := add(&source{mem: s.buf}); err != nil {
		return err
	}
	// Few runs: a linear scan for the minimum is as fast as a heap.
	for len(srcs) > 0 {
		m := 0
		for i := 1; i < len(srcs); i++ {
			if compareOps(srcs[i].cur, srcs[m].cur) < 0 {
				m = i
			}
		}
		o := srcs[m].cur
		fn(&o)
		ok, err := next(srcs[m])
		if err != nil {
			return err
		}
		if !ok {
			srcs = slices.Delete(srcs, m, m+1)
		}
	}
	return nil
}
