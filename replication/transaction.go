// Package replication turns a pgoutput logical replication stream into
// committed transactions.
package replication

import (
	"time"

	"github.com/jackc/pglogrepl"
)

// LSN is a position in the write-ahead log.
type LSN = pglogrepl.LSN

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

// HeartbeatPrefix marks walbust's own logical decoding messages.
const HeartbeatPrefix = "walbust.heartbeat"

// Transaction is a committed transaction.
type Transaction struct {
	Xid        uint32
	CommitLSN  LSN // start of the commit record
	EndLSN     LSN // end of the commit record: the position to confirm
	CommitTime time.Time
	// Sink received the row changes (see Decoder.NewSink).
	Sink Sink
	// Changes are the row changes in order, kept only when the decoder had
	// no NewSink.
	Changes []Change
	// Heartbeat is when walbust emitted the heartbeat message this
	// transaction carries (zero if none): its round trip is the true lag.
	Heartbeat time.Time
}
