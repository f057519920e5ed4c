package replication

import (
	"bytes"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/walbust/walbust/replication/wal"
)

// Sink takes a transaction's row changes as they are decoded, so the
// consumer keeps only what it derives from them (cache keys), never the
// rows: a million-row UPDATE must not mean a million row images in memory.
// The Change and its values are valid only during Add: they alias the
// message being decoded.
type Sink interface {
	Add(c *wal.Change)
}

// Decoder assembles pgoutput (protocol version 2) messages into committed
// transactions, including transactions that Postgres streams while they
// are still in progress. Each transaction's row changes go to a sink of
// type S as they are decoded. It keeps the relation cache, which must
// outlive reconnects: the server only resends a Relation message when it
// thinks we lack it.
type Decoder[S Sink] struct {
	relations map[uint32]*wal.Relation
	tx        *Committed[S]            // the non-streamed transaction being received
	streams   map[uint32]*Committed[S] // in-progress streamed transactions by xid
	inStream  bool                     // between Stream Start and Stream Stop: ParseV2 needs to know
	streamXid uint32
	begin     func(*Transaction) S // gives each transaction its sink

	change   wal.Change // reused for every row change
	old, new []wal.Value
}

// NewDecoder returns a Decoder with an empty relation cache that keeps
// copies of the changes in Transaction.Changes, for tools and tests that
// want the rows themselves.
func NewDecoder() *Decoder[Sink] {
	return newDecoder(func(tx *Transaction) Sink { return (*collector)(tx) })
}

// NewSinkDecoder returns a Decoder with an empty relation cache that gives
// each transaction the sink begin returns when the transaction begins.
func NewSinkDecoder[S Sink](begin func() S) *Decoder[S] {
	return newDecoder(func(*Transaction) S { return begin() })
}

func newDecoder[S Sink](begin func(*Transaction) S) *Decoder[S] {
	return &Decoder[S]{relations: map[uint32]*wal.Relation{}, streams: map[uint32]*Committed[S]{}, begin: begin}
}

// InTransaction reports whether some transaction has begun and not ended.
func (d *Decoder[S]) InTransaction() bool { return d.tx != nil || len(d.streams) > 0 }

// Reset forgets partially received transactions; used after a reconnect,
// since the server sends them again from the start.
func (d *Decoder[S]) Reset() {
	d.tx, d.inStream = nil, false
	clear(d.streams)
}

func (d *Decoder[S]) newTransaction(xid uint32) *Committed[S] {
	tx := &Committed[S]{Transaction: Transaction{Xid: xid}}
	tx.Sink = d.begin(&tx.Transaction)
	return tx
}

