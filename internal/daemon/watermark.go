package daemon

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

// Every walbust records in Redis how far it applied a slot's changes (the
// applied watermark, protocol.AppliedKey) before it checkpoints or
// confirms that position. A slot confirmed past this instance's checkpoint
// but not past the watermark was moved by a peer, one with its own
// checkpoint file (high availability without a shared disk): every change
// up to the slot is in Redis. Past both, no walbust applied what lies in
// between: the slot was re-created or advanced by hand, a slot loss.

// watermarkTimeout bounds one read or write of the watermark.
const watermarkTimeout = 2 * time.Second

// watermarkRetry is how often the start check asks Redis again.
const watermarkRetry = 2 * time.Second

// saveIdle records an idle position (the server's WAL end, past the last
// applied batch) in Redis, then in the checkpoint file: the streamer
// confirms it only when both succeeded, so a peer never finds the slot past
// the watermark. One attempt: the streamer tries again at its next report.
func (d *daemon) saveIdle(lsn wal.LSN) error {
	ctx, cancel := context.WithTimeout(context.Background(), watermarkTimeout)
	defer cancel()
	if err := d.inv.SaveWatermark(ctx, lsn); err != nil {
		return err
	}
	return d.store.Save(lsn)
}

// covered is what the watermark says about a slot ahead of the checkpoint.
type covered struct {
	ok   bool
	mark wal.LSN
	why  string // when not ok: what the watermark was, for the slot-loss error
}

// watermarkCovers reads the watermark and says whether it reaches the
// slot's confirmed position (see watermarkVerdict). An error means Redis did
// not answer: nothing is decided then.
func (d *daemon) watermarkCovers(ctx context.Context, slot *replication.SlotInfo, walFlush wal.LSN) (covered, error) {
	ctx, cancel := context.WithTimeout(ctx, watermarkTimeout)
	defer cancel()
	mark, found, err := d.inv.Watermark(ctx)
	return watermarkVerdict(protocol.AppliedKey(d.cfg.Postgres.Slot), slot.ConfirmedFlushLSN, walFlush, mark, found, err)
}

// awaitWatermark is watermarkCovers at start: while Redis does not answer
// it waits rather than decide, since a guess either resyncs (or refuses to
// start) when a peer merely took over, or resumes a re-created slot. Not
// ready meanwhile: the stream has not started.
func (d *daemon) awaitWatermark(ctx context.Context, slot *replication.SlotInfo, stored, walFlush wal.LSN) (covered, error) {
	start, lastLog := time.Now(), time.Time{}
	for {
		c, err := d.watermarkCovers(ctx, slot, walFlush)
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return covered{}, ctx.Err()
		}
		if time.Since(lastLog) >= redisWaitLog {
			d.log.Error("slot confirmed past this instance's checkpoint, and Redis cannot be read to tell whether another walbust applied up to it; "+
				"waiting for Redis before streaming", zap.String("slot", slot.Name), zap.Stringer("slot_confirmed_lsn", slot.ConfirmedFlushLSN),
				zap.Stringer("checkpoint_lsn", stored), zap.String("redis_key", protocol.AppliedKey(d.cfg.Postgres.Slot)),
				zap.Duration("waiting", time.Since(start).Round(time.Second)), zap.Error(err))
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return covered{}, ctx.Err()
		case <-time.After(watermarkRetry):
		}
	}
}

func (d *daemon) logPeerProgress(slot *replication.SlotInfo, stored, mark wal.LSN) {
	key := protocol.AppliedKey(d.cfg.Postgres.Slot)
	d.log.Info(fmt.Sprintf("slot confirmed past this instance's checkpoint; another walbust applied up to %s (redis %s)", mark, key),
		zap.String("slot", slot.Name), zap.Stringer("slot_confirmed_lsn", slot.ConfirmedFlushLSN), zap.Stringer("checkpoint_lsn", stored),
		zap.Stringer("applied_lsn", mark), zap.String("redis_key", key))
}
