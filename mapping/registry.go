// Package mapping holds the dependency registry (deps.yaml) and maps row
// changes to the cache invalidations they require.
package mapping

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/walbust/walbust/internal/yamlnode"
	"github.com/walbust/walbust/replication/wal"
)

// Registry is a loaded deps.yaml. It is immutable after Load and safe to
// share between goroutines.
type Registry struct {
	File   string
	Tables map[string]*Table // by "schema.table"
	// Warnings are legal but risky choices, such as a table without
	// on_truncate rules; the daemon logs them at start.
	Warnings []string
}

// Table is everything cached from one table's rows.
type Table struct {
	Name       string // schema.table, as wal.QualifiedName writes it
	Schema     string // unquoted
	Relname    string // unquoted
	Line       int
	Column     int
	Action     ActionSpec
	Rules      []*Rule // the direct keys first, then derived rules in file order
	OnTruncate *Rule   // nil when deps.yaml has no on_truncate for the table
}

// ActionSpec is how keys of a table are invalidated.
type ActionSpec struct {
	Action     Action
	StaleTTL   time.Duration // stale: how long the last good value survives
	VersionKey KeyFormat     // bump: where a key's version lives
	StaleKey   KeyFormat     // stale: where a key's last good value lives
	FenceTTL   time.Duration // fence: how long a tombstone survives
}

// Position is a place in deps.yaml.
type Position struct {
	Line, Column int
}

// Rule is one entry of keys, derived or on_truncate.
type Rule struct {
	Position
	Name        string // e.g. "keys", "derived[1]", "on_truncate"
	Keys        []*Template
	Patterns    []*Template
	Query       *Query
	WhenChanged []Ref
	On          OpSet
	Refresh     *RefreshSpec // action: refresh (see refresh.go); nil for the table's action

	table *Table
}

// Query is a lookup whose result rows feed the rule's templates.
type Query struct {
	Position
	SQL  string
	Args []Ref // row columns bound to $1..$n
}

// argNames are the columns the query's arguments are taken from.
func (q *Query) argNames() []string {
	names := make([]string, len(q.Args))
	for i, a := range q.Args {
		names[i] = a.Name
	}
	return names
}

// Ref is a column name and where deps.yaml names it.
type Ref struct {
	Position
	Name string
}

// OpSet is a set of row operations.
type OpSet uint8

// Has reports whether op is in the set.
func (s OpSet) Has(op wal.Op) bool { return s&(1<<op) != 0 }

func (s OpSet) String() string {
	var names []string
	for _, op := range []wal.Op{wal.Insert, wal.Update, wal.Delete} {
		if s.Has(op) {
			names = append(names, op.String())
		}
	}
	return strings.Join(names, ",")
}

const allOps = OpSet(1<<wal.Insert | 1<<wal.Update | 1<<wal.Delete)

// KeyFormat derives a companion key from a cache key, e.g. "{key}:version".
type KeyFormat struct {
	Prefix, Suffix string
}

// For returns the companion key of key.
func (f KeyFormat) For(key string) string { return f.Prefix + key + f.Suffix }

func (f KeyFormat) String() string { return f.Prefix + "{key}" + f.Suffix }

func parseKeyFormat(s string) (KeyFormat, error) {
	prefix, suffix, ok := strings.Cut(s, "{key}")
	if !ok || strings.Contains(suffix, "{key}") {
		return KeyFormat{}, fmt.Errorf("%q must contain {key} exactly once", s)
	}
	if prefix == "" && suffix == "" {
		return KeyFormat{}, fmt.Errorf("%q would be the key itself", s)
	}
	if strings.ContainsAny(prefix+suffix, "{}") {
		return KeyFormat{}, fmt.Errorf("%q: only {key} may be used here", s)
	}
	return KeyFormat{Prefix: prefix, Suffix: suffix}, nil
}

