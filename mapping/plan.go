package mapping

import (
	"bytes"
	"fmt"
	"hash/maphash"
	"strings"

	"github.com/walbust/walbust/replication/wal"
)

// Plan is a deduplicated set of invalidations: one transaction's while it
// is being decoded, or a batch's once transactions are merged into it.
//
// It is compact on purpose: a key costs its bytes plus about 30 bytes of
// bookkeeping, and adding one allocates nothing once the plan has grown,
// so a million-row transaction's keys fit in tens of megabytes. Key strings
// are only made when the invalidations are read out, a chunk at a time.
type Plan struct {
	Problems   []Problem
	Changes    int // row changes of registered tables
	Unrendered int // keys skipped because a value they need was not sent
	// Explain, set by the caller, makes the mapper record in
	// UnrenderedKeys what each unrendered key lacked (walbust explain).
	Explain        bool
	UnrenderedKeys []UnrenderedKey
	Skipped        int // rules skipped by when_changed or on
	Lookups        int // queries run
	// Overflowed: past the mapper's MaxTxChanges, some tables' rows were
	// replaced by their on_truncate rules.
	Overflowed   bool
	ChangeCounts []ChangeCount
	// Unmapped counts changes of published tables that no rule maps.
	Unmapped []ChangeCount

	arena     []byte  // the keys' bytes, back to back
	entries   []entry // in the order first derived
	slots     []int32 // open-addressing index into entries (+1; 0 is empty)
	pending   []pendingLookup
	lookupIdx map[lookupKey]int
	collapsed []*Table   // tables whose rows fell back to on_truncate
	refresh   refreshSet // action: refresh keys (refresh.go)
	seed      maphash.Seed
	buf       []byte // rendering scratch
}

type entry struct {
	off, n  uint32
	version wal.LSN
	tmpl    *Template // says action, companion key, TTL, table and rule
}

// pendingLookup is a query rule waiting for its commit: lookups read the
// database, which must show the transaction that triggered them.
type pendingLookup struct {
	key     lookupKey
	args    []any
	version wal.LSN
}

type lookupKey struct {
	rule *Rule
	args string
}

// Problem is a change whose invalidations could not all be derived. The
// pipeline logs and counts it; it does not stop the stream. Identical
// problems are kept once, with a count.
type Problem struct {
	Table string
	Op    wal.Op
	Msg   string
	Count int
}

func (p Problem) String() string { return fmt.Sprintf("%s on %s: %s", p.Op, p.Table, p.Msg) }

// UnrenderedKey is a template (or a lookup's arguments) that could not be
// rendered from a row image, and the columns it lacked.
type UnrenderedKey struct {
	Template *Template // nil for a lookup query's arguments
	Rule     *Rule
	Image    string   // "old" or "new": the row image it was rendered from
	Missing  []string // the columns referenced whose value was not given
}

// ChangeCount is how many changes of one kind a plan saw on one table.
type ChangeCount struct {
	Table string
	Op    wal.Op
	N     int
}

// PendingLookups is the number of lookup queries recorded and not yet run.
func (p *Plan) PendingLookups() int { return len(p.pending) }

// Len is the number of invalidations.
func (p *Plan) Len() int { return len(p.entries) }

// Size estimates the memory the plan holds, in bytes.
func (p *Plan) Size() int {
	return cap(p.arena) + cap(p.entries)*24 + cap(p.slots)*4 + len(p.pending)*64 + p.refresh.size()
}

// Reset empties the plan for reuse, keeping its allocations.
func (p *Plan) Reset() {
	p.Problems = p.Problems[:0]
	p.Changes, p.Unrendered, p.Skipped, p.Lookups = 0, 0, 0, 0
	p.UnrenderedKeys = p.UnrenderedKeys[:0]
	p.Overflowed = false
	p.ChangeCounts = p.ChangeCounts[:0]
	p.Unmapped = p.Unmapped[:0]
	p.arena = p.arena[:0]
	p.entries = p.entries[:0]
	clear(p.slots)
	clear(p.pending)
	p.pending = p.pending[:0]
	clear(p.lookupIdx)
	p.collapsed = p.collapsed[:0]
	p.refresh.reset()
}

