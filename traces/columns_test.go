package traces_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/lz4"
	"github.com/parquet-go/parquet-go/encoding/thrift"
	"github.com/parquet-go/parquet-go/format"

	"github.com/loupe-dev/loupe/traces"
)

// writeParquet encodes rows as one Parquet file.
func writeParquet[T any](t testing.TB, rows []T, opts ...parquet.WriterOption) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := parquet.NewGenericWriter[T](&buf, opts...)
	if _, err := w.Write(rows); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// scanAll decodes data with ScanTable in batches of batch rows.
func scanAll[T any](data []byte, batch int, opts ...traces.ScanOption) ([]T, []int, error) {
	var rows []T
	var sizes []int
	err := traces.ScanTable(bytes.NewReader(data), int64(len(data)), make([]T, batch), func(b []T) error {
		rows = append(rows, b...)
		sizes = append(sizes, len(b))
		return nil
	}, opts...)
	return rows, sizes, err
}

func manySamples(n int) []traces.GPUSample {
	rows := make([]traces.GPUSample, n)
	for i := range rows {
		rows[i] = traces.GPUSample{TimeNs: int64(i) * 1e8, GPU: int32(i % 8), UUID: []string{"GPU-a", "GPU-b"}[i%2],
			GPUUtil: float32(i % 100), FBUsedMiB: int64(i), ProfValid: i%3 == 0, SMActive: float32(i%10) / 10,
			ClockEventReasons: int64(i % 5)}
	}
	return rows
}

// TestScanTableBatches checks that rows come back intact across row groups,
// pages and batches of every size.
func TestScanTableBatches(t *testing.T) {
	want := manySamples(1000)
	for _, tc := range []struct {
		name  string
		opts  []parquet.WriterOption
		batch int
		sizes []int
	}{
		{"one group, batch larger", nil, 4096, []int{1000}},
		{"one group, batches of 300", nil, 300, []int{300, 300, 300, 100}},
		{"groups of 400, batch 256", []parquet.WriterOption{parquet.MaxRowsPerRowGroup(400)}, 256, []int{256, 144, 256, 144, 200}},
		{"small pages", []parquet.WriterOption{parquet.PageBufferSize(512)}, 333, []int{333, 333, 333, 1}},
		{"one row at a time", []parquet.WriterOption{parquet.MaxRowsPerRowGroup(7)}, 1, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := writeParquet(t, want, tc.opts...)
			got, sizes, err := scanAll[traces.GPUSample](data, tc.batch)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("rows differ: got %d rows, first %+v", len(got), got[0])
			}
			if tc.sizes != nil && !reflect.DeepEqual(sizes, tc.sizes) {
				t.Errorf("batch sizes %v, want %v", sizes, tc.sizes)
			}
		})
	}
}

// TestScanTableColumns checks that a subset of columns decodes only those
// fields, and that asking for a column the table lacks is an error.
func TestScanTableColumns(t *testing.T) {
	data := writeParquet(t, manySamples(50))
	got, _, err := scanAll[traces.GPUSample](data, 16, traces.Columns("time_ns", "sm_active"), traces.Columns("uuid"))
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range got {
		want := traces.GPUSample{TimeNs: int64(i) * 1e8, SMActive: float32(i%10) / 10, UUID: []string{"GPU-a", "GPU-b"}[i%2]}
		if s != want {
			t.Fatalf("row %d = %+v, want only the three columns: %+v", i, s, want)
		}
	}
	steps := writeParquet(t, []traces.Step{{Rank: 1, Iteration: 2}})
	_, _, err = scanAll[traces.GPUSample](steps, 16, traces.Columns("time_ns"))
	if !errors.Is(err, traces.ErrCorruptTable) || !strings.Contains(err.Error(), `"time_ns"`) {
		t.Errorf("missing column: error %v, want ErrCorruptTable naming time_ns", err)
	}
	_, _, err = scanAll[traces.GPUSample](data, 16, traces.Columns("no_such_field"))
	if err == nil || errors.Is(err, traces.ErrCorruptTable) || !strings.Contains(err.Error(), "GPUSample has no field") {
		t.Errorf("unknown field: error %v, want one naming the row type", err)
	}
}

// loose is a table written with other physical types, optional and
// dictionary-encoded numbers: it decodes through the converting path.
type loose struct {
	TimeNs  int32   `parquet:"time_ns"`
	GPU     int64   `parquet:"gpu,dict"`
	GPUUtil float64 `parquet:"gpu_util"`
	PowerW  float32 `parquet:"power_w,optional"`
	Valid   int32   `parquet:"prof_valid"`
	UUID    string  `parquet:"uuid,optional"`
	Extra   string  `parquet:"not_in_gpu_sample"`
}

