package replication

import (
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// Decoder assembles pgoutput (protocol version 2) messages into committed
// transactions, including transactions that Postgres streams while they
// are still in progress. It keeps the relation cache, which must outlive
// reconnects: the server only resends a Relation message when it thinks
// we lack it.
type Decoder struct {
	relations map[uint32]*Relation
	tx        *Transaction            // the non-streamed transaction being received
	streams   map[uint32]*Transaction // in-progress streamed transactions by xid
	inStream  bool                    // between Stream Start and Stream Stop: ParseV2 needs to know
	streamXid uint32

	// MaxChanges caps the row changes kept per transaction; past it, the
	// changes of relations for which Collapsible is true are replaced by one
	// Truncate change each (Overflow set), so memory stays bounded and the
	// consumer falls back to the table's on_truncate rules. Zero: no cap.
	MaxChanges  int
	Collapsible func(*Relation) bool
}

// NewDecoder returns a Decoder with an empty relation cache.
func NewDecoder() *Decoder {
	return &Decoder{relations: map[uint32]*Relation{}, streams: map[uint32]*Transaction{}}
}

// InTransaction reports whether some transaction has begun and not ended.
func (d *Decoder) InTransaction() bool { return d.tx != nil || len(d.streams) > 0 }

// Reset forgets partially received transactions; used after a reconnect,
// since the server sends them again from the start.
func (d *Decoder) Reset() {
	d.tx, d.inStream = nil, false
	clear(d.streams)
}

// Decode consumes one pgoutput message. It returns the transaction when msg
// is its commit, and the relation when msg described one (so callers can
// check it against the registry).
func (d *Decoder) Decode(walData []byte) (tx *Transaction, relation *Relation, err error) {
	msg, err := d.parse(walData)
	if err != nil {
		return nil, nil, err
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessageV2:
		rel := &Relation{ID: m.RelationID, Namespace: m.Namespace, Name: m.RelationName, ReplicaIdentity: m.ReplicaIdentity}
		rel.Columns = make([]Column, len(m.Columns))
		for i, c := range m.Columns {
			rel.Columns[i] = Column{Name: c.Name, TypeOID: c.DataType, Key: c.Flags&1 == 1}
		}
		d.relations[rel.ID] = rel
		return nil, rel, nil
	case *pglogrepl.BeginMessage:
		d.tx = &Transaction{Xid: m.Xid, CommitTime: m.CommitTime}
	case *pglogrepl.CommitMessage:
		if d.tx == nil {
			return nil, nil, fmt.Errorf("commit at %s without begin", m.CommitLSN)
		}
		tx, d.tx = d.tx, nil
		tx.CommitLSN, tx.EndLSN, tx.CommitTime = m.CommitLSN, m.TransactionEndLSN, m.CommitTime
		return tx, nil, nil
	case *pglogrepl.StreamStartMessageV2:
		d.inStream, d.streamXid = true, m.Xid
		if d.streams[m.Xid] == nil {
			d.streams[m.Xid] = &Transaction{Xid: m.Xid}
		}
	case *pglogrepl.StreamStopMessageV2:
		d.inStream = false
	case *pglogrepl.StreamCommitMessageV2:
		tx = d.streams[m.Xid]
		if tx == nil {
			return nil, nil, fmt.Errorf("stream commit of unknown transaction %d", m.Xid)
		}
		delete(d.streams, m.Xid)
		tx.CommitLSN, tx.EndLSN, tx.CommitTime = m.CommitLSN, m.TransactionEndLSN, m.CommitTime
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
	case *pglogrepl.InsertMessageV2:
		return nil, nil, d.add(m.RelationID, Insert, 0, nil, m.Tuple)
	case *pglogrepl.UpdateMessageV2:
		return nil, nil, d.add(m.RelationID, Update, m.OldTupleType, m.OldTuple, m.NewTuple)
	case *pglogrepl.DeleteMessageV2:
		return nil, nil, d.add(m.RelationID, Delete, m.OldTupleType, m.OldTuple, nil)
	case *pglogrepl.TruncateMessageV2:
		cur, err := d.current("truncate")
		if err != nil {
			return nil, nil, err
		}
		for _, id := range m.RelationIDs {
			rel, ok := d.relations[id]
			if !ok {
				return nil, nil, fmt.Errorf("truncate of unknown relation %d", id)
			}
			cur.Changes = append(cur.Changes, Change{Op: Truncate, Relation: rel})
		}
	}
	// Origin, Type and logical decoding messages carry nothing to invalidate.
	return nil, nil, nil
}

// current is the transaction a row change belongs to.
func (d *Decoder) current(what string) (*Transaction, error) {
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

func (d *Decoder) add(relID uint32, op Op, oldType uint8, old, new *pglogrepl.TupleData) error {
	tx, err := d.current(op.String())
	if err != nil {
		return err
	}
	rel, ok := d.relations[relID]
	if !ok {
		return fmt.Errorf("%s on unknown relation %d", op, relID)
	}
	if tx.overflow != nil && d.Collapsible(rel) {
		tx.collapse(rel)
		return nil
	}
	c := Change{Op: op, Relation: rel}
	if old != nil {
		if c.Old, err = values(rel, old, oldType == pglogrepl.UpdateMessageTupleTypeKey); err != nil {
			return fmt.Errorf("%s on %s: old row: %w", op, rel.QualifiedName(), err)
		}
	}
	if new != nil {
		if c.New, err = values(rel, new, false); err != nil {
			return fmt.Errorf("%s on %s: new row: %w", op, rel.QualifiedName(), err)
		}
		if c.Old != nil {
			// An unchanged TOASTed value is not sent in the new image; the
			// old image (replica identity FULL) has it.
			for i, v := range c.New {
				if v.Kind == Unchanged && (c.Old[i].Kind == Text || c.Old[i].Kind == Null) {
					c.New[i] = c.Old[i]
				}
			}
		}
	}
	tx.Changes = append(tx.Changes, c)
	if d.MaxChanges > 0 && tx.overflow == nil && len(tx.Changes) > d.MaxChanges && d.Collapsible != nil {
		tx.startOverflow(d.Collapsible)
	}
	return nil
}

// startOverflow replaces the changes of collapsible relations by one
// Truncate change per relation.
func (tx *Transaction) startOverflow(collapsible func(*Relation) bool) {
	tx.overflow = map[uint32]bool{}
	kept := tx.Changes[:0]
	for _, c := range tx.Changes {
		if c.Op != Truncate && collapsible(c.Relation) {
			if !tx.overflow[c.Relation.ID] {
				tx.overflow[c.Relation.ID] = true
				kept = append(kept, Change{Op: Truncate, Relation: c.Relation, Overflow: true})
			}
			continue
		}
		kept = append(kept, c)
	}
	clear(tx.Changes[len(kept):]) // let the dropped rows be collected
	tx.Changes = kept
	tx.Overflowed = true
}

func (tx *Transaction) collapse(rel *Relation) {
	if !tx.overflow[rel.ID] {
		tx.overflow[rel.ID] = true
		tx.Changes = append(tx.Changes, Change{Op: Truncate, Relation: rel, Overflow: true})
	}
}

// values converts a tuple. In a key-only image the non-key columns arrive as
// NULLs that mean "not sent", so they become Missing.
func values(rel *Relation, t *pglogrepl.TupleData, keyOnly bool) ([]Value, error) {
	if len(t.Columns) != len(rel.Columns) {
		return nil, fmt.Errorf("%d columns, relation has %d", len(t.Columns), len(rel.Columns))
	}
	out := make([]Value, len(t.Columns))
	for i, col := range t.Columns {
		switch {
		case keyOnly && !rel.Columns[i].Key:
			out[i] = Value{Kind: Missing}
		case col.DataType == pglogrepl.TupleDataTypeNull:
			out[i] = Value{Kind: Null}
		case col.DataType == pglogrepl.TupleDataTypeToast:
			out[i] = Value{Kind: Unchanged}
		case col.DataType == pglogrepl.TupleDataTypeText:
			out[i] = Value{Kind: Text, Data: col.Data} // pglogrepl copied it out of the receive buffer
		default:
			return nil, fmt.Errorf("column %s: unsupported tuple data type %q", rel.Columns[i].Name, col.DataType)
		}
	}
	return out, nil
}

// parse wraps pglogrepl.ParseV2: its tuple decoder indexes without bounds
// checks, and a malformed message must become an error, not a crash.
func (d *Decoder) parse(data []byte) (msg pglogrepl.Message, err error) {
	defer func() {
		if r := recover(); r != nil {
			msg, err = nil, fmt.Errorf("malformed pgoutput message (type %q, %d bytes): %v", firstByte(data), len(data), r)
		}
	}()
	if len(data) == 0 {
		return nil, fmt.Errorf("empty pgoutput message")
	}
	if err := checkLengths(data, d.inStream); err != nil {
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
