package mapping

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"golang.org/x/sync/errgroup"
	"gopkg.in/yaml.v3"

	"github.com/walbust/walbust/internal/yamlnode"
	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

// A refresh rule (action: refresh in a derived rule) never removes a key
// whose row still exists: it writes the fresh value, with a TTL, next to a
// companion key holding the commit LSN of the value ({key}:lsn). A Lua
// script compares and sets both at once, so an older change (a replay, a
// retry) never overwrites a newer one. See docs/deps-yaml.md, "refresh".

// LSNKey is where a refreshed key's commit LSN (and stale flag) lives.
var LSNKey = KeyFormat{Suffix: protocol.RefreshLSNSuffix}

// RefreshSpec is how a refresh rule builds the fresh value: from the row
// (Row, or the Value template) or from the rule's Query (one row per key,
// the value in its column "value", or its only column).
type RefreshSpec struct {
	Position
	TTL      time.Duration // of the value and its LSN key; jittered ±10% when written
	Row      bool          // value: row, the new image as a JSON object
	Value    *Template     // value: "template {col}"
	Negative *Negative     // what a DELETE leaves instead of nothing
}

// Negative is the marker value a refresh rule writes when the row is gone.
type Negative struct {
	Value string
	TTL   time.Duration
}

// RefreshOp is what one refresh does to its key.
type RefreshOp uint8

// Refresh operations.
const (
	// RefreshQuery: the value is the rule's query's, which has yet to run
	// (RunRefreshQueries decides the operation). Only ExplainRefreshes
	// returns it.
	RefreshQuery RefreshOp = iota
	// RefreshSet writes Value (TTL) and the LSN key, if the LSN is newer.
	RefreshSet
	// RefreshRemove deletes the key (or writes the negative marker) and
	// records the LSN, if newer, so an older write cannot bring it back.
	RefreshRemove
	// RefreshStale leaves the value as it is and flags its LSN key stale:
	// the value query failed.
	RefreshStale
)

func (op RefreshOp) String() string {
	switch op {
	case RefreshSet:
		return "set"
	case RefreshRemove:
		return "del"
	case RefreshStale:
		return "stale"
	}
	return "query"
}

// RefreshWrite is what a Refresh invalidation writes.
type RefreshWrite struct {
	Op       RefreshOp
	Value    []byte // RefreshSet: the value; RefreshRemove with Negative: the marker
	Negative bool
	Err      error // RefreshStale: why the value could not be built
	Args     []any // RefreshQuery: the arguments ($1..$n) the query will run with; nil is NULL
}

var refreshFields = []string{"action", "value", "ttl", "negative"}

