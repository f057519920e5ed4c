package mapping

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

// Querier runs the lookup queries of derived rules.
type Querier interface {
	// Lookup runs sql with args and returns the result's column names and
	// rows, each value in Postgres's text form (nil for NULL).
	Lookup(ctx context.Context, sql string, args []any) (columns []string, rows [][][]byte, err error)
}

// Mapper derives invalidations from row changes. It caches per-relation
// column lookups and is not safe for concurrent use.
type Mapper struct {
	reg     *Registry
	querier Querier
	// MaxTxChanges caps the row changes a plan maps row by row; past it,
	// each further change of a table with on_truncate rules is covered by
	// those rules instead, so a huge transaction's memory stays bounded.
	// Zero: no cap.
	MaxTxChanges int
	bindings     map[uint32]*binding // by relation ID; replaced when the relation is redescribed
	oids         map[uint32]*Table   // tables by OID: from the catalog at start, and learned by name
	noticed      map[string]bool     // notices already given
	notices      []Notice            // given since the last Relation call
	scratch      [2]image            // old and new image of the change being mapped
	imgs         [2]*image           // pointers into scratch, so images() need not allocate
}

// NewMapper returns a Mapper over reg. querier may be nil when no rule has a
// query.
func NewMapper(reg *Registry, querier Querier) *Mapper {
	return &Mapper{reg: reg, querier: querier, bindings: map[uint32]*binding{}, oids: map[uint32]*Table{}, noticed: map[string]bool{}}
}

// binding is the registry tables one Relation message's changes map to:
// usually one; none for a published table no rule maps; two when a table
// bound by OID and another registered under the relation's name differ.
type binding struct {
	tables []tableBinding
	rel    *wal.Relation
	index  map[string]int
}

type tableBinding struct {
	table   *Table
	missing []string // columns the rules read that the relation does not have
}

func (m *Mapper) bind(rel *wal.Relation) *binding {
	if b, ok := m.bindings[rel.ID]; ok && b.rel == rel {
		return b
	}
	b := &binding{rel: rel}
	for _, t := range m.tablesOf(rel) {
		if b.index == nil {
			b.index = make(map[string]int, len(rel.Columns))
			for i, c := range rel.Columns {
				b.index[c.Name] = i
			}
		}
		tb := tableBinding{table: t}
		for _, c := range t.Columns() {
			if _, ok := b.index[c]; !ok {
				tb.missing = append(tb.missing, c)
			}
		}
		b.tables = append(b.tables, tb)
	}
	m.bindings[rel.ID] = b
	return b
}

// Map adds a decoded transaction's invalidations to plan, running its
// lookup queries. An error means a lookup query failed: the caller must not
// acknowledge tx.
func (m *Mapper) Map(ctx context.Context, tx *replication.Transaction, plan *Plan) error {
	var txPlan Plan
	for i := range tx.Changes {
		m.MapChange(&tx.Changes[i], &txPlan)
	}
	plan.Merge(&txPlan, tx.CommitLSN)
	return m.Resolve(ctx, plan)
}

// MapChange adds one change's invalidations to plan. Lookup queries are
// only recorded: Resolve runs them once the transaction has committed.
// Nothing of c is kept, so its values may alias a buffer.
func (m *Mapper) MapChange(c *wal.Change, plan *Plan) {
	b := m.bind(c.Relation)
	if len(b.tables) == 0 {
		// Published, but no rule maps it: counted, never silently dropped.
		plan.countUnmapped(c.Relation.QualifiedName(), c.Op)
		return
	}
	plan.Changes++
	for i := range b.tables {
		m.mapTable(c, b, &b.tables[i], plan)
	}
}

