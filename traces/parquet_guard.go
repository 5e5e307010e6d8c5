package traces

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/parquet-go/parquet-go/format"
)

// The Parquet decoder trusts the sizes it reads from a file: the footer
// length, page sizes, and the lengths of strings inside page headers, each
// up to 2-4 GiB. A part from the store is outside input, so before decoding
// the guard below checks them against the bytes that are really there and
// against fixed limits, with a minimal reader of Thrift's compact protocol
// (the encoding of Parquet's headers) that allocates nothing.

// maxFooterBytes bounds the Parquet footer (the file's metadata).
const maxFooterBytes = 16 << 20

// maxChunkBytes bounds one column chunk, stored or decoded.
const maxChunkBytes = 512 << 20

// maxThriftDepth bounds nesting inside a page header.
const maxThriftDepth = 16

// checkFooter validates the footer's length before the decoder allocates it.
func checkFooter(r io.ReaderAt, size int64) error {
	var tail [8]byte
	if size < 12 {
		return fmt.Errorf("%w: %d bytes is too short for Parquet", ErrCorruptTable, size)
	}
	if _, err := r.ReadAt(tail[:], size-8); err != nil {
		return fmt.Errorf("%w: reading footer: %v", ErrCorruptTable, err)
	}
	if string(tail[4:]) != "PAR1" {
		return fmt.Errorf("%w: no PAR1 magic at the end (encrypted or not Parquet)", ErrCorruptTable)
	}
	if n := int64(binary.LittleEndian.Uint32(tail[:4])); n > size-12 || n > maxFooterBytes {
		return fmt.Errorf("%w: footer of %d bytes in a file of %d (limit %d)", ErrCorruptTable, n, size, maxFooterBytes)
	}
	return nil
}

// checkChunks refuses codecs the decoder cannot bound (parquet-go's LZ4
// codec doubles its buffer until a corrupt block decodes, which is never)
// and walks every column chunk's page headers, checking each size against
// the chunk and the limits.
func checkChunks(r io.ReaderAt, size int64, md *format.FileMetaData) error {
	var rows int64
	for i, rg := range md.RowGroups {
		// The total is what callers learn (NumRows, RowCount): it must
		// not wrap, and the file's own count must match it (below).
		if rg.NumRows < 0 || rows+rg.NumRows < rows {
			return fmt.Errorf("%w: row group %d has %d rows after %d", ErrCorruptTable, i, rg.NumRows, rows)
		}
		rows += rg.NumRows
		for _, c := range rg.Columns {
			m := c.MetaData
			switch m.Codec {
			case format.Uncompressed, format.Snappy, format.Gzip, format.Zstd:
			default:
				return fmt.Errorf("%w: column %v uses codec %v; write Parquet with zstd, snappy or gzip", ErrCorruptTable, m.PathInSchema, m.Codec)
			}
			if m.TotalUncompressedSize < 0 || m.TotalUncompressedSize > maxChunkBytes {
				return fmt.Errorf("%w: column %v claims %d bytes decoded, limit %d", ErrCorruptTable, m.PathInSchema, m.TotalUncompressedSize, maxChunkBytes)
			}
			start := m.DataPageOffset
			if m.DictionaryPageOffset > 0 && m.DictionaryPageOffset < start {
				start = m.DictionaryPageOffset
			}
			n := m.TotalCompressedSize
			if start < 4 || n < 0 || n > maxChunkBytes || start > size-n {
				return fmt.Errorf("%w: column %v lies outside the file (offset %d, %d bytes, file %d)", ErrCorruptTable, m.PathInSchema, start, n, size)
			}
			if err := checkPages(io.NewSectionReader(r, start, n), n); err != nil {
				return fmt.Errorf("%w: column %v: %v", ErrCorruptTable, m.PathInSchema, err)
			}
		}
	}
	if md.NumRows != rows {
		return fmt.Errorf("%w: metadata lists %d rows, its row groups %d", ErrCorruptTable, md.NumRows, rows)
	}
	return nil
}

// checkPages walks the page headers of one column chunk of n bytes.
func checkPages(r io.Reader, n int64) error {
	t := &thriftWalker{r: bufio.NewReaderSize(r, 4096), left: n}
	for t.left > 0 {
		var uncompressed, compressed int64 = -1, -1
		err := t.walkStruct(0, func(id int16, v int64) {
			switch id {
			case 2:
				uncompressed = v
			case 3:
				compressed = v
			}
		})
		if err != nil {
			return fmt.Errorf("page header: %w", err)
		}
		if uncompressed < 0 || uncompressed > maxChunkBytes || compressed < 0 || compressed > t.left {
			return fmt.Errorf("page of %d bytes (%d decoded) in the %d bytes left of its chunk", compressed, uncompressed, t.left)
		}
		if err := t.skip(compressed); err != nil {
			return err
		}
	}
	return nil
}