// Names returns the table names in sorted order.
func (r *Registry) Names() []string {
	names := make([]string, 0, len(r.Tables))
	for n := range r.Tables {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// warning is the risky choice a table makes, if any.
func (t *Table) warning(file string) string {
	if t.OnTruncate == nil {
		return fmt.Sprintf("%s:%d:%d: %s has no on_truncate rules: a TRUNCATE of it cannot invalidate anything", file, t.Line, t.Column, t.Name)
	}
	return ""
}

// Only returns the registry restricted to tables (a shard's share), or an
// error naming those that deps.yaml does not have.
func (r *Registry) Only(tables []string) (*Registry, error) {
	out := &Registry{File: r.File, Tables: make(map[string]*Table, len(tables))}
	var missing []string
	for _, name := range tables {
		t := r.Tables[name]
		if t == nil {
			missing = append(missing, name)
			continue
		}
		out.Tables[name] = t
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%s has no table %s", r.File, strings.Join(missing, ", "))
	}
	for _, name := range out.Names() {
		if w := out.Tables[name].warning(r.File); w != "" {
			out.Warnings = append(out.Warnings, w)
		}
	}
	return out, nil
}

// Load reads and checks a deps.yaml file.
func Load(path string) (*Registry, error) {
	doc, err := yamlnode.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return build(doc)
}

// Parse checks deps.yaml content; file names it in errors.
func Parse(file string, data []byte) (*Registry, error) {
	doc, err := yamlnode.Parse(file, data)
	if err != nil {
		return nil, err
	}
	return build(doc)
}

func defaultActionSpec() ActionSpec {
	return ActionSpec{
		Action:     Delete,
		StaleTTL:   10 * time.Minute,
		VersionKey: KeyFormat{Suffix: ":version"},
		StaleKey:   KeyFormat{Suffix: ":stale"},
		FenceTTL:   60 * time.Second,
	}
}

func build(doc *yamlnode.Doc) (*Registry, error) {
	reg := &Registry{File: doc.File, Tables: map[string]*Table{}}
	if doc.Root == nil {
		doc.Errorf(nil, "", "empty registry: expected version and tables")
		return nil, doc.Errs
	}
	defaults := defaultActionSpec()
	var tables *yamlnode.Field
	var sawVersion bool
	for _, f := range doc.Mapping(doc.Root, "", "version", "defaults", "tables") {
		switch f.Path {
		case "version":
			sawVersion = true
			if v, ok := doc.Int(f); ok && v != 1 {
				doc.Errorf(f.Value, f.Path, "unsupported version %d (this walbust reads version 1)", v)
			}
		case "defaults":
			readActionSpec(doc, doc.Mapping(f.Value, f.Path, actionFields...), &defaults)
		case "tables":
			tables = &f
		}
	}
	if tables != nil {
		// Tables are read after defaults, wherever defaults stand in the file.
		for _, tf := range doc.Mapping(tables.Value, tables.Path) {
			if t := buildTable(doc, tf, defaults); t != nil {
				if first := reg.Tables[t.Name]; first != nil {
					// Two spellings of one name, e.g. public.users and "public".users.
					doc.Errorf(tf.Key, tf.Path, "names table %s again (first at line %d): merge the two entries", t.Name, first.Line)
					continue
				}
				reg.Tables[t.Name] = t
				if w := t.warning(doc.File); w != "" {
					reg.Warnings = append(reg.Warnings, w)
				}
			}
		}
	}
	if doc.Root.Kind == yaml.MappingNode {
		if !sawVersion {
			doc.Errorf(doc.Root, "version", "missing (write version: 1)")
		}
		if tables == nil {
			doc.Errorf(doc.Root, "tables", "missing: name at least one table")
		} else if len(reg.Tables) == 0 && len(doc.Errs) == 0 {
			doc.Errorf(tables.Value, "tables", "no tables")
		}
	}
	if err := doc.Errs.Err(); err != nil {
		return nil, err
	}
	return reg, nil
}

var actionFields = []string{"action", "stale_ttl", "version_key", "stale_key", "fence_ttl"}

// readActionSpec applies action settings found among fields to spec and
// returns the fields it did not consume.
func readActionSpec(doc *yamlnode.Doc, fields []yamlnode.Field, spec *ActionSpec) []yamlnode.Field {
	var rest []yamlnode.Field
	for _, f := range fields {
		s, isAction := "", false
		for _, name := range actionFields {
			if f.Key.Value == name {
				isAction = true
			}
		}
		if !isAction {
			rest = append(rest, f)
			continue
		}
		var ok bool
		if s, ok = doc.String(f); !ok {
			continue
		}
		switch f.Key.Value {
		case "action":
			a, err := ParseAction(s)
			if err != nil {
				doc.Errorf(f.Value, f.Path, "%v", err)
			}
			if a == Refresh {
				doc.Errorf(f.Value, f.Path, "refresh is an action of derived rules (it needs the rule's value or query and a ttl): set it in a rule under derived")
				a = Delete
			}
			spec.Action = a
		case "stale_ttl", "fence_ttl":
			d, err := time.ParseDuration(s)
			if err != nil || d < time.Millisecond {
				example := map[string]string{"stale_ttl": "10m", "fence_ttl": "60s"}[f.Key.Value]
				doc.Errorf(f.Value, f.Path, "must be a duration of at least 1ms such as %s, got %q", example, s)
				continue
			}
			if f.Key.Value == "stale_ttl" {
				spec.StaleTTL = d
			} else {
				spec.FenceTTL = d
			}
		case "version_key", "stale_key":
			kf, err := parseKeyFormat(s)
			if err != nil {
				doc.Errorf(f.Value, f.Path, "%v", err)
				continue
			}
			if f.Key.Value == "version_key" {
				spec.VersionKey = kf
			} else {
				spec.StaleKey = kf
			}
		}
	}
	return rest
}

var tableFields = append([]string{"keys", "derived", "on_truncate"}, actionFields...)

func buildTable(doc *yamlnode.Doc, tf yamlnode.Field, defaults ActionSpec) *Table {
	schema, rel, err := wal.ParseQualifiedName(tf.Key.Value)
	if err != nil {
		doc.Errorf(tf.Key, tf.Path, "%v", err)
		return nil
	}
	t := &Table{Name: wal.QualifiedName(schema, rel), Schema: schema, Relname: rel, Line: tf.Key.Line, Column: tf.Key.Column, Action: defaults}
	errsBefore := len(doc.Errs)
	fields := readActionSpec(doc, doc.Mapping(tf.Value, tf.Path, tableFields...), &t.Action)
	for _, f := range fields {
		switch f.Key.Value {
		case "keys":
			r := &Rule{Position: pos(f.Key), Name: "keys", On: allOps}
			r.Keys = templates(doc, f)
			if len(r.Keys) > 0 {
				t.Rules = append([]*Rule{r}, t.Rules...)
			}
		case "derived":
			if f.Value.Kind != yaml.SequenceNode {
				doc.Errorf(f.Value, f.Path, "must be a list of rules")
				continue
			}
			for i, item := range f.Value.Content {
				if r := buildDerived(doc, item, fmt.Sprintf("%s[%d]", f.Path, i), i); r != nil {
					t.Rules = append(t.Rules, r)
				}
			}
		case "on_truncate":
			t.OnTruncate = buildOnTruncate(doc, f)
		}
	}
	if len(t.Rules) == 0 && len(doc.Errs) == errsBefore {
		doc.Errorf(tf.Key, tf.Path, "no keys or derived rules: list the cache keys that hold this table's rows")
	}
	if t.Action.Action == Stale && t.Action.StaleKey == (KeyFormat{}) {
		doc.Errorf(tf.Key, tf.Path, "stale action needs a stale_key")
	}
	if len(doc.Errs) > errsBefore {
		return nil
	}
	for _, r := range append(slices.Clip(t.Rules), t.OnTruncate) {
		if r != nil {
			r.bind(t)
		}
	}
	return t
}

// bind points a rule and its templates at their table, so an invalidation
// can be rebuilt from the template alone (see Plan).
func (r *Rule) bind(t *Table) {
	r.table = t
	for _, k := range r.Keys {
		k.table, k.rule = t, r
	}
	for _, p := range r.Patterns {
		p.table, p.rule, p.pattern = t, r, true
	}
}

func buildDerived(doc *yamlnode.Doc, n *yaml.Node, path string, index int) *Rule {
	r := &Rule{Position: pos(n), Name: fmt.Sprintf("derived[%d]", index), On: allOps}
	var argsField *yamlnode.Field
	var refresh []yamlnode.Field
	for _, f := range doc.Mapping(n, path, append([]string{"keys", "patterns", "query", "args", "when_changed", "on"}, refreshFields...)...) {
		switch f.Key.Value {
		case "action", "value", "ttl", "negative":
			refresh = append(refresh, f)
		case "keys":
			r.Keys = templates(doc, f)
		case "patterns":
			r.Patterns = patternTemplates(doc, f)
		case "query":
			if sql, ok := doc.String(f); ok {
				if strings.TrimSpace(sql) == "" {
					doc.Errorf(f.Value, f.Path, "empty query")
					continue
				}
				r.Query = &Query{Position: pos(f.Value), SQL: sql}
			}
		case "args":
			argsField = &f
		case "when_changed":
			r.WhenChanged = refs(doc, f)
			if len(r.WhenChanged) == 0 {
				doc.Errorf(f.Value, f.Path, "empty list: name the columns whose change matters, or remove when_changed")
			}
		case "on":
			r.On = 0
			names, nodes := doc.Strings(f)
			for i, s := range names {
				switch s {
				case "insert":
					r.On |= 1 << wal.Insert
				case "update":
					r.On |= 1 << wal.Update
				case "delete":
					r.On |= 1 << wal.Delete
				default:
					doc.Errorf(nodes[i], fmt.Sprintf("%s[%d]", f.Path, i), "unknown operation %q (insert, update, delete; TRUNCATE is handled by on_truncate)", s)
				}
			}
			if r.On == 0 && len(names) == 0 {
				doc.Errorf(f.Value, f.Path, "empty list: a rule must serve at least one operation")
			}
		}
	}
	switch {
	case r.Query != nil:
		if argsField == nil {
			doc.Errorf(n, path+".args", "a query needs args: the row columns bound to $1..$n")
		} else {
			r.Query.Args = refs(doc, *argsField)
		}
		if len(r.Keys) == 0 && len(r.Patterns) == 0 && len(refresh) == 0 {
			doc.Errorf(n, path+".keys", "a query rule needs keys or patterns to render over its result rows")
		}
	case argsField != nil:
		doc.Errorf(argsField.Key, argsField.Path, "args only make sense with a query")
	case len(r.Keys) == 0 && len(r.Patterns) == 0 && len(refresh) == 0:
		doc.Errorf(n, path, "a derived rule needs keys, patterns or a query")
	}
	if len(refresh) > 0 {
		buildRefresh(doc, n, path, r, refresh)
	}
	return r
}

func buildOnTruncate(doc *yamlnode.Doc, f yamlnode.Field) *Rule {
	r := &Rule{Position: pos(f.Key), Name: "on_truncate"}
	for _, sub := range doc.Mapping(f.Value, f.Path, "keys", "patterns") {
		var ts []*Template
		if sub.Key.Value == "keys" {
			ts = templates(doc, sub)
		} else {
			ts = patternTemplates(doc, sub)
		}
		for _, t := range ts {
			if cols := t.Columns(); len(cols) > 0 {
				doc.Errs = append(doc.Errs, &yamlnode.Error{File: doc.File, Line: t.Line, Column: t.Column, Field: sub.Path,
					Msg: fmt.Sprintf("%q uses column {%s}, but a TRUNCATE has no rows to take values from", t.Source, cols[0])})
			}
		}
		if sub.Key.Value == "keys" {
			r.Keys = ts
		} else {
			r.Patterns = ts
		}
	}
	if len(r.Keys) == 0 && len(r.Patterns) == 0 {
		doc.Errorf(f.Key, f.Path, "needs keys or patterns")
		return nil
	}
	return r
}

func templates(doc *yamlnode.Doc, f yamlnode.Field) []*Template {
	srcs, nodes := doc.Strings(f)
	if f.Value.Kind == yaml.SequenceNode && len(f.Value.Content) == 0 {
		doc.Errorf(f.Value, f.Path, "empty list")
	}
	var out []*Template
	for i, src := range srcs {
		t, err := ParseTemplate(src)
		if err != nil {
			doc.Errorf(nodes[i], fmt.Sprintf("%s[%d]", f.Path, i), "%v", err)
			continue
		}
		t.Line, t.Column = nodes[i].Line, nodes[i].Column
		out = append(out, t)
	}
	return out
}

func refs(doc *yamlnode.Doc, f yamlnode.Field) []Ref {
	names, nodes := doc.Strings(f)
	out := make([]Ref, 0, len(names))
	for i, name := range names {
		if strings.TrimSpace(name) == "" {
			doc.Errorf(nodes[i], fmt.Sprintf("%s[%d]", f.Path, i), "empty column name")
			continue
		}
		out = append(out, Ref{Position: pos(nodes[i]), Name: name})
	}
	return out
}

func pos(n *yaml.Node) Position { return Position{Line: n.Line, Column: n.Column} }

// Columns returns every row column the table's rules read, sorted: template
// columns of non-query rules, when_changed columns and query args.
func (t *Table) Columns() []string {
	seen := map[string]bool{}
	for _, r := range t.Rules {
		for _, c := range r.RowColumns() {
			seen[c.Name] = true
		}
	}
	cols := make([]string, 0, len(seen))
	for c := range seen {
		cols = append(cols, c)
	}
	sort.Strings(cols)
	return cols
}

// RowColumns returns the row columns a rule reads, with their positions.
// Templates of a query rule read the query's result columns instead.
func (r *Rule) RowColumns() []Ref {
	var out []Ref
	if r.Query != nil {
		out = append(out, r.Query.Args...)
	}
	out = append(out, r.refreshColumns()...)
	if r.Query == nil && r.Refresh == nil {
		for _, t := range r.Templates() {
			for _, c := range t.Columns() {
				out = append(out, Ref{Position: Position{t.Line, t.Column}, Name: c})
			}
		}
	}
	return append(out, r.WhenChanged...)
}

// Templates returns the rule's key and pattern templates.
func (r *Rule) Templates() []*Template {
	return append(append([]*Template(nil), r.Keys...), r.Patterns...)
}

// patternTemplates reads a patterns list. An item is a pattern template,
// or a mapping that says how walbust finds the keys the pattern matches:
//
//	patterns:
//	  - "search:{owner_id}:*"            # SCAN (cost: the whole keyspace)
//	  - match: "feed:{owner_id}:*"
//	    index: true                      # the family's index set (cost: the matches)
//	    also_scan: true                  # and SCAN too, for keys written without cacheaside
func patternTemplates(doc *yamlnode.Doc, f yamlnode.Field) []*Template {
	if f.Value.Kind != yaml.SequenceNode {
		doc.Errorf(f.Value, f.Path, "must be a list of patterns (strings, or mappings with match, index, also_scan), got %s", f.Value.ShortTag())
		return nil
	}
	if len(f.Value.Content) == 0 {
		doc.Errorf(f.Value, f.Path, "empty list")
	}
	var out []*Template
	for i, item := range f.Value.Content {
		path := fmt.Sprintf("%s[%d]", f.Path, i)
		if item.Kind == yaml.ScalarNode && item.Tag != "!!null" {
			t, err := ParseTemplate(item.Value)
			if err != nil {
				doc.Errorf(item, path, "%v", err)
				continue
			}
			t.Line, t.Column = item.Line, item.Column
			out = append(out, t)
			continue
		}
		if item.Kind != yaml.MappingNode {
			doc.Errorf(item, path, "must be a pattern string or a mapping with match, index, also_scan")
			continue
		}
		var t *Template
		var index, alsoScan *yamlnode.Field
		for _, sub := range doc.Mapping(item, path, "match", "index", "also_scan") {
			switch sub.Key.Value {
			case "match":
				src, ok := doc.String(sub)
				if !ok {
					continue
				}
				tt, err := ParseTemplate(src)
				if err != nil {
					doc.Errorf(sub.Value, sub.Path, "%v", err)
					continue
				}
				tt.Line, tt.Column = sub.Value.Line, sub.Value.Column
				t = tt
			case "index":
				index = &sub
			case "also_scan":
				alsoScan = &sub
			}
		}
		if t == nil {
			doc.Errorf(item, path+".match", "a pattern mapping needs match: the pattern template")
			continue
		}
		if index != nil {
			t.Indexed = boolField(doc, *index)
			if t.Indexed {
				if err := t.checkIndexable(); err != nil {
					doc.Errorf(index.Key, index.Path, "%v", err)
				}
			}
		}
		if alsoScan != nil {
			t.AlsoScan = boolField(doc, *alsoScan)
			if !t.Indexed {
				doc.Errorf(alsoScan.Key, alsoScan.Path, "also_scan only makes sense with index: true (a pattern without an index is always scanned)")
			}
		}
		out = append(out, t)
	}
	return out
}

func boolField(doc *yamlnode.Doc, f yamlnode.Field) bool {
	if f.Value.Kind == yaml.ScalarNode {
		switch f.Value.Value {
		case "true":
			return true
		case "false":
			return false
		}
	}
	doc.Errorf(f.Value, f.Path, "must be true or false, got %q", f.Value.Value)
	return false
}
