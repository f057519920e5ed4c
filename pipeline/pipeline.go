// Package pipeline runs walbust's one-way flow: committed transactions from
// the replication stream are mapped to invalidations, applied to Redis, and
// only then checkpointed and confirmed to Postgres.
package pipeline

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication"
)

// Source delivers committed transactions in commit order.
type Source interface {
	Stream(ctx context.Context, out chan<- *replication.Transaction, ack replication.Acknowledger) error
	// Close reports the final acknowledged position and disconnects.
	Close(ctx context.Context, ack replication.Acknowledger) error
}

// Applier makes Redis reflect a batch; nil means Redis acknowledged all of it.
type Applier interface {
	Apply(ctx context.Context, invs []mapping.Invalidation) (invalidator.Stats, error)
}

// Store durably records the acknowledged position.
type Store interface {
	Save(lsn replication.LSN) error
}

// Observer is told about every acknowledged batch (metrics).
type Observer interface {
	BatchApplied(batch []*replication.Transaction, plan *mapping.Plan, st invalidator.Stats, acked time.Time)
}

// Options configures a Pipeline.
type Options struct {
	Registry *mapping.Registry
	Querier  mapping.Querier // runs lookup queries; nil when no rule has one
	Applier  Applier
	Store    Store
	Observer Observer // optional
	Logger   *zap.Logger
	// Checkpoint is the stored position at start.
	Checkpoint replication.LSN
	// MaxBatchTxs caps how many queued transactions share one Redis pipeline.
	MaxBatchTxs int
	// QueueTxs bounds the transactions received but not yet applied.
	QueueTxs int
	// ShutdownGrace bounds how long a stop waits for the batch in flight.
	ShutdownGrace time.Duration
}

// Pipeline connects a Source to Redis and the checkpoint.
type Pipeline struct {
	opts   Options
	log    *zap.Logger
	mapper *mapping.Mapper

	mu      sync.Mutex
	ackLSN  replication.LSN
	applied uint64

	warned map[string]bool // identity-gap warnings already given, per table/column
}

// New returns a Pipeline.
func New(opts Options) *Pipeline {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.MaxBatchTxs <= 0 {
		opts.MaxBatchTxs = 512
	}
	if opts.QueueTxs <= 0 {
		opts.QueueTxs = 1024
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = 30 * time.Second
	}
	return &Pipeline{
		opts: opts, log: opts.Logger, mapper: mapping.NewMapper(opts.Registry, opts.Querier),
		ackLSN: opts.Checkpoint, warned: map[string]bool{},
	}
}

// Acknowledged implements replication.Acknowledger.
func (p *Pipeline) Acknowledged() (replication.LSN, uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ackLSN, p.applied
}

func (p *Pipeline) acknowledge(lsn replication.LSN, txs int) {
	p.mu.Lock()
	p.ackLSN = lsn
	p.applied += uint64(txs)
	p.mu.Unlock()
}

// Run streams until ctx is done (a clean stop: the batch in flight is
// finished, saved and confirmed) or a fatal error.
func (p *Pipeline) Run(ctx context.Context, src Source) error {
	txs := make(chan *replication.Transaction, p.opts.QueueTxs)
	// The applier outlives ctx by up to ShutdownGrace so a stop finishes
	// what was already received instead of throwing it away.
	applyCtx, cancelApply := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelApply()
	applyDone := make(chan error, 1)
	go func() { applyDone <- p.applyLoop(applyCtx, txs) }()

	streamCtx, cancelStream := context.WithCancel(ctx)
	defer cancelStream()
	streamDone := make(chan error, 1)
	go func() { streamDone <- src.Stream(streamCtx, txs, p) }()

	var streamErr, applyErr error
	select {
	case streamErr = <-streamDone:
		close(txs)
		grace := time.AfterFunc(p.opts.ShutdownGrace, func() {
			p.log.Warn("shutdown grace period over; abandoning the batch in flight (it will be replayed)", zap.Duration("grace", p.opts.ShutdownGrace))
			cancelApply()
		})
		applyErr = <-applyDone
		grace.Stop()
	case applyErr = <-applyDone:
		cancelStream()
		streamErr = <-streamDone
	}

	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := src.Close(closeCtx, p); err != nil {
		p.log.Warn("could not report the final position to Postgres; it will be resent after restart", zap.Error(err))
	}
	lsn, _ := p.Acknowledged()
	p.log.Info("stopped", zap.Stringer("checkpoint_lsn", lsn))
	if streamErr != nil {
		return streamErr
	}
	if applyErr != nil && ctx.Err() == nil {
		return applyErr
	}
	return nil
}

