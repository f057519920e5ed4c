package invalidator

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/walbust/walbust/internal/retry"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
)

// errRestarted: the server a walk was on is not the one it started on (a
// restart or a failover), so its cursor means nothing there any more.
// ErrClosed: the Invalidator was closed; nothing more is applied.
var ErrClosed = errors.New("the invalidator is closed")

var errRestarted = errors.New("redis restarted or failed over mid-walk (run_id changed)")

// sweep is the one walk of the keyspace that concurrent pattern passes
// share. A pass joins it with its patterns and is done once the walk has
// covered the whole keyspace since it joined, so the walk's cost is paid
// once however many passes wait, and a pass that arrives mid-walk does not
// wait for the walk under way to end first.
//
// Joining mid-walk relies on how Redis's SCAN cursor works: read with its
// bits reversed it is a position in the hash space that only grows during
// a walk, whatever rehashing does, so a pass that joined at cursor c is
// done when the next walk reaches c again. That holds for one hash table
// per server; a Redis Cluster node (one table per slot from 7.4 on) and
// servers that are not Redis are walked whole, a pass joining at the next
// walk's start.
type sweep struct {
	iv      *Invalidator
	mu      sync.Mutex
	pending []*sweepJoin
	running bool
	closed  bool
	gen     int // of the walk running, so a stopped one cleans up only its own
	stop    context.CancelFunc
	wg      sync.WaitGroup
	pages   atomic.Int64 // SCAN pages walked, ever (for tests)
	warned  atomic.Bool  // INFO refused, said once
}

// sweepJoin is one pass in the walk. Its fields past done are the walk's.
type sweepJoin struct {
	ctx      context.Context
	patterns []mapping.Invalidation // distinct, none index-only
	done     chan struct{}
	err      error
	st       Stats // Attempts, KeysScanned, PatternMatches

	start   uint64 // the cursor of the first page it saw
	wrapped bool   // the walk it joined ended since
}

// join adds patterns to the walk, starting one if none runs, and returns
// at once; the pass is done when j.done is closed.
func (s *sweep) join(ctx context.Context, patterns []mapping.Invalidation) *sweepJoin {
	j := &sweepJoin{ctx: ctx, patterns: patterns, done: make(chan struct{}), st: Stats{Attempts: 1}}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		j.finish(fmt.Errorf("pattern pass: %w", ErrClosed))
		return j
	}
	s.pending = append(s.pending, j)
	if !s.running {
		s.running = true
		s.gen++
		gen := s.gen
		ctx, cancel := context.WithCancel(context.Background())
		s.stop = cancel
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer cancel()
			s.walk(ctx, gen)
		}()
	}
	return j
}

