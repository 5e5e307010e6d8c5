package traces

import (
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"github.com/parquet-go/parquet-go"
)

// The bundle's Parquet tables are decoded column by column rather than
// through parquet-go's row reader: streaming a flat table this way is about
// 25 times faster (over 100 times for a few columns of a wide table; see
// BenchmarkReadTable) and allocates almost nothing, which is what lets a
// 1024-rank capture be analyzed in seconds and a fleet view be drawn cold.
// Numbers are read through the page's typed reader where it has one, so
// a cell costs a copy, not a parquet.Value. Memory is the caller's batch
// of rows, one batch of values per decoded column and one page per column.
// Every table is checked by the guard in parquet_guard.go first.

// ErrCorruptTable marks a Parquet part that the guard refused or that the
// decoder could not read.
var ErrCorruptTable = errors.New("corrupt Parquet table")

// ScanOption changes what a table reader decodes.
type ScanOption func(*scanConfig)

type scanConfig struct {
	columns  []string
	rowCount func(rows int64) error
}

// Columns decodes only the named columns; the other fields of each row
// stay zero. A table without one of them is an error. Reading a few
// columns of a wide table (a view of one GPU metric) costs only those.
// The identity columns (cluster, job, run, capture, host) are decoded only
// when named here.
func Columns(names ...string) ScanOption {
	return func(c *scanConfig) { c.columns = append(c.columns, names...) }
}

// RowCount calls fn with the table's number of rows, as its metadata says,
// once the table is opened and before any row is decoded; an error from fn
// is returned as is. It lets a reader refuse a table too large to keep, or
// size a slice (after bounding the number: it comes from the file).
func RowCount(fn func(rows int64) error) ScanOption {
	return func(c *scanConfig) { c.rowCount = fn }
}

// ScanTable decodes the flat Parquet table in r, of size bytes, into buf
// batch by batch and calls fn with each batch (valid only during the
// call). T is a row type of this package, or any struct of numbers, bools
// and strings with parquet tags: columns of the table that T lacks are
// skipped, fields of T the table lacks stay zero. An error from fn is
// returned as is.
func ScanTable[T any](r io.ReaderAt, size int64, buf []T, fn func([]T) error, opts ...ScanOption) error {
	if len(buf) == 0 {
		return errors.New("ScanTable needs a buffer of at least one row")
	}
	t, err := NewTableReader[T](r, size, opts...)
	if err != nil {
		return err
	}
	defer t.Close()
	for {
		n, err := t.Read(buf)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(buf[:n]); err != nil {
			return err
		}
	}
}

