package views

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/parquet-go/parquet-go"

	"github.com/loupe-dev/loupe/traces"
)

// readPart reads and verifies one part of a host bundle; nil when the
// bundle has no such part.
func (h *Handler) readPart(ctx context.Context, m *traces.Manifest, name string) ([]byte, error) {
	p, ok := m.Part(name)
	if !ok {
		return nil, nil
	}
	key := traces.KeyOf(m).Object(name)
	rc, _, err := h.cfg.Store.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(traces.VerifyReader(p, rc, h.cfg.MaxPartSize))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	return data, nil
}

// batch is how many values of each column scanColumns decodes at a time.
const batch = 4096

// scanColumns decodes the named columns of a flat Parquet table, row group
// by row group and batch by batch, and calls fn with one slice of values per
// name (all of the same length). Only the named columns are decoded, which
// is what keeps a view of one metric cheap on a 40-column table. A part the
// Parquet decoder chokes on (it panics on some corrupt inputs) is an error,
// never a crash of the aggregator.
func scanColumns(data []byte, names []string, fn func(cols [][]parquet.Value) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("corrupt parquet table: %v", p)
		}
	}()
	f, err := parquet.OpenFile(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return fmt.Errorf("open parquet table: %w", err)
	}
	idx := make([]int, len(names))
	for i, n := range names {
		leaf, ok := f.Schema().Lookup(n)
		if !ok {
			return fmt.Errorf("parquet table has no column %q; was it written by a Loupe agent?", n)
		}
		idx[i] = leaf.ColumnIndex
	}
	cols := make([][]parquet.Value, len(names))
	for i := range cols {
		cols[i] = make([]parquet.Value, batch)
	}
	for _, rg := range f.RowGroups() {
		chunks := rg.ColumnChunks()
		readers := make([]*columnReader, len(names))
		for i, ci := range idx {
			readers[i] = &columnReader{name: names[i], pages: chunks[ci].Pages()}
		}
		for left := rg.NumRows(); left > 0; {
			n := int(min(left, batch))
			for i, cr := range readers {
				if err := cr.read(cols[i][:n]); err != nil {
					closeAll(readers)
					return err
				}
			}
			sub := make([][]parquet.Value, len(cols))
			for i := range cols {
				sub[i] = cols[i][:n]
			}
			if err := fn(sub); err != nil {
				closeAll(readers)
				return err
			}
			left -= int64(n)
		}
		closeAll(readers)
	}
	return nil
}

func closeAll(rs []*columnReader) {
	for _, r := range rs {
		r.pages.Close()
	}
}

// columnReader streams one column chunk across its pages.
type columnReader struct {
	name   string
	pages  parquet.Pages
	values parquet.ValueReader
}

// read fills buf with the column's next len(buf) values.
func (c *columnReader) read(buf []parquet.Value) error {
	for got := 0; got < len(buf); {
		if c.values == nil {
			p, err := c.pages.ReadPage()
			if err == io.EOF {
				return fmt.Errorf("parquet column %q ends before its row group", c.name)
			}
			if err != nil {
				return fmt.Errorf("parquet column %q: %w", c.name, err)
			}
			c.values = p.Values()
		}
		k, err := c.values.ReadValues(buf[got:])
		got += k
		if err == io.EOF {
			c.values = nil
			continue
		}
		if err != nil {
			return fmt.Errorf("parquet column %q: %w", c.name, err)
		}
	}
	return nil
}

// num reads a numeric value of any physical type as float64.
func num(v parquet.Value) float64 {
	switch v.Kind() {
	case parquet.Float:
		return float64(v.Float())
	case parquet.Double:
		return v.Double()
	case parquet.Int32:
		return float64(v.Int32())
	case parquet.Boolean:
		if v.Boolean() {
			return 1
		}
		return 0
	}
	return float64(v.Int64())
}

// integer reads an integer value of any physical type.
func integer(v parquet.Value) int64 {
	switch v.Kind() {
	case parquet.Int32:
		return int64(v.Int32())
	case parquet.Float:
		return int64(v.Float())
	case parquet.Double:
		return int64(v.Double())
	}
	return v.Int64()
}