// close ends the walk (the passes in it fail) and waits for it.
func (s *sweep) close() {
	s.mu.Lock()
	s.closed = true
	if s.stop != nil {
		s.stop()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// admit moves the pending passes into the walk at cursor (all of them, or
// none when joining mid-walk is not safe and the walk is under way), and
// drops those whose caller gave up. It says whether any pass is left; when
// none is, the walk is over (under the lock, so a join after it starts a
// new one).
func (s *sweep) admit(active []*sweepJoin, m *matcher, cursor uint64, midWalk bool) ([]*sweepJoin, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	active = leave(active, m, func(j *sweepJoin) (bool, error) { return j.ctx.Err() != nil, j.ctx.Err() })
	if cursor == 0 || midWalk {
		for _, j := range s.pending {
			if err := j.ctx.Err(); err != nil {
				j.finish(err)
				continue
			}
			j.start, j.wrapped = cursor, false
			for _, p := range j.patterns {
				m.add(j, p)
			}
			active = append(active, j)
		}
		clear(s.pending)
		s.pending = s.pending[:0]
	}
	if len(active) == 0 && len(s.pending) == 0 {
		s.running = false
		return nil, false
	}
	return active, true
}

// leave finishes, with the error done returns, the passes done says are
// done, takes their patterns out of m, and returns the others.
func leave(active []*sweepJoin, m *matcher, done func(*sweepJoin) (bool, error)) []*sweepJoin {
	kept := active[:0]
	for _, j := range active {
		if ok, err := done(j); ok {
			m.remove(j, j.patterns)
			j.finish(err)
			continue
		}
		kept = append(kept, j)
	}
	clear(active[len(kept):])
	return kept
}

func (j *sweepJoin) finish(err error) {
	j.err = err
	close(j.done)
}

// walk runs while passes wait: one node (standalone, Sentinel) page by
// page with passes joining mid-walk, or every master of a cluster in
// parallel, passes joining between walks.
func (s *sweep) walk(ctx context.Context, gen int) {
	iv := s.iv
	var active []*sweepJoin
	defer func() {
		if ctx.Err() == nil {
			return // no pass left: admit ended the walk
		}
		// Stopped (Close): whoever still waits is told.
		s.mu.Lock()
		for _, j := range active {
			j.finish(fmt.Errorf("pattern pass: %w", ctx.Err()))
		}
		if s.gen == gen && s.running {
			for _, j := range s.pending {
				j.finish(fmt.Errorf("pattern pass: %w", ctx.Err()))
			}
			s.pending, s.running = nil, false
		}
		s.mu.Unlock()
	}()
	m := newMatcher(nil)
	backoff := retry.Backoff{Initial: 50 * time.Millisecond, Max: iv.opts.MaxBackoff, Jitter: retry.Equal}
	var lastLog time.Time
	failures := 0
	fail := func(err error) error {
		if iv.opts.OnResult != nil {
			iv.opts.OnResult(err)
		}
		failures++
		for _, j := range active {
			j.st.Attempts++
			j.start, j.wrapped = 0, false
		}
		if iv.cluster != nil {
			iv.cluster.ReloadState(ctx)
		}
		if time.Since(lastLog) > 10*time.Second {
			iv.log.Warn("redis unavailable; retrying pattern pass", zap.Error(err), zap.Int("attempt", failures+1), zap.String("patterns", m.describe()))
			lastLog = time.Now()
		}
		return retry.Sleep(ctx, backoff.Next())
	}
	recovered := func() {
		if iv.opts.OnResult != nil {
			iv.opts.OnResult(nil)
		}
		if failures > 0 {
			iv.log.Info("redis recovered; pattern pass going on", zap.Int("attempts", failures+1))
			failures, lastLog = 0, time.Time{}
			backoff = retry.Backoff{Initial: 50 * time.Millisecond, Max: iv.opts.MaxBackoff, Jitter: retry.Equal}
		}
	}

	if iv.cluster != nil {
		for {
			var ok bool
			if active, ok = s.admit(active, m, 0, false); !ok {
				return
			}
			m.refilter()
			err := s.walkMasters(ctx, m, active)
			if err != nil {
				if ctx.Err() != nil || fail(err) != nil {
					return
				}
				continue
			}
			recovered()
			for _, j := range active {
				m.remove(j, j.patterns)
				j.finish(nil)
			}
			active = active[:0]
		}
	}

	var cursor uint64
	var runID string
	midWalk := false
	base := max(iv.opts.ScanCount, 1)
	count := base
	hits := map[*matchEntry]int{}
	for {
		var ok bool
		if len(active) == 0 {
			// A new walk: nothing it could miss on another server yet.
			cursor, runID = 0, ""
		}
		if active, ok = s.admit(active, m, cursor, midWalk); !ok {
			return
		}
		if cursor == 0 {
			// runID is kept: a pass that joined mid-walk goes on into
			// this walk, and must not finish it on another server.
			m.refilter()
			count = base
		}
		keys, next, info, err := page(ctx, iv.client, cursor, m.filter, count)
		if err == nil && runID != "" && info.runID != runID {
			err = errRestarted
		}
		if err == nil {
			runID, midWalk = info.runID, info.oneTable
			s.noteRefused(info)
			err = s.apply(ctx, m, keys, hits)
			credit(hits)
		}
		if err != nil {
			if ctx.Err() != nil || fail(err) != nil {
				return
			}
			// Every pass starts over, on whichever server answers now.
			cursor, runID = 0, ""
			continue
		}
		recovered()
		active = leave(active, m, func(j *sweepJoin) (bool, error) {
			j.st.KeysScanned += len(keys)
			if next == 0 && !j.wrapped && j.start != 0 {
				j.wrapped = true
				return false, nil
			}
			// Done once the walk has covered the hash space from j.start
			// on, then from 0 up to j.start.
			return next == 0 || j.wrapped && bits.Reverse64(next) >= bits.Reverse64(j.start), nil
		})
		cursor = next
		count = nextCount(count, base, len(keys))
	}
}

// walkMasters walks every master of the cluster once, in parallel.
func (s *sweep) walkMasters(ctx context.Context, m *matcher, active []*sweepJoin) error {
	nodes, err := s.iv.masters(ctx)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	var errs []error
	scanned := 0
	var wg sync.WaitGroup
	for _, node := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hits := map[*matchEntry]int{}
			n, err := s.walkNode(ctx, node, m, hits)
			mu.Lock()
			scanned += n
			credit(hits)
			if err != nil {
				errs = append(errs, err)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, j := range active {
		j.st.KeysScanned += scanned
	}
	return errors.Join(errs...)
}

// walkNode walks one master's keyspace once, from cursor 0 to cursor 0.
func (s *sweep) walkNode(ctx context.Context, node redis.UniversalClient, m *matcher, hits map[*matchEntry]int) (int, error) {
	var cursor uint64
	var runID string
	base := max(s.iv.opts.ScanCount, 1)
	count := base
	scanned := 0
	for {
		keys, next, info, err := page(ctx, node, cursor, m.filter, count)
		if err == nil && runID != "" && info.runID != runID {
			err = errRestarted
		}
		if err != nil {
			return scanned, err
		}
		runID = info.runID
		s.noteRefused(info)
		scanned += len(keys)
		if err := s.apply(ctx, m, keys, hits); err != nil {
			return scanned, err
		}
		if next == 0 {
			return scanned, nil
		}
		cursor = next
		count = nextCount(count, base, len(keys))
	}
}

// apply invalidates, in one pipeline, the keys of a page that match.
// The matcher is only read: passes join and leave between pages. Each
// page's tombstones get a token of their own: passes join mid-walk, and a
// key SCAN returns twice must not be fenced again with a token a reader
// may have seen.
func (s *sweep) apply(ctx context.Context, m *matcher, keys []string, hits map[*matchEntry]int) error {
	s.pages.Add(1)
	page := map[*matchEntry]int{}
	b, err := s.queue(ctx, m, keys, page)
	if err != nil || b == nil {
		return err
	}
	err = b.exec(ctx)
	if isNoScript(err) {
		// SCRIPT FLUSH ran, or the server is new (a restart, a failover,
		// a cluster node's first page): load the scripts and send the
		// page again, rebuilt (Exec empties a pipeline, failed or not).
		if err = s.iv.loadScripts(ctx); err != nil {
			return err
		}
		clear(page)
		if b, err = s.queue(ctx, m, keys, page); err != nil {
			return err
		}
		err = b.exec(ctx)
	}
	if err == nil {
		for e, n := range page {
			hits[e] += n
		}
	}
	return err
}

// queue builds the batch that acts on the keys of a page that match (nil
// when none does), counting matches per pattern in hits.
func (s *sweep) queue(ctx context.Context, m *matcher, keys []string, hits map[*matchEntry]int) (*batch, error) {
	b := s.iv.newBatch()
	b.token = protocol.NewToken()
	queued := false
	for _, k := range keys {
		var qerr error
		m.each(k, func(e *matchEntry) {
			if qerr != nil || e.inv.Aux != (mapping.KeyFormat{}) && isCompanion(e.inv.Aux, k) {
				return // a version or stale key is not itself a cache entry
			}
			if qerr = b.queue(ctx, e.inv, k); qerr == nil {
				queued = true
				hits[e]++
			}
		})
		if qerr != nil {
			return nil, qerr
		}
	}
	if !queued {
		return nil, nil
	}
	return b, nil
}

// noteRefused says, once, that walks go on without knowing their server:
// still exact between restarts, but blind to one mid-walk, and whole.
func (s *sweep) noteRefused(info serverInfo) {
	if info.refused != nil && s.warned.CompareAndSwap(false, true) {
		s.iv.log.Warn("INFO refused: pattern passes cannot notice a Redis restart or failover mid-walk, and wait for whole walks; grant +info",
			zap.Error(info.refused))
	}
}

// credit counts matches to the passes that wait for their patterns.
func credit(hits map[*matchEntry]int) {
	for e, n := range hits {
		for _, j := range e.owners {
			j.st.PatternMatches += n
		}
		delete(hits, e)
	}
}

// serverInfo is what a walk needs to know of the server it is on.
type serverInfo struct {
	runID    string // "" when INFO is refused: a restart then goes unseen, as before
	refused  error  // why INFO failed, if it did
	oneTable bool   // one hash table: a pass may join mid-walk
}

// page is one SCAN call, with INFO server on the same connection, so that
// a walk notices when the server under it changed.
func page(ctx context.Context, node redis.UniversalClient, cursor uint64, match string, count int64) ([]string, uint64, serverInfo, error) {
	pipe := node.Pipeline()
	info := pipe.Info(ctx, "server")
	scan := pipe.Scan(ctx, cursor, match, count)
	_, _ = pipe.Exec(ctx)
	keys, next, err := scan.Result()
	if err != nil {
		what := "scan"
		if match != "" {
			what = "scan for " + match
		}
		return nil, 0, serverInfo{}, fmt.Errorf("%s: %w", what, err)
	}
	text, err := info.Result()
	if err != nil {
		return keys, next, serverInfo{refused: err}, nil
	}
	return keys, next, parseServerInfo(text), nil
}

func parseServerInfo(text string) serverInfo {
	var si serverInfo
	mode, other, redis := "", false, false
	for line := range strings.Lines(text) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch k {
		case "run_id":
			si.runID = v
		case "redis_mode":
			mode = v
		case "executable":
			redis = true // Redis and its forks (Valkey, KeyDB) say where their binary is
		case "dragonfly_version":
			other = true
		}
	}
	// Only what is known to walk one dict with Redis's cursor: a proxy or
	// another server may number its cursor otherwise.
	si.oneTable = mode == "standalone" && len(si.runID) == 40 && redis && !other
	return si
}
