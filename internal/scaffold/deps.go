package scaffold

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"

	"github.com/jackc/pgx/v5"

	"github.com/walbust/walbust/replication/wal"
)

// Select picks the tables init writes rules for: those named (as
// schema.table, quoted as wal.ParseQualifiedName reads them), or, when none
// are, every table that is not a partition (a partition's rows arrive as
// its parent). from says where the names came from ("--tables", or
// "publication walbust"), for the errors. The result is sorted by name.
func Select(all []Table, names []string, from string) ([]Table, error) {
	var out []Table
	if len(names) == 0 {
		for _, t := range all {
			if t.PartitionOf == "" {
				out = append(out, t)
			}
		}
	} else {
		byName := map[string]Table{}
		for _, t := range all {
			byName[t.QualifiedName()] = t
		}
		seen := map[string]bool{}
		var missing []string
		for _, n := range names {
			schema, rel, err := wal.ParseQualifiedName(n)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", from, err)
			}
			q := wal.QualifiedName(schema, rel)
			t, ok := byName[q]
			if !ok {
				missing = append(missing, q)
				continue
			}
			if !seen[q] {
				seen[q] = true
				out = append(out, t)
			}
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("%s: no ordinary or partitioned table %s in the database", from, strings.Join(missing, ", "))
		}
		for _, t := range out {
			if t.PartitionOf != "" && seen[t.PartitionOf] {
				return nil, fmt.Errorf("%s names both %s and its partition %s: the partition's rows arrive as %s, so name only one of them",
					from, t.PartitionOf, t.QualifiedName(), t.PartitionOf)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].QualifiedName() < out[j].QualifiedName() })
	if len(out) == 0 {
		return nil, fmt.Errorf("the database has no tables outside the system schemas: create the schema first")
	}
	return out, nil
}

// Summary is what Deps wrote.
type Summary struct {
	Tables    []string // tables with rules
	Commented []string // tables left commented out, each with why
}

// Deps renders deps.yaml for the chosen tables. all is every table of the
// database: a key prefix is the table's name, schema-qualified only when
// another schema has a table of the same name.
func Deps(chosen, all []Table) (string, Summary) {
	g := newGen(all)
	var b strings.Builder
	var sum Summary
	b.WriteString(`# deps.yaml written by "walbust init": which Redis keys hold each table's rows.
# The keys below are a start: one key per row from its primary key. Change them to the keys your
# application really caches, and uncomment the list keys it keeps (offered for each foreign key).
# Templates: {column} is the column's value as Postgres prints it; {{ and }} are literal braces.
# UPDATE renders keys from the old and the new row, DELETE from the old row, INSERT from the new.
# Reference: README.md, "deps.yaml reference"; what init wrote and why: docs/init.md.
version: 1
tables:
`)
	for i := range chosen {
		t := &chosen[i]
		if i > 0 {
			b.WriteString("\n")
		}
		if why := g.table(&b, t); why != "" {
			sum.Commented = append(sum.Commented, t.QualifiedName()+": "+why)
		} else {
			sum.Tables = append(sum.Tables, t.QualifiedName())
		}
	}
	return b.String(), sum
}

type gen struct {
	dupNames map[string]bool // table names found in more than one schema
}

func newGen(all []Table) *gen {
	schemas := map[string]map[string]bool{}
	for _, t := range all {
		if schemas[t.Name] == nil {
			schemas[t.Name] = map[string]bool{}
		}
		schemas[t.Name][t.Schema] = true
	}
	g := &gen{dupNames: map[string]bool{}}
	for name, s := range schemas {
		if len(s) > 1 {
			g.dupNames[name] = true
		}
	}
	return g
}

// prefix is the literal text keys of a table start with.
func (g *gen) prefix(schema, name string) string {
	if g.dupNames[name] {
		return schema + "." + name
	}
	return name
}

// identityColumns are the columns whose old values UPDATE and DELETE send,
// and a description of the identity; all is true for FULL.
func identityColumns(t *Table) (cols []string, all bool, desc string) {
	switch t.ReplicaIdentity {
	case 'f':
		return nil, true, "FULL: UPDATE and DELETE send the whole old row, so keys from any column work"
	case 'i':
		return t.IdentityIndex, false, fmt.Sprintf("USING INDEX (%s): UPDATE and DELETE send only these columns of the old row", strings.Join(t.IdentityIndex, ", "))
	case 'n':
		return nil, false, "NOTHING: UPDATE and DELETE send no old row at all"
	}
	return t.PrimaryKey, false, fmt.Sprintf("DEFAULT: UPDATE and DELETE send only the primary key (%s) of the old row", strings.Join(t.PrimaryKey, ", "))
}