// thriftWalker reads Thrift compact-protocol values without keeping them,
// checking every length against the bytes left.
type thriftWalker struct {
	r    *bufio.Reader
	left int64
}

var errThriftTooDeep = errors.New("thrift nesting too deep")

func (t *thriftWalker) byte() (byte, error) {
	if t.left <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	b, err := t.r.ReadByte()
	if err != nil {
		return 0, io.ErrUnexpectedEOF
	}
	t.left--
	return b, nil
}

func (t *thriftWalker) skip(n int64) error {
	if n < 0 || n > t.left {
		return fmt.Errorf("length %d exceeds the %d bytes left", n, t.left)
	}
	if _, err := t.r.Discard(int(n)); err != nil {
		return io.ErrUnexpectedEOF
	}
	t.left -= n
	return nil
}

func (t *thriftWalker) uvarint() (uint64, error) {
	var v uint64
	for shift := 0; shift < 64; shift += 7 {
		b, err := t.byte()
		if err != nil {
			return 0, err
		}
		v |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return v, nil
		}
	}
	return 0, errors.New("varint too long")
}

func (t *thriftWalker) zigzag() (int64, error) {
	u, err := t.uvarint()
	return int64(u>>1) ^ -int64(u&1), err
}

// length reads a collection or binary length and checks it against the
// bytes left (every element takes at least one byte).
func (t *thriftWalker) length() (int64, error) {
	u, err := t.uvarint()
	if err != nil {
		return 0, err
	}
	if u > uint64(t.left) {
		return 0, fmt.Errorf("length %d exceeds the %d bytes left", u, t.left)
	}
	return int64(u), nil
}

// walkStruct walks a struct, reporting its integer fields to fn (depth 0
// only; fn may be nil).
func (t *thriftWalker) walkStruct(depth int, fn func(id int16, v int64)) error {
	if depth > maxThriftDepth {
		return errThriftTooDeep
	}
	var id int16
	for {
		b, err := t.byte()
		if err != nil {
			return err
		}
		if b == 0 {
			return nil
		}
		typ := b & 0x0f
		if delta := int16(b >> 4); delta != 0 {
			id += delta
		} else {
			v, err := t.zigzag()
			if err != nil {
				return err
			}
			id = int16(v)
		}
		if typ == 5 || typ == 6 || typ == 4 { // i16, i32, i64
			v, err := t.zigzag()
			if err != nil {
				return err
			}
			if fn != nil {
				fn(id, v)
			}
			continue
		}
		if err := t.walkValue(typ, depth); err != nil {
			return err
		}
	}
}

// walkValue skips one value of a compact-protocol type.
func (t *thriftWalker) walkValue(typ byte, depth int) error {
	switch typ {
	case 1, 2: // bool in a field header: no payload
		return nil
	case 3:
		_, err := t.byte()
		return err
	case 4, 5, 6:
		_, err := t.uvarint()
		return err
	case 7:
		return t.skip(8)
	case 8:
		n, err := t.length()
		if err != nil {
			return err
		}
		return t.skip(n)
	case 9, 10: // list, set
		b, err := t.byte()
		if err != nil {
			return err
		}
		n, elem := int64(b>>4), b&0x0f
		if n == 15 {
			if n, err = t.length(); err != nil {
				return err
			}
		}
		for range n {
			if elem == 1 || elem == 2 { // bools in a collection take a byte
				elem = 3
			}
			if err := t.walkValue(elem, depth+1); err != nil {
				return err
			}
		}
		return nil
	case 11: // map
		n, err := t.length()
		if err != nil || n == 0 {
			return err
		}
		kv, err := t.byte()
		if err != nil {
			return err
		}
		k, v := kv>>4, kv&0x0f
		for range n {
			if err := t.walkValue(k, depth+1); err != nil {
				return err
			}
			if err := t.walkValue(v, depth+1); err != nil {
				return err
			}
		}
		return nil
	case 12:
		return t.walkStruct(depth+1, nil)
	}
	return fmt.Errorf("unknown thrift type %d", typ)
}
