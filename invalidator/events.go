package invalidator

import (
	"context"
	"fmt"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication"
)

// Publish tells the subscribers of the events channel (in-process caches)
// that invs were applied, as one protocol.Event, retrying like Apply until
// Redis accepts it: at least once, in order, and only after the
// invalidations themselves, so a subscriber that reloads at once misses in
// Redis too. A no-op without Options.EventsChannel.
func (iv *Invalidator) Publish(ctx context.Context, lsn replication.LSN, invs []mapping.Invalidation) error {
	if iv.opts.EventsChannel == "" || len(invs) == 0 {
		return nil
	}
	ev := protocol.Event{LSN: uint64(lsn)}
	for _, inv := range invs {
		if inv.Pattern {
			ev.Patterns = append(ev.Patterns, inv.Key)
		} else {
			ev.Keys = append(ev.Keys, inv.Key)
		}
	}
	msg, err := ev.Marshal()
	if err != nil {
		return fmt.Errorf("encode event: %w", err)
	}
	_, err = iv.retrying(ctx, "event", len(invs), func(*Stats) error {
		return iv.client.Publish(ctx, iv.opts.EventsChannel, msg).Err()
	})
	return err
}