func sends(cols []string, all bool, want []string) (missing []string) {
	if all {
		return nil
	}
	for _, c := range want {
		if !slices.Contains(cols, c) {
			missing = append(missing, c)
		}
	}
	return missing
}

// table writes one table's entry and returns why it is commented out ("" when
// it is not).
func (g *gen) table(b *strings.Builder, t *Table) string {
	name := t.QualifiedName()
	alter := func(what string) string {
		return fmt.Sprintf("ALTER TABLE %s %s;", pgx.Identifier{t.Schema, t.Name}.Sanitize(), what)
	}
	prefix := g.prefix(t.Schema, t.Name)
	identCols, identAll, identDesc := identityColumns(t)

	var notes []string // comment lines above the entry
	notes = append(notes, columnLines(t)...)
	if t.Partitioned {
		notes = append(notes, "partitioned: rows changed in any partition arrive as this table (walbust setup publishes via the partition root);",
			"  the partitions write the WAL, so a replica identity must be set on each partition too.")
	}
	if t.PartitionOf != "" {
		notes = append(notes, "a partition of "+t.PartitionOf+": these rules serve only while deps.yaml does not name the parent too.")
	}

	why := ""
	var fix []string
	switch {
	case len(t.PrimaryKey) == 0:
		why = "no primary key"
		fix = []string{
			"no primary key: nothing is known to identify one row, so walbust init wrote no stable key for it.",
			"To cache its rows, give it a primary key and run walbust init again (into another --dir) for its entry:",
			"  " + alter("ADD PRIMARY KEY (column, ...)"),
			"or write keys from columns that do identify a row, and send whole old rows, since without a key",
			"a published table refuses UPDATE and DELETE (\"does not have a replica identity\"):",
			"  " + alter("REPLICA IDENTITY FULL"),
		}
	case !allReferable(t.PrimaryKey):
		why = "a primary key column name a template cannot spell"
		fix = []string{
			"a primary key column name holds a brace or surrounding spaces, which a {column} reference cannot spell:",
			"rename the column, or key the table by other columns (then " + alter("REPLICA IDENTITY FULL") + ").",
		}
	case t.ReplicaIdentity == 'n':
		why = "replica identity NOTHING"
		fix = []string{
			"replica identity NOTHING: UPDATE and DELETE send no old row, so no key of a changed or deleted row can be",
			"invalidated. Fix, then uncomment the entry:",
			"  " + alter("REPLICA IDENTITY DEFAULT"),
		}
	case len(sends(identCols, identAll, t.PrimaryKey)) > 0:
		why = "replica identity index without the primary key"
		fix = []string{
			"replica identity " + identDesc + ",",
			"which lack primary key column(s) " + strings.Join(sends(identCols, identAll, t.PrimaryKey), ", ") + ", so keys from the primary key cannot be",
			"rendered for DELETE. Fix, then uncomment the entry:",
			"  " + alter("REPLICA IDENTITY DEFAULT"),
		}
	}

	direct := templateLiteral(prefix) + ":" + columnRefs(t.PrimaryKey)
	if len(t.PrimaryKey) == 0 {
		direct = templateLiteral(prefix) + ":{CHANGE_ME}"
	}
	type item struct {
		text     string // a YAML scalar, with any comment after it
		optional bool   // offered commented out
	}
	keys := []item{{text: yamlQuote(direct) + "   # one row, by its primary key"}}
	if len(t.PrimaryKey) == 0 {
		keys[0].text = yamlQuote(direct) + "   # one row, by the columns that identify it"
	}
	patterns := []item{{text: yamlQuote(patternLiteral(prefix) + ":*")}}
	seen := map[string]bool{direct: true}
	for _, fk := range t.ForeignKeys {
		if !allReferable(fk.Columns) {
			continue
		}
		refPrefix := g.prefix(fk.RefSchema, fk.RefTable)
		key := templateLiteral(refPrefix) + ":" + columnRefs(fk.Columns) + ":" + templateLiteral(prefix)
		if seen[key] {
			continue
		}
		seen[key] = true
		need := "works with this replica identity"
		if why == "" {
			if m := sends(identCols, identAll, fk.Columns); len(m) > 0 {
				need = fmt.Sprintf("%s not in the old row: needs %s", strings.Join(m, ", "), alter("REPLICA IDENTITY FULL"))
			}
		}
		keys = append(keys, item{optional: true, text: yamlQuote(key) + "   # list key on the referenced " +
			commentSafe(wal.QualifiedName(fk.RefSchema, fk.RefTable)) + " row (" + commentSafe(fk.Name) + "); " + commentSafe(need)})
		patterns = append(patterns, item{optional: true, text: yamlQuote(patternLiteral(refPrefix)+":*:"+patternLiteral(prefix)) + "   # with the list key above"})
	}

	if why == "" {
		if identAll {
			notes = append(notes, "replica identity "+identDesc+".")
		} else {
			notes = append(notes, "replica identity "+identDesc+": keys from those work as they are;",
				"  a key from any other column, on UPDATE or DELETE, needs "+alter("REPLICA IDENTITY FULL"))
		}
	}

	indent := "  "
	if why != "" {
		fmt.Fprintf(b, "  # %s: left commented out.\n", commentSafe(name))
		for _, l := range fix {
			b.WriteString("  # " + commentSafe(l) + "\n")
		}
		indent = "  # "
	}
	for _, l := range notes {
		b.WriteString("  # " + commentSafe(l) + "\n")
	}
	fmt.Fprintf(b, "%s%s:\n", indent, yamlKey(name))
	list := func(depth string, items []item) {
		for _, it := range items {
			if it.optional {
				fmt.Fprintf(b, "%s%s# - %s\n", indent, depth, it.text)
			} else {
				fmt.Fprintf(b, "%s%s- %s\n", indent, depth, it.text)
			}
		}
	}
	fmt.Fprintf(b, "%s  keys:\n", indent)
	list("    ", keys)
	fmt.Fprintf(b, "%s  on_truncate:   # a TRUNCATE has no rows: these patterns cover every key of the table\n", indent)
	fmt.Fprintf(b, "%s    patterns:\n", indent)
	list("      ", patterns)
	return why
}