// ReadTable reads a whole Parquet part into memory, as ScanTable decodes
// it. Use ScanTable or a TableReader to stream large tables.
func ReadTable[T any](r io.ReaderAt, size int64, opts ...ScanOption) ([]T, error) {
	t, err := NewTableReader[T](r, size, opts...)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	// The row count comes from the file: trusted only up to a batch.
	rows := make([]T, 0, min(t.NumRows(), tableBatch))
	for {
		if len(rows) == cap(rows) {
			rows = slices.Grow(rows, tableBatch)
		}
		n, err := t.Read(rows[len(rows):cap(rows)])
		rows = rows[:len(rows)+n]
		if err == io.EOF {
			return rows, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// ReadTableFile reads a whole Parquet part from a local file, as ReadTable.
func ReadTableFile[T any](path string, opts ...ScanOption) ([]T, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	rows, err := ReadTable[T](f, st.Size(), opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rows, nil
}

// tableBatch is how many rows ReadTable decodes at a time.
const tableBatch = 4096

// TableReader streams the rows of a Parquet part in batches, so memory stays
// bounded by the batch size and one page per column, whatever the table's
// size. It is not safe for concurrent use.
type TableReader[T any] struct {
	f      *parquet.File
	sel    []selected
	groups []parquet.RowGroup
	next   int       // index of the next row group
	cols   []*column // of the current row group
	left   int64     // rows of the current row group not yet read
	err    error     // sticky
}

// selected is one column the reader decodes.
type selected struct {
	index int // in the file's schema
	name  string
	kind  parquet.Kind
	field field
}

// NewTableReader opens the Parquet part in r, of size bytes, after the
// guard has checked its footer and every page header against the bytes
// that are really there. Errors about the file wrap ErrCorruptTable.
func NewTableReader[T any](r io.ReaderAt, size int64, opts ...ScanOption) (*TableReader[T], error) {
	var cfg scanConfig
	for _, o := range opts {
		o(&cfg)
	}
	t, err := openTable[T](r, size, cfg.columns)
	if err != nil {
		return nil, err
	}
	if cfg.rowCount != nil {
		if err := cfg.rowCount(t.NumRows()); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// openTable guards, opens and selects the columns of a table.
func openTable[T any](r io.ReaderAt, size int64, columns []string) (t *TableReader[T], err error) {
	// parquet-go can panic on malformed input; that is bad input, not a bug here.
	defer func() {
		if p := recover(); p != nil {
			t, err = nil, fmt.Errorf("%w: decoder failed: %v", ErrCorruptTable, p)
		}
	}()
	layout, err := layoutOf[T]()
	if err != nil {
		return nil, err
	}
	if err := checkFooter(r, size); err != nil {
		return nil, err
	}
	f, err := parquet.OpenFile(r, size, parquet.SkipPageIndex(true), parquet.SkipBloomFilters(true))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptTable, err)
	}
	if err := checkChunks(r, size, f.Metadata()); err != nil {
		return nil, err
	}
	t = &TableReader[T]{f: f, groups: f.RowGroups()}
	if t.sel, err = selectColumns(f.Schema(), layout, columns, reflect.TypeFor[T]()); err != nil {
		return nil, err
	}
	return t, nil
}

// selectColumns picks the flat columns of the schema that land in a field
// of the layout: all of them, or the wanted ones.
func selectColumns(schema *parquet.Schema, layout map[string]field, wanted []string, row reflect.Type) ([]selected, error) {
	var sel []selected
	for i, path := range schema.Columns() {
		fd, ok := layout[path[0]]
		if len(path) != 1 || !ok || (wanted != nil || fd.identity) && !slices.Contains(wanted, path[0]) {
			continue
		}
		leaf, _ := schema.Lookup(path...)
		if leaf.MaxRepetitionLevel > 0 {
			return nil, fmt.Errorf("%w: column %q is repeated; bundle tables are flat", ErrCorruptTable, path[0])
		}
		kind := leaf.Node.Type().Kind()
		if fd.kind != reflect.String && !isNumber(kind) {
			return nil, fmt.Errorf("%w: column %q holds %v, not a number", ErrCorruptTable, path[0], kind)
		}
		sel = append(sel, selected{index: i, name: path[0], kind: kind, field: fd})
	}
	for _, n := range wanted {
		if _, ok := layout[n]; !ok {
			return nil, fmt.Errorf("%v has no field for column %q", row, n)
		}
		if !slices.ContainsFunc(sel, func(s selected) bool { return s.name == n }) {
			return nil, fmt.Errorf("%w: table has no flat column %q; was it written by a Loupe agent?", ErrCorruptTable, n)
		}
	}
	return sel, nil
}

func isNumber(k parquet.Kind) bool {
	switch k {
	case parquet.Boolean, parquet.Int32, parquet.Int64, parquet.Float, parquet.Double:
		return true
	}
	return false
}

// NumRows is the number of rows in the table, as its metadata says (the
// guard has checked that its row groups add up to it).
func (t *TableReader[T]) NumRows() int64 { return t.f.NumRows() }

// Read fills the start of rows with the next rows of the table (at most to
// the end of a row group) and returns how many; 0 and io.EOF after the
// last row.
func (t *TableReader[T]) Read(rows []T) (n int, err error) {
	if t.err != nil {
		return 0, t.err
	}
	defer func() {
		if p := recover(); p != nil {
			n, err = 0, fmt.Errorf("%w: decoder failed: %v", ErrCorruptTable, p)
		}
		if err != nil {
			t.err = err
			t.closeGroup()
		}
	}()
	for t.left == 0 {
		t.closeGroup()
		if t.next == len(t.groups) {
			return 0, io.EOF
		}
		if err := t.openGroup(t.groups[t.next]); err != nil {
			return 0, err
		}
		t.next++
	}
	n = int(min(t.left, int64(len(rows))))
	if n == 0 {
		return 0, nil
	}
	rows = rows[:n]
	clear(rows)
	base, stride := unsafe.Pointer(&rows[0]), unsafe.Sizeof(rows[0])
	for _, c := range t.cols {
		if err := c.next(n); err != nil {
			return 0, fmt.Errorf("%w: %v", ErrCorruptTable, err)
		}
		c.store(base, stride, n)
		c.release()
	}
	t.left -= int64(n)
	return n, nil
}

func (t *TableReader[T]) openGroup(rg parquet.RowGroup) error {
	chunks := rg.ColumnChunks()
	if want := len(t.f.Schema().Columns()); len(chunks) != want {
		return fmt.Errorf("%w: row group has %d columns, schema %d", ErrCorruptTable, len(chunks), want)
	}
	for _, s := range t.sel {
		c, _ := poolOf(s.kind, s.field.kind).Get().(*column)
		if c == nil {
			c = &column{intern: map[string]string{}}
		}
		c.name, c.kind, c.field, c.pages = s.name, s.kind, s.field, chunks[s.index].Pages()
		t.cols = append(t.cols, c)
	}
	t.left = rg.NumRows()
	return nil
}

// closeGroup hands the current row group's pages and buffers back.
func (t *TableReader[T]) closeGroup() {
	for _, c := range t.cols {
		c.close()
		poolOf(c.kind, c.field.kind).Put(c)
	}
	clear(t.cols)
	t.cols, t.left = t.cols[:0], 0
}

// Close releases the reader's buffers; it always returns nil.
func (t *TableReader[T]) Close() error {
	t.closeGroup()
	if t.err == nil {
		t.err = errors.New("table reader is closed")
	}
	return nil
}

// field is where one Parquet column lands in a row struct.
type field struct {
	offset uintptr
	kind   reflect.Kind
	// identity fields (the embedded Identity) are decoded only when
	// Columns names them: the bundle's own readers know a part's identity
	// from its manifest, and decoding five more columns of every row
	// would slow every analysis.
	identity bool
}

// layoutOf maps the column names of T's parquet tags to T's fields,
// those of an embedded struct (Identity) included.
func layoutOf[T any]() (map[string]field, error) {
	t := reflect.TypeFor[T]()
	if t.Kind() != reflect.Struct {
		return nil, fmt.Errorf("a table row must be a struct, not %v", t)
	}
	out := make(map[string]field, t.NumField())
	if err := addFields(out, t, 0, false); err != nil {
		return nil, err
	}
	return out, nil
}

func addFields(out map[string]field, t reflect.Type, base uintptr, identity bool) error {
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			if err := addFields(out, f.Type, base+f.Offset, identity || f.Type == reflect.TypeFor[Identity]()); err != nil {
				return err
			}
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("parquet"), ",")
		if name == "" || name == "-" {
			continue
		}
		switch k := f.Type.Kind(); k {
		case reflect.Int32, reflect.Int64, reflect.Int, reflect.Uint64, reflect.Float32, reflect.Float64, reflect.Bool, reflect.String:
			out[name] = field{offset: base + f.Offset, kind: k, identity: identity}
		default:
			return fmt.Errorf("field %s of %v is a %v; a table row holds numbers, bools and strings", f.Name, t, k)
		}
	}
	return nil
}

// column streams the values of one column chunk across its pages, one
// batch at a time, into the buffer of its physical type.
type column struct {
	name   string
	kind   parquet.Kind // physical
	field  field
	pages  parquet.Pages
	page   parquet.Page
	values parquet.ValueReader // of page
	// read are pages finished in this batch: byte array values in vals
	// still point into them, so they go back to parquet-go's buffer pool
	// only once the batch is stored.
	read []parquet.Page

	i64    []int64
	i32    []int32
	f32    []float32
	f64    []float64
	b      []bool
	vals   []parquet.Value   // strings, and numbers of pages without a typed reader
	intern map[string]string // dictionary strings, stored once
}

// columnPools recycle columns between tables, so that reading host after
// host allocates almost nothing. There is one pool per buffer type, so
// that a recycled column does not collect a buffer of every type.
var columnPools [6]sync.Pool

// poolOf is the pool of a column decoded into a field of kind k.
func poolOf(kind parquet.Kind, k reflect.Kind) *sync.Pool {
	if k == reflect.String {
		return &columnPools[0]
	}
	switch kind {
	case parquet.Int64:
		return &columnPools[1]
	case parquet.Int32:
		return &columnPools[2]
	case parquet.Float:
		return &columnPools[3]
	case parquet.Double:
		return &columnPools[4]
	}
	return &columnPools[5]
}

// next decodes the column's next n values.
func (c *column) next(n int) error {
	c.grow(n)
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
		k, err := c.readPage(got, n)
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

// grow makes the buffer the column decodes into hold n values.
func (c *column) grow(n int) {
	if c.field.kind == reflect.String {
		c.vals = growTo(c.vals, n)
		return
	}
	switch c.kind {
	case parquet.Int64:
		c.i64 = growTo(c.i64, n)
	case parquet.Int32:
		c.i32 = growTo(c.i32, n)
	case parquet.Float:
		c.f32 = growTo(c.f32, n)
	case parquet.Double:
		c.f64 = growTo(c.f64, n)
	case parquet.Boolean:
		c.b = growTo(c.b, n)
	}
}

func growTo[E any](s []E, n int) []E {
	if cap(s) < n {
		return make([]E, n)
	}
	return s[:n]
}

// readPage reads values [from, to) of the batch from the current page:
// numbers through the page's typed reader where it has one, else as
// values converted to the column's type (nulls read as zero).
func (c *column) readPage(from, to int) (int, error) {
	if c.field.kind == reflect.String {
		return c.values.ReadValues(c.vals[from:to])
	}
	switch c.kind {
	case parquet.Int64:
		return readTyped(c, c.i64[from:to], parquet.Int64Reader.ReadInt64s, parquet.Value.Int64)
	case parquet.Int32:
		return readTyped(c, c.i32[from:to], parquet.Int32Reader.ReadInt32s, parquet.Value.Int32)
	case parquet.Float:
		return readTyped(c, c.f32[from:to], parquet.FloatReader.ReadFloats, parquet.Value.Float)
	case parquet.Double:
		return readTyped(c, c.f64[from:to], parquet.DoubleReader.ReadDoubles, parquet.Value.Double)
	}
	return readTyped(c, c.b[from:to], parquet.BooleanReader.ReadBooleans, parquet.Value.Boolean)
}

// readTyped fills dst through the page's typed reader R where it has one,
// else by reading values and converting each.
func readTyped[E, R any](c *column, dst []E, read func(R, []E) (int, error), conv func(parquet.Value) E) (int, error) {
	if r, ok := c.values.(R); ok {
		return read(r, dst)
	}
	c.vals = growTo(c.vals, len(dst))
	k, err := c.values.ReadValues(c.vals)
	for i, v := range c.vals[:k] {
		dst[i] = conv(v)
	}
	return k, err
}

// store writes the batch's n values into the field of each row, rows
// being stride bytes apart from base.
func (c *column) store(base unsafe.Pointer, stride uintptr, n int) {
	at := func(i int) unsafe.Pointer { return unsafe.Add(base, uintptr(i)*stride+c.field.offset) }
	k := c.field.kind
	switch {
	case k == reflect.String:
		for i, v := range c.vals[:n] {
			if !v.IsNull() {
				*(*string)(at(i)) = c.str(v.ByteArray())
			}
		}
	// The physical type fits the field: a plain copy.
	case c.kind == parquet.Int64 && (k == reflect.Int64 || k == reflect.Int || k == reflect.Uint64):
		for i, v := range c.i64[:n] {
			*(*int64)(at(i)) = v
		}
	case c.kind == parquet.Int32 && k == reflect.Int32:
		for i, v := range c.i32[:n] {
			*(*int32)(at(i)) = v
		}
	case c.kind == parquet.Float && k == reflect.Float32:
		for i, v := range c.f32[:n] {
			*(*float32)(at(i)) = v
		}
	case c.kind == parquet.Double && k == reflect.Float64:
		for i, v := range c.f64[:n] {
			*(*float64)(at(i)) = v
		}
	case c.kind == parquet.Boolean && k == reflect.Bool:
		for i, v := range c.b[:n] {
			*(*bool)(at(i)) = v
		}
	default:
		for i := range n {
			switch p := at(i); k {
			case reflect.Int32:
				*(*int32)(p) = int32(c.int(i))
			case reflect.Int64, reflect.Int, reflect.Uint64:
				*(*int64)(p) = c.int(i)
			case reflect.Float32:
				*(*float32)(p) = float32(c.float(i))
			case reflect.Float64:
				*(*float64)(p) = c.float(i)
			case reflect.Bool:
				*(*bool)(p) = c.int(i) != 0
			}
		}
	}
}

// str returns b as a string, one copy per distinct dictionary value.
func (c *column) str(b []byte) string {
	s, ok := c.intern[string(b)]
	if !ok {
		s = string(b)
		if len(c.intern) < 1024 {
			c.intern[s] = s
		}
	}
	return s
}

// int is value i of a numeric batch as an int64.
func (c *column) int(i int) int64 {
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

// float is value i of a numeric batch as a float64.
func (c *column) float(i int) float64 {
	switch c.kind {
	case parquet.Float:
		return float64(c.f32[i])
	case parquet.Double:
		return c.f64[i]
	}
	return float64(c.int(i))
}

// release hands the pages finished in the last batch back to parquet-go.
func (c *column) release() {
	for _, p := range c.read {
		parquet.Release(p)
	}
	clear(c.read)
	c.read = c.read[:0]
}

// close releases the column's pages and drops every reference into them,
// keeping its buffers for the next table.
func (c *column) close() {
	c.release()
	if c.page != nil {
		parquet.Release(c.page)
	}
	if c.pages != nil {
		c.pages.Close()
	}
	clear(c.vals)
	clear(c.intern)
	c.pages, c.page, c.values = nil, nil, nil
}