func TestScanTableConverts(t *testing.T) {
	data := writeParquet(t, []loose{
		{TimeNs: 5, GPU: 3, GPUUtil: 42.5, PowerW: 300, Valid: 1, UUID: "GPU-x", Extra: "x"},
		{TimeNs: -1, GPU: 7, GPUUtil: -1}, // zero power and UUID are written as nulls
	})
	got, _, err := scanAll[traces.GPUSample](data, 8)
	if err != nil {
		t.Fatal(err)
	}
	want := []traces.GPUSample{
		{TimeNs: 5, GPU: 3, GPUUtil: 42.5, PowerW: 300, ProfValid: true, UUID: "GPU-x"},
		{TimeNs: -1, GPU: 7, GPUUtil: -1},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}

// TestTableReader checks the pull interface: row count, reads up to the
// end of a row group, io.EOF after the last row and after Close.
func TestTableReader(t *testing.T) {
	data := writeParquet(t, manySamples(10), parquet.MaxRowsPerRowGroup(6))
	tr, err := traces.NewTableReader[traces.GPUSample](bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if tr.NumRows() != 10 {
		t.Errorf("NumRows = %d, want 10", tr.NumRows())
	}
	buf := make([]traces.GPUSample, 4)
	var ns []int
	for {
		n, err := tr.Read(buf)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		ns = append(ns, n)
	}
	if want := []int{4, 2, 4}; !reflect.DeepEqual(ns, want) {
		t.Errorf("reads of %v rows, want %v", ns, want)
	}
	tr.Close()
	if n, err := tr.Read(buf); n != 0 || err == nil {
		t.Errorf("Read after Close = %d, %v; want an error", n, err)
	}
}

// TestScanTableRefusesHostileFiles checks the guard in front of the
// decoder: each damage gets an error wrapping ErrCorruptTable, before
// anything is allocated from the sizes the file claims.
func TestScanTableRefusesHostileFiles(t *testing.T) {
	good := writeParquet(t, manySamples(100))
	footer := func(n uint32) []byte {
		b := bytes.Clone(good)
		binary.LittleEndian.PutUint32(b[len(b)-8:], n)
		return b
	}
	for _, tc := range []struct {
		name, want string
		data       []byte
	}{
		{"empty", "too short", nil},
		{"not parquet", "no PAR1 magic", []byte("this is not a parquet file at all")},
		{"footer past the file", "footer of", footer(uint32(len(good)))},
		{"footer of 4 GiB", "footer of", footer(1<<32 - 1)},
		{"truncated", "", good[:len(good)/2]},
		{"lz4", "codec", writeParquet(t, manySamples(10), parquet.Compression(&lz4.Codec{}))},
		{"row count not its groups'", "metadata lists 7 rows", withMetadata(t, good, func(md *format.FileMetaData) { md.NumRows = 7 })},
		{"row count wraps", "rows after", withMetadata(t, good, func(md *format.FileMetaData) {
			md.RowGroups = append(md.RowGroups, md.RowGroups[0])
			md.RowGroups[0].NumRows = 1<<63 - 1
		})},
		{"page header garbage", "", func() []byte {
			b := bytes.Clone(good)
			for i := 4; i < 64; i++ {
				b[i] = 0xff
			}
			return b
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := traces.ReadTable[traces.GPUSample](bytes.NewReader(tc.data), int64(len(tc.data)))
			if !errors.Is(err, traces.ErrCorruptTable) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want ErrCorruptTable saying %q", err, tc.want)
			}
		})
	}
}

// withMetadata rewrites the footer of a Parquet file after edit.
func withMetadata(t *testing.T, data []byte, edit func(*format.FileMetaData)) []byte {
	t.Helper()
	n := binary.LittleEndian.Uint32(data[len(data)-8:])
	footer := data[len(data)-8-int(n) : len(data)-8]
	var md format.FileMetaData
	if err := thrift.Unmarshal(new(thrift.CompactProtocol), footer, &md); err != nil {
		t.Fatal(err)
	}
	edit(&md)
	b, err := thrift.Marshal(new(thrift.CompactProtocol), &md)
	if err != nil {
		t.Fatal(err)
	}
	out := append(bytes.Clone(data[:len(data)-8-int(n)]), b...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(b)))
	return append(out, "PAR1"...)
}