// columnLines lists the columns, a few per line.
func columnLines(t *Table) []string {
	var lines []string
	line := "columns:"
	for i, c := range t.Columns {
		d := c.Name + " " + c.Type
		if slices.Contains(t.PrimaryKey, c.Name) {
			d += " (primary key)"
		} else if c.NotNull {
			d += " not null"
		}
		if c.Generated {
			d += " (generated: not replicated, no key may use it)"
		}
		if i < len(t.Columns)-1 {
			d += ","
		}
		if len(line)+1+len(d) > 96 && line != "columns:" {
			lines = append(lines, line)
			line = " "
		}
		line += " " + d
	}
	if len(t.Columns) == 0 {
		line += " (none)"
	}
	return append(lines, line)
}

// referable: a {column} reference can name the column (see
// mapping.ParseTemplate).
func referable(col string) bool {
	return col != "" && strings.TrimSpace(col) == col && !strings.ContainsAny(col, "{}")
}

func allReferable(cols []string) bool {
	for _, c := range cols {
		if !referable(c) {
			return false
		}
	}
	return true
}

func columnRefs(cols []string) string {
	refs := make([]string, len(cols))
	for i, c := range cols {
		refs[i] = "{" + c + "}"
	}
	return strings.Join(refs, ":")
}

// templateLiteral escapes text for the literal part of a template.
func templateLiteral(s string) string {
	return strings.NewReplacer("{", "{{", "}", "}}").Replace(s)
}

// patternLiteral escapes text for the literal part of a pattern template:
// glob characters match only themselves, braces are literal.
func patternLiteral(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return templateLiteral(b.String())
}

// yamlQuote writes s as a YAML double-quoted scalar.
func yamlQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\n':
			b.WriteString(`\n`)
		case !unicode.IsPrint(r) || r == '\u2028' || r == '\u2029' || r == '\ufeff':
			if r > 0xffff {
				fmt.Fprintf(&b, `\U%08x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

var plainKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*$`)

// yamlKey writes a table name as a mapping key, quoted unless plain.
func yamlKey(name string) string {
	if plainKey.MatchString(name) {
		return name
	}
	return yamlQuote(name)
}

// commentSafe keeps text on its comment line: a name holding a line break
// or another control character is shown Go-quoted.
func commentSafe(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
