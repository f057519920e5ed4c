package pipeline

import (
	"context"
	"fmt"

	"go.uber.org/zap"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

// The Pipeline is the stream's consumer: this file is everything the
// stream asks of it, called from the streaming goroutine (Acknowledged
// from anywhere). Rows are mapped to keys as they are decoded, in
// txPlan.Add, and forgotten; what is queued for the applier is plans.
var _ replication.Consumer[*txPlan] = (*Pipeline)(nil)

// committed is a transaction the stream delivered, with its plan.
type committed = replication.Committed[*txPlan]

// txPlan is a transaction's sink: each row change becomes keys in plan as
// it is decoded, and the row is forgotten.
type txPlan struct {
	mapper *mapping.Mapper
	plan   mapping.Plan
	weight int64 // budget held while queued
}

// Add maps one row change: the one place mapping runs.
func (t *txPlan) Add(c *wal.Change) { t.mapper.MapChange(c, &t.plan) }

// Relation warns, once per table and column, when the table's replica
// identity does not send old values that its key templates need, and once
// when a table was renamed, swapped or is published but unmapped.
func (p *Pipeline) Relation(rel *wal.Relation) {
	p.checkBinding(rel)
	for _, gap := range p.registry().IdentityGaps(rel) {
		id := rel.QualifiedName() + "." + gap.Name
		if p.warned[id] {
			continue
		}
		p.warned[id] = true
		p.log.Warn("replica identity does not send old values a rule needs; UPDATEs and DELETEs will miss old keys",
			zap.String("table", rel.QualifiedName()), zap.String("column", gap.Name), zap.Int("deps_line", gap.Line),
			zap.String("fix", fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL", rel.QualifiedName())))
	}
}

// Begin gives a transaction that begins a plan to map into. A begin is the
// one safe moment to switch to a reloaded registry.
func (p *Pipeline) Begin() *txPlan {
	p.takeRegistry()
	if t, ok := p.plans.Get().(*txPlan); ok {
		t.mapper = p.mapper
		return t
	}
	return &txPlan{mapper: p.mapper}
}

// TryAdmit takes room in the queue for tx's plan if there is some. A plan
// larger than the whole queue waits for the queue to be empty.
func (p *Pipeline) TryAdmit(tx *committed) bool {
	w := min(int64(tx.Sink.plan.Size()), p.opts.QueueBytes)
	if !p.budget.TryAcquire(w) {
		return false
	}
	tx.Sink.weight = w
	return true
}

// Admit waits for room for tx's plan.
func (p *Pipeline) Admit(ctx context.Context, tx *committed) error {
	w := min(int64(tx.Sink.plan.Size()), p.opts.QueueBytes)
	if err := p.budget.Acquire(ctx, w); err != nil {
		return err
	}
	tx.Sink.weight = w
	return nil
}

// Acknowledged is the position applied to Redis and durably checkpointed,
// and how many delivered transactions that covers.
func (p *Pipeline) Acknowledged() (wal.LSN, uint64) { return p.ckpt.acknowledged() }

// release gives back tx's room in the queue once it is applied.
func (p *Pipeline) release(tx *committed) {
	t := tx.Sink
	p.budget.Release(t.weight)
	t.weight = 0
	if t.plan.Size() <= 1<<20 { // a huge transaction's plan is not worth keeping around
		t.plan.Reset()
		p.plans.Put(t)
	}
	tx.Sink = nil
}