func (m *Mapper) mapTable(c *wal.Change, b *binding, tb *tableBinding, plan *Plan) {
	t := tb.table
	plan.countN(t.Name, c.Op, 1)
	if len(tb.missing) > 0 {
		plan.problem(t.Name, c.Op, fmt.Sprintf("table has no column(s) %s named in %s; rules using them were not applied",
			strings.Join(tb.missing, ", "), m.reg.File), 1)
	}
	if c.Op == wal.Truncate {
		m.truncate(plan, t, c.Op)
		return
	}
	if m.MaxTxChanges > 0 && plan.Changes > m.MaxTxChanges && t.OnTruncate != nil {
		if !slices.Contains(plan.collapsed, t) {
			plan.collapsed = append(plan.collapsed, t)
			plan.Overflowed = true
			m.truncate(plan, t, c.Op)
		}
		return
	}
	images := m.images(b, c)
	for _, r := range t.Rules {
		if !r.On.Has(c.Op) || (c.Op == wal.Update && !changed(b, c, r.WhenChanged)) {
			plan.Skipped++
			continue
		}
		if r.Refresh != nil {
			m.mapRefresh(plan, b, c, r, images)
			continue
		}
		if r.Query != nil {
			m.recordLookups(plan, b, r, images)
			continue
		}
		for _, img := range images {
			renderRule(plan, r, img, 0)
		}
	}
}

// MapEverything adds the on_truncate rules of every table: used when the
// changes since some point are unknowable (a lost replication slot).
func (m *Mapper) MapEverything(version wal.LSN, plan *Plan) {
	var all Plan
	for _, name := range m.reg.Names() {
		m.truncate(&all, m.reg.Tables[name], wal.Truncate)
	}
	plan.Merge(&all, version)
}

func (m *Mapper) truncate(plan *Plan, t *Table, op wal.Op) {
	if t.OnTruncate == nil {
		plan.problem(t.Name, op, fmt.Sprintf("no on_truncate rules in %s, so these keys were not invalidated: %s",
			m.reg.File, strings.Join(t.templateSources(), ", ")), 1)
		return
	}
	renderRule(plan, t.OnTruncate, emptyRow{}, 0)
}

// images returns the row images keys are rendered from: the new row for
// INSERT (this clears negative-cache entries), the old row for DELETE, both
// for UPDATE, so a row moving between groups invalidates both groups.
// The images live in the Mapper's scratch space: a change is mapped
// completely before the next one starts, and rows cost no allocation.
func (m *Mapper) images(b *binding, c *wal.Change) []*image {
	m.scratch[0], m.scratch[1] = oldImage(b, c), image{b: b, vals: c.New}
	m.imgs[0], m.imgs[1] = &m.scratch[0], &m.scratch[1]
	switch c.Op {
	case wal.Insert:
		return m.imgs[1:2]
	case wal.Delete:
		return m.imgs[0:1]
	case wal.Update:
		return m.imgs[0:2]
	}
	return nil
}

func renderRule(plan *Plan, r *Rule, row Row, version wal.LSN) {
	for _, t := range r.Keys {
		var ok bool
		if plan.buf, ok = t.AppendRender(plan.buf[:0], row); ok {
			plan.add(t, plan.buf, version)
		} else if unknown(row) {
			plan.Unrendered++
			plan.noteUnrendered(t, r, row, t.Columns())
		}
	}
	for _, t := range r.Patterns {
		var ok bool
		if plan.buf, ok = t.AppendPattern(plan.buf[:0], row); ok {
			plan.add(t, plan.buf, version)
		} else if unknown(row) {
			plan.Unrendered++
			plan.noteUnrendered(t, r, row, t.Columns())
		}
	}
}

// recordLookups records a rule's query once per distinct argument list
// among the images; Resolve runs it.
func (m *Mapper) recordLookups(plan *Plan, b *binding, r *Rule, images []*image) {
	for _, img := range images {
		args := make([]any, len(r.Query.Args))
		complete := true
		for i, a := range r.Query.Args {
			v, ok := img.value(a.Name)
			switch {
			case ok && v.Kind == wal.Text:
				args[i] = string(v.Data)
			case ok && v.Kind == wal.Null:
				args[i] = nil
			default:
				complete = false
			}
		}
		if !complete {
			plan.Unrendered++
			if plan.Explain {
				plan.noteUnrendered(nil, r, img, r.Query.argNames())
			}
			continue
		}
		plan.addLookup(r, args, 0)
	}
}

