package pipeline

import (
	"context"
	"fmt"

	"go.uber.org/zap"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication/wal"
)

// RefreshConcurrency is how many refresh queries of one batch run at once
// on the lookup pool.
const RefreshConcurrency = 8

// RefreshObserver, when the Observer implements it, is told of refresh
// queries that failed: their keys kept their value, flagged stale.
type RefreshObserver interface {
	RefreshFailed(table string, keys int)
}

// refresh builds the batch's refreshed values (running their queries) and
// writes them, before the batch's other invalidations and its watermark.
//
// A refresh query that fails does not stall the stream the way a lookup
// does: the key keeps its last good value, flagged stale in its LSN key
// (readers that look see it), and the failure is logged and counted. The
// key expires at its TTL at the latest, and the next change of its rows
// refreshes it again; meanwhile every other table's invalidations flow.
func (p *Pipeline) refresh(ctx context.Context, end wal.LSN, plan *mapping.Plan, b *Batch) error {
	if plan.Refreshes() == 0 {
		return nil
	}
	failures, err := p.resolver.RunRefreshQueries(ctx, plan, RefreshConcurrency)
	if err != nil {
		return fmt.Errorf("refresh queries of the batch ending at %s: %w", end, err)
	}
	byTable := map[string]int{}
	logged := map[*mapping.Rule]bool{}
	for _, f := range failures {
		byTable[f.Table] += f.Keys
		if !logged[f.Rule] {
			logged[f.Rule] = true
			p.log.Error("refresh query failed; the cached values stay, flagged stale, and the batch continues",
				zap.String("table", f.Table), zap.String("rule", f.Rule.Name), zap.Error(f.Err), zap.Stringer("end_lsn", end))
		}
	}
	if o, ok := p.opts.Observer.(RefreshObserver); ok {
		for table, n := range byTable {
			o.RefreshFailed(table, n)
		}
	}
	invs := plan.AppendRefreshes(nil)
	for from := 0; from < len(invs); from += p.opts.ChunkInvalidations {
		to := min(from+p.opts.ChunkInvalidations, len(invs))
		st, err := p.opts.Applier.ApplyChunk(ctx, end, invs[from:to])
		b.Stats.Add(st)
		if err != nil {
			return fmt.Errorf("apply the refreshes of the batch ending at %s: %w", end, err)
		}
	}
	return nil
}
