package invalidator

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

// drainTTL bounds how long a draining index set outlives a pass that
// failed half way and was never retried (walbust stopped for good).
const drainTTL = 24 * time.Hour

var indexDrainScript = redis.NewScript(protocol.IndexDrainScript)

// Pass is a pattern pass under way (StartPass).
type Pass struct {
	done chan struct{}
	st   Stats
	err  error
}

// Done is closed when the pass has ended; Result then says how.
func (p *Pass) Done() <-chan struct{} { return p.done }

// Result is the pass's outcome, once Done is closed: nil only when Redis
// acknowledged all of it and its position is recorded.
func (p *Pass) Result() (Stats, error) { return p.st, p.err }

// Wait waits for the pass to end and returns Result.
func (p *Pass) Wait() (Stats, error) {
	<-p.done
	return p.Result()
}

// ApplyPass is StartPass, waited for.
func (iv *Invalidator) ApplyPass(ctx context.Context, lsn wal.LSN, patterns []mapping.Invalidation) (Stats, error) {
	return iv.StartPass(ctx, lsn, patterns).Wait()
}

// StartPass applies patterns, those of every batch up to the one ending
// at lsn: indexed patterns from their families' index sets, the others by
// joining the walk of the keyspace that every pass under way shares (one
// SCAN per master, masters in parallel; see sweep), which they leave once
// it has covered the whole keyspace. Each step is retried until Redis
// acknowledges it and is idempotent, so a retry or a replay is harmless.
// The pass then records lsn as the applied watermark and publishes an
// event naming the patterns, as ApplyBatch would, but only after every
// pass started before it did: passes may run concurrently, with each
// other and with ApplyBatch and ApplyChunk applying the direct keys of
// later batches, and the watermark must never claim a pass not yet done.
func (iv *Invalidator) StartPass(ctx context.Context, lsn wal.LSN, patterns []mapping.Invalidation) *Pass {
	p := &Pass{done: make(chan struct{})}
	iv.passMu.Lock()
	prev := iv.lastPass
	iv.lastPass = p
	iv.passMu.Unlock()
	go func() {
		defer close(p.done)
		p.st, p.err = iv.runPass(ctx, lsn, CoalescePatterns(patterns), prev)
	}()
	return p
}

func (iv *Invalidator) runPass(ctx context.Context, lsn wal.LSN, patterns []mapping.Invalidation, prev *Pass) (Stats, error) {
	var event []byte
	if iv.opts.EventsChannel != "" && len(patterns) > 0 {
		ev := protocol.Event{LSN: lsn}
		for _, p := range patterns {
			ev.Patterns = append(ev.Patterns, p.Key)
		}
		msg, err := ev.Marshal()
		if err != nil {
			return Stats{}, fmt.Errorf("encode event: %w", err)
		}
		event = msg
	}
	// The batches' positions, as ApplyBatch records them (the pipeline
	// applied their direct keys with ApplyChunk, leaving them to the pass).
	mark := marks{applied: lsn, settled: lsn}
	if iv.opts.SettleLater {
		mark.settled = 0
	}
	mark = iv.enabledMarks(mark)
	if len(patterns) == 0 && mark.none() {
		// Nothing to do, but it ends after the passes before it, as
		// every pass does.
		return Stats{}, waitFor(ctx, prev)
	}
	st, err := iv.retrying(ctx, "pattern pass", len(patterns), func(st *Stats) error {
		err := iv.applyPatterns(ctx, patterns, st)
		if isNoScript(err) {
			if err = iv.loadScripts(ctx); err == nil {
				*st = Stats{Attempts: st.Attempts}
				err = iv.applyPatterns(ctx, patterns, st)
			}
		}
		return err
	})
	if err != nil {
		return st, err
	}
	if err := waitFor(ctx, prev); err != nil {
		return st, err
	}
	if mark.none() && event == nil {
		return st, nil
	}
	mst, err := iv.retrying(ctx, "pattern pass (watermark)", len(patterns), func(*Stats) error {
		err := iv.markAndPublish(ctx, mark, event)
		if isNoScript(err) {
			if err = iv.loadScripts(ctx); err == nil {
				err = iv.markAndPublish(ctx, mark, event)
			}
		}
		if iv.markNoPerm(err) {
			err = iv.markAndPublish(ctx, mark, event)
		}
		return err
	})
	st.Attempts = max(st.Attempts, mst.Attempts)
	return st, err
}

