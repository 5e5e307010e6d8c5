package logparse

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/klauspost/compress/gzip"

	"github.com/loupe-dev/loupe/traces"
)

// StreamOptions say how ReadStream reads one stream.
type StreamOptions struct {
	// Ref dates timestamps without a year (Parser.Ref); a file's
	// modification time is a good one.
	Ref time.Time
	// Location is the zone of timestamps without one (nil: local).
	Location *time.Location
	// MaxLine cuts longer lines (0: DefaultMaxLineBytes).
	MaxLine int
	// Source is the pod and container, from a kubelet log path.
	Source Source
}

// ReadStream parses a whole log stream that already exists (a file, a
// rotated file, a journal export) with its own timestamps: gzip-compressed
// input (rotated .gz files) is decompressed, journalctl -o export input is
// recognised by its first line, and every other line goes through
// Parser.Feed with no read time, so that undated lines take the nearest
// timestamped line's time. fn receives each event in the order the stream
// produced them; an error from fn stops the reading. It returns the number
// of lines read.
func ReadStream(r io.Reader, opts StreamOptions, fn func(traces.Event) error) (int, error) {
	maxLine, ref := opts.MaxLine, opts.Ref
	if maxLine <= 0 {
		maxLine = DefaultMaxLineBytes
	}
	br := bufio.NewReaderSize(r, 64<<10)
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return 0, fmt.Errorf("gzip: %w", err)
		}
		defer gz.Close()
		br = bufio.NewReaderSize(gz, 64<<10)
	}
	p := NewParser(maxLine)
	p.Ref, p.Source, p.Location = ref, opts.Source, opts.Location
	var out []traces.Event
	emit := func() error {
		for _, e := range out {
			if err := fn(e); err != nil {
				return err
			}
		}
		out = out[:0]
		return nil
	}
	lines := 0
	if first, _ := br.Peek(32); IsExport(first) {
		x := NewExportReader(br, maxLine)
		for {
			line, err := x.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return lines, err
			}
			lines++
			out = p.Feed(line, time.Time{}, out)
			if err := emit(); err != nil {
				return lines, err
			}
		}
		out = p.Flush(ref, out)
		return lines, emit()
	}
	for {
		line, err := readLine(br, maxLine)
		if len(line) > 0 || err == nil {
			lines++
			out = p.Feed(bytes.TrimSuffix(line, []byte{'\r'}), time.Time{}, out)
			if err := emit(); err != nil {
				return lines, err
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return lines, err
		}
	}
	out = p.Flush(ref, out)
	return lines, emit()
}

// readLine reads one line without its newline, cut at max bytes (the rest
// of a longer line is skipped).
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line) < max {
			line = append(line, chunk[:min(len(chunk), max-len(line))]...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return bytes.TrimSuffix(line, []byte{'\n'}), err
	}
}
