package invalidator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
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

// ApplyPass applies patterns, those of every batch up to the one ending at
// lsn, in one pass: the distinct patterns are matched against one walk of
// the keyspace (one SCAN per master, masters in parallel), and indexed
// patterns are served from their families' index sets. The pass is
// retried from the start until Redis acknowledges all of it; every step is
// idempotent, so a retry or a replay is harmless. It then records lsn as
// the applied watermark and publishes an event naming the patterns, as
// ApplyBatch would. It may run while ApplyBatch and ApplyChunk apply the
// direct keys of later batches.
func (iv *Invalidator) ApplyPass(ctx context.Context, lsn wal.LSN, patterns []mapping.Invalidation) (Stats, error) {
	patterns = CoalescePatterns(patterns)
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
		return Stats{}, nil
	}
	return iv.retrying(ctx, "pattern pass", len(patterns), func(st *Stats) error {
		err := iv.passOnce(ctx, protocol.NewToken(), patterns, st)
		if isNoScript(err) {
			if err = iv.loadScripts(ctx); err == nil {
				*st = Stats{Attempts: st.Attempts}
				err = iv.passOnce(ctx, protocol.NewToken(), patterns, st)
			}
		}
		if err != nil {
			return err
		}
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
	})
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

func indexed(inv mapping.Invalidation) bool {
	return inv.Template != nil && inv.Template.Indexed
}

func alsoScan(inv mapping.Invalidation) bool {
	return inv.Template != nil && inv.Template.Indexed && inv.Template.AlsoScan
}

// passOnce is one attempt at a pass: the indexes first, then one SCAN.
func (iv *Invalidator) passOnce(ctx context.Context, token string, patterns []mapping.Invalidation, st *Stats) error {
	var scanned []mapping.Invalidation
	var families []string
	var fromIndex []mapping.Invalidation
	for _, p := range patterns {
		st.Patterns++
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
	if len(families) > 0 {
		if err := iv.drainIndexes(ctx, token, families, fromIndex, st); err != nil {
			return err
		}
	}
	if len(scanned) == 0 {
		return nil
	}
	st.Scanned = true
	m := newMatcher(scanned)
	nodes, err := iv.masters(ctx)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, node := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ns Stats
			err := iv.scanNode(ctx, node, token, m, &ns)
			mu.Lock()
			st.KeysScanned += ns.KeysScanned
			st.PatternMatches += ns.PatternMatches
			if err != nil {
				errs = append(errs, err)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
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

// scanNode walks one master's keyspace once, matching every key against
// all the pass's patterns, one SCAN page (one pipeline) at a time.
func (iv *Invalidator) scanNode(ctx context.Context, node redis.UniversalClient, token string, m *matcher, st *Stats) error {
	var cursor uint64
	base := max(iv.opts.ScanCount, 1)
	count := base
	for {
		var keys []string
		var next uint64
		var err error
		if m.filter != "" {
			keys, next, err = node.Scan(ctx, cursor, m.filter, count).Result()
		} else {
			keys, next, err = node.Scan(ctx, cursor, "", count).Result()
		}
		if err != nil {
			return fmt.Errorf("scan for %s: %w", m.describe(), err)
		}
		st.KeysScanned += len(keys)
		b := iv.newBatch()
		b.token = token
		for _, k := range keys {
			hit := false
			var qerr error
			m.each(k, func(inv *mapping.Invalidation) {
				if qerr != nil || inv.Aux != (mapping.KeyFormat{}) && isCompanion(inv.Aux, k) {
					return // a version or stale key is not itself a cache entry
				}
				qerr = b.queue(ctx, *inv, k)
				hit = true
			})
			if qerr != nil {
				return qerr
			}
			if hit {
				st.PatternMatches++
			}
		}
		if err := b.exec(ctx); err != nil {
			return err
		}
		if next == 0 {
			return nil
		}
		cursor = next
		count = nextCount(count, base, len(keys))
	}
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

// matcher matches a key against many patterns without trying each: a
// pattern can only match keys that start with its literal prefix (the
// text before its first wildcard), so a key is tried only against the
// patterns whose prefix is one of its own prefixes, looked up by length.
// The match itself is protocol.Match, Redis's MATCH semantics.
type matcher struct {
	pats     []mapping.Invalidation
	byPrefix map[string][]int
	lengths  []int  // distinct prefix lengths, ascending
	filter   string // a MATCH every pattern's keys match ("" for none)
}

func newMatcher(pats []mapping.Invalidation) *matcher {
	m := &matcher{pats: pats, byPrefix: map[string][]int{}}
	common := ""
	for i, p := range pats {
		prefix := LiteralPrefix(p.Key)
		if _, ok := m.byPrefix[prefix]; !ok {
			m.lengths = append(m.lengths, len(prefix))
		}
		m.byPrefix[prefix] = append(m.byPrefix[prefix], i)
		if i == 0 {
			common = prefix
		} else {
			common = commonPrefix(common, prefix)
		}
	}
	sort.Ints(m.lengths)
	m.lengths = slices.Compact(m.lengths)
	if common != "" {
		// Redis then returns only the keys that can match: the walk is
		// the same, the traffic much less.
		m.filter = string(mapping.AppendGlobEscaped(nil, []byte(common))) + "*"
	}
	return m
}

// each calls fn with every pattern key matches.
func (m *matcher) each(key string, fn func(*mapping.Invalidation)) {
	for _, n := range m.lengths {
		if n > len(key) {
			return
		}
		for _, i := range m.byPrefix[key[:n]] {
			if protocol.Match(m.pats[i].Key, key) {
				fn(&m.pats[i])
			}
		}
	}
}

func (m *matcher) describe() string {
	if len(m.pats) == 1 {
		return fmt.Sprintf("%q", m.pats[0].Key)
	}
	return fmt.Sprintf("%d patterns", len(m.pats))
}

// LiteralPrefix is the text every key pattern matches starts with: the
// pattern up to its first unescaped '*', '?' or '[', escapes resolved.
func LiteralPrefix(pattern string) string {
	var b strings.Builder
	for i := 0; i < len(pattern); i++ {
		switch c := pattern[i]; c {
		case '*', '?', '[':
			return b.String()
		case '\\':
			if i+1 < len(pattern) {
				i++
			}
			b.WriteByte(pattern[i])
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func commonPrefix(a, b string) string {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return a[:i]
		}
	}
	return a[:n]
}
