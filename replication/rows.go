package replication

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/walbust/walbust/replication/wal"
)

// Row changes (Insert, Update, Delete) are decoded here, in place, instead
// of by pglogrepl: its TupleData decoder allocates a struct and a copy for
// every column (three quarters of walbust's allocations when profiled), and
// trusts the lengths it reads, so a corrupt message could make it allocate
// gigabytes or index past the end. Here the values alias the message and
// every length is checked against the bytes present. Everything else
// (Begin, Commit, Relation, streaming, Truncate, messages) stays pglogrepl's.
//
// Wire format (protocol 2): Byte1 kind, [Int32 xid when in a stream],
// Int32 relation, then per kind:
//
//	'I': 'N' TupleData
//	'U': ['K' | 'O' TupleData] 'N' TupleData
//	'D': 'K' | 'O' TupleData
//
// TupleData: Int16 n, then n columns: 'n' (NULL), 'u' (unchanged TOAST),
// or 't' Int32 len Byte[len] (text).
func (d *Decoder[S]) decodeRow(data []byte) error {
	kind := data[0]
	r := rowReader{b: data[1:]}
	if d.inStream {
		r.u32() // the (sub)transaction's xid; Stream Start named the top-level one
	}
	relID := r.u32()
	if r.err != nil {
		return d.malformed(kind, r.err)
	}
	op := rowOps[kind]
	tx, err := d.current(op.String())
	if err != nil {
		return err
	}
	rel, ok := d.relations[relID]
	if !ok {
		return fmt.Errorf("%s on unknown relation %d", op, relID)
	}
	c := &d.change
	*c = wal.Change{Op: op, Relation: rel}
	marker := r.byte()
	switch {
	case kind == 'I' && marker == 'N':
		c.New, d.new = tuple(&r, rel, d.new, "new row", false)
	case kind == 'U' && (marker == 'K' || marker == 'O'):
		c.Old, d.old = tuple(&r, rel, d.old, "old row", marker == 'K')
		if next := r.byte(); r.err == nil && next != 'N' {
			return fmt.Errorf("parse pgoutput message %q: expected 'N' after the old tuple, got %q", kind, next)
		}
		c.New, d.new = tuple(&r, rel, d.new, "new row", false)
	case kind == 'U' && marker == 'N':
		c.New, d.new = tuple(&r, rel, d.new, "new row", false)
	case kind == 'D' && (marker == 'K' || marker == 'O'):
		c.Old, d.old = tuple(&r, rel, d.old, "old row", marker == 'K')
	case r.err == nil:
		return fmt.Errorf("parse pgoutput message %q: unexpected tuple marker %q", kind, marker)
	}
	if r.err != nil {
		return d.rowError(op, rel, kind, r.err)
	}
	if c.Old != nil && c.New != nil {
		// An unchanged TOASTed value is not sent in the new image; the old
		// image (replica identity FULL) has it.
		for i, v := range c.New {
			if v.Kind == wal.Unchanged && (c.Old[i].Kind == wal.Text || c.Old[i].Kind == wal.Null) {
				c.New[i] = c.Old[i]
			}
		}
	}
	tx.Sink.Add(c)
	return nil
}

var rowOps = [256]wal.Op{'I': wal.Insert, 'U': wal.Update, 'D': wal.Delete}

func (d *Decoder[S]) rowError(op wal.Op, rel *wal.Relation, kind byte, err error) error {
	var colErr *columnError
	if errors.As(err, &colErr) {
		return fmt.Errorf("%s on %s: %w", op, rel.QualifiedName(), err)
	}
	return d.malformed(kind, err)
}

func (d *Decoder[S]) malformed(kind byte, err error) error {
	return fmt.Errorf("malformed pgoutput message (type %q): %w", kind, err)
}

// columnError is a well-framed tuple that does not fit its relation.
type columnError struct{ msg string }

func (e *columnError) Error() string { return e.msg }

// tuple reads TupleData (image names it in errors) into buf (grown as needed) and returns the values
// and the buffer for reuse. In a key-only image the non-key columns arrive
// as NULLs that mean "not sent", so they become Missing.
func tuple(r *rowReader, rel *wal.Relation, buf []wal.Value, image string, keyOnly bool) ([]wal.Value, []wal.Value) {
	n := int(r.u16())
	if r.err != nil {
		return nil, buf
	}
	if n != len(rel.Columns) {
		skipColumns(r, n) // a framing error, if any, says more than the count
		r.fail(&columnError{fmt.Sprintf("%s: %d columns, relation has %d", image, n, len(rel.Columns))})
		return nil, buf
	}
	if cap(buf) < n {
		buf = make([]wal.Value, n)
	}
	vals := buf[:n]
	for i := range vals {
		switch k := r.byte(); k {
		case 'n':
			vals[i] = wal.Value{Kind: wal.Null}
			if keyOnly && !rel.Columns[i].Key {
				vals[i].Kind = wal.Missing
			}
		case 'u':
			vals[i] = wal.Value{Kind: wal.Unchanged}
		case 't':
			vals[i] = wal.Value{Kind: wal.Text, Data: r.bytes(int(r.u32()))}
		case 'b':
			// Only text output is requested (no "binary" plugin option).
			r.fail(&columnError{fmt.Sprintf("column %s: unsupported tuple data type %q", rel.Columns[i].Name, k)})
		default:
			if r.err == nil {
				r.fail(fmt.Errorf("column %s: unknown column kind %q", rel.Columns[i].Name, k))
			}
		}
		if r.err != nil {
			return nil, buf
		}
	}
	return vals, buf
}

func skipColumns(r *rowReader, n int) {
	for range n {
		switch k := r.byte(); k {
		case 'n', 'u':
		case 't', 'b':
			r.bytes(int(r.u32()))
		default:
			r.fail(fmt.Errorf("unknown column kind %q", k))
		}
		if r.err != nil {
			return
		}
	}
}

// rowReader reads big-endian fields, recording the first shortfall.
type rowReader struct {
	b   []byte
	err error
}

func (r *rowReader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *rowReader) need(n int) bool {
	if r.err != nil {
		return false
	}
	if n < 0 || len(r.b) < n {
		r.err = fmt.Errorf("truncated: %d bytes left, %d needed", len(r.b), n)
		return false
	}
	return true
}

func (r *rowReader) byte() byte {
	if !r.need(1) {
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *rowReader) u16() uint16 {
	if !r.need(2) {
		return 0
	}
	v := binary.BigEndian.Uint16(r.b)
	r.b = r.b[2:]
	return v
}

func (r *rowReader) u32() uint32 {
	if !r.need(4) {
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

// bytes returns the next n bytes without copying; full capacity is cut so
// an append by a consumer cannot write into the following column.
func (r *rowReader) bytes(n int) []byte {
	if !r.need(n) {
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// checkTruncateLength verifies a Truncate's relation count against the
// bytes present before pglogrepl allocates what it claims.
func checkTruncateLength(data []byte, inStream bool) error {
	if len(data) == 0 || data[0] != 'T' {
		return nil
	}
	r := rowReader{b: data[1:]}
	if inStream {
		r.u32()
	}
	n := r.u32()
	r.byte() // options
	if r.err == nil && uint64(n)*4 > uint64(len(r.b)) {
		r.err = fmt.Errorf("truncate message claims %d relations in %d bytes", n, len(r.b))
	}
	if r.err != nil {
		return fmt.Errorf("malformed pgoutput message (type 'T'): %w", r.err)
	}
	return nil
}
