package daemon

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/walbust/walbust/internal/validate"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

// preflight refuses to start when streaming could only lose invalidations:
// no slot, a lost slot, or a registry that does not match the database.
func (d *daemon) preflight(ctx context.Context) error {
	conn, err := connectSQL(ctx, d.cfg.Postgres.URL)
	if err != nil {
		return err
	}
	defer closeQuietly(ctx, conn)
	if err := d.checkPublication(ctx, conn); err != nil {
		return err
	}
	problems, err := validate.Registry(ctx, conn, d.reg, d.cfg.Postgres.Publication)
	if err != nil {
		return err
	}
	if problems, err = d.bindTables(ctx, conn, problems); err != nil {
		return err
	}
	if len(problems) > 0 {
		return UsageError{fmt.Errorf("deps registry does not match the database (see walbust validate):\n%w", problems)}
	}
	for _, w := range d.reg.Warnings {
		d.log.Warn(w)
	}
	for _, w := range ClusterWarnings(d.cfg, d.reg) {
		d.log.Warn(w)
	}
	if err := d.bindCheckpoint(ctx); err != nil {
		return err
	}
	slot, err := replication.LookupSlot(ctx, conn, d.cfg.Postgres.Slot)
	exists := !errors.Is(err, replication.ErrNoSlot)
	if err != nil && exists {
		return err
	}
	var stored wal.LSN
	if !exists {
		if stored, err = d.store.Load(); err != nil {
			return err
		}
	}
	switch judgeSlotAtStart(slot, stored) {
	case startNeedsSetup:
		return UsageError{fmt.Errorf("replication slot %q does not exist: run `walbust setup` first", d.cfg.Postgres.Slot)}
	case startSlotDropped:
		// A checkpoint without its slot: the slot was dropped, or this is a
		// promoted standby that never had it.
		return d.slotLost(ctx, fmt.Errorf("%w: slot %q does not exist but checkpoint %s says walbust streamed from it", replication.ErrSlotLost, d.cfg.Postgres.Slot, stored))
	case startSlotLost:
		return d.slotLost(ctx, fmt.Errorf("%w: slot %q has wal_status=lost: Postgres removed WAL it still needed", replication.ErrSlotLost, slot.Name))
	}
	if err := d.checkSlotPosition(ctx, slot); err != nil {
		return err
	}
	if stored, err = d.store.Load(); err != nil {
		return err
	}
	d.log.Info("resuming", zap.Stringer("slot_confirmed_lsn", slot.ConfirmedFlushLSN), zap.Stringer("checkpoint_lsn", stored),
		zap.Stringer("from", max(stored, slot.ConfirmedFlushLSN)))
	return nil
}

// slotLost applies on_slot_loss. With resync it recreates the slot first and
// only then invalidates everything derivable from on_truncate rules, so no
// change falls between the invalidation and the new slot's start.
func (d *daemon) slotLost(ctx context.Context, cause error) error {
	switch judgeSlotLoss(d.cfg.OnSlotLoss, cause) {
	case lossRefusePublication:
		return d.publicationLostError(cause)
	case lossRefuse:
		return fmt.Errorf("%w\nChanges may have been missed, so caches fed by these tables may be stale. Either set on_slot_loss: resync "+
			"(recreates the slot and applies every table's on_truncate rules), or flush the affected caches, remove the checkpoint file %s "+
			"and run `walbust setup`", cause, d.store.Path())
	case lossAwaitPublicationThenResync:
		if err := d.awaitPublication(ctx); err != nil {
			return err
		}
	}
	d.log.Error("replication slot lost; resyncing: recreating the slot and invalidating everything derived from published tables",
		zap.Error(cause), zap.String("slot", d.cfg.Postgres.Slot))
	conn, err := connectSQL(ctx, d.cfg.Postgres.URL)
	if err != nil {
		return err
	}
	defer closeQuietly(ctx, conn)
	if _, err := replication.DropSlot(ctx, conn, d.cfg.Postgres.Slot); err != nil {
		return err
	}
	lsn, err := replication.CreateSlot(ctx, conn, d.cfg.Postgres.Slot)
	if err != nil {
		return err
	}
	var plan mapping.Plan
	mapping.NewMapper(d.reload.registry(), nil).MapEverything(lsn, &plan)
	for _, p := range plan.Problems {
		d.log.Error("resync cannot invalidate a table's keys; flush them by hand", zap.String("table", p.Table), zap.String("problem", p.Msg))
	}
	st, err := d.applier.ApplyBatch(ctx, lsn, plan.Invalidations())
	if err != nil {
		return fmt.Errorf("resync: %w", err)
	}
	if err := d.store.Save(lsn); err != nil {
		return err
	}
	d.metrics.SlotResynced()
	d.log.Warn("resync complete", zap.Stringer("slot_lsn", lsn), zap.Int("patterns", st.Patterns),
		zap.Int("keys_removed_by_patterns", st.PatternMatches), zap.Int("keys", st.Keys))
	return nil
}

// startVerdict is what preflight makes of the slot it looked up.
type startVerdict int

const (
	startCheckPosition startVerdict = iota // the slot exists: compare positions (checkSlotPosition)
	startNeedsSetup                        // no slot and no checkpoint: setup was not run
	startSlotDropped                       // no slot, but a checkpoint: a slot loss
	startSlotLost                          // wal_status=lost: a slot loss
)

// judgeSlotAtStart: slot is nil when it does not exist; stored is the
// checkpoint's position then (0: none).
func judgeSlotAtStart(slot *replication.SlotInfo, stored wal.LSN) startVerdict {
	switch {
	case slot == nil && stored == 0:
		return startNeedsSetup
	case slot == nil:
		return startSlotDropped
	case slot.WALStatus == "lost":
		return startSlotLost
	}
	return startCheckPosition
}

// slotLossAction is what on_slot_loss makes walbust do about a lost slot.
type slotLossAction int

const (
	lossRefuse                     slotLossAction = iota // fail: exit, telling how to recover by hand
	lossRefusePublication                                // fail, the publication was dropped: say why re-creating it is not enough
	lossResync                                           // resync: re-create the slot, apply every on_truncate rule
	lossAwaitPublicationThenResync                       // resync, once the publication is back
)

func judgeSlotLoss(policy string, cause error) slotLossAction {
	publication := errors.Is(cause, replication.ErrPublicationMissing)
	switch {
	case policy != "resync" && publication:
		return lossRefusePublication
	case policy != "resync":
		return lossRefuse
	case publication:
		return lossAwaitPublicationThenResync
	}
	return lossResync
}
