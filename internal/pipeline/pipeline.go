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
	"golang.org/x/sync/semaphore"

	"github.com/walbust/walbust/internal/observe"
	"github.com/walbust/walbust/internal/retry"
	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

// Source delivers committed transactions in commit order: a
// replication.Streamer with this Pipeline as its Consumer (see consumer.go).
type Source interface {
	Stream(ctx context.Context, out chan<- *committed) error
	// Close reports the final acknowledged position and disconnects.
	Close(ctx context.Context) error
}

// Applier makes Redis reflect invalidations of the batch ending at lsn and
// tells subscribers (in-process caches) about them; nil means Redis
// acknowledged all of it. ApplyBatch gets the batch's last (or only, maybe
// empty) chunk and records lsn as applied in Redis, where a peer with
// another checkpoint file finds how far the slot's changes were applied;
// ApplyChunk gets the others, and re-fences, and records nothing.
type Applier interface {
	ApplyBatch(ctx context.Context, lsn wal.LSN, invs []mapping.Invalidation) (invalidator.Stats, error)
	ApplyChunk(ctx context.Context, lsn wal.LSN, invs []mapping.Invalidation) (invalidator.Stats, error)
}

// Store durably records the acknowledged position.
type Store interface {
	Save(lsn wal.LSN) error
}

// Batch is what one application to Redis covered.
type Batch struct {
	Txs  []*replication.Transaction
	Plan *mapping.Plan
	// Overflowed counts transactions that exceeded MaxTxChanges.
	Overflowed int
	Stats      invalidator.Stats
	Acked      time.Time // when Redis acknowledged the last of it
}

// Observer is told about every batch Redis acknowledged (metrics), in
// plain values.
type Observer interface {
	BatchApplied(b observe.Batch)
	// Refenced: keys fenced again after waiting for the replicas; timedOut
	// when the wait reached ReplicaWaitMax instead.
	Refenced(keys int, waited time.Duration, timedOut bool)
}

// Visibility holds a batch until its transactions are visible to new
// snapshots on the primary (see package visibility).
type Visibility interface {
	Wait(ctx context.Context, xids []uint32) error
}

// Health is told why the pipeline cannot acknowledge anything new (a
// lookup, visibility or checkpoint that keeps failing) and when it can
// again, so readiness and status name the cause instead of looking fine.
type Health interface {
	Stalled(cause string, err error)
	Recovered(cause string)
}

// Stall causes reported to Health.
const (
	StallLookup     = "lookup"
	StallVisibility = "visibility"
	StallCheckpoint = "checkpoint"
)

// Options configures a Pipeline.
type Options struct {
	Registry *mapping.Registry
	Querier  mapping.Querier // runs lookup queries; nil when no rule has one
	Applier  Applier
	Store    Store
	Observer Observer // optional
	Health   Health   // optional
	Logger   *zap.Logger
	// Checkpoint is the stored position at start.
	Checkpoint wal.LSN
	// MaxTxChanges: see mapping.Mapper.MaxTxChanges.
	MaxTxChanges int
	// MaxBatchTxs caps how many queued transactions share one batch, and
	// MaxBatchBytes how much of their plans.
	MaxBatchTxs   int
	MaxBatchBytes int
	// QueueTxs and QueueBytes bound the transactions received but not yet
	// applied, by number and by the memory their plans hold.
	QueueTxs   int
	QueueBytes int64
	// ChunkInvalidations is how many invalidations go to Redis at a time:
	// a huge transaction's keys are sent chunk by chunk, so the key
	// strings and commands never exist all at once.
	ChunkInvalidations int
	// ShutdownGrace bounds how long a stop waits for the batch in flight.
	ShutdownGrace time.Duration
	// CheckpointRetry bounds how long failing checkpoint saves are retried
	// before Run gives up with an error: a supervisor's restart is better
	// than a daemon that invalidates but can never acknowledge.
	CheckpointRetry time.Duration
	// Visibility, when set, holds each batch until the primary shows its
	// transactions: Postgres may stream a commit a moment before other
	// sessions can see it, and a reader that missed then would cache the
	// old row.
	Visibility Visibility
	// Replicas, when set, makes fenced keys be fenced again once every
	// replica has replayed the batch, or after ReplicaWaitMax.
	Replicas       ReplicaWatcher
	ReplicaWaitMax time.Duration
	// TableOIDs binds registry tables to their OIDs (see
	// mapping.Mapper.BindOIDs), so renamed tables keep their rules.
	TableOIDs map[string][]uint32
}