// buildRefresh reads a derived rule's action, value, ttl and negative.
func buildRefresh(doc *yamlnode.Doc, n *yaml.Node, path string, r *Rule, fields []yamlnode.Field) {
	var action, value, ttl *yamlnode.Field
	var negative *yamlnode.Field
	for i := range fields {
		switch f := &fields[i]; f.Key.Value {
		case "action":
			action = f
		case "value":
			value = f
		case "ttl":
			ttl = f
		case "negative":
			negative = f
		}
	}
	if action == nil {
		for _, f := range []*yamlnode.Field{value, ttl, negative} {
			if f != nil {
				doc.Errorf(f.Key, f.Path, "%s only makes sense with action: refresh", f.Key.Value)
			}
		}
		return
	}
	s, ok := doc.String(*action)
	if !ok {
		return
	}
	if s != "refresh" {
		doc.Errorf(action.Value, action.Path, "a derived rule's action can only be refresh (got %q): set delete, bump, stale or fence on the table", s)
		return
	}
	spec := &RefreshSpec{Position: pos(action.Key)}
	if ttl == nil {
		doc.Errorf(action.Key, path+".ttl", "action: refresh needs a ttl (such as 10m): how long a refreshed value lives without a change")
	} else if d, ok := parseDuration(doc, *ttl, "10m"); ok {
		spec.TTL = d
	}
	switch {
	case value != nil && r.Query != nil:
		doc.Errorf(value.Key, value.Path, "value and query both: a refresh rule takes its value from the row (value) or from its query, not both")
	case value != nil:
		if v, ok := doc.String(*value); ok {
			if v == "row" {
				spec.Row = true
			} else if t, err := ParseTemplate(v); err != nil {
				doc.Errorf(value.Value, value.Path, "%v (or write row for the whole row as JSON)", err)
			} else {
				t.Line, t.Column = value.Value.Line, value.Value.Column
				spec.Value = t
			}
		}
	case r.Query == nil:
		doc.Errorf(action.Key, path, "action: refresh needs value (row, or a template such as \"{name}\") or a query with args that returns the value")
	}
	if len(r.Patterns) > 0 {
		doc.Errorf(action.Key, path+".patterns", "action: refresh writes values to keys: it cannot take patterns")
	}
	if len(r.Keys) == 0 {
		doc.Errorf(action.Key, path+".keys", "action: refresh needs keys: the keys whose values it writes")
	}
	if value != nil && len(r.WhenChanged) > 0 {
		if spec.Row {
			doc.Errorf(value.Key, value.Path, "value: row holds every column, but when_changed skips updates of the others: remove when_changed")
		} else if spec.Value != nil {
			for _, c := range spec.Value.Columns() {
				if !hasRef(r.WhenChanged, c) {
					doc.Errorf(value.Value, value.Path, "the value uses column {%s}, which when_changed does not list: an update of it would leave the old value", c)
				}
			}
		}
	}
	if value != nil && !r.On.Has(wal.Delete) {
		doc.Errorf(value.Key, value.Path, "a refresh rule with value must serve delete too (on), or a deleted row's value would stay cached until its ttl")
	}
	if negative != nil {
		spec.Negative = buildNegative(doc, *negative, spec.TTL)
	}
	r.Refresh = spec
}

func buildNegative(doc *yamlnode.Doc, f yamlnode.Field, ttl time.Duration) *Negative {
	neg := &Negative{TTL: ttl}
	var sawValue bool
	for _, sub := range doc.Mapping(f.Value, f.Path, "value", "ttl") {
		switch sub.Key.Value {
		case "value":
			if s, ok := doc.String(sub); ok {
				neg.Value, sawValue = s, true
			}
		case "ttl":
			if d, ok := parseDuration(doc, sub, "1m"); ok {
				neg.TTL = d
			}
		}
	}
	if f.Value.Kind == yaml.MappingNode && !sawValue {
		doc.Errorf(f.Value, f.Path+".value", "missing: the marker readers cache for a row that does not exist, such as \"null\"")
	}
	return neg
}