// Decode consumes one pgoutput message. It returns the transaction when msg
// is its commit, and the relation when msg described one (so callers can
// check it against the registry).
func (d *Decoder[S]) Decode(walData []byte) (tx *Committed[S], relation *wal.Relation, err error) {
	if len(walData) == 0 {
		return nil, nil, fmt.Errorf("empty pgoutput message")
	}
	switch walData[0] {
	case 'I', 'U', 'D':
		// Row changes are the bulk of the stream: decoded in place (see
		// rows.go) rather than by pglogrepl, which allocates per column.
		return nil, nil, d.decodeRow(walData)
	}
	msg, err := d.parse(walData)
	if err != nil {
		return nil, nil, err
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessageV2:
		rel := &wal.Relation{ID: m.RelationID, Namespace: m.Namespace, Name: m.RelationName, ReplicaIdentity: m.ReplicaIdentity}
		rel.Columns = make([]wal.Column, len(m.Columns))
		for i, c := range m.Columns {
			rel.Columns[i] = wal.Column{Name: c.Name, TypeOID: c.DataType, Key: c.Flags&1 == 1}
		}
		d.relations[rel.ID] = rel
		return nil, rel, nil
	case *pglogrepl.BeginMessage:
		d.tx = d.newTransaction(m.Xid)
		d.tx.CommitTime = m.CommitTime
	case *pglogrepl.CommitMessage:
		if d.tx == nil {
			return nil, nil, fmt.Errorf("commit at %s without begin", m.CommitLSN)
		}
		tx, d.tx = d.tx, nil
		tx.CommitLSN, tx.EndLSN, tx.CommitTime = wal.LSN(m.CommitLSN), wal.LSN(m.TransactionEndLSN), m.CommitTime
		return tx, nil, nil
	case *pglogrepl.StreamStartMessageV2:
		d.inStream, d.streamXid = true, m.Xid
		if d.streams[m.Xid] == nil {
			d.streams[m.Xid] = d.newTransaction(m.Xid)
		}
	case *pglogrepl.StreamStopMessageV2:
		d.inStream = false
	case *pglogrepl.StreamCommitMessageV2:
		tx = d.streams[m.Xid]
		if tx == nil {
			return nil, nil, fmt.Errorf("stream commit of unknown transaction %d", m.Xid)
		}
		delete(d.streams, m.Xid)
		tx.CommitLSN, tx.EndLSN, tx.CommitTime = wal.LSN(m.CommitLSN), wal.LSN(m.TransactionEndLSN), m.CommitTime
		return tx, nil, nil
	case *pglogrepl.StreamAbortMessageV2:
		// Only a top-level abort discards the transaction. Changes of an
		// aborted subtransaction are kept: they invalidate a little more than
		// needed, which is harmless, and tracking subxids is not.
		if m.SubXid == m.Xid {
			delete(d.streams, m.Xid)
		}
	case *pglogrepl.LogicalDecodingMessageV2:
		if m.Prefix == HeartbeatPrefix && m.Transactional {
			if cur, err := d.current("message"); err == nil {
				var nanos int64
				if _, err := fmt.Sscanf(string(m.Content), "%d", &nanos); err == nil {
					cur.Heartbeat = time.Unix(0, nanos)
				}
			}
		}
	case *pglogrepl.TruncateMessageV2:
		cur, err := d.current("truncate")
		if err != nil {
			return nil, nil, err
		}
		for _, id := range m.RelationIDs {
			if _, ok := d.relations[id]; !ok {
				return nil, nil, fmt.Errorf("truncate of unknown relation %d", id)
			}
		}
		for _, id := range m.RelationIDs {
			d.change = wal.Change{Op: wal.Truncate, Relation: d.relations[id]}
			cur.Sink.Add(&d.change)
		}
	}
	// Origin, Type and other logical decoding messages carry nothing to invalidate.
	return nil, nil, nil
}

// current is the transaction a row change belongs to.
func (d *Decoder[S]) current(what string) (*Committed[S], error) {
	if d.inStream {
		if tx := d.streams[d.streamXid]; tx != nil {
			return tx, nil
		}
		return nil, fmt.Errorf("%s in a stream of unknown transaction %d", what, d.streamXid)
	}
	if d.tx == nil {
		return nil, fmt.Errorf("%s outside a transaction", what)
	}
	return d.tx, nil
}

// parse wraps pglogrepl.ParseV2 for the messages other than row changes:
// its decoders index without bounds checks, and a malformed message must
// become an error, not a crash.
func (d *Decoder[S]) parse(data []byte) (msg pglogrepl.Message, err error) {
	defer func() {
		if r := recover(); r != nil {
			msg, err = nil, fmt.Errorf("malformed pgoutput message (type %q, %d bytes): %v", firstByte(data), len(data), r)
		}
	}()
	if err := checkTruncateLength(data, d.inStream); err != nil {
		return nil, err
	}
	msg, err = pglogrepl.ParseV2(data, d.inStream)
	if err != nil {
		return nil, fmt.Errorf("parse pgoutput message %q: %w", data[0], err)
	}
	return msg, nil
}

func firstByte(b []byte) byte {
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

// collector is the Sink of a Decoder from NewDecoder: it keeps copies of
// the changes, for tools and tests that want the rows themselves.
type collector Transaction

func (c *collector) Add(ch *wal.Change) {
	cp := *ch
	cp.Old, cp.New = copyValues(ch.Old), copyValues(ch.New)
	c.Changes = append(c.Changes, cp)
}

func copyValues(vs []wal.Value) []wal.Value {
	if vs == nil {
		return nil
	}
	out := make([]wal.Value, len(vs))
	for i, v := range vs {
		out[i] = wal.Value{Kind: v.Kind, Data: bytes.Clone(v.Data)}
	}
	return out
}
