// Package wal is the change model every stage shares: positions in the
// write-ahead log, and row changes as logical replication describes them.
// It imports no Postgres client, so mapping, the invalidator and metrics
// use it without depending on how the stream is read.
package wal

import "slices"

// Op is the kind of row change.
type Op uint8

// Row change kinds.
const (
	Insert Op = iota + 1
	Update
	Delete
	Truncate
)

func (o Op) String() string {
	switch o {
	case Insert:
		return "insert"
	case Update:
		return "update"
	case Delete:
		return "delete"
	case Truncate:
		return "truncate"
	}
	return "unknown"
}

// Kind says what is known about one column's value in a row image.
type Kind uint8

// Value kinds. Missing and Unchanged both mean "the stream did not say", for
// different reasons; consumers must not treat either as NULL.
const (
	Missing   Kind = iota // not sent: a non-key column in a key-only old image
	Null                  // SQL NULL
	Unchanged             // unchanged TOASTed value, not sent ('u')
	Text                  // text representation in Data
)

// Value is one column of a row image.
type Value struct {
	Kind Kind
	Data []byte // text form, as Postgres's output function printed it
}

// Column describes one column of a published relation.
type Column struct {
	Name    string
	TypeOID uint32
	Key     bool // part of the replica identity
}

// Relation is a published table as the stream last described it.
type Relation struct {
	ID              uint32
	Namespace       string
	Name            string
	ReplicaIdentity byte // 'd' default, 'n' nothing, 'f' full, 'i' index
	Columns         []Column
}

// QualifiedName is "schema.table", parts quoted as ParseQualifiedName
// reads them.
func (r *Relation) QualifiedName() string { return QualifiedName(r.Namespace, r.Name) }

// ColumnNames returns the relation's column names.
func (r *Relation) ColumnNames() []string {
	names := make([]string, len(r.Columns))
	for i, c := range r.Columns {
		names[i] = c.Name
	}
	return names
}

// HasColumn reports whether the relation has the named column.
func (r *Relation) HasColumn(name string) bool {
	return slices.ContainsFunc(r.Columns, func(c Column) bool { return c.Name == name })
}

// Change is one row change within a transaction.
type Change struct {
	Op       Op
	Relation *Relation
	// Old is the old row image (UPDATE, DELETE) or nil when the stream sent
	// none. With the default replica identity only key columns are present;
	// the others are Missing.
	Old []Value
	// New is the new row image (INSERT, UPDATE).
	New []Value
}
