package pipeline

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/walbust/walbust/internal/observe"
	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication/wal"
)

// PassApplier is an Applier that applies the patterns of many batches in
// one pass over the keyspace (invalidator.Invalidator.StartPass), while
// the direct keys of later batches keep being applied. StartPass returns
// at once with a wait for the pass; passes may run concurrently, and each
// records lsn as applied once it and every pass started before it are
// acknowledged.
type PassApplier interface {
	StartPass(ctx context.Context, lsn wal.LSN, patterns []mapping.Invalidation) (wait func() (invalidator.Stats, error))
}

// PatternObserver, when the Observer is one too, is told about every
// pattern pass Redis acknowledged.
type PatternObserver interface {
	PatternPass(p observe.PatternPass)
}

// slowPass is the duration past which a pass is logged with its patterns.
const slowPass = time.Second

// maxQueuedPatterns bounds the patterns waiting for the next pass: past
// it, new batches wait for a pass in flight (memory, not correctness).
const maxQueuedPatterns = 1 << 16

// maxPassesInFlight bounds the passes under way at once. They share one
// walk of the keyspace, each leaving it once the walk has covered it all,
// so a pass started mid-walk costs little; past the bound batches queue
// and the next pass takes them all.
const maxPassesInFlight = 64

// awaitingPass is a batch whose direct keys are applied but which is not
// acknowledged yet: its patterns, or those of a batch before it, wait for
// a pass. Acknowledgement stays in commit order.
type awaitingPass struct {
	end      wal.LSN
	txs      int
	patterns []mapping.Invalidation // copies; none for a batch only waiting its turn
	fences   []mapping.Invalidation
	commits  []time.Time // commit times of its transactions with patterns
	indexed  int         // its patterns that isIndexedViaPass
}

type passResult struct {
	st   invalidator.Stats
	err  error
	took time.Duration
}

// flight is a pass under way and the batches it covers.
type flight struct {
	batches  []awaitingPass
	patterns []mapping.Invalidation
	done     bool
	res      passResult // set before the flight is sent on done
}

// patternStage is owned by the applying goroutine: batches wait in queued
// until a pass starts, which takes all of them, then in their flight
// until it and every flight before it are done (acknowledgement stays in
// commit order).
type patternStage struct {
	queued   []awaitingPass
	flights  []*flight
	patterns int // in queued
	// indexedViaPass counts the patterns of queued and flying batches
	// that act on indexes other than by deleting them with the direct
	// keys: while any waits, no index is deleted with the direct keys.
	indexedViaPass int
	done           chan *flight
}

// due says whether a pass should start now: batches wait and there is
// room for another pass. It does not wait for a backlog to drain first:
// measured, a pass that overlaps the direct keys of later batches
// (another core) finished the drain sooner than one started after them.
func (s *patternStage) due() bool { return len(s.queued) > 0 && len(s.flights) < maxPassesInFlight }

func (s *patternStage) running() bool { return len(s.flights) > 0 }

func (s *patternStage) busy() bool { return len(s.flights) > 0 || len(s.queued) > 0 }

// pushPass queues a for the next pass (see patternStage.due).
func (p *Pipeline) pushPass(a awaitingPass) {
	s := p.stage
	for _, inv := range a.patterns {
		if isIndexedViaPass(inv) {
			a.indexed++
		}
	}
	s.queued = append(s.queued, a)
	s.patterns += len(a.patterns)
	s.indexedViaPass += a.indexed
}

// isIndexedViaPass: inv acts on an index other than by deleting its
// family (a fence, bump or stale, or also a scan), which only a pass does.
// A delete that goes to a pass (a batch too large to inline) is not one:
// it and a delete with the direct keys may overlap harmlessly.
func isIndexedViaPass(inv mapping.Invalidation) bool {
	return inv.Pattern && inv.Template != nil && inv.Template.Indexed && !invalidator.Inline(inv)
}

func hasIndexedViaPass(invs []mapping.Invalidation) bool {
	return slices.ContainsFunc(invs, isIndexedViaPass)
}

func (p *Pipeline) startPass(ctx context.Context) {
	s := p.stage
	f := &flight{batches: s.queued}
	s.queued, s.patterns = nil, 0
	for _, a := range f.batches {
		f.patterns = append(f.patterns, a.patterns...)
	}
	s.flights = append(s.flights, f)
	start := time.Now()
	wait := p.passer.StartPass(ctx, f.batches[len(f.batches)-1].end, f.patterns)
	go func() {
		st, err := wait()
		f.res = passResult{st: st, err: err, took: time.Since(start)}
		s.done <- f
	}()
}

// passDone acknowledges, in order, the batches of the flights done so far
// from the oldest on.
func (p *Pipeline) passDone(ctx context.Context, f *flight) error {
	s := p.stage
	if f.res.err != nil {
		return fmt.Errorf("pattern pass up to %s: %w", f.batches[len(f.batches)-1].end, f.res.err)
	}
	f.done = true
	for len(s.flights) > 0 && s.flights[0].done {
		if err := p.landFlight(ctx, s.flights[0]); err != nil {
			return err
		}
		s.flights[0] = nil
		s.flights = s.flights[1:]
	}
	return nil
}

func (p *Pipeline) landFlight(ctx context.Context, f *flight) error {
	r := f.res
	now := time.Now()
	pp := observe.PatternPass{
		Duration: r.took, Patterns: r.st.Patterns, KeysScanned: r.st.KeysScanned, Matches: r.st.PatternMatches,
		IndexHits: r.st.IndexHits, Scanned: r.st.Scanned, Attempts: r.st.Attempts, Acked: now,
	}
	for _, a := range f.batches {
		p.stage.indexedViaPass -= a.indexed
		pp.Batches++
		pp.Commits = append(pp.Commits, a.commits...)
		if err := p.acknowledge(ctx, a.end, a.txs, a.fences, now); err != nil {
			return err
		}
	}
	if r.took > slowPass {
		p.log.Warn("slow pattern pass", zap.Duration("took", r.took), zap.Int("patterns", r.st.Patterns),
			zap.Int("keys_scanned", r.st.KeysScanned), zap.Int("matches", r.st.PatternMatches), zap.Int("index_hits", r.st.IndexHits),
			zap.Int("batches", pp.Batches), zap.String("served", describePatterns(invalidator.CoalescePatterns(f.patterns), 10)))
	}
	if o, ok := p.opts.Observer.(PatternObserver); ok {
		o.PatternPass(pp)
	}
	return nil
}

// finishPasses waits for the pass in flight and those still queued, at a
// stop: what was applied is acknowledged rather than replayed.
func (p *Pipeline) finishPasses(ctx context.Context) error {
	for p.stage != nil && p.stage.busy() {
		if p.stage.due() {
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