// CoalescePatterns returns the distinct patterns of invs, in first-seen
// order: one per pattern, action and companion key format. Of the same
// pattern bumped or fenced by several transactions, the latest version
// (the highest commit LSN) is kept, which is what applying them all in
// order would leave. Direct keys in invs are dropped.
func CoalescePatterns(invs []mapping.Invalidation) []mapping.Invalidation {
	type id struct {
		key    string
		action mapping.Action
		aux    mapping.KeyFormat
	}
	seen := make(map[id]int, len(invs))
	var out []mapping.Invalidation
	for _, inv := range invs {
		if !inv.Pattern {
			continue
		}
		k := id{inv.Key, inv.Action, inv.Aux}
		if i, ok := seen[k]; ok {
			o := &out[i]
			o.Version = max(o.Version, inv.Version)
			o.TTL = max(o.TTL, inv.TTL)
			if indexed(inv) && !indexed(*o) || alsoScan(inv) {
				o.Template = inv.Template
			}
			continue
		}
		seen[k] = len(out)
		out = append(out, inv)
	}
	return out
}

// Inline says whether inv, a pattern, is applied with the direct keys of
// its batch rather than in a pass: an indexed family that is deleted and
// not also scanned, whose index holds every key to delete. Outside a
// cluster one script deletes the members and the index; in a cluster
// (members in any slot) the index is drained as a pass does, which costs
// the members, not the keyspace, either way.
func Inline(inv mapping.Invalidation) bool {
	return inv.Pattern && indexed(inv) && !alsoScan(inv) && inv.Action == mapping.Delete
}

func indexed(inv mapping.Invalidation) bool {
	return inv.Template != nil && inv.Template.Indexed
}

func alsoScan(inv mapping.Invalidation) bool {
	return inv.Template != nil && inv.Template.Indexed && inv.Template.AlsoScan
}

// waitFor waits for the pass before this one. One that failed failed
// because its context ended (a pass retries until then): in this pass's
// run too, if its context has ended as well, so this one must not record
// a position past it either; otherwise it was a run before this one (the
// pipeline restarted after a lost slot), which replays from its checkpoint.
func waitFor(ctx context.Context, prev *Pass) error {
	if prev == nil {
		return nil
	}
	select {
	case <-prev.done:
	case <-ctx.Done():
		return fmt.Errorf("pattern pass: waiting for the one before it: %w", ctx.Err())
	}
	if prev.err != nil && ctx.Err() != nil {
		return fmt.Errorf("a pattern pass before this one failed: %w", prev.err)
	}
	return nil
}

func (iv *Invalidator) markAndPublish(ctx context.Context, mark marks, event []byte) error {
	if !mark.none() {
		if err := iv.sendMarks(ctx, mark); err != nil {
			return err
		}
	}
	if event != nil {
		if err := iv.client.Publish(ctx, iv.opts.EventsChannel, event).Err(); err != nil {
			return fmt.Errorf("publish event: %w", err)
		}
	}
	return nil
}

// familiesPerScript bounds the families one index_unlink.lua call serves,
// so that one call stays short: at most 32 full indexes (10,000 members
// each by default) are deleted in one atomic step.
const familiesPerScript = 32

// unlinkFamilies queues the deletion of indexed families' members and
// index sets (Inline), many families per script call, and returns the
// calls, whose replies count the members.
func (b *batch) unlinkFamilies(ctx context.Context, families []string) []*redis.Cmd {
	var cmds []*redis.Cmd
	for len(families) > 0 {
		n := min(len(families), familiesPerScript)
		keys := make([]string, 0, 2*n)
		for _, f := range families[:n] {
			keys = append(keys, protocol.IndexKey(f), protocol.DrainingKey(f))
		}
		cmds = append(cmds, indexUnlinkScript.EvalSha(ctx, b.pipe, keys))
		families = families[n:]
	}
	return cmds
}

