package pipeline

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/walbust/walbust/replication"
)

// checkpointer saves the applied position in the background, so the
// applier never waits for an fsync: while one save runs, later batches are
// applied, and the next save covers them all. Saves are at least interval
// apart: the streamer reports new positions to Postgres at most every
// 100ms, so saving more often than that buys nothing (when profiled, a save
// per small transaction was a third of walbust's CPU). Only a saved
// position is acknowledged, and so only a saved position is ever confirmed
// to Postgres.
type checkpointer struct {
	store    Store
	kick     chan struct{}
	interval time.Duration

	mu         sync.Mutex
	appliedLSN replication.LSN // applied to Redis
	appliedTxs uint64
	savedLSN   replication.LSN // durably saved: the acknowledged position
	savedTxs   uint64
}

func newCheckpointer(store Store, start replication.LSN) *checkpointer {
	return &checkpointer{store: store, kick: make(chan struct{}, 1), interval: 100 * time.Millisecond, appliedLSN: start, savedLSN: start}
}

// applied records that Redis acknowledged everything up to lsn, txs more
// transactions.
func (c *checkpointer) applied(lsn replication.LSN, txs int) {
	c.mu.Lock()
	c.appliedLSN = lsn
	c.appliedTxs += uint64(txs)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default: // a save is already due; it will take this position too
	}
}

func (c *checkpointer) acknowledged() (replication.LSN, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.savedLSN, c.savedTxs
}

// run saves whenever something new was applied, until ctx ends.
func (c *checkpointer) run(ctx context.Context) error {
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.kick:
		}
		if wait := time.Until(last.Add(c.interval)); wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		last = time.Now()
		if err := c.flush(); err != nil {
			return err
		}
	}
}

// flush saves the applied position if it is newer than the saved one.
func (c *checkpointer) flush() error {
	c.mu.Lock()
	lsn, txs, saved := c.appliedLSN, c.appliedTxs, c.savedLSN
	c.mu.Unlock()
	if lsn <= saved {
		c.mu.Lock()
		c.savedTxs = max(c.savedTxs, txs) // transactions skipped as replays still count as acknowledged
		c.mu.Unlock()
		return nil
	}
	if err := c.store.Save(lsn); err != nil {
		return fmt.Errorf("checkpoint %s: %w", lsn, err)
	}
	c.mu.Lock()
	c.savedLSN, c.savedTxs = lsn, txs
	c.mu.Unlock()
	return nil
}