// Pipeline connects a Source to Redis and the checkpoint.
type Pipeline struct {
	opts   Options
	log    *zap.Logger
	mapper *mapping.Mapper // used by the streaming goroutine only, through txPlan
	// resolver runs lookups in the applying goroutine; it has a Mapper of its
	// own because Mappers are not safe for concurrent use.
	resolver *mapping.Mapper
	budget   *semaphore.Weighted
	plans    sync.Pool
	ckpt     *checkpointer
	refence  *refencer // nil without replicas
	// passer and stage, when the Applier is a PassApplier: patterns are
	// applied by passes that run beside the direct keys.
	passer PassApplier
	stage  *patternStage
	swap   registrySwap

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
	if opts.MaxBatchBytes <= 0 {
		opts.MaxBatchBytes = 8 << 20
	}
	if opts.QueueTxs <= 0 {
		opts.QueueTxs = 1024
	}
	if opts.QueueBytes <= 0 {
		opts.QueueBytes = 16 << 20
	}
	if opts.ChunkInvalidations <= 0 {
		opts.ChunkInvalidations = 8192
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = 30 * time.Second
	}
	if opts.CheckpointRetry <= 0 {
		opts.CheckpointRetry = time.Minute
	}
	if opts.Health == nil {
		opts.Health = noHealth{}
	}
	p := &Pipeline{
		opts: opts, log: opts.Logger,
		mapper:   mapping.NewMapper(opts.Registry, nil),
		resolver: mapping.NewMapper(opts.Registry, opts.Querier),
		budget:   semaphore.NewWeighted(opts.QueueBytes),
		ckpt:     newCheckpointer(opts.Store, opts.Checkpoint, opts.CheckpointRetry, opts.Health, opts.Logger),
		warned:   map[string]bool{},
	}
	p.mapper.MaxTxChanges = opts.MaxTxChanges
	if pa, ok := opts.Applier.(PassApplier); ok {
		p.passer, p.stage = pa, &patternStage{done: make(chan *flight, maxPassesInFlight)}
	}
	p.mapper.BindOIDs(opts.TableOIDs)
	if opts.Replicas != nil {
		if opts.ReplicaWaitMax <= 0 {
			opts.ReplicaWaitMax = 5 * time.Second
		}
		p.refence = newRefencer(opts.Replicas, opts.ReplicaWaitMax, opts.Logger)
	}
	return p
}

// Run streams until ctx is done (a clean stop: the batch in flight is
// finished, saved and confirmed) or a fatal error.
func (p *Pipeline) Run(ctx context.Context, src Source) error {
	txs := make(chan *committed, p.opts.QueueTxs)
	// The applier outlives ctx by up to ShutdownGrace so a stop finishes
	// what was already received instead of throwing it away.
	applyCtx, cancelApply := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelApply()
	applyDone := make(chan error, 1)
	go func() { applyDone <- p.applyLoop(applyCtx, txs) }()

	ckptCtx, stopCkpt := context.WithCancel(context.WithoutCancel(ctx))
	ckptDone := make(chan error, 1)
	go func() { ckptDone <- p.ckpt.run(ckptCtx) }()
	if p.refence != nil {
		go p.refence.poll(ckptCtx)
	}

	streamCtx, cancelStream := context.WithCancel(ctx)
	defer cancelStream()
	streamDone := make(chan error, 1)
	go func() { streamDone <- src.Stream(streamCtx, txs) }()

	var streamErr, applyErr, ckptErr error
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
	case ckptErr = <-ckptDone:
		cancelStream()
		cancelApply()
		streamErr, applyErr = <-streamDone, <-applyDone
	}
	stopCkpt()
	if ckptErr == nil {
		ckptErr = <-ckptDone
	}
	if ckptErr == nil {
		ckptErr = p.ckpt.flush() // what the last batches applied
	}

	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := src.Close(closeCtx); err != nil {
		p.log.Warn("could not report the final position to Postgres; it will be resent after restart", zap.Error(err))
	}
	lsn, _ := p.Acknowledged()
	p.log.Info("stopped", zap.Stringer("checkpoint_lsn", lsn))
	switch {
	case streamErr != nil:
		return streamErr
	case ckptErr != nil:
		return ckptErr
	case applyErr != nil && ctx.Err() == nil:
		return applyErr
	}
	return nil
}