// splitPatterns sorts a pass's patterns into those the walk matches and
// the index families (with their patterns) drained from index sets.
func splitPatterns(patterns []mapping.Invalidation) (scanned []mapping.Invalidation, families []string, fromIndex []mapping.Invalidation) {
	for _, p := range patterns {
		if indexed(p) {
			if family, ok := protocol.IndexFamily(p.Key); ok {
				families = append(families, family)
				fromIndex = append(fromIndex, p)
				if !alsoScan(p) {
					continue
				}
			}
			// Not a family prefix (a template mapping never renders one):
			// scanned, the safe side.
		}
		scanned = append(scanned, p)
	}
	return scanned, families, fromIndex
}

// applyPatterns applies patterns once: the indexed families from their
// index sets, then the rest by joining the keyspace walk until it has
// covered the whole keyspace (the walk retries Redis failures itself).
func (iv *Invalidator) applyPatterns(ctx context.Context, patterns []mapping.Invalidation, st *Stats) error {
	st.Patterns += len(patterns)
	scanned, families, fromIndex := splitPatterns(patterns)
	if len(families) > 0 {
		// One drain at a time: a drain unlinks its draining sets once
		// their members are gone, which must not take the members another
		// drain of the same family still has to remove.
		iv.indexMu.Lock()
		err := iv.drainIndexes(ctx, protocol.NewToken(), families, fromIndex, st)
		iv.indexMu.Unlock()
		if err != nil {
			return err
		}
	}
	if len(scanned) == 0 {
		return nil
	}
	st.Scanned = true
	j := iv.sweep.join(ctx, scanned)
	select {
	case <-j.done:
	case <-ctx.Done():
		return fmt.Errorf("pattern pass of %d patterns: %w", len(scanned), ctx.Err())
	}
	if j.err != nil {
		return j.err
	}
	st.Attempts = max(st.Attempts, j.st.Attempts)
	st.KeysScanned += j.st.KeysScanned
	st.PatternMatches += j.st.PatternMatches
	return nil
}

// drainIndexes invalidates every key in the index sets of families (the
// families of patterns), at a cost of their members, not of the keyspace.
func (iv *Invalidator) drainIndexes(ctx context.Context, token string, families []string, patterns []mapping.Invalidation, st *Stats) error {
	pipe := iv.client.Pipeline()
	cmds := make([]*redis.Cmd, len(families))
	for i, f := range families {
		cmds[i] = indexDrainScript.EvalSha(ctx, pipe, []string{protocol.IndexKey(f), protocol.DrainingKey(f)}, drainTTL.Milliseconds())
	}
	if err := execPipeline(ctx, pipe); err != nil {
		return fmt.Errorf("drain pattern indexes: %w", err)
	}
	b := iv.newBatch()
	b.token = token
	for i, cmd := range cmds {
		members, err := cmd.StringSlice()
		if err != nil {
			return fmt.Errorf("drain the index of %q: %w", families[i], err)
		}
		for _, k := range members {
			// Every member belongs to the family; one that does not match
			// (not written by a cacheaside client) is removed all the same:
			// invalidating too much is the safe side.
			if err := b.queue(ctx, patterns[i], k); err != nil {
				return err
			}
		}
		st.IndexHits += len(members)
		st.PatternMatches += len(members)
	}
	if err := b.exec(ctx); err != nil {
		return err
	}
	// Only once the members are gone: a failure before leaves the draining
	// sets for the retry.
	del := iv.newBatch()
	for _, f := range families {
		if err := del.unlink(ctx, protocol.DrainingKey(f)); err != nil {
			return err
		}
	}
	return del.exec(ctx)
}

// maxCountFactor bounds how far nextCount raises COUNT above ScanCount.
const maxCountFactor = 4

// nextCount adapts SCAN's COUNT to what the MATCH filter lets through:
// while pages come back nearly empty (a pass's patterns match few keys of
// a large keyspace), each call walks more of it, up to 4 times
// ScanCount, so a pass takes fewer round trips; as soon as pages fill up
// again, it comes back down. What one call returns, and so the work per
// call on either side, stays about ScanCount keys.
func nextCount(count, base int64, returned int) int64 {
	switch {
	case int64(returned) < count/8:
		return min(count*2, base*maxCountFactor)
	case int64(returned) > count/2:
		return max(count/2, base)
	}
	return count
}

func isCompanion(f mapping.KeyFormat, key string) bool {
	return len(key) > len(f.Prefix)+len(f.Suffix) && strings.HasPrefix(key, f.Prefix) && strings.HasSuffix(key, f.Suffix)
}
