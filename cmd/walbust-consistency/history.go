package main

import (
	"sort"
	"sync"
	"time"

	"github.com/walbust/walbust/replication/wal"
)

// history records, per row, every committed value and when its commit
// returned to the writer. Values only grow (val = val + 1 under the row
// lock), so a read that returns v is stale at window w if a value above v
// had committed more than w before the read began.
type history struct {
	rows []rowHistory
}

type rowHistory struct {
	mu   sync.Mutex
	at   []time.Time // commit acknowledged, in append order (monotonic)
	high []int64     // the largest value committed up to this entry
	// lower[v]: a lower bound of the commit LSN of the write that made
	// the value v; seen[v]: the largest fence LSN a load that read v had
	// observed (mode (b), primary readers).
	lower map[int64]wal.LSN
	seen  map[int64]wal.LSN
}

func newHistory(rows int) *history {
	return &history{rows: make([]rowHistory, rows+1)}
}

func (h *history) committed(id int, val int64, lowerLSN wal.LSN) {
	r := &h.rows[id]
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lower == nil {
		r.lower = map[int64]wal.LSN{}
	}
	r.lower[val] = lowerLSN
	high := val
	if n := len(r.high); n > 0 && r.high[n-1] > high {
		high = r.high[n-1]
	}
	r.at = append(r.at, time.Now()) // taken under the lock: appends stay in time order
	r.high = append(r.high, high)
}

// required is the smallest value a read that began at start may return
// without being stale at window w.
func (h *history) required(id int, start time.Time, w time.Duration) int64 {
	r := &h.rows[id]
	r.mu.Lock()
	defer r.mu.Unlock()
	cut := start.Add(-w)
	i := sort.Search(len(r.at), func(i int) bool { return r.at[i].After(cut) })
	if i == 0 {
		return 0
	}
	return r.high[i-1]
}

func (h *history) loaded(id int, val int64, fenceLSN wal.LSN) {
	r := &h.rows[id]
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = map[int64]wal.LSN{}
	}
	r.seen[val] = max(r.seen[val], fenceLSN)
}

// fencedBeforeVisible reports whether some load read val after it had seen
// a tombstone at or past the commit of val+1. Writes of a row serialise on
// its lock, so the only fence of that row at or past the lower bound of
// val+1's commit LSN is val+1's own or a later one: the load saw that write
// fenced, yet its query did not see the write committed.
func (h *history) fencedBeforeVisible(id int, val int64) bool {
	r := &h.rows[id]
	r.mu.Lock()
	defer r.mu.Unlock()
	lower, ok := r.lower[val+1]
	return ok && r.seen[val] >= lower && r.seen[val] > 0
}
