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

// column is one batch of one column, decoded into the slice that fits its
// physical type: numbers are read as numbers, without a parquet.Value per
// cell, which is most of the cost of a first (uncached) fleet view.
type column struct {
	kind parquet.Kind
	n    int
	i64  []int64
	i32  []int32
	f32  []float32
	f64  []float64
	b    []bool
	v    []parquet.Value // byte arrays and anything else
}

// Len is the number of values in the batch.
func (c *column) Len() int { return c.n }

// Float is value i as a float64.
func (c *column) Float(i int) float64 {
	switch c.kind {
	case parquet.Float:
		return float64(c.f32[i])
	case parquet.Double:
		return c.f64[i]
	case parquet.Int64:
		return float64(c.i64[i])
	case parquet.Int32:
		return float64(c.i32[i])
	case parquet.Boolean:
		if c.b[i] {
			return 1
		}
		return 0
	}
	return 0
}

// Int is value i as an int64.
func (c *column) Int(i int) int64 {
	switch c.kind {
	case parquet.Int64:
		return c.i64[i]
	case parquet.Int32:
		return int64(c.i32[i])
	case parquet.Float:
		return int64(c.f32[i])
	case parquet.Double:
		return int64(c.f64[i])
	case parquet.Boolean:
		if c.b[i] {
			return 1
		}
	}
	return 0
}

// Bool is value i as a bool (non-zero numbers are true).
func (c *column) Bool(i int) bool {
	if c.kind == parquet.Boolean {
		return c.b[i]
	}
	return c.Int(i) != 0
}

// Bytes is value i of a byte-array column; nil for other kinds. It is only
// valid until the next batch.
func (c *column) Bytes(i int) []byte {
	if c.v == nil {
		return nil
	}
	return c.v[i].ByteArray()
}

func newColumn(kind parquet.Kind) *column {
	c := &column{kind: kind}
	switch kind {
	case parquet.Int64:
		c.i64 = make([]int64, batch)
	case parquet.Int32:
		c.i32 = make([]int32, batch)
	case parquet.Float:
		c.f32 = make([]float32, batch)
	case parquet.Double:
		c.f64 = make([]float64, batch)
	case parquet.Boolean:
		c.b = make([]bool, batch)
	default:
		c.v = make([]parquet.Value, batch)
	}
	return c
}

// scanColumns decodes the named columns of a flat Parquet table, row group
// by row group and batch by batch, and calls fn with one column per name
// (all of the same length). Only the named columns are decoded, which is
// what keeps a view of one metric cheap on a 40-column table. A part the
// Parquet decoder chokes on (it panics on some corrupt inputs) is an error,
// never a crash of the aggregator.
func scanColumns(data []byte, names []string, fn func(cols []*column) error) (err error) {
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
	cols := make([]*column, len(names))
	for i, n := range names {
		leaf, ok := f.Schema().Lookup(n)
		if !ok {
			return fmt.Errorf("parquet table has no column %q; was it written by a Loupe agent?", n)
		}
		idx[i] = leaf.ColumnIndex
		cols[i] = newColumn(leaf.Node.Type().Kind())
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
				cols[i].n = n
				if err := cr.read(cols[i], n); err != nil {
					closeAll(readers)
					return err
				}
			}
			if err := fn(cols); err != nil {
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
	name    string
	pages   parquet.Pages
	values  parquet.ValueReader
	scratch []parquet.Value
}

// read fills the first n values of c with the column's next n values,
// through the page's typed reader where it has one.
func (cr *columnReader) read(c *column, n int) error {
	for got := 0; got < n; {
		if cr.values == nil {
			p, err := cr.pages.ReadPage()
			if err == io.EOF {
				return fmt.Errorf("parquet column %q ends before its row group", cr.name)
			}
			if err != nil {
				return fmt.Errorf("parquet column %q: %w", cr.name, err)
			}
			cr.values = p.Values()
		}
		k, err := cr.readTyped(c, got, n)
		got += k
		if err == io.EOF {
			cr.values = nil
			continue
		}
		if err != nil {
			return fmt.Errorf("parquet column %q: %w", cr.name, err)
		}
	}
	return nil
}

// readTyped reads values [from, to) of c from the current page.
func (cr *columnReader) readTyped(c *column, from, to int) (int, error) {
	switch r := cr.values.(type) {
	case parquet.Int64Reader:
		if c.kind == parquet.Int64 {
			return r.ReadInt64s(c.i64[from:to])
		}
	case parquet.Int32Reader:
		if c.kind == parquet.Int32 {
			return r.ReadInt32s(c.i32[from:to])
		}
	case parquet.FloatReader:
		if c.kind == parquet.Float {
			return r.ReadFloats(c.f32[from:to])
		}
	case parquet.DoubleReader:
		if c.kind == parquet.Double {
			return r.ReadDoubles(c.f64[from:to])
		}
	case parquet.BooleanReader:
		if c.kind == parquet.Boolean {
			return r.ReadBooleans(c.b[from:to])
		}
	}
	if c.v != nil {
		return cr.values.ReadValues(c.v[from:to])
	}
	// A page without the typed reader (optional or dictionary-encoded
	// numbers): read values and convert them. Nulls read as zero.
	if cap(cr.scratch) < to-from {
		cr.scratch = make([]parquet.Value, to-from)
	}
	buf := cr.scratch[:to-from]
	k, err := cr.values.ReadValues(buf)
	for i, v := range buf[:k] {
		j := from + i
		switch c.kind {
		case parquet.Int64:
			c.i64[j] = v.Int64()
		case parquet.Int32:
			c.i32[j] = v.Int32()
		case parquet.Float:
			c.f32[j] = v.Float()
		case parquet.Double:
			c.f64[j] = v.Double()
		case parquet.Boolean:
			c.b[j] = v.Boolean()
		}
	}
	return k, err
}