func (p *Pipeline) applyLoop(ctx context.Context, txs <-chan *committed) error {
	var buf applyBuffers
	batch := make([]*committed, 0, p.opts.MaxBatchTxs)
	for {
		var tick <-chan time.Time
		if p.refence != nil && len(p.refence.queue) > 0 {
			tick = time.After(5 * time.Millisecond)
		}
		if p.stage != nil && p.stage.due() {
			p.startPass(ctx)
		}
		var passDone <-chan *flight
		if p.stage != nil && p.stage.running() {
			passDone = p.stage.done
			if p.stage.patterns >= maxQueuedPatterns {
				// Enough waits for the next pass: let it start first.
				select {
				case r := <-passDone:
					if err := p.passDone(ctx, r); err != nil {
						return err
					}
				case <-ctx.Done():
					return ctx.Err()
				}
				continue
			}
		}
		var tx *committed
		select {
		case next, ok := <-txs:
			if !ok {
				// The passes under way finish and acknowledge what they
				// cover. Batches still waiting for the replicas are not
				// acknowledged: they are replayed, fences and all.
				return p.finishPasses(ctx)
			}
			tx = next
		case r := <-passDone:
			if err := p.passDone(ctx, r); err != nil {
				return err
			}
			continue
		case <-tick:
			if err := p.refenceDue(ctx); err != nil {
				return err
			}
			continue
		case <-ctx.Done():
			// Run gave up on the stream (a fatal error elsewhere, or the
			// shutdown grace ran out): txs may never be closed.
			return ctx.Err()
		}
		// Take whatever else is already queued: batching when behind,
		// immediate application when idle.
		batch = append(batch[:0], tx)
		size := tx.Sink.plan.Size()
	drain:
		for len(batch) < p.opts.MaxBatchTxs && size < p.opts.MaxBatchBytes {
			select {
			case next, ok := <-txs:
				if !ok {
					break drain
				}
				batch = append(batch, next)
				size += next.Sink.plan.Size()
			default:
				break drain
			}
		}
		err := p.apply(ctx, batch, &buf)
		for _, tx := range batch {
			p.release(tx)
		}
		if err != nil {
			return err
		}
		if p.refence != nil && len(p.refence.queue) > 0 {
			if err := p.refenceDue(ctx); err != nil {
				return err
			}
		}
	}
}

// applyBuffers are reused from batch to batch by the applying goroutine.
type applyBuffers struct {
	plan mapping.Plan // the merged plan of a batch of several
	invs []mapping.Invalidation
	txs  []*replication.Transaction
}