// Resolve runs the plan's recorded lookup queries and renders each rule's
// templates over every result row. On error the queries not yet run stay
// recorded, so Resolve can be retried; what was rendered stays too, which
// is harmless (the plan deduplicates).
func (m *Mapper) Resolve(ctx context.Context, plan *Plan) error {
	for i, l := range plan.pending {
		if err := m.lookup(ctx, plan, l); err != nil {
			plan.keepPending(i)
			return err
		}
	}
	plan.keepPending(len(plan.pending))
	return nil
}

func (m *Mapper) lookup(ctx context.Context, plan *Plan, l pendingLookup) error {
	r := l.key.rule
	if m.querier == nil {
		return fmt.Errorf("%s:%d: rule %s of %s has a query but no database connection was given", m.reg.File, r.Line, r.Name, r.table.Name)
	}
	cols, rows, err := m.querier.Lookup(ctx, r.Query.SQL, l.args)
	plan.Lookups++
	if err != nil {
		return fmt.Errorf("%s:%d:%d: query of %s %s: %w", m.reg.File, r.Query.Line, r.Query.Column, r.table.Name, r.Name, err)
	}
	for _, vals := range rows {
		renderRule(plan, r, resultRow{cols: cols, vals: vals}, l.version)
	}
	return nil
}

// changed reports whether an UPDATE changed any of cols. An unknown old
// value counts as changed: over-invalidate, never under-invalidate.
func changed(b *binding, c *wal.Change, cols []Ref) bool {
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
		if n.Kind == wal.Unchanged {
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
	vals []wal.Value
	// keyFrom: an UPDATE without old image did not change its replica
	// identity, so key columns of the old row equal those of the new row.
	keyFrom   []wal.Value
	isUnknown bool // a referenced column's value was not sent
	old       bool // the old row image (for explain's messages)
}

func oldImage(b *binding, c *wal.Change) image {
	img := image{b: b, vals: c.Old, old: true}
	if c.Old == nil && c.Op == wal.Update {
		img.keyFrom = c.New
	}
	return img
}

// value returns the column's value; ok is false when it was not sent.
func (img *image) value(column string) (wal.Value, bool) {
	i, ok := img.b.index[column]
	if !ok {
		return wal.Value{}, false
	}
	var v wal.Value
	switch {
	case img.vals != nil:
		v = img.vals[i]
	case img.keyFrom != nil && img.b.rel.Columns[i].Key:
		v = img.keyFrom[i]
	default:
		return wal.Value{}, false
	}
	if v.Kind == wal.Missing || v.Kind == wal.Unchanged {
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
	return v.Data, v.Kind == wal.Text
}

// noteUnrendered records, when the plan explains, which of columns the row
// image lacked for t (nil: r's query arguments).
func (p *Plan) noteUnrendered(t *Template, r *Rule, row Row, columns []string) {
	img, ok := row.(*image)
	if !p.Explain || !ok {
		return
	}
	u := UnrenderedKey{Template: t, Rule: r, Image: "new"}
	if img.old {
		u.Image = "old"
	}
	for _, c := range columns {
		if _, ok := img.value(c); !ok {
			u.Missing = append(u.Missing, c)
		}
	}
	for _, seen := range p.UnrenderedKeys {
		if seen.Template == u.Template && seen.Rule == u.Rule && seen.Image == u.Image {
			return
		}
	}
	p.UnrenderedKeys = append(p.UnrenderedKeys, u)
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
func (r *Registry) IdentityGaps(rel *wal.Relation) []Ref {
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
		if !rule.On.Has(wal.Update) && !rule.On.Has(wal.Delete) {
			continue
		}
		for _, ref := range rule.RowColumns() {
			if rule.Refresh.isValueRef(ref) {
				continue // read from the new row
			}
			if key, exists := isKey[ref.Name]; exists && !key {
				gaps = append(gaps, ref)
			}
		}
	}
	return gaps
}
