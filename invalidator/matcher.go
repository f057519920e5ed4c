package invalidator

import (
	"fmt"
	"slices"
	"strings"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
)

// patternID is what makes two patterns the same work: one per pattern,
// action and companion key format (see CoalescePatterns).
type patternID struct {
	key    string
	action mapping.Action
	aux    mapping.KeyFormat
}

func idOf(inv mapping.Invalidation) patternID { return patternID{inv.Key, inv.Action, inv.Aux} }

// matchEntry is one distinct pattern of the walk and the passes that wait
// for it. Of the same pattern in several passes the latest version is
// kept: applying that once is what applying them all in order would leave.
type matchEntry struct {
	inv    mapping.Invalidation
	prefix string
	owners []*sweepJoin
}

// matcher matches a key against many patterns without trying each: a
// pattern can only match keys that start with its literal prefix (the
// text before its first wildcard), so a key is tried only against the
// patterns whose prefix is one of its own prefixes, looked up by length.
// The match itself is protocol.Match, Redis's MATCH semantics. Passes add
// their patterns as they join the walk and remove them when done.
type matcher struct {
	entries  map[patternID]*matchEntry
	byPrefix map[string][]*matchEntry
	lengths  map[int]int // prefix length -> entries with it
	sorted   []int       // the keys of lengths, ascending
	filter   string      // a MATCH every pattern's keys match ("" for none)
	common   string      // the literal prefix filter is made of
}

func newMatcher(pats []mapping.Invalidation) *matcher {
	m := &matcher{entries: map[patternID]*matchEntry{}, byPrefix: map[string][]*matchEntry{}, lengths: map[int]int{}}
	for _, p := range pats {
		m.add(nil, p)
	}
	m.refilter()
	return m
}

func (m *matcher) empty() bool { return len(m.entries) == 0 }

// add records inv for owner (nil: no owner, as newMatcher's). It widens
// the filter at once, since the walk may go on with the new pattern; it
// never narrows it: that waits for refilter, between two walks.
func (m *matcher) add(owner *sweepJoin, inv mapping.Invalidation) {
	id := idOf(inv)
	if e, ok := m.entries[id]; ok {
		e.inv.Version = max(e.inv.Version, inv.Version)
		e.inv.TTL = max(e.inv.TTL, inv.TTL)
		if owner != nil {
			e.owners = append(e.owners, owner)
		}
		return
	}
	e := &matchEntry{inv: inv, prefix: LiteralPrefix(inv.Key)}
	if owner != nil {
		e.owners = []*sweepJoin{owner}
	}
	wasEmpty := m.empty()
	m.entries[id] = e
	m.byPrefix[e.prefix] = append(m.byPrefix[e.prefix], e)
	if m.lengths[len(e.prefix)]++; m.lengths[len(e.prefix)] == 1 {
		m.sorted = append(m.sorted, len(e.prefix))
		slices.Sort(m.sorted)
	}
	if wasEmpty {
		m.common = e.prefix
	} else {
		m.common = commonPrefix(m.common, e.prefix)
	}
	m.setFilter()
}

// remove drops owner from the patterns it added; a pattern no pass waits
// for any more is no longer matched.
func (m *matcher) remove(owner *sweepJoin, pats []mapping.Invalidation) {
	for _, inv := range pats {
		id := idOf(inv)
		e, ok := m.entries[id]
		if !ok {
			continue
		}
		if i := slices.Index(e.owners, owner); i >= 0 {
			e.owners = slices.Delete(e.owners, i, i+1)
		}
		if len(e.owners) > 0 {
			continue
		}
		delete(m.entries, id)
		same := m.byPrefix[e.prefix]
		if i := slices.Index(same, e); i >= 0 {
			same = slices.Delete(same, i, i+1)
		}
		if len(same) == 0 {
			delete(m.byPrefix, e.prefix)
		} else {
			m.byPrefix[e.prefix] = same
		}
		if m.lengths[len(e.prefix)]--; m.lengths[len(e.prefix)] == 0 {
			delete(m.lengths, len(e.prefix))
			m.sorted = slices.DeleteFunc(m.sorted, func(n int) bool { return n == len(e.prefix) })
		}
	}
}

// refilter recomputes the filter from the patterns left: the narrowest
// MATCH that still lets all their keys through.
func (m *matcher) refilter() {
	first := true
	for prefix := range m.byPrefix {
		if first {
			m.common, first = prefix, false
		} else {
			m.common = commonPrefix(m.common, prefix)
		}
	}
	if first {
		m.common = ""
	}
	m.setFilter()
}

func (m *matcher) setFilter() {
	m.filter = ""
	if m.common != "" {
		// Redis then returns only the keys that can match: the walk is
		// the same, the traffic much less.
		m.filter = string(mapping.AppendGlobEscaped(nil, []byte(m.common))) + "*"
	}
}

// each calls fn with every pattern key matches.
func (m *matcher) each(key string, fn func(*matchEntry)) {
	for _, n := range m.sorted {
		if n > len(key) {
			return
		}
		for _, e := range m.byPrefix[key[:n]] {
			if protocol.Match(e.inv.Key, key) {
				fn(e)
			}
		}
	}
}

func (m *matcher) describe() string {
	if len(m.entries) == 1 {
		for _, e := range m.entries {
			return fmt.Sprintf("%q", e.inv.Key)
		}
	}
	return fmt.Sprintf("%d patterns", len(m.entries))
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
