package pipeline

import (
	"github.com/walbust/walbust/internal/observe"
	"github.com/walbust/walbust/mapping"
)

// observed is what the Observer is told about b: plain values.
func observed(b *Batch) observe.Batch {
	o := observe.Batch{
		Txs: make([]observe.Tx, len(b.Txs)), EndLSN: b.Txs[len(b.Txs)-1].EndLSN, Overflowed: b.Overflowed,
		Changes: counts(b.Plan.ChangeCounts), Unmapped: counts(b.Plan.Unmapped),
		Keys: b.Plan.Len(), Unrendered: b.Plan.Unrendered, Lookups: b.Plan.Lookups,
		Patterns: b.Stats.Patterns, PatternMatches: b.Stats.PatternMatches, Attempts: b.Stats.Attempts, Acked: b.Acked,
	}
	for i, tx := range b.Txs {
		o.Txs[i] = observe.Tx{CommitTime: tx.CommitTime, Heartbeat: tx.Heartbeat}
	}
	for _, p := range b.Plan.Problems {
		o.Problems = append(o.Problems, observe.Count{Table: p.Table, Op: p.Op.String(), N: p.Count})
	}
	b.Plan.Tally(func(a mapping.Action, pattern bool, n int) {
		o.Invalidations = append(o.Invalidations, observe.Invalidations{Action: a.String(), Pattern: pattern, N: n})
	})
	if n := b.Plan.Refreshes(); n > 0 {
		o.Invalidations = append(o.Invalidations, observe.Invalidations{Action: mapping.Refresh.String(), N: n})
	}
	return o
}

func counts(cs []mapping.ChangeCount) []observe.Count {
	if len(cs) == 0 {
		return nil
	}
	out := make([]observe.Count, len(cs))
	for i, c := range cs {
		out[i] = observe.Count{Table: c.Table, Op: c.Op.String(), N: c.N}
	}
	return out
}