func parseDuration(doc *yamlnode.Doc, f yamlnode.Field, example string) (time.Duration, bool) {
	s, ok := doc.String(f)
	if !ok {
		return 0, false
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Millisecond {
		doc.Errorf(f.Value, f.Path, "must be a duration of at least 1ms such as %s, got %q", example, s)
		return 0, false
	}
	return d, true
}

func hasRef(refs []Ref, name string) bool {
	for _, r := range refs {
		if r.Name == name {
			return true
		}
	}
	return false
}

// refreshColumns are the row columns a refresh rule reads besides its
// query args: its keys render over the row, and so may its value.
func (r *Rule) refreshColumns() []Ref {
	if r.Refresh == nil {
		return nil
	}
	var out []Ref
	ts := r.Keys
	if r.Refresh.Value != nil {
		ts = append(ts[:len(ts):len(ts)], r.Refresh.Value)
	}
	for _, t := range ts {
		for _, c := range t.Columns() {
			out = append(out, Ref{Position: Position{t.Line, t.Column}, Name: c})
		}
	}
	return out
}

// isValueRef reports whether ref is a column of the value template: the
// value is rendered from the new row, so the old one need not send it.
func (s *RefreshSpec) isValueRef(ref Ref) bool {
	return s != nil && s.Value != nil && ref.Line == s.Value.Line && ref.Column == s.Value.Column
}

// refreshSet is a plan's refreshes, one per key: the latest change wins.
type refreshSet struct {
	items []refreshItem
	idx   map[string]int
}

type refreshItem struct {
	key     string
	tmpl    *Template
	version wal.LSN
	op      RefreshOp // 0: the query has yet to run
	value   []byte
	args    []any
	argsKey string
	err     error
}

func (s *refreshSet) add(it refreshItem) {
	if i, ok := s.idx[it.key]; ok {
		if it.version >= s.items[i].version {
			s.items[i] = it // a later change of the same transaction, or a later transaction
		}
		return
	}
	if s.idx == nil {
		s.idx = map[string]int{}
	}
	s.idx[it.key] = len(s.items)
	s.items = append(s.items, it)
}

func (s *refreshSet) reset() {
	clear(s.items)
	s.items = s.items[:0]
	clear(s.idx)
}

func (s *refreshSet) size() int {
	n := 0
	for i := range s.items {
		n += 96 + 2*len(s.items[i].key) + len(s.items[i].value) + len(s.items[i].argsKey)
	}
	return n
}

func (s *refreshSet) setVersion(v wal.LSN) {
	for i := range s.items {
		s.items[i].version = v
	}
}

func (s *refreshSet) merge(src *refreshSet, v wal.LSN) {
	for _, it := range src.items {
		it.version = v
		s.add(it)
	}
}

// Refreshes is the number of refreshed keys in the plan.
func (p *Plan) Refreshes() int { return len(p.refresh.items) }

// AppendRefreshes appends the plan's refreshes as invalidations (Action
// Refresh, Refresh set). Refreshes whose query has not run are left out.
func (p *Plan) AppendRefreshes(dst []Invalidation) []Invalidation {
	return p.appendRefreshes(dst, false)
}

// ExplainRefreshes is every refresh of the plan as AppendRefreshes makes
// them, in the order first derived, with those whose query has yet to run
// too: their Refresh.Op is RefreshQuery and Refresh.Args holds the
// arguments it will run with (walbust explain).
func (p *Plan) ExplainRefreshes() []Invalidation {
	return p.appendRefreshes(nil, true)
}

func (p *Plan) appendRefreshes(dst []Invalidation, pending bool) []Invalidation {
	for i := range p.refresh.items {
		it := &p.refresh.items[i]
		if it.op == RefreshQuery && !pending {
			continue
		}
		spec := it.tmpl.rule.Refresh
		inv := Invalidation{
			Action: Refresh, Key: it.key, Version: it.version, Aux: LSNKey, TTL: spec.TTL,
			Table: it.tmpl.table.Name, Rule: it.tmpl.rule, Template: it.tmpl,
			Refresh: &RefreshWrite{Op: it.op, Value: it.value, Err: it.err},
		}
		if it.op == RefreshQuery {
			inv.Refresh.Args = it.args
		}
		if it.op == RefreshRemove && spec.Negative != nil {
			inv.Refresh.Value, inv.Refresh.Negative = []byte(spec.Negative.Value), true
			inv.TTL = spec.Negative.TTL
		}
		dst = append(dst, inv)
	}
	return dst
}

// mapRefresh records a refresh rule's keys for one change. A value rule
// writes the new row's value under the key rendered from it and removes
// the old row's key (DELETE, or an UPDATE that moved the row to another
// key); a query rule's values come from its query, run by RunRefreshQueries
// for every key rendered from the old and the new row.
func (m *Mapper) mapRefresh(plan *Plan, b *binding, c *wal.Change, r *Rule, images []*image) {
	spec := r.Refresh
	for _, img := range images {
		var args []any
		var argsKey string
		var value []byte
		op := RefreshRemove
		switch {
		case r.Query != nil:
			var complete bool
			if args, argsKey, complete = queryArgs(r, img); !complete {
				plan.Unrendered++
				if plan.Explain {
					plan.noteUnrendered(nil, r, img, r.Query.argNames())
				}
				continue
			}
			op = RefreshQuery
		case !img.old:
			var ok bool
			if value, ok = renderValue(spec, b, c); ok {
				op = RefreshSet
			} else {
				// Without the value, the old one must not stay: remove it.
				plan.problem(r.table.Name, c.Op, fmt.Sprintf("%s: the refresh value of rule %s needs a column that was not sent (an unchanged TOASTed value?); its key was removed instead", m.reg.File, r.Name), 1)
			}
		}
		for _, t := range r.Keys {
			var ok bool
			if plan.buf, ok = t.AppendRender(plan.buf[:0], img); !ok {
				if unknown(img) {
					plan.Unrendered++
					plan.noteUnrendered(t, r, img, t.Columns())
				}
				continue
			}
			plan.refresh.add(refreshItem{key: string(plan.buf), tmpl: t, op: op, value: value, args: args, argsKey: argsKey})
		}
	}
}

func queryArgs(r *Rule, img *image) ([]any, string, bool) {
	args := make([]any, len(r.Query.Args))
	var k strings.Builder
	for i, a := range r.Query.Args {
		v, ok := img.value(a.Name)
		switch {
		case ok && v.Kind == wal.Text:
			args[i] = string(v.Data)
			fmt.Fprintf(&k, "\x00T%d:%s", len(v.Data), v.Data)
		case ok && v.Kind == wal.Null:
			k.WriteString("\x00N")
		default:
			return nil, "", false
		}
	}
	return args, k.String(), true
}

// refreshRow is the new row image, with the old image's value of columns
// the new one did not send (unchanged TOASTed values, under REPLICA
// IDENTITY FULL).
type refreshRow struct {
	b        *binding
	new, old []wal.Value
}

func (r refreshRow) get(i int) (wal.Value, bool) {
	v := r.new[i]
	if (v.Kind == wal.Unchanged || v.Kind == wal.Missing) && r.old != nil {
		v = r.old[i]
	}
	return v, v.Kind == wal.Text || v.Kind == wal.Null
}

func (r refreshRow) Text(column string) ([]byte, bool) {
	i, ok := r.b.index[column]
	if !ok {
		return nil, false
	}
	v, ok := r.get(i)
	return v.Data, ok && v.Kind == wal.Text
}

// renderValue builds a value rule's value from the change's new row.
func renderValue(spec *RefreshSpec, b *binding, c *wal.Change) ([]byte, bool) {
	row := refreshRow{b: b, new: c.New, old: c.Old}
	if spec.Value != nil {
		return spec.Value.AppendRender(nil, row)
	}
	return AppendRowJSON(nil, b.rel, row.get)
}

// AppendRowJSON appends a row as value: row writes it: a JSON object of
// column name to text value in the table's column order, NULL as null,
// without spaces. ok is false when a value is unknown.
func AppendRowJSON(dst []byte, rel *wal.Relation, get func(i int) (wal.Value, bool)) ([]byte, bool) {
	dst = append(dst, '{')
	for i, col := range rel.Columns {
		v, ok := get(i)
		if !ok {
			return nil, false
		}
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, col.Name)
		dst = append(dst, ':')
		if v.Kind == wal.Null {
			dst = append(dst, "null"...)
		} else {
			dst = appendJSONString(dst, string(v.Data))
		}
	}
	return append(dst, '}'), true
}

