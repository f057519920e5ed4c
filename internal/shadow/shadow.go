// Package shadow is `walbust shadow`: it maps live changes through a
// candidate deps.yaml and the running one side by side, with the real
// Mapper, and reports what the candidate would cost (keys, patterns and
// lookups per second, per table and rule) and how its invalidations differ
// from the running ones. It never touches Redis beyond a DBSIZE and never
// confirms anything on the configured slot: it streams from a temporary
// slot of its own (see Stream).
package shadow

import (
	"context"
	"time"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication/wal"
)

// Side is one of the two registries a change goes through.
type Side int

// The sides.
const (
	Running Side = iota
	Candidate
)

func (s Side) String() string {
	if s == Candidate {
		return "candidate"
	}
	return "running"
}

// TimedQuerier runs a lookup query and says how long the query took.
type TimedQuerier interface {
	LookupTimed(ctx context.Context, sql string, args []any) (cols []string, rows [][][]byte, took time.Duration, err error)
}

// Core maps changes through both registries and aggregates what they
// render; the stream (or a test) feeds it. Not safe for concurrent use.
type Core struct {
	regs    [2]*mapping.Registry
	mappers [2]*mapping.Mapper
	agg     *Aggregator
	memo    *memo
}

// NewCore maps through running and candidate; q runs both sides' lookup
// queries (nil when neither has one). maxTxChanges is run's max_tx_changes.
func NewCore(running, candidate *mapping.Registry, q TimedQuerier, maxTxChanges, examples int) *Core {
	c := &Core{regs: [2]*mapping.Registry{running, candidate}, agg: NewAggregator(running, candidate, examples), memo: &memo{}}
	for _, side := range []Side{Running, Candidate} {
		var querier mapping.Querier
		if q != nil {
			querier = &sideQuerier{side: side, q: q, agg: c.agg, memo: c.memo}
		}
		m := mapping.NewMapper(c.regs[side], querier)
		m.MaxTxChanges = maxTxChanges
		c.mappers[side] = m
	}
	return c
}

// Aggregator is what the core has counted so far.
func (c *Core) Aggregator() *Aggregator { return c.agg }

// BindOIDs binds both registries' tables to the catalog's OIDs.
func (c *Core) BindOIDs(oids map[string][]uint32) {
	for _, m := range c.mappers {
		m.BindOIDs(oids)
	}
}

// Relation tells both mappers about a Relation message and notes the
// candidate's rules the relation's replica identity cannot serve.
func (c *Core) Relation(rel *wal.Relation) {
	for _, m := range c.mappers {
		m.Relation(rel)
	}
	for _, gap := range c.regs[Candidate].IdentityGaps(rel) {
		c.agg.identityGap(rel.QualifiedName(), c.regs[Candidate].File, gap)
	}
}

// Tx is one transaction's sink: both sides' plans and its change counts.
type Tx struct {
	core    *Core
	plans   [2]mapping.Plan
	changes []tableOp
}

type tableOp struct {
	table string
	op    wal.Op
	n     int
}

// Begin returns the sink of a transaction that begins.
func (c *Core) Begin() *Tx { return &Tx{core: c} }

// Add maps one row change through both registries (replication.Sink).
func (t *Tx) Add(ch *wal.Change) {
	name := ch.Relation.QualifiedName()
	found := false
	for i := range t.changes {
		if t.changes[i].table == name && t.changes[i].op == ch.Op {
			t.changes[i].n++
			found = true
			break
		}
	}
	if !found {
		t.changes = append(t.changes, tableOp{table: name, op: ch.Op, n: 1})
	}
	for side, m := range t.core.mappers {
		m.MapChange(ch, &t.plans[side])
	}
}

// Commit runs the transaction's lookups (the candidate's first, so its
// latencies are its own) and counts what both sides rendered. A lookup
// that fails is counted; the transaction is then left out of the diff,
// which would otherwise show the keys the failed query could not render.
func (c *Core) Commit(ctx context.Context, t *Tx) {
	c.memo.reset()
	complete := true
	for _, side := range []Side{Candidate, Running} {
		if err := c.mappers[side].Resolve(ctx, &t.plans[side]); err != nil {
			c.agg.resolveFailed(side, err)
			complete = false
		}
	}
	c.agg.Transaction(t.changes, &t.plans[Running], &t.plans[Candidate], complete)
}

// sideQuerier runs one side's lookups and counts them. The running side
// reuses a result the candidate got for the same query and arguments in
// the same transaction: both would read the same rows.
type sideQuerier struct {
	side Side
	q    TimedQuerier
	agg  *Aggregator
	memo *memo
}

func (s *sideQuerier) Lookup(ctx context.Context, sql string, args []any) ([]string, [][][]byte, error) {
	if s.side == Running {
		if r, ok := s.memo.get(sql, args); ok {
			s.agg.Reused(s.side, sql)
			return r.cols, r.rows, nil
		}
	}
	cols, rows, took, err := s.q.LookupTimed(ctx, sql, args)
	s.agg.Lookup(s.side, sql, took, err)
	if err == nil && s.side == Candidate {
		s.memo.put(sql, args, memoResult{cols: cols, rows: rows})
	}
	return cols, rows, err
}

// memo is the candidate's lookup results of the current transaction.
type memo struct {
	results map[string]memoResult
}

type memoResult struct {
	cols []string
	rows [][][]byte
}

func memoKey(sql string, args []any) string {
	b := []byte(sql)
	for _, a := range args {
		if a == nil {
			b = append(b, 0, 'N')
			continue
		}
		s := a.(string)
		b = append(b, 0, 'T')
		b = append(b, byte(len(s)>>24), byte(len(s)>>16), byte(len(s)>>8), byte(len(s)))
		b = append(b, s...)
	}
	return string(b)
}

func (m *memo) reset() { clear(m.results) }

func (m *memo) get(sql string, args []any) (memoResult, bool) {
	r, ok := m.results[memoKey(sql, args)]
	return r, ok
}

func (m *memo) put(sql string, args []any, r memoResult) {
	if m.results == nil {
		m.results = map[string]memoResult{}
	}
	m.results[memoKey(sql, args)] = r
}
