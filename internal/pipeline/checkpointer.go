package pipeline

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/walbust/walbust/internal/retry"
	"github.com/walbust/walbust/replication/wal"
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
	// retryFor bounds how long saves may keep failing before run gives up.
	retryFor time.Duration
	health   Health
	log      *zap.Logger

	mu         sync.Mutex
	appliedLSN wal.LSN // applied to Redis
	appliedTxs uint64
	savedLSN   wal.LSN // durably saved: the acknowledged position
	savedTxs   uint64
}

func newCheckpointer(store Store, start wal.LSN, retryFor time.Duration, health Health, log *zap.Logger) *checkpointer {
	return &checkpointer{store: store, kick: make(chan struct{}, 1), interval: 100 * time.Millisecond,
		retryFor: retryFor, health: health, log: log, appliedLSN: start, savedLSN: start}
}

// applied records that Redis acknowledged everything up to lsn, txs more
// transactions.
func (c *checkpointer) applied(lsn wal.LSN, txs int) {
	c.mu.Lock()
	c.appliedLSN = lsn
	c.appliedTxs += uint64(txs)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default: // a save is already due; it will take this position too
	}
}

func (c *checkpointer) acknowledged() (wal.LSN, uint64) {
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
		if err := c.flushRetrying(ctx); err != nil {
			return err
		}
	}
}

// flushRetrying saves, retrying a failing save (a full or read-only disk)
// with capped backoff while Health reports the stall, for at most retryFor.
// Redis keeps being invalidated meanwhile; only acknowledgements stop.
func (c *checkpointer) flushRetrying(ctx context.Context) error {
	var first time.Time
	backoff := retry.Backoff{Initial: 100 * time.Millisecond, Max: 5 * time.Second, Jitter: retry.Equal}
	for attempt := 1; ; attempt++ {
		err := c.flush()
		if err == nil {
			if attempt > 1 {
				c.health.Recovered(StallCheckpoint)
				c.log.Info("checkpoint saved again", zap.String("path", storePath(c.store)), zap.Int("attempts", attempt))
			}
			return nil
		}
		if first.IsZero() {
			first = time.Now()
		}
		c.health.Stalled(StallCheckpoint, err)
		failing := time.Since(first)
		if failing >= c.retryFor {
			return fmt.Errorf("checkpoint %s could not be saved for %s (checkpoint.retry_timeout); exiting so a supervisor restarts walbust "+
				"once the disk is fixed: %w", storePath(c.store), failing.Round(time.Millisecond), err)
		}
		// Never past retryFor, so the give-up is on time.
		wait := min(backoff.Next(), c.retryFor-failing)
		c.log.Error("cannot save the checkpoint; nothing is acknowledged to Postgres until it is saved, retrying",
			zap.String("path", storePath(c.store)), zap.Error(err), zap.Int("attempt", attempt),
			zap.Duration("failing_for", failing.Round(time.Millisecond)), zap.Duration("gives_up_after", c.retryFor), zap.Duration("retry_in", wait))
		if retry.Sleep(ctx, wait) != nil {
			return nil // the final flush in Pipeline.Run tries once more
		}
	}
}

// storePath names the store in logs, when it has a path.
func storePath(s Store) string {
	if p, ok := s.(interface{ Path() string }); ok {
		return p.Path()
	}
	return fmt.Sprintf("%T", s)
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
