// Package replication turns a pgoutput logical replication stream into
// committed transactions.
package replication

import (
	"time"

	"github.com/walbust/walbust/replication/wal"
)

// HeartbeatPrefix marks walbust's own logical decoding messages.
const HeartbeatPrefix = "walbust.heartbeat"

// Transaction is what is known of a committed transaction besides its rows.
type Transaction struct {
	Xid        uint32
	CommitLSN  wal.LSN // start of the commit record
	EndLSN     wal.LSN // end of the commit record: the position to confirm
	CommitTime time.Time
	// Changes are the row changes in order, kept only by a Decoder from
	// NewDecoder (the collecting one).
	Changes []wal.Change
	// Heartbeat is when walbust emitted the heartbeat message this
	// transaction carries (zero if none): its round trip is the true lag.
	Heartbeat time.Time
}

// Committed is a committed transaction with the Sink its row changes went
// to: the consumer gets back the sink its Begin returned, as its own type.
type Committed[S Sink] struct {
	Transaction
	Sink S
}
