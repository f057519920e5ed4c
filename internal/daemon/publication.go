package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/walbust/walbust/internal/retry"
	"github.com/walbust/walbust/replication"
)

// checkPublication is preflight's look at the publication. Missing on a
// first start, it only needs setup; missing after walbust has streamed, it
// was dropped, which is a slot loss: the slot cannot decode past the drop.
func (d *daemon) checkPublication(ctx context.Context, conn *pgx.Conn) error {
	exists, err := replication.PublicationExists(ctx, conn, d.cfg.Postgres.Publication)
	if err != nil || exists {
		return err
	}
	pub := d.cfg.Postgres.Publication
	stored, err := d.store.Load()
	if err != nil {
		return err
	}
	if stored == 0 {
		return UsageError{fmt.Errorf("publication %q does not exist: run `walbust setup` first (it creates the publication and the slot)", pub)}
	}
	return d.slotLost(ctx, fmt.Errorf("%w: %w: publication %q does not exist, but checkpoint %s says walbust streamed through it from slot %q",
		replication.ErrSlotLost, replication.ErrPublicationMissing, pub, stored, d.cfg.Postgres.Slot))
}

// publicationLostError is on_slot_loss: fail's message for a dropped
// publication: what happened, why re-creating it is not enough, and the fix.
func (d *daemon) publicationLostError(cause error) error {
	pub, slot := d.cfg.Postgres.Publication, d.cfg.Postgres.Slot
	return fmt.Errorf("publication %q was dropped while slot %q still had changes to decode (%w). "+
		"The slot reads the publication as it was at each change, so re-creating the publication does not help: the slot must be re-created, "+
		"and changes made since the drop were not invalidated.\n"+
		"Either set on_slot_loss: resync (walbust then waits until the publication exists, re-creates the slot and applies every table's on_truncate rules), "+
		"or flush the affected caches, drop the slot (SELECT pg_drop_replication_slot('%s')), remove the checkpoint file %s "+
		"and run `walbust setup` (it creates the publication and the slot)", pub, slot, cause, slot, d.store.Path())
}

// awaitPublication waits, not ready, until the publication exists and
// publishes every registered table (a slot created before that would lose
// the same changes again), and the old slot is free to be dropped. The fix is the operator's (`walbust setup`), so
// walbust retries rather than exiting.
func (d *daemon) awaitPublication(ctx context.Context) error {
	pub := d.cfg.Postgres.Publication
	backoff := retry.Backoff{Initial: time.Second, Max: 5 * time.Second}
	for attempt := 1; ; attempt++ {
		problem, err := d.publicationProblem(ctx)
		if err == nil && problem == "" {
			d.metrics.Recovered("publication")
			return nil
		}
		if err != nil {
			problem = err.Error()
		}
		d.metrics.Stalled("publication", fmt.Errorf("%s; run `walbust setup`", problem))
		wait := backoff.Next()
		d.log.Error("cannot re-create the replication slot yet: waiting for the publication (not ready)",
			zap.String("publication", pub), zap.String("problem", problem), zap.String("fix", "run `walbust setup`"),
			zap.Int("attempt", attempt), zap.Duration("retry_in", wait))
		if err := retry.Sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// publicationProblem says what keeps the publication from serving the
// registry: "" when it exists and publishes every registered table.
func (d *daemon) publicationProblem(ctx context.Context) (string, error) {
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := connectSQL(qctx, d.cfg.Postgres.URL)
	if err != nil {
		return "", err
	}
	defer closeQuietly(qctx, conn)
	pub := d.cfg.Postgres.Publication
	exists, err := replication.PublicationExists(qctx, conn, pub)
	if err != nil {
		return "", err
	}
	if !exists {
		return fmt.Sprintf("publication %q does not exist", pub), nil
	}
	published, err := replication.PublishedTables(qctx, conn, pub)
	if err != nil {
		return "", err
	}
	var missing []string
	for _, t := range d.reload.registry().Names() {
		if !slices.Contains(published, t) {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Sprintf("publication %q does not publish %s", pub, strings.Join(missing, ", ")), nil
	}
	// The walsender that hit the missing publication may hold the slot for
	// a moment after the error; it cannot be dropped until then.
	slot, err := replication.LookupSlot(qctx, conn, d.cfg.Postgres.Slot)
	if err == nil && slot.Active {
		return fmt.Sprintf("slot %q is still in use by another connection", slot.Name), nil
	}
	if err != nil && !errors.Is(err, replication.ErrNoSlot) {
		return "", err
	}
	return "", nil
}

// stoppedCleanly: a stop asked for while walbust waits (for the publication,
// say) is a clean exit, not a failure.
func stoppedCleanly(ctx context.Context, err error) error {
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
