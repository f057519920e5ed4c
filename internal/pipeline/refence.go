package pipeline

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication/wal"
)

// ReplicaWatcher says how far every read replica has replayed (see
// package replicas); ok is false when there are none.
type ReplicaWatcher interface {
	Replayed(ctx context.Context) (lsn wal.LSN, ok bool, err error)
}

// A batch whose fences wait for the replicas. Batches are acknowledged in
// order, so one without fences that follows a waiting one waits too.
type awaitingReplicas struct {
	end    wal.LSN
	txs    int
	fences []mapping.Invalidation // nil: nothing to fence again
	since  time.Time
}

// refencer fences keys a second time, with a fresh token, once every
// replica has replayed the batch that fenced them (or ReplicaWaitMax has
// passed): a reader that observed the first tombstone and then read a
// replica still showing the old row cannot fill it, and one that already
// did has its value replaced. Until then the batch is not acknowledged, so
// a crash replays the whole sequence.
type refencer struct {
	watcher  ReplicaWatcher
	waitMax  time.Duration
	log      *zap.Logger
	queue    []awaitingReplicas
	replayed atomic.Uint64 // lowest replica replay position, polled
	waiting  atomic.Bool   // the poller has something to wait for
	kick     chan struct{}
}

func newRefencer(w ReplicaWatcher, waitMax time.Duration, log *zap.Logger) *refencer {
	return &refencer{watcher: w, waitMax: waitMax, log: log, kick: make(chan struct{}, 1)}
}

// poll keeps replayed current while batches wait, every 10ms.
func (r *refencer) poll(ctx context.Context) {
	var lastErr time.Time
	for {
		if !r.waiting.Load() {
			select {
			case <-ctx.Done():
				return
			case <-r.kick:
			}
		}
		lsn, ok, err := r.watcher.Replayed(ctx)
		switch {
		case err != nil && time.Since(lastErr) > 10*time.Second:
			r.log.Warn("cannot read the replicas' replay positions; fenced keys are fenced again after replica_wait_max", zap.Error(err))
			lastErr = time.Now()
		case !ok:
			lsn = ^wal.LSN(0) // no replicas: nothing to wait for
		}
		r.replayed.Store(uint64(lsn))
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (r *refencer) push(a awaitingReplicas) {
	r.queue = append(r.queue, a)
	r.waiting.Store(true)
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// due pops the batches at the head of the queue that may be acknowledged
// now, and says whether each waited the full bound.
func (r *refencer) due(now time.Time) (out []awaitingReplicas, timedOut []bool) {
	replayed := wal.LSN(r.replayed.Load())
	for len(r.queue) > 0 {
		a := r.queue[0]
		late := now.Sub(a.since) >= r.waitMax
		if a.fences != nil && replayed < a.end && !late {
			break
		}
		out, timedOut = append(out, a), append(timedOut, late && a.fences != nil && replayed < a.end)
		r.queue[0] = awaitingReplicas{}
		r.queue = r.queue[1:]
	}
	if len(r.queue) == 0 {
		r.queue = nil
		r.waiting.Store(false)
	}
	return out, timedOut
}

// refenceDue fences again what is due, publishes it, and acknowledges it.
func (p *Pipeline) refenceDue(ctx context.Context) error {
	due, timedOut := p.refence.due(time.Now())
	for i, a := range due {
		if a.fences != nil {
			// Not ApplyBatch: a.end was recorded as applied when it was
			// first applied, and later batches may be past it by now.
			if _, err := p.opts.Applier.ApplyChunk(ctx, a.end, a.fences); err != nil {
				return fmt.Errorf("fence again the batch ending at %s: %w", a.end, err)
			}
			if p.opts.Observer != nil {
				p.opts.Observer.Refenced(len(a.fences), time.Since(a.since), timedOut[i])
			}
		}
		p.ckpt.applied(a.end, a.txs)
	}
	if len(due) > 0 {
		// After the re-fences, never before: readers waiting to read their
		// own writes (protocol.SettledKey) wait for this one.
		if s, ok := p.opts.Applier.(Settler); ok {
			end := due[len(due)-1].end
			if err := s.Settle(ctx, end); err != nil {
				return fmt.Errorf("record the settled position %s: %w", end, err)
			}
		}
	}
	return nil
}

// Settler is implemented by an Applier that records the settled position
// (protocol.SettledKey) apart from the applied one: with replicas, the
// pipeline calls Settle once the batches up to lsn were fenced again.
type Settler interface {
	Settle(ctx context.Context, lsn wal.LSN) error
}
