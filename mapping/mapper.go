package mapping

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/walbust/walbust/replication"
)

// Querier runs the lookup queries of derived rules.
type Querier interface {
	// Lookup runs sql with args and returns the result's column names and
	// rows, each value in Postgres's text form (nil for NULL).
	Lookup(ctx context.Context, sql string, args []any) (columns []string, rows [][][]byte, err error)
}

// Problem is a change whose invalidations could not all be derived. The
// pipeline logs and counts it; it does not stop the stream.
type Problem struct {
	Table string
	Op    replication.Op
	Msg   string
}

func (p Problem) String() string { return fmt.Sprintf("%s on %s: %s", p.Op, p.Table, p.Msg) }

// Plan accumulates the invalidations of one batch of transactions,
// deduplicated, in the order they were first derived.
type Plan struct {
	Invalidations []Invalidation
	Problems      []Problem
	Changes       int // row changes of registered tables
	Unrendered    int // keys skipped because a value they need was not sent
	Skipped       int // rules skipped by when_changed or on
	Lookups       int // queries run
	ChangeCounts  []ChangeCount
	seen          map[planKey]int
	buf           []byte
}

// ChangeCount is how many changes of one kind a plan saw on one table.
type ChangeCount struct {
	Table string
	Op    replication.Op
	N     int
}

func (p *Plan) count(table string, op replication.Op) {
	for i := range p.ChangeCounts {
		if c := &p.ChangeCounts[i]; c.Table == table && c.Op == op {
			c.N++
			return
		}
	}
	p.ChangeCounts = append(p.ChangeCounts, ChangeCount{Table: table, Op: op, N: 1})
}

type planKey struct {
	action  Action
	pattern bool
	aux     KeyFormat // two tables may keep one key's version in different places
	key     string
}

// Reset empties the plan for reuse, keeping its allocations.
func (p *Plan) Reset() {
	p.Invalidations = p.Invalidations[:0]
	p.Problems = p.Problems[:0]
	p.Changes, p.Unrendered, p.Skipped, p.Lookups = 0, 0, 0, 0
	p.ChangeCounts = p.ChangeCounts[:0]
	clear(p.seen)
}

func (p *Plan) add(inv Invalidation, key []byte) {
	if p.seen == nil {
		p.seen = map[planKey]int{}
	}
	// The lookup with string(key) does not allocate.
	if i, dup := p.seen[planKey{inv.Action, inv.Pattern, inv.Aux, string(key)}]; dup {
		if inv.Version > p.Invalidations[i].Version {
			p.Invalidations[i].Version = inv.Version
		}
		if inv.Action == Fence && inv.TTL > p.Invalidations[i].TTL {
			// Two tables fence one key: the longer fence_ttl protects both.
			p.Invalidations[i].TTL = inv.TTL
		}
		return
	}
	inv.Key = string(key)
	p.seen[planKey{inv.Action, inv.Pattern, inv.Aux, inv.Key}] = len(p.Invalidations)
	p.Invalidations = append(p.Invalidations, inv)
}

// Mapper derives invalidations from transactions. It caches per-relation
// column lookups and is not safe for concurrent use.
type Mapper struct {
	reg      *Registry
	querier  Querier
	bindings map[uint32]*binding // by relation ID; replaced when the relation is redescribed
	scratch  [2]image            // old and new image of the change being mapped
	imgs     [2]*image           // pointers into scratch, so images() need not allocate
}

// NewMapper returns a Mapper over reg. querier may be nil when no rule has a
// query.
func NewMapper(reg *Registry, querier Querier) *Mapper {
	return &Mapper{reg: reg, querier: querier, bindings: map[uint32]*binding{}}
}

// binding is a table's registry entry resolved against one Relation message.
type binding struct {
	table   *Table
	rel     *replication.Relation
	index   map[string]int
	missing []string // columns the rules read that the relation does not have
}

func (m *Mapper) bind(rel *replication.Relation) *binding {
	if b, ok := m.bindings[rel.ID]; ok && b.rel == rel {
		return b
	}
	b := &binding{rel: rel} // table nil: not in the registry
	if t := m.reg.Tables[rel.QualifiedName()]; t != nil {
		b.table, b.index = t, make(map[string]int, len(rel.Columns))
		for i, c := range rel.Columns {
			b.index[c.Name] = i
		}
		for _, c := range t.Columns() {
			if _, ok := b.index[c]; !ok {
				b.missing = append(b.missing, c)
			}
		}
	}
	m.bindings[rel.ID] = b
	return b
}

// Map adds tx's invalidations to plan. An error means a lookup query kept
// failing: the caller must not acknowledge tx.
func (m *Mapper) Map(ctx context.Context, tx *replication.Transaction, plan *Plan) error {
	for i := range tx.Changes {
		if err := m.MapChange(ctx, &tx.Changes[i], uint64(tx.CommitLSN), plan); err != nil {
			return err
		}
	}
	return nil
}