// appendJSONString quotes s as encoding/json does with SetEscapeHTML(false).
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c == '\n':
				dst = append(dst, '\\', 'n')
			case c == '\r':
				dst = append(dst, '\\', 'r')
			case c == '\t':
				dst = append(dst, '\\', 't')
			case c < 0x20:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, `\u202`...)
			dst = append(dst, hex[r&0xf])
		default:
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}

// RefreshFailure is a refresh query that failed, for one key or several
// keys sharing its arguments.
type RefreshFailure struct {
	Table string
	Rule  *Rule
	Keys  int
	Err   error
}

// maxRuleFailures: once this many queries of one rule failed in a batch,
// its remaining keys are flagged stale without running theirs, so a query
// that times out does not hold a big batch for timeout × keys.
const maxRuleFailures = 8

// RunRefreshQueries runs the refresh queries the plan recorded, at most
// limit at a time, once per rule and argument list. A key whose query
// failed keeps its value, flagged stale (RefreshStale); one whose query
// found no row, or a NULL value, is removed (or gets the negative marker).
// The error is only ctx's: then nothing is decided, and the batch must not
// be acknowledged.
func (m *Mapper) RunRefreshQueries(ctx context.Context, plan *Plan, limit int) ([]RefreshFailure, error) {
	type group struct {
		rule  *Rule
		args  []any
		items []int
		op    RefreshOp
		value []byte
		err   error
	}
	type gkey struct {
		rule *Rule
		args string
	}
	var groups []*group
	byKey := map[gkey]*group{}
	for i := range plan.refresh.items {
		it := &plan.refresh.items[i]
		if it.op != RefreshQuery {
			continue
		}
		k := gkey{it.tmpl.rule, it.argsKey}
		g := byKey[k]
		if g == nil {
			g = &group{rule: it.tmpl.rule, args: it.args}
			byKey[k] = g
			groups = append(groups, g)
		}
		g.items = append(g.items, i)
	}
	if len(groups) == 0 {
		return nil, nil
	}
	failed := map[*Rule]*atomic.Int32{}
	for _, g := range groups {
		if failed[g.rule] == nil {
			failed[g.rule] = new(atomic.Int32)
		}
	}
	var ran atomic.Int32
	// Errors stay with their group (a failed query marks its keys stale),
	// so the goroutines never fail the group.
	var eg errgroup.Group
	eg.SetLimit(max(limit, 1))
	for _, g := range groups {
		fails := failed[g.rule]
		eg.Go(func() error {
			if n := fails.Load(); n >= maxRuleFailures {
				g.op, g.err = RefreshStale, fmt.Errorf("not run: %d queries of this rule failed in this batch already", n)
				return nil
			}
			ran.Add(1)
			g.op, g.value, g.err = m.refreshQuery(ctx, g.rule, g.args)
			if g.err != nil && ctx.Err() == nil {
				fails.Add(1)
			}
			return nil
		})
	}
	_ = eg.Wait()
	plan.Lookups += int(ran.Load())
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []RefreshFailure
	for _, g := range groups {
		for _, i := range g.items {
			it := &plan.refresh.items[i]
			it.op, it.value, it.err, it.args = g.op, g.value, g.err, nil
		}
		if g.err != nil {
			out = append(out, RefreshFailure{Table: g.rule.table.Name, Rule: g.rule, Keys: len(g.items), Err: g.err})
		}
	}
	return out, nil
}