func (p *Pipeline) applyLoop(ctx context.Context, txs <-chan *replication.Transaction) error {
	var plan mapping.Plan
	batch := make([]*replication.Transaction, 0, p.opts.MaxBatchTxs)
	for tx := range txs {
		// Take whatever else is already queued: batching when behind,
		// immediate application when idle.
		batch = append(batch[:0], tx)
	drain:
		for len(batch) < p.opts.MaxBatchTxs {
			select {
			case next, ok := <-txs:
				if !ok {
					break drain
				}
				batch = append(batch, next)
			default:
				break drain
			}
		}
		if err := p.apply(ctx, batch, &plan); err != nil {
			return err
		}
	}
	return nil
}

func (p *Pipeline) apply(ctx context.Context, batch []*replication.Transaction, plan *mapping.Plan) error {
	if err := p.mapBatch(ctx, batch, plan); err != nil {
		return err
	}
	for _, pr := range plan.Problems {
		p.log.Error("invalidation incomplete", zap.String("table", pr.Table), zap.Stringer("op", pr.Op), zap.String("problem", pr.Msg))
	}
	st, err := p.opts.Applier.Apply(ctx, plan.Invalidations)
	if err != nil {
		return fmt.Errorf("apply batch ending at %s: %w", batch[len(batch)-1].EndLSN, err)
	}
	acked := time.Now()
	end := batch[len(batch)-1].EndLSN
	if err := p.opts.Store.Save(end); err != nil {
		return fmt.Errorf("checkpoint %s: %w", end, err)
	}
	p.acknowledge(end, len(batch))
	if p.opts.Observer != nil {
		p.opts.Observer.BatchApplied(batch, plan, st, acked)
	}
	for _, tx := range batch {
		if tx.Overflowed {
			p.log.Warn("transaction exceeded max_tx_changes; applied on_truncate rules for its largest tables instead of row keys",
				zap.Uint32("xid", tx.Xid), zap.Stringer("end_lsn", tx.EndLSN))
		}
	}
	if ce := p.log.Check(zap.DebugLevel, "applied"); ce != nil {
		ce.Write(zap.Stringer("end_lsn", end), zap.Uint32("xid", batch[len(batch)-1].Xid), zap.Int("txs", len(batch)),
			zap.Int("changes", plan.Changes), zap.Int("keys", len(plan.Invalidations)), zap.Int("unrendered", plan.Unrendered))
	}
	return nil
}

// mapBatch derives the batch's invalidations. A failing lookup query stalls
// the stream rather than dropping invalidations: the batch is retried with
// backoff until the query succeeds or ctx ends, and is never acknowledged
// in between.
func (p *Pipeline) mapBatch(ctx context.Context, batch []*replication.Transaction, plan *mapping.Plan) error {
	backoff := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := p.mapOnce(ctx, batch, plan)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("map batch ending at %s: %w", batch[len(batch)-1].EndLSN, err)
		}
		p.log.Error("cannot derive invalidations; batch not acknowledged, retrying", zap.Error(err), zap.Int("attempt", attempt), zap.Duration("retry_in", backoff))
		select {
		case <-ctx.Done():
			return fmt.Errorf("map batch ending at %s: %w", batch[len(batch)-1].EndLSN, err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func (p *Pipeline) mapOnce(ctx context.Context, batch []*replication.Transaction, plan *mapping.Plan) error {
	plan.Reset()
	for _, tx := range batch {
		if err := p.mapper.Map(ctx, tx, plan); err != nil {
			return err
		}
	}
	return nil
}

// CheckRelation warns, once per table and column, when the table's replica
// identity does not send old values that its key templates need.
func (p *Pipeline) CheckRelation(rel *replication.Relation) {
	for _, gap := range p.opts.Registry.IdentityGaps(rel) {
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
