package pipeline

import (
	"context"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/walbust/walbust/internal/observe"
	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication/wal"
)

// PassApplier is an Applier that applies the patterns of many batches in
// one pass over the keyspace (invalidator.Invalidator.ApplyPass), while
// the direct keys of later batches keep being applied. It records lsn as
// applied once the pass is acknowledged.
type PassApplier interface {
	ApplyPass(ctx context.Context, lsn wal.LSN, patterns []mapping.Invalidation) (invalidator.Stats, error)
}

// PatternObserver, when the Observer is one too, is told about every
// pattern pass Redis acknowledged.
type PatternObserver interface {
	PatternPass(p observe.PatternPass)
}

// slowPass is the duration past which a pass is logged with its patterns.
const slowPass = time.Second

// maxQueuedPatterns bounds the patterns waiting for the next pass: past
// it, new batches wait for the pass in flight (memory, not correctness).
const maxQueuedPatterns = 1 << 16

// awaitingPass is a batch whose direct keys are applied but which is not
// acknowledged yet: its patterns, or those of a batch before it, wait for
// a pass. Acknowledgement stays in commit order.
type awaitingPass struct {
	end      wal.LSN
	txs      int
	patterns []mapping.Invalidation // copies; none for a batch only waiting its turn
	fences   []mapping.Invalidation
	commits  []time.Time // commit times of its transactions with patterns
}

type passResult struct {
	st       invalidator.Stats
	err      error
	start    time.Time
	took     time.Duration
	patterns []mapping.Invalidation
}

// patternStage is owned by the applying goroutine: batches wait in queued
// until a pass starts, which takes all of them (coalescing whatever
// arrived meanwhile), then in inflight until it is done.
type patternStage struct {
	queued   []awaitingPass
	inflight []awaitingPass
	patterns int // in queued
	running  bool
	done     chan passResult
}

// due says whether a pass should start now: none runs and batches wait.
// It does not wait for a backlog to drain first: measured, a pass that
// overlaps the direct keys of later batches (another core) finished the
// drain sooner than one pass started after them.
func (s *patternStage) due() bool { return !s.running && len(s.queued) > 0 }

func (s *patternStage) busy() bool { return s.running || len(s.queued) > 0 }

// pushPass queues a for the next pass (see patternStage.due).
func (p *Pipeline) pushPass(a awaitingPass) {
	s := p.stage
	s.queued = append(s.queued, a)
	s.patterns += len(a.patterns)
}

func (p *Pipeline) startPass(ctx context.Context) {
	s := p.stage
	s.inflight, s.queued, s.patterns = s.queued, nil, 0
	var pats []mapping.Invalidation
	for _, a := range s.inflight {
		pats = append(pats, a.patterns...)
	}
	end := s.inflight[len(s.inflight)-1].end
	s.running = true
	go func() {
		start := time.Now()
		st, err := p.passer.ApplyPass(ctx, end, pats)
		s.done <- passResult{st: st, err: err, start: start, took: time.Since(start), patterns: pats}
	}()
}

// passDone acknowledges, in order, the batches a finished pass covered,
// and starts the next pass if batches are waiting.
func (p *Pipeline) passDone(ctx context.Context, r passResult) error {
	s := p.stage
	s.running = false
	if r.err != nil {
		return fmt.Errorf("pattern pass up to %s: %w", s.inflight[len(s.inflight)-1].end, r.err)
	}
	now := time.Now()
	pp := observe.PatternPass{
		Duration: r.took, Patterns: r.st.Patterns, KeysScanned: r.st.KeysScanned, Matches: r.st.PatternMatches,
		IndexHits: r.st.IndexHits, Scanned: r.st.Scanned, Attempts: r.st.Attempts, Acked: now,
	}
	for _, a := range s.inflight {
		pp.Batches++
		pp.Commits = append(pp.Commits, a.commits...)
		if err := p.acknowledge(ctx, a.end, a.txs, a.fences, now); err != nil {
			return err
		}
	}
	clear(s.inflight)
	s.inflight = s.inflight[:0]
	if r.took > slowPass {
		p.log.Warn("slow pattern pass", zap.Duration("took", r.took), zap.Int("patterns", r.st.Patterns),
			zap.Int("keys_scanned", r.st.KeysScanned), zap.Int("matches", r.st.PatternMatches), zap.Int("index_hits", r.st.IndexHits),
			zap.Int("batches", pp.Batches), zap.String("served", describePatterns(invalidator.CoalescePatterns(r.patterns), 10)))
	}
	if o, ok := p.opts.Observer.(PatternObserver); ok {
		o.PatternPass(pp)
	}
	return nil
}

// finishPasses waits for the pass in flight and those still queued, at a
// stop: what was applied is acknowledged rather than replayed.
func (p *Pipeline) finishPasses(ctx context.Context) error {
	for p.stage != nil && (p.stage.running || len(p.stage.queued) > 0) {
		if !p.stage.running {
			p.startPass(ctx)
		}
		select {
		case r := <-p.stage.done:
			if err := p.passDone(ctx, r); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// describePatterns lists at most n patterns, saying how many more.
func describePatterns(pats []mapping.Invalidation, n int) string {
	var b strings.Builder
	for i, inv := range pats {
		if i == n {
			fmt.Fprintf(&b, " … and %d more", len(pats)-n)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		key := inv.Key
		if len(key) > 80 {
			key = key[:80] + "…"
		}
		b.WriteString(key)
	}
	return b.String()
}

// acknowledge hands a batch whose every invalidation Redis acknowledged
// to the refencer (its fences wait for the replicas, or a batch before it
// does) or the checkpointer.
func (p *Pipeline) acknowledge(ctx context.Context, end wal.LSN, txs int, fences []mapping.Invalidation, at time.Time) error {
	if p.refence != nil && (fences != nil || len(p.refence.queue) > 0) {
		p.refence.push(awaitingReplicas{end: end, txs: txs, fences: fences, since: at})
		return nil
	}
	if p.refence != nil {
		// Nothing to fence again and nothing waiting before it: the batch
		// is settled now (the applier, told that replicas are watched, did
		// not record it as settled with the batch).
		if s, ok := p.opts.Applier.(Settler); ok {
			if err := s.Settle(ctx, end); err != nil {
				return fmt.Errorf("record the settled position %s: %w", end, err)
			}
		}
	}
	p.ckpt.applied(end, txs)
	return nil
}