// MapChange adds one change's invalidations to plan; version is the commit
// LSN that Bump actions record.
func (m *Mapper) MapChange(ctx context.Context, c *replication.Change, version uint64, plan *Plan) error {
	b := m.bind(c.Relation)
	if b.table == nil {
		return nil
	}
	plan.Changes++
	t := b.table
	plan.count(t.Name, c.Op)
	if len(b.missing) > 0 {
		plan.Problems = append(plan.Problems, Problem{Table: t.Name, Op: c.Op, Msg: fmt.Sprintf(
			"table has no column(s) %s named in %s; rules using them were not applied", strings.Join(b.missing, ", "), m.reg.File)})
	}
	base := t.base(version)
	if c.Op == replication.Truncate {
		m.truncate(plan, t, base, c.Op)
		return nil
	}
	images := m.images(b, c)
	for _, r := range t.Rules {
		if !r.On.Has(c.Op) || (c.Op == replication.Update && !changed(b, c, r.WhenChanged)) {
			plan.Skipped++
			continue
		}
		if r.Query != nil {
			if err := m.lookup(ctx, plan, base, b, r, images); err != nil {
				return err
			}
			continue
		}
		for _, img := range images {
			m.renderRule(plan, base, r, img)
		}
	}
	return nil
}

// MapEverything adds the on_truncate rules of every table: used when the
// changes since some point are unknowable (a lost replication slot).
func (m *Mapper) MapEverything(version uint64, plan *Plan) {
	for _, name := range m.reg.Names() {
		t := m.reg.Tables[name]
		m.truncate(plan, t, t.base(version), replication.Truncate)
	}
}

func (m *Mapper) truncate(plan *Plan, t *Table, base Invalidation, op replication.Op) {
	if t.OnTruncate == nil {
		plan.Problems = append(plan.Problems, Problem{Table: t.Name, Op: op, Msg: fmt.Sprintf(
			"no on_truncate rules in %s, so these keys were not invalidated: %s", m.reg.File, strings.Join(t.templateSources(), ", "))})
		return
	}
	m.renderRule(plan, base, t.OnTruncate, emptyRow{})
}

func (t *Table) base(version uint64) Invalidation {
	base := Invalidation{Action: t.Action.Action, Version: version, TTL: t.Action.StaleTTL, Table: t.Name}
	switch base.Action {
	case Bump:
		base.Aux = t.Action.VersionKey
	case Stale:
		base.Aux = t.Action.StaleKey
	case Fence:
		base.TTL = t.Action.FenceTTL
	}
	return base
}

// images returns the row images keys are rendered from: the new row for
// INSERT (this clears negative-cache entries), the old row for DELETE, both
// for UPDATE, so a row moving between groups invalidates both groups.
// The images live in the Mapper's scratch space: a change is mapped
// completely before the next one starts, and rows cost no allocation.
func (m *Mapper) images(b *binding, c *replication.Change) []*image {
	m.scratch[0], m.scratch[1] = oldImage(b, c), image{b: b, vals: c.New}
	m.imgs[0], m.imgs[1] = &m.scratch[0], &m.scratch[1]
	switch c.Op {
	case replication.Insert:
		return m.imgs[1:2]
	case replication.Delete:
		return m.imgs[0:1]
	case replication.Update:
		return m.imgs[0:2]
	}
	return nil
}

func (m *Mapper) renderRule(plan *Plan, base Invalidation, r *Rule, row Row) {
	inv := base
	inv.Rule = r
	for _, t := range r.Keys {
		var ok bool
		if plan.buf, ok = t.AppendRender(plan.buf[:0], row); ok {
			inv.Template = t
			plan.add(inv, plan.buf)
		} else if unknown(row) {
			plan.Unrendered++
		}
	}
	inv.Pattern = true
	for _, t := range r.Patterns {
		var ok bool
		if plan.buf, ok = t.AppendPattern(plan.buf[:0], row); ok {
			inv.Template = t
			plan.add(inv, plan.buf)
		} else if unknown(row) {
			plan.Unrendered++
		}
	}
}

