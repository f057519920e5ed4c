// Package pgoutputtest builds pgoutput protocol messages by hand, for tests
// and benchmarks that exercise decoding without a server.
package pgoutputtest

import (
	"encoding/binary"
	"time"
)

// Column describes a relation column in a Relation message.
type Column struct {
	Name string
	Key  bool
	Type uint32
}

var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func u16(b []byte, v uint16) []byte { return binary.BigEndian.AppendUint16(b, v) }
func u32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }
func u64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }
func str(b []byte, s string) []byte { return append(append(b, s...), 0) }

// Relation is an 'R' message.
func Relation(id uint32, namespace, name string, identity byte, cols []Column) []byte {
	b := []byte{'R'}
	b = u32(b, id)
	b = str(b, namespace)
	b = str(b, name)
	b = append(b, identity)
	b = u16(b, uint16(len(cols)))
	for _, c := range cols {
		flag := byte(0)
		if c.Key {
			flag = 1
		}
		b = append(b, flag)
		b = str(b, c.Name)
		typ := c.Type
		if typ == 0 {
			typ = 25 // text
		}
		b = u32(b, typ)
		b = u32(b, 0xFFFFFFFF) // atttypmod -1
	}
	return b
}

// Begin is a 'B' message.
func Begin(finalLSN uint64, commit time.Time, xid uint32) []byte {
	b := []byte{'B'}
	b = u64(b, finalLSN)
	b = u64(b, uint64(commit.Sub(pgEpoch).Microseconds()))
	return u32(b, xid)
}

// Commit is a 'C' message.
func Commit(commitLSN, endLSN uint64, commit time.Time) []byte {
	b := []byte{'C', 0}
	b = u64(b, commitLSN)
	b = u64(b, endLSN)
	return u64(b, uint64(commit.Sub(pgEpoch).Microseconds()))
}

// Value is one tuple column: nil is NULL, Unchanged is 'u'.
type Value []byte

// Unchanged marks an unchanged TOASTed value.
var Unchanged = Value("\x00unchanged")

// Tuple encodes TupleData.
func Tuple(b []byte, vals ...Value) []byte {
	b = u16(b, uint16(len(vals)))
	for _, v := range vals {
		switch {
		case v == nil:
			b = append(b, 'n')
		case string(v) == string(Unchanged):
			b = append(b, 'u')
		default:
			b = append(b, 't')
			b = u32(b, uint32(len(v)))
			b = append(b, v...)
		}
	}
	return b
}

// Insert is an 'I' message.
func Insert(rel uint32, vals ...Value) []byte {
	b := u32([]byte{'I'}, rel)
	return Tuple(append(b, 'N'), vals...)
}

// Update is a 'U' message; oldKind is 0 (no old tuple), 'K' or 'O'.
func Update(rel uint32, oldKind byte, old, new []Value) []byte {
	b := u32([]byte{'U'}, rel)
	if oldKind != 0 {
		b = Tuple(append(b, oldKind), old...)
	}
	return Tuple(append(b, 'N'), new...)
}

// Delete is a 'D' message; oldKind is 'K' or 'O'.
func Delete(rel uint32, oldKind byte, old []Value) []byte {
	b := u32([]byte{'D'}, rel)
	return Tuple(append(b, oldKind), old...)
}

// Truncate is a 'T' message.
func Truncate(rels ...uint32) []byte {
	b := u32([]byte{'T'}, uint32(len(rels)))
	b = append(b, 0)
	for _, r := range rels {
		b = u32(b, r)
	}
	return b
}