func (p *Pipeline) apply(ctx context.Context, batch []*committed, buf *applyBuffers) error {
	plan, invs := &buf.plan, &buf.invs
	if len(batch) == 1 {
		// Alone, a transaction's plan is the batch's: a huge one is not
		// copied.
		plan = &batch[0].Sink.plan
		plan.SetVersion(batch[0].CommitLSN)
	} else {
		plan.Reset()
	}
	buf.txs = buf.txs[:0]
	for _, tx := range batch {
		buf.txs = append(buf.txs, &tx.Transaction)
	}
	b := Batch{Txs: buf.txs, Plan: plan}
	for _, tx := range batch {
		t := tx.Sink
		if len(batch) > 1 {
			plan.Merge(&t.plan, tx.CommitLSN)
		}
		if t.plan.Overflowed {
			b.Overflowed++
			p.log.Warn("transaction exceeded max_tx_changes; its further rows were covered by their tables' on_truncate rules",
				zap.Uint32("xid", tx.Xid), zap.Stringer("end_lsn", tx.EndLSN), zap.Int("changes", t.plan.Changes))
		}
	}
	end := batch[len(batch)-1].EndLSN
	if p.opts.Visibility != nil && plan.Len()+plan.PendingLookups()+plan.Refreshes() > 0 {
		xids := make([]uint32, len(batch))
		for i, tx := range batch {
			xids[i] = tx.Xid
		}
		if err := p.retry(ctx, end, StallVisibility, "cannot check that the batch is visible on the primary", func() error {
			return p.opts.Visibility.Wait(ctx, xids)
		}); err != nil {
			return err
		}
	}
	if err := p.retry(ctx, end, StallLookup, "cannot derive invalidations", func() error {
		return p.resolver.Resolve(ctx, plan)
	}); err != nil {
		return err
	}
	if err := p.refresh(ctx, end, plan, &b); err != nil {
		return err
	}
	for _, pr := range plan.Problems {
		p.log.Error("invalidation incomplete", zap.String("table", pr.Table), zap.Stringer("op", pr.Op), zap.String("problem", pr.Msg), zap.Int("changes", pr.Count))
	}
	var fences, patterns []mapping.Invalidation
	// An empty plan still goes through ApplyBatch once: its end must be
	// recorded as applied before it is checkpointed.
	for from := 0; from == 0 || from < plan.Len(); from += p.opts.ChunkInvalidations {
		to := min(from+p.opts.ChunkInvalidations, plan.Len())
		*invs = plan.AppendInvalidations((*invs)[:0], from, to)
		if p.passer != nil {
			// Patterns wait for the next pass; the direct keys go now,
			// with the indexed families that are deleted, unless a pass
			// may still act on an index (fence, bump or stale it, or
			// scan too) that such a delete would take from under it.
			inline := plan.Len() <= p.opts.ChunkInvalidations && p.stage.indexedViaPass == 0 && !hasIndexedViaPass(*invs)
			direct := (*invs)[:0]
			for _, inv := range *invs {
				if inv.Pattern && !(inline && invalidator.Inline(inv)) {
					patterns = append(patterns, inv)
				} else {
					direct = append(direct, inv)
				}
			}
			clear((*invs)[len(direct):])
			*invs = direct
		}
		apply := p.opts.Applier.ApplyBatch
		if to < plan.Len() || patterns != nil || p.stage != nil && p.stage.busy() {
			// Not the last chunk, or the batch waits for a pass, which
			// records its end as applied once its patterns are in too.
			apply = p.opts.Applier.ApplyChunk
		}
		st, err := apply(ctx, end, *invs)
		b.Stats.Add(st)
		// Not retried here: the applier retries Redis failures itself until
		// ctx ends, so a second loop would only nest.
		if err != nil {
			return fmt.Errorf("apply batch ending at %s: %w", end, err)
		}
		if p.refence != nil {
			for _, inv := range *invs {
				if inv.Action == mapping.Fence {
					fences = append(fences, inv)
				}
			}
		}
	}
	clear(*invs) // let the key strings go
	b.Acked = time.Now()
	if patterns != nil || p.stage != nil && p.stage.busy() {
		// Not acknowledged before its patterns, and those of every batch
		// before it, are applied.
		a := awaitingPass{end: end, txs: len(batch), patterns: patterns, fences: fences}
		if patterns != nil {
			for _, tx := range batch {
				a.commits = append(a.commits, tx.CommitTime)
			}
		}
		p.pushPass(a)
	} else {
		if err := p.acknowledge(ctx, end, len(batch), fences, b.Acked); err != nil {
			return err
		}
	}
	if p.opts.Observer != nil {
		p.opts.Observer.BatchApplied(observed(&b))
	}
	if ce := p.log.Check(zap.DebugLevel, "applied"); ce != nil {
		ce.Write(zap.Stringer("end_lsn", end), zap.Uint32("xid", batch[len(batch)-1].Xid), zap.Int("txs", len(batch)),
			zap.Int("changes", plan.Changes), zap.Int("keys", plan.Len()), zap.Int("unrendered", plan.Unrendered))
	}
	return nil
}

// retry runs fn until it succeeds or ctx ends, with backoff. A lookup or
// visibility query that fails stalls the stream rather than dropping
// invalidations: the batch is never acknowledged in between, and Health
// hears of the stall under cause until fn succeeds. It is the only retry
// of those queries: lookup.Pool and visibility.Checker try once, so a
// failure reaches Health at once instead of after an inner loop.
func (p *Pipeline) retry(ctx context.Context, end wal.LSN, cause, what string, fn func() error) error {
	backoff := retry.Backoff{Initial: 500 * time.Millisecond, Max: 30 * time.Second}
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil {
			if attempt > 1 {
				p.opts.Health.Recovered(cause)
				p.log.Info(cause+" recovered; batch continues", zap.Stringer("end_lsn", end), zap.Int("attempts", attempt))
			}
			return nil
		}
		p.opts.Health.Stalled(cause, err)
		if ctx.Err() != nil {
			return fmt.Errorf("batch ending at %s: %w", end, err)
		}
		wait := backoff.Next()
		p.log.Error(what+"; batch not acknowledged, retrying", zap.Error(err), zap.String("cause", cause),
			zap.Stringer("end_lsn", end), zap.Int("attempt", attempt), zap.Duration("retry_in", wait))
		if retry.Sleep(ctx, wait) != nil {
			return fmt.Errorf("batch ending at %s: %w", end, err)
		}
	}
}

type noHealth struct{}

func (noHealth) Stalled(string, error) {}
func (noHealth) Recovered(string)      {}