// lookup runs a rule's query once per distinct argument list among the
// images and renders the rule's templates over every result row.
func (m *Mapper) lookup(ctx context.Context, plan *Plan, base Invalidation, b *binding, r *Rule, images []*image) error {
	if m.querier == nil {
		return fmt.Errorf("%s:%d: rule %s of %s has a query but no database connection was given", m.reg.File, r.Line, r.Name, b.table.Name)
	}
	var done [][]any
	for _, img := range images {
		args := make([]any, len(r.Query.Args))
		complete := true
		for i, a := range r.Query.Args {
			v, ok := img.value(a.Name)
			switch {
			case ok && v.Kind == replication.Text:
				args[i] = string(v.Data)
			case ok && v.Kind == replication.Null:
				args[i] = nil
			default:
				complete = false
			}
		}
		if !complete {
			plan.Unrendered++
			continue
		}
		if containsArgs(done, args) {
			continue
		}
		done = append(done, args)
		cols, rows, err := m.querier.Lookup(ctx, r.Query.SQL, args)
		plan.Lookups++
		if err != nil {
			return fmt.Errorf("%s:%d:%d: query of %s %s: %w", m.reg.File, r.Query.Line, r.Query.Column, b.table.Name, r.Name, err)
		}
		for _, vals := range rows {
			m.renderRule(plan, base, r, resultRow{cols: cols, vals: vals})
		}
	}
	return nil
}

func containsArgs(seen [][]any, args []any) bool {
outer:
	for _, s := range seen {
		for i := range s {
			if s[i] != args[i] {
				continue outer
			}
		}
		return true
	}
	return false
}

// changed reports whether an UPDATE changed any of cols. An unknown old
// value counts as changed: over-invalidate, never under-invalidate.
func changed(b *binding, c *replication.Change, cols []Ref) bool {
	if len(cols) == 0 {
		return true
	}
	old := oldImage(b, c)
	for _, col := range cols {
		i, ok := b.index[col.Name]
		if !ok {
			return true
		}
		n := c.New[i]
		if n.Kind == replication.Unchanged {
			continue // an unchanged TOASTed value did not change
		}
		o, known := old.value(col.Name)
		if !known || o.Kind != n.Kind || !bytes.Equal(o.Data, n.Data) {
			return true
		}
	}
	return false
}

func (t *Table) templateSources() []string {
	var out []string
	for _, r := range t.Rules {
		for _, tmpl := range r.Templates() {
			out = append(out, fmt.Sprintf("%q", tmpl.Source))
		}
	}
	return out
}

// image is a row image as templates read it.
type image struct {
	b    *binding
	vals []replication.Value
	// keyFrom: an UPDATE without old image did not change its replica
	// identity, so key columns of the old row equal those of the new row.
	keyFrom   []replication.Value
	isUnknown bool // a referenced column's value was not sent
}

func oldImage(b *binding, c *replication.Change) image {
	img := image{b: b, vals: c.Old}
	if c.Old == nil && c.Op == replication.Update {
		img.keyFrom = c.New
	}
	return img
}

// value returns the column's value; ok is false when it was not sent.
func (img *image) value(column string) (replication.Value, bool) {
	i, ok := img.b.index[column]
	if !ok {
		return replication.Value{}, false
	}
	var v replication.Value
	switch {
	case img.vals != nil:
		v = img.vals[i]
	case img.keyFrom != nil && img.b.rel.Columns[i].Key:
		v = img.keyFrom[i]
	default:
		return replication.Value{}, false
	}
	if v.Kind == replication.Missing || v.Kind == replication.Unchanged {
		return v, false
	}
	return v, true
}

// Text implements Row.
func (img *image) Text(column string) ([]byte, bool) {
	v, ok := img.value(column)
	if !ok {
		img.isUnknown = true
		return nil, false
	}
	return v.Data, v.Kind == replication.Text
}

func unknown(r Row) bool {
	img, ok := r.(*image)
	if ok && img.isUnknown {
		img.isUnknown = false
		return true
	}
	return false
}

// resultRow is a lookup query's result row.
type resultRow struct {
	cols []string
	vals [][]byte
}

func (r resultRow) Text(column string) ([]byte, bool) {
	for i, c := range r.cols {
		if c == column {
			return r.vals[i], r.vals[i] != nil
		}
	}
	return nil, false
}

// emptyRow renders templates without columns (on_truncate).
type emptyRow struct{}

func (emptyRow) Text(string) ([]byte, bool) { return nil, false }

// IdentityGaps names, for each rule column whose old value the relation's
// replica identity does not send, the places in deps.yaml that need it:
// UPDATE and DELETE rules rendering old keys, when_changed and query args.
func (r *Registry) IdentityGaps(rel *replication.Relation) []Ref {
	t := r.Tables[rel.QualifiedName()]
	if t == nil || rel.ReplicaIdentity == 'f' {
		return nil
	}
	isKey := map[string]bool{}
	for _, c := range rel.Columns {
		isKey[c.Name] = c.Key
	}
	var gaps []Ref
	for _, rule := range t.Rules {
		if !rule.On.Has(replication.Update) && !rule.On.Has(replication.Delete) {
			continue
		}
		for _, ref := range rule.RowColumns() {
			if key, exists := isKey[ref.Name]; exists && !key {
				gaps = append(gaps, ref)
			}
		}
	}
	return gaps
}