func TestScanTableReturnsCallbackError(t *testing.T) {
	data := writeParquet(t, manySamples(20))
	stop := errors.New("stop")
	calls := 0
	err := traces.ScanTable(bytes.NewReader(data), int64(len(data)), make([]traces.GPUSample, 5), func([]traces.GPUSample) error {
		calls++
		return stop
	})
	if err != stop || calls != 1 {
		t.Errorf("error %v after %d calls, want the callback's error after 1", err, calls)
	}
	if err := traces.ScanTable(bytes.NewReader(data), int64(len(data)), nil, func([]traces.GPUSample) error { return nil }); err == nil {
		t.Error("ScanTable with an empty buffer did not fail")
	}
}

// FuzzScanTable feeds arbitrary bytes to the guarded decoder, as each row
// type and as a subset of columns: it returns rows or an error that says
// the table is corrupt, never panics, hangs or runs out of memory.
func FuzzScanTable(f *testing.F) {
	gpu, nccl, steps, _ := testTables()
	for _, data := range [][]byte{
		writeParquet(f, gpu), writeParquet(f, nccl), writeParquet(f, steps),
		writeParquet(f, manySamples(300), parquet.MaxRowsPerRowGroup(100), parquet.PageBufferSize(1024)),
	} {
		f.Add(data)
		f.Add(data[:len(data)/2])
		f.Add(data[len(data)/3:])
		flipped := bytes.Clone(data)
		flipped[len(flipped)/2] ^= 0x5a
		f.Add(flipped)
	}
	f.Add([]byte("PAR1PAR1"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(err error) {
			if err != nil && !errors.Is(err, traces.ErrCorruptTable) {
				t.Errorf("error %v does not say the table is corrupt", err)
			}
		}
		_, _, err := scanAll[traces.GPUSample](data, 64)
		check(err)
		_, _, err = scanAll[traces.NCCLEvent](data, 64)
		check(err)
		_, _, err = scanAll[traces.Step](data, 64)
		check(err)
		_, _, err = scanAll[traces.GPUSample](data, 64, traces.Columns("time_ns", "gpu"))
		check(err)
	})
}

// TestScanTableRowCount checks that RowCount learns the row count before
// any row is decoded, and that its error ends the scan.
func TestScanTableRowCount(t *testing.T) {
	data := writeParquet(t, manySamples(30), parquet.MaxRowsPerRowGroup(10))
	var seen int64 = -1
	decoded := 0
	tooBig := errors.New("too big")
	err := traces.ScanTable(bytes.NewReader(data), int64(len(data)), make([]traces.GPUSample, 8), func(b []traces.GPUSample) error {
		decoded += len(b)
		return nil
	}, traces.RowCount(func(n int64) error {
		seen = n
		if decoded != 0 {
			t.Errorf("RowCount called after %d rows were decoded", decoded)
		}
		return tooBig
	}))
	if err != tooBig || seen != 30 || decoded != 0 {
		t.Errorf("error %v, row count %d, %d rows decoded; want the hint's error, 30, 0", err, seen, decoded)
	}
}

// BenchmarkReadTable compares the column decoder with parquet-go's row
// reader on a gpu_samples table of 100,000 rows: streamed in batches (as
// the analyzers read), streamed for the five columns a fleet view reads,
// and read whole into memory.
func BenchmarkReadTable(b *testing.B) {
	rows := manySamples(100_000)
	data := writeParquet(b, rows)
	r := bytes.NewReader(data)
	buf := make([]traces.GPUSample, 4096)
	scan := func(opts ...traces.ScanOption) func() (int, error) {
		return func() (int, error) {
			n := 0
			err := traces.ScanTable(r, int64(len(data)), buf, func(b []traces.GPUSample) error { n += len(b); return nil }, opts...)
			return n, err
		}
	}
	for _, bc := range []struct {
		name string
		read func() (int, error)
	}{
		{"scan", scan()},
		{"scan-5-columns", scan(traces.Columns("time_ns", "gpu", "prof_valid", "sm_active", "power_w"))},
		{"read-whole", func() (int, error) {
			got, err := traces.ReadTable[traces.GPUSample](r, int64(len(data)))
			return len(got), err
		}},
		{"parquet-go-rows", func() (int, error) {
			got, err := parquet.Read[traces.GPUSample](r, int64(len(data)))
			return len(got), err
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				n, err := bc.read()
				if err != nil || n != len(rows) {
					b.Fatalf("%d rows, %v", n, err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(rows)), "ns/row")
		})
	}
}
