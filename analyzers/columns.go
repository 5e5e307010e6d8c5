package analyzers

import (
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
	"unsafe"

	"github.com/parquet-go/parquet-go"
)

// Parquet parts are decoded column by column rather than through
// parquet-go's row reader: for the flat tables of a bundle this is 40-75
// times faster and allocates almost nothing, which is what lets a
// 1024-rank capture be analyzed in seconds. Memory is one batch of rows,
// one batch of values per column and one page per column.

// field is where one Parquet column lands in a row struct.
type field struct {
	offset uintptr
	kind   reflect.Kind
}

// layoutOf maps the column names of T's parquet tags to T's fields.
func layoutOf[T any]() map[string]field {
	t := reflect.TypeFor[T]()
	out := make(map[string]field, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("parquet"), ",")
		if name == "" || name == "-" {
			continue
		}
		out[name] = field{offset: f.Offset, kind: f.Type.Kind()}
	}
	return out
}

// column streams the values of one column chunk across its pages.
type column struct {
	name   string
	field  field
	pages  parquet.Pages
	page   parquet.Page
	values parquet.ValueReader // of page
	// read are pages finished in this batch: byte array values in buf
	// still point into them, so they go back to parquet-go's buffer pool
	// only once the batch is stored.
	read   []parquet.Page
	buf    []parquet.Value
	intern map[string]string // dictionary strings, stored once
}

// valueBufs recycles the per-column value buffers between scans, so that
// scanning host after host allocates almost nothing.
var valueBufs = sync.Pool{New: func() any { return new([]parquet.Value) }}

// next fills c.buf[:n] with the column's next n values.
func (c *column) next(n int) error {
	if cap(c.buf) < n {
		c.buf = make([]parquet.Value, n)
	}
	c.buf = c.buf[:n]
	for got := 0; got < n; {
		if c.values == nil {
			p, err := c.pages.ReadPage()
			if err == io.EOF {
				return fmt.Errorf("column %q ends after fewer values than the row group has rows", c.name)
			}
			if err != nil {
				return fmt.Errorf("column %q: %w", c.name, err)
			}
			c.page, c.values = p, p.Values()
		}
		k, err := c.values.ReadValues(c.buf[got:n])
		got += k
		if err == io.EOF {
			c.read = append(c.read, c.page)
			c.page, c.values = nil, nil
			continue
		}
		if err != nil {
			return fmt.Errorf("column %q: %w", c.name, err)
		}
	}
	return nil
}

// release hands the pages finished in the last batch back to parquet-go.
func (c *column) release() {
	for _, p := range c.read {
		parquet.Release(p)
	}
	clear(c.read)
	c.read = c.read[:0]
}

// store writes c.buf into the field of each row.
func store[T any](c *column, rows []T) {
	if len(rows) == 0 {
		return
	}
	base, stride := unsafe.Pointer(&rows[0]), unsafe.Sizeof(rows[0])
	for i, v := range c.buf {
		if v.IsNull() {
			continue
		}
		p := unsafe.Add(base, uintptr(i)*stride+c.field.offset)
		switch c.field.kind {
		case reflect.Int32:
			*(*int32)(p) = int32(asInt64(v))
		case reflect.Int64, reflect.Int:
			*(*int64)(p) = asInt64(v)
		case reflect.Uint64:
			*(*uint64)(p) = uint64(asInt64(v))
		case reflect.Float32:
			*(*float32)(p) = float32(asFloat64(v))
		case reflect.Float64:
			*(*float64)(p) = asFloat64(v)
		case reflect.Bool:
			*(*bool)(p) = v.Boolean()
		case reflect.String:
			b := v.ByteArray()
			s, ok := c.intern[string(b)]
			if !ok {
				s = string(b)
				if len(c.intern) < 1024 {
					c.intern[s] = s
				}
			}
			*(*string)(p) = s
		}
	}
}

// asInt64 converts a numeric value of any physical type.
func asInt64(v parquet.Value) int64 {
	switch v.Kind() {
	case parquet.Int32:
		return int64(v.Int32())
	case parquet.Float:
		return int64(v.Float())
	case parquet.Double:
		return int64(v.Double())
	case parquet.Boolean:
		if v.Boolean() {
			return 1
		}
		return 0
	}
	return v.Int64()
}

// asFloat64 converts a numeric value of any physical type.
func asFloat64(v parquet.Value) float64 {
	switch v.Kind() {
	case parquet.Float:
		return float64(v.Float())
	case parquet.Double:
		return v.Double()
	}
	return float64(asInt64(v))
}

// errCorrupt marks a part the Parquet decoder could not read.
var errCorrupt = errors.New("corrupt Parquet part")

// scanColumns decodes the flat Parquet table in r into buf, batch by batch,
// and calls fn with each batch. Columns of the file that T lacks are
// skipped; fields of T the file lacks stay zero. hint, when set, learns the
// number of rows before any is decoded, and may refuse the table.
func scanColumns[T any](r io.ReaderAt, size int64, buf []T, hint func(rows int64) error, fn func([]T) error) (err error) {
	// parquet-go can panic on malformed input; that is bad input, not a bug here.
	var inFn bool
	defer func() {
		if p := recover(); p != nil {
			if inFn {
				panic(p)
			}
			err = fmt.Errorf("%w: decoder failed: %v", errCorrupt, p)
		}
	}()
	if err := checkFooter(r, size); err != nil {
		return err
	}
	f, err := parquet.OpenFile(r, size, parquet.SkipPageIndex(true), parquet.SkipBloomFilters(true))
	if err != nil {
		return fmt.Errorf("%w: %v", errCorrupt, err)
	}
	if err := checkChunks(r, size, f.Metadata()); err != nil {
		return err
	}
	if hint != nil {
		if err := hint(f.NumRows()); err != nil {
			return err
		}
	}
	layout := layoutOf[T]()
	paths := f.Schema().Columns()
	for _, rg := range f.RowGroups() {
		chunks := rg.ColumnChunks()
		if len(chunks) != len(paths) {
			return fmt.Errorf("%w: row group has %d columns, schema %d", errCorrupt, len(chunks), len(paths))
		}
		var cols []*column
		for i, path := range paths {
			fd, ok := layout[path[0]]
			if len(path) != 1 || !ok {
				continue
			}
			if leaf, _ := f.Schema().Lookup(path...); leaf.MaxRepetitionLevel > 0 {
				return fmt.Errorf("%w: column %q is repeated; bundle tables are flat", errCorrupt, path[0])
			}
			buf := valueBufs.Get().(*[]parquet.Value)
			cols = append(cols, &column{name: path[0], field: fd, pages: chunks[i].Pages(), buf: *buf, intern: map[string]string{}})
		}
		err := func() error {
			defer func() {
				for _, c := range cols {
					c.release()
					if c.page != nil {
						parquet.Release(c.page)
					}
					c.pages.Close()
					clear(c.buf) // drop references into the pages
					buf := c.buf[:0]
					valueBufs.Put(&buf)
				}
			}()
			for left := rg.NumRows(); left > 0; {
				n := int(min(left, int64(len(buf))))
				rows := buf[:n]
				clear(rows)
				for _, c := range cols {
					if err := c.next(n); err != nil {
						return fmt.Errorf("%w: %v", errCorrupt, err)
					}
					store(c, rows)
					c.release()
				}
				inFn = true
				if err := fn(rows); err != nil {
					return err
				}
				inFn = false
				left -= int64(n)
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	return nil
}
