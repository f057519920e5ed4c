// Package replication turns a pgoutput logical replication stream into
// committed transactions.
package replication

import (
	"time"

	"github.com/walbust/walbust/replication/wal"
)

// HeartbeatPrefix marks walbust's own logical decoding messages.
const HeartbeatPrefix = "walbust.heartbeat"

// Transaction is a committed transaction.
type Transaction struct {
	Xid        uint32
	CommitLSN  wal.LSN // start of the commit record
	EndLSN     wal.LSN // end of the commit record: the position to confirm
	CommitTime time.Time
	// Sink received the row changes (see Decoder.NewSink).
	Sink Sink
	// Changes are the row changes in order, kept only when the decoder had
	// no NewSink.
	Changes []wal.Change
	// Heartbeat is when walbust emitted the heartbeat message this
	// transaction carries (zero if none): its round trip is the true lag.
	Heartbeat time.Time
}
