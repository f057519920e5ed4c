package daemon

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/walbust/walbust/checkpoint"
	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

// Postgres exposes no identity for a replication slot (no OID, no creation
// time), so a slot dropped and re-created under the same name looks like the
// old one. What tells them apart is an invariant walbust keeps: it never
// confirms a position to the slot before that position is in its
// checkpoint file and in the applied watermark in Redis (applied positions
// are written with their batch, then saved, then confirmed; idle positions
// go through SaveIdle first). So a slot whose confirmed position is past a
// checkpoint that carries an identity was moved by a peer with another
// checkpoint file, which the watermark then covers (see watermark.go), or
// by something else: re-created (it starts at the current WAL position) or
// advanced by hand. In those cases the changes in between were never
// streamed by any walbust, which is a slot loss.

// bindCheckpoint refuses a checkpoint that is not this server's and slot's,
// and makes every later save record whose position it is.
func (d *daemon) bindCheckpoint(ctx context.Context) error {
	// The file first, then the server: a position saved by another instance
	// meanwhile is then never past the WAL position read after it.
	c, found, err := d.store.Read()
	if err != nil {
		return err
	}
	srv, err := replication.Identify(ctx, d.cfg.Postgres.URL)
	if err != nil {
		return err
	}
	here := checkpoint.Identity{SystemID: srv.SystemID, Database: srv.Database, Slot: d.cfg.Postgres.Slot}
	switch judgeCheckpoint(c, found, here, srv.WALFlush) {
	case checkpointElsewhere:
		return fmt.Errorf("checkpoint %s is another deployment's position: it records %s, but this is %s "+
			"(a file copied from elsewhere, kept while the cluster was re-initialised, or another slot's). Resuming from it would skip changes. "+
			"Point checkpoint.path at this deployment's own file, or remove %s so walbust starts from slot %q's confirmed position "+
			"(flush the caches fed by these tables first if changes may have been missed)",
			d.store.Path(), c.Identity, here, d.store.Path(), d.cfg.Postgres.Slot)
	case checkpointBeyondWAL:
		return fmt.Errorf("checkpoint %s is at %s, beyond this server's current WAL position %s (system_identifier %s), "+
			"so it did not come from this server. Resuming from it would skip every change up to it and confirm that position to slot %q. "+
			"Remove %s so walbust starts from the slot's confirmed position, or restore this deployment's own checkpoint file",
			d.store.Path(), c.LSN, srv.WALFlush, srv.SystemID, d.cfg.Postgres.Slot, d.store.Path())
	}
	d.store.Bind(here)
	return nil
}

// checkSlotPosition compares the slot, looked up just before, with the
// server's WAL and the checkpoint, and rewrites a checkpoint that has no
// identity yet.
func (d *daemon) checkSlotPosition(ctx context.Context, slot *replication.SlotInfo) error {
	// Read after the slot lookup: another instance saves before it
	// confirms, so the file is then never behind the slot it looked at.
	c, found, err := d.store.Read()
	if err != nil {
		return err
	}
	srv, err := replication.Identify(ctx, d.cfg.Postgres.URL)
	if err != nil {
		return err
	}
	switch judgeSlot(c, found, slot.ConfirmedFlushLSN, srv.WALFlush) {
	case slotBeyondWAL:
		return d.slotLost(ctx, fmt.Errorf("%w: slot %q has confirmed %s, beyond this server's current WAL position %s: "+
			"a client confirmed a position from elsewhere, and the slot skips every change up to it, so it must be dropped "+
			"(SELECT pg_drop_replication_slot('%s')) before `walbust setup` creates it again",
			replication.ErrSlotLost, slot.Name, slot.ConfirmedFlushLSN, srv.WALFlush, slot.Name))
	case slotRewriteIdentity:
		// Written before identities were recorded, and past the WAL check:
		// accepted this once. The slot may be ahead of it (older versions
		// confirmed idle positions unsaved); streaming resumes from the
		// larger of the two anyway, so that is what is recorded.
		lsn := max(c.LSN, slot.ConfirmedFlushLSN)
		if err := d.store.Save(lsn); err != nil {
			return fmt.Errorf("rewrite checkpoint with its identity: %w", err)
		}
		d.log.Info("checkpoint rewritten with the identity of its server and slot", zap.String("checkpoint", d.store.Path()),
			zap.Stringer("was", c.LSN), zap.Stringer("lsn", lsn))
	case slotAheadOfCheckpoint:
		cov, err := d.awaitWatermark(ctx, slot, c.LSN, srv.WALFlush)
		if err != nil {
			return err
		}
		if !cov.ok {
			return d.slotLost(ctx, d.slotAhead(slot, c.LSN, cov.why))
		}
		d.logPeerProgress(slot, c.LSN, cov.mark)
		// Resumed from the slot's position anyway; recorded so that the
		// next start does not ask Redis again.
		if err := d.store.Save(slot.ConfirmedFlushLSN); err != nil {
			return fmt.Errorf("move the checkpoint to the slot's position: %w", err)
		}
	}
	return nil
}

func (d *daemon) slotAhead(slot *replication.SlotInfo, stored wal.LSN, watermark string) error {
	return fmt.Errorf("%w: slot %q has confirmed %s, past checkpoint %s at %s %s, and walbust never confirms a position before "+
		"recording it in both: the slot was dropped and re-created, or advanced by hand, "+
		"so the changes between %s and %s were never streamed by any walbust",
		replication.ErrSlotLost, slot.Name, slot.ConfirmedFlushLSN, d.store.Path(), stored, watermark, stored, slot.ConfirmedFlushLSN)
}

// recheckSlot runs before every reconnect: a slot re-created while the
// connection was down is otherwise resumed from silently. A missing slot is
// left to START_REPLICATION, which reports it as lost.
func (d *daemon) recheckSlot(ctx context.Context) error {
	conn, err := connectSQL(ctx, d.cfg.Postgres.URL)
	if err != nil {
		return err
	}
	defer closeQuietly(ctx, conn)
	slot, err := replication.LookupSlot(ctx, conn, d.cfg.Postgres.Slot)
	if errors.Is(err, replication.ErrNoSlot) {
		return nil
	}
	if err != nil {
		return err
	}
	if slot.Active {
		return nil // another instance streams: its checkpoint moves with the slot, and START_REPLICATION waits
	}
	// After the slot lookup, as in checkSlotPosition.
	c, _, err := d.store.Read()
	if err != nil {
		return fmt.Errorf("%w: %w", replication.ErrFatal, err)
	}
	if !needsWatermarkOnReconnect(c, slot.Active, slot.ConfirmedFlushLSN) {
		return nil
	}
	// Typically a peer streamed while this instance was disconnected.
	srv, err := replication.Identify(ctx, d.cfg.Postgres.URL)
	if err != nil {
		return err
	}
	cov, err := d.watermarkCovers(ctx, slot, srv.WALFlush)
	if err != nil {
		// Not fatal: the streamer reconnects with backoff and asks again,
		// streaming nothing until Redis answers.
		return fmt.Errorf("slot %q has confirmed %s, past checkpoint %s at %s, and Redis cannot be read to tell whether another walbust "+
			"applied up to it (key %s); retrying: %w", slot.Name, slot.ConfirmedFlushLSN, d.store.Path(), c.LSN, protocol.AppliedKey(d.cfg.Postgres.Slot), err)
	}
	if !cov.ok {
		return d.slotAhead(slot, c.LSN, cov.why)
	}
	d.logPeerProgress(slot, c.LSN, cov.mark)
	return nil
}
