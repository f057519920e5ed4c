package main

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/walbust/walbust/checkpoint"
	"github.com/walbust/walbust/replication"
)

// Postgres exposes no identity for a replication slot (no OID, no creation
// time), so a slot dropped and re-created under the same name looks like the
// old one. What tells them apart is an invariant walbust keeps: it never
// confirms a position to the slot before that position is in the checkpoint
// file (applied positions are saved, then confirmed; idle positions are saved
// through SaveIdle first). So a slot whose confirmed position is past a
// checkpoint that carries an identity was moved by something else: re-created
// (it starts at the current WAL position), advanced by hand, or consumed by a
// walbust with a different checkpoint file. In every case the changes in
// between were never streamed here, which is a slot loss.

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
	if found {
		if c.Identity != nil && *c.Identity != here {
			return fmt.Errorf("checkpoint %s is another deployment's position: it records %s, but this is %s "+
				"(a file copied from elsewhere, kept while the cluster was re-initialised, or another slot's). Resuming from it would skip changes. "+
				"Point checkpoint.path at this deployment's own file, or remove %s so walbust starts from slot %q's confirmed position "+
				"(flush the caches fed by these tables first if changes may have been missed)",
				d.store.Path(), c.Identity, here, d.store.Path(), d.cfg.Postgres.Slot)
		}
		if c.LSN > srv.WALFlush {
			return fmt.Errorf("checkpoint %s is at %s, beyond this server's current WAL position %s (system_identifier %s), "+
				"so it did not come from this server. Resuming from it would skip every change up to it and confirm that position to slot %q. "+
				"Remove %s so walbust starts from the slot's confirmed position, or restore this deployment's own checkpoint file",
				d.store.Path(), c.LSN, srv.WALFlush, srv.SystemID, d.cfg.Postgres.Slot, d.store.Path())
		}
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
	if slot.ConfirmedFlushLSN > srv.WALFlush {
		return d.slotLost(ctx, fmt.Errorf("%w: slot %q has confirmed %s, beyond this server's current WAL position %s: "+
			"a client confirmed a position from elsewhere, and the slot skips every change up to it, so it must be dropped "+
			"(SELECT pg_drop_replication_slot('%s')) before `walbust setup` creates it again",
			replication.ErrSlotLost, slot.Name, slot.ConfirmedFlushLSN, srv.WALFlush, slot.Name))
	}
	switch {
	case !found:
		return nil
	case c.Identity == nil:
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
		return nil
	case slot.ConfirmedFlushLSN > c.LSN:
		return d.slotLost(ctx, d.slotAhead(slot, c.LSN))
	}
	return nil
}

func (d *daemon) slotAhead(slot *replication.SlotInfo, stored replication.LSN) error {
	return fmt.Errorf("%w: slot %q has confirmed %s, past checkpoint %s at %s, and walbust never confirms past its checkpoint: "+
		"the slot was dropped and re-created, advanced by hand, or used by a walbust with another checkpoint file, "+
		"so the changes between %s and %s were never streamed here",
		replication.ErrSlotLost, slot.Name, slot.ConfirmedFlushLSN, d.store.Path(), stored, stored, slot.ConfirmedFlushLSN)
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
	if c.Identity != nil && slot.ConfirmedFlushLSN > c.LSN {
		return d.slotAhead(slot, c.LSN)
	}
	return nil
}