// At returns invalidation i.
func (p *Plan) At(i int) Invalidation {
	e := &p.entries[i]
	t := e.tmpl
	inv := Invalidation{
		Action: t.table.Action.Action, Key: string(p.arena[e.off : e.off+e.n]), Pattern: t.pattern,
		Version: e.version, TTL: t.table.Action.StaleTTL, Table: t.table.Name, Rule: t.rule, Template: t,
	}
	switch inv.Action {
	case Bump:
		inv.Aux = t.table.Action.VersionKey
	case Stale:
		inv.Aux = t.table.Action.StaleKey
	case Fence:
		inv.TTL = t.table.Action.FenceTTL
	}
	return inv
}

// AppendInvalidations appends invalidations [from, to) to dst.
func (p *Plan) AppendInvalidations(dst []Invalidation, from, to int) []Invalidation {
	for i := from; i < to; i++ {
		dst = append(dst, p.At(i))
	}
	return dst
}

// Invalidations returns all of them.
func (p *Plan) Invalidations() []Invalidation {
	return p.AppendInvalidations(make([]Invalidation, 0, p.Len()), 0, p.Len())
}

// Tally calls fn with the number of invalidations per action, on keys and
// on patterns, for those that occur.
func (p *Plan) Tally(fn func(a Action, pattern bool, n int)) {
	var counts [maxAction + 1][2]int
	for i := range p.entries {
		t := p.entries[i].tmpl
		counts[t.table.Action.Action][b2i(t.pattern)]++
	}
	for a := range counts {
		for kind, n := range counts[a] {
			if n > 0 {
				fn(Action(a), kind == 1, n)
			}
		}
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// SetVersion records version (the commit LSN) in every invalidation and
// recorded lookup: it makes a transaction's plan one that can be applied
// as it is, without merging (and so copying) it.
func (p *Plan) SetVersion(version wal.LSN) {
	for i := range p.entries {
		p.entries[i].version = version
	}
	for i := range p.pending {
		p.pending[i].version = version
	}
	p.refresh.setVersion(version)
}

// Merge adds src's invalidations, lookups still to run, problems and counts;
// version is src's commit LSN, which Bump actions record.
func (p *Plan) Merge(src *Plan, version wal.LSN) {
	for i := range src.entries {
		e := &src.entries[i]
		p.add(e.tmpl, src.arena[e.off:e.off+e.n], version)
	}
	for _, l := range src.pending {
		p.addLookup(l.key.rule, l.args, version)
	}
	p.refresh.merge(&src.refresh, version)
	for _, pr := range src.Problems {
		p.problem(pr.Table, pr.Op, pr.Msg, pr.Count)
	}
	for _, c := range src.ChangeCounts {
		p.countN(c.Table, c.Op, c.N)
	}
	for _, c := range src.Unmapped {
		p.Unmapped = addCount(p.Unmapped, c.Table, c.Op, c.N)
	}
	p.Changes += src.Changes
	p.Unrendered += src.Unrendered
	p.Skipped += src.Skipped
	p.Lookups += src.Lookups
	p.Overflowed = p.Overflowed || src.Overflowed
}

// add records key (an invalidation by tmpl) unless the same action on the
// same key is already there; a duplicate keeps the highest version.
func (p *Plan) add(tmpl *Template, key []byte, version wal.LSN) {
	if len(p.slots) == 0 {
		p.seed = maphash.MakeSeed()
		p.slots = make([]int32, 64)
	}
	mask := uint64(len(p.slots) - 1)
	for h := p.hash(tmpl, key); ; h++ {
		s := &p.slots[h&mask]
		if *s == 0 {
			*s = int32(len(p.entries) + 1)
			break
		}
		e := &p.entries[*s-1]
		if sameAction(e.tmpl, tmpl) && bytes.Equal(p.arena[e.off:e.off+e.n], key) {
			e.version = max(e.version, version)
			if tmpl.table.Action.Action == Fence && tmpl.table.Action.FenceTTL > e.tmpl.table.Action.FenceTTL {
				e.tmpl = tmpl // two tables fence one key: the longer fence_ttl protects both
			}
			return
		}
	}
	p.entries = append(p.entries, entry{off: uint32(len(p.arena)), n: uint32(len(key)), version: version, tmpl: tmpl})
	p.arena = append(p.arena, key...)
	if len(p.entries)*2 > len(p.slots) {
		p.grow()
	}
}

func (p *Plan) hash(tmpl *Template, key []byte) uint64 {
	h := maphash.Bytes(p.seed, key)
	if tmpl.pattern {
		h = ^h
	}
	return h ^ uint64(tmpl.table.Action.Action)<<56
}

// sameAction: two templates' keys are one invalidation when they act the
// same way. Two tables may keep one key's version in different places.
func sameAction(a, b *Template) bool {
	if a == b {
		return true
	}
	return a.pattern == b.pattern && a.table.Action.Action == b.table.Action.Action &&
		(a.table.Action.Action == Delete || auxOf(a) == auxOf(b))
}

func auxOf(t *Template) KeyFormat {
	switch t.table.Action.Action {
	case Bump:
		return t.table.Action.VersionKey
	case Stale:
		return t.table.Action.StaleKey
	}
	return KeyFormat{}
}

func (p *Plan) grow() {
	p.slots = make([]int32, len(p.slots)*2)
	mask := uint64(len(p.slots) - 1)
	for i := range p.entries {
		e := &p.entries[i]
		h := p.hash(e.tmpl, p.arena[e.off:e.off+e.n])
		for p.slots[h&mask] != 0 {
			h++
		}
		p.slots[h&mask] = int32(i + 1)
	}
}

func (p *Plan) addLookup(r *Rule, args []any, version wal.LSN) {
	var k strings.Builder
	for _, a := range args {
		if a == nil {
			k.WriteString("\x00N")
		} else {
			fmt.Fprintf(&k, "\x00T%d:%s", len(a.(string)), a)
		}
	}
	key := lookupKey{r, k.String()}
	if i, ok := p.lookupIdx[key]; ok {
		p.pending[i].version = max(p.pending[i].version, version)
		return
	}
	if p.lookupIdx == nil {
		p.lookupIdx = map[lookupKey]int{}
	}
	p.lookupIdx[key] = len(p.pending)
	p.pending = append(p.pending, pendingLookup{key: key, args: args, version: version})
}

// keepPending drops the first n recorded lookups (they ran).
func (p *Plan) keepPending(n int) {
	rest := copy(p.pending, p.pending[n:])
	clear(p.pending[rest:])
	p.pending = p.pending[:rest]
	clear(p.lookupIdx)
	for i, l := range p.pending {
		p.lookupIdx[l.key] = i
	}
}

func (p *Plan) problem(table string, op wal.Op, msg string, n int) {
	for i := range p.Problems {
		if pr := &p.Problems[i]; pr.Table == table && pr.Op == op && pr.Msg == msg {
			pr.Count += n
			return
		}
	}
	p.Problems = append(p.Problems, Problem{Table: table, Op: op, Msg: msg, Count: n})
}

func (p *Plan) countN(table string, op wal.Op, n int) {
	p.ChangeCounts = addCount(p.ChangeCounts, table, op, n)
}

func (p *Plan) countUnmapped(table string, op wal.Op) {
	p.Unmapped = addCount(p.Unmapped, table, op, 1)
}

func addCount(counts []ChangeCount, table string, op wal.Op, n int) []ChangeCount {
	for i := range counts {
		if c := &counts[i]; c.Table == table && c.Op == op {
			c.N += n
			return counts
		}
	}
	return append(counts, ChangeCount{Table: table, Op: op, N: n})
}
