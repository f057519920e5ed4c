// Package observe holds the plain values the pipeline reports about the
// batches Redis acknowledged. It is a leaf: the pipeline fills them and
// metrics counts them, and neither needs the other's types (nor mapping's
// or replication's) to do so.
package observe

import (
	"time"

	"github.com/walbust/walbust/replication/wal"
)

// Batch is what one application to Redis covered. Its slices belong to the
// caller: an observer must not keep them past the call.
type Batch struct {
	Txs        []Tx    // in commit order, at least one
	EndLSN     wal.LSN // end of the last transaction: the position now applied
	Overflowed int     // transactions that exceeded max_tx_changes
	// Changes counts row changes of registered tables, Unmapped those of
	// published tables no rule maps, Problems the changes whose keys could
	// not all be derived.
	Changes, Unmapped, Problems []Count
	// Invalidations counts what was sent to Redis, by action and kind.
	Invalidations  []Invalidations
	Keys           int // invalidations in the batch
	Unrendered     int // keys skipped because a value they need was not sent
	Lookups        int // lookup queries run
	Patterns       int // patterns scanned
	PatternMatches int // keys found by pattern scans
	Attempts       int // attempts to apply the batch to Redis
	Acked          time.Time
}

// Tx is one transaction of a batch.
type Tx struct {
	CommitTime time.Time
	Heartbeat  time.Time // zero unless the transaction carried a heartbeat
}

// Count is how many changes of one operation (insert, update, delete,
// truncate) one table saw.
type Count struct {
	Table, Op string
	N         int
}

// Invalidations is how many invalidations of one action (as deps.yaml
// names it) and kind went to Redis.
type Invalidations struct {
	Action  string
	Pattern bool
	N       int
}

// PatternPass is one pass that applied the patterns of one or more
// batches: one walk of the keyspace (when some pattern is scanned) and the
// index sets of indexed patterns.
type PatternPass struct {
	Duration    time.Duration
	Patterns    int  // distinct patterns served
	Batches     int  // batches it covered
	KeysScanned int  // keys SCAN returned, matched against the patterns
	Matches     int  // keys the patterns matched (scanned or in an index)
	IndexHits   int  // keys found in index sets
	Scanned     bool // a SCAN ran (not every pattern is index-only)
	Attempts    int
	// Commits are the commit times of the transactions whose patterns it
	// applied: commit to Acked is their pattern lag.
	Commits []time.Time
	Acked   time.Time
}