// refreshQuery runs a refresh rule's query for one argument list.
func (m *Mapper) refreshQuery(ctx context.Context, r *Rule, args []any) (RefreshOp, []byte, error) {
	fail := func(err error) (RefreshOp, []byte, error) {
		return RefreshStale, nil, fmt.Errorf("%s:%d:%d: refresh query of %s %s: %w", m.reg.File, r.Query.Line, r.Query.Column, r.table.Name, r.Name, err)
	}
	if m.querier == nil {
		return fail(fmt.Errorf("no database connection was given"))
	}
	cols, rows, err := m.querier.Lookup(ctx, r.Query.SQL, args)
	if err != nil {
		return fail(err)
	}
	col := 0
	if len(cols) != 1 {
		col = -1
		for i, c := range cols {
			if c == "value" {
				col = i
			}
		}
		if col < 0 {
			return fail(fmt.Errorf("it returns columns %s: name the value's column \"value\" (or return only it)", strings.Join(cols, ", ")))
		}
	}
	switch {
	case len(rows) == 0 || rows[0][col] == nil:
		return RefreshRemove, nil, nil
	case len(rows) > 1:
		return fail(fmt.Errorf("it returned %s rows for one key: a refresh query returns at most one", strconv.Itoa(len(rows))))
	}
	return RefreshSet, rows[0][col], nil
}
