// Package validate checks a deps.yaml registry against the live database
// before it can hurt anyone: tables, columns, publication membership,
// replica identity and lookup queries.
package validate

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication"
)

// Problem is one mistake, at its place in deps.yaml.
type Problem struct {
	File         string
	Line, Column int
	Msg          string
	// MissingTable is set when the problem is that this table does not
	// exist: walbust run serves the other tables regardless.
	MissingTable string
}

func (p Problem) Error() string { return fmt.Sprintf("%s:%d:%d: %s", p.File, p.Line, p.Column, p.Msg) }

// Problems is every mistake found, in file order.
type Problems []Problem

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

// Err is nil when there are no problems.
func (ps Problems) Err() error {
	if len(ps) == 0 {
		return nil
	}
	return ps
}

// Registry checks reg against the database conn is connected to. With a
// publication name it also checks that every table is published. Problems
// are returned all at once; err is for failures to check at all.
func Registry(ctx context.Context, conn *pgx.Conn, reg *mapping.Registry, publication string, opts ...Option) (Problems, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	var ps Problems
	add := func(pos mapping.Position, format string, args ...any) {
		ps = append(ps, Problem{File: reg.File, Line: pos.Line, Column: pos.Column, Msg: fmt.Sprintf(format, args...)})
	}
	published := map[string]bool{}
	if publication != "" {
		tables, err := replication.PublishedTables(ctx, conn, publication)
		if err != nil {
			return nil, err
		}
		for _, t := range tables {
			published[t] = true
		}
	}
	for _, name := range reg.Names() {
		t := reg.Tables[name]
		tpos := mapping.Position{Line: t.Line, Column: t.Column}
		rel, err := replication.DescribeTable(ctx, conn, name)
		if errors.Is(err, replication.ErrNoTable) {
			ps = append(ps, missingTable(reg, t, o.renamed[name], unmapped(reg, published)))
			continue
		}
		if err != nil {
			return nil, err
		}
		if publication != "" && !published[name] {
			msg, err := notPublished(ctx, conn, rel, publication, published)
			if err != nil {
				return nil, err
			}
			add(tpos, "%s", msg)
		}
		for _, r := range t.Rules {
			for _, ref := range r.RowColumns() {
				if !rel.HasColumn(ref.Name) {
					add(ref.Position, "%s %s: table %s has no column %q (columns: %s)", name, r.Name, name, ref.Name, strings.Join(rel.ColumnNames(), ", "))
				}
			}
			if r.Query != nil {
				ps = append(ps, checkQuery(ctx, conn, reg.File, name, r)...)
			}
		}
		seen := map[string]bool{}
		for _, gap := range reg.IdentityGaps(rel) {
			if seen[fmt.Sprint(gap)] {
				continue
			}
			seen[fmt.Sprint(gap)] = true
			add(gap.Position, "%s: replica identity %s does not send the old value of column %q, which UPDATE/DELETE invalidation needs; fix: ALTER TABLE %s REPLICA IDENTITY FULL",
				name, identityName(rel.ReplicaIdentity), gap.Name, pgx.Identifier{rel.Namespace, rel.Name}.Sanitize())
		}
	}
	sort.SliceStable(ps, func(i, j int) bool {
		if ps[i].Line != ps[j].Line {
			return ps[i].Line < ps[j].Line
		}
		return ps[i].Column < ps[j].Column
	})
	return ps, nil
}

// checkQuery prepares a rule's query: it must parse, take exactly the
// declared args and return every column its templates use.
func checkQuery(ctx context.Context, conn *pgx.Conn, file, table string, r *mapping.Rule) Problems {
	var ps Problems
	q := r.Query
	at := func(pos mapping.Position, format string, args ...any) {
		ps = append(ps, Problem{File: file, Line: pos.Line, Column: pos.Column, Msg: fmt.Sprintf(format, args...)})
	}
	desc, err := conn.Prepare(ctx, "", q.SQL)
	if err != nil {
		at(q.Position, "%s %s: query does not prepare: %v", table, r.Name, err)
		return ps
	}
	if len(desc.ParamOIDs) != len(q.Args) {
		at(q.Position, "%s %s: query takes %d parameter(s) but args lists %d", table, r.Name, len(desc.ParamOIDs), len(q.Args))
	}
	if err := checkQueryPrivileges(ctx, conn, q.SQL, len(desc.ParamOIDs)); err != nil {
		at(q.Position, "%s", privilegeProblem(table, r, err))
	}
	have := map[string]bool{}
	var names []string
	for _, f := range desc.Fields {
		have[f.Name] = true
		names = append(names, f.Name)
	}
	if r.Refresh != nil {
		// A refresh query's keys render over the row; it returns the value.
		if len(names) != 1 && !have["value"] {
			at(q.Position, "%s %s: a refresh query returns the value in a column named value (or in its only column); it returns: %s",
				table, r.Name, strings.Join(names, ", "))
		}
		return ps
	}
	for _, t := range r.Templates() {
		for _, c := range t.Columns() {
			if !have[c] {
				at(mapping.Position{Line: t.Line, Column: t.Column}, "%s %s: template %q uses {%s}, which the query does not return (it returns: %s)",
					table, r.Name, t.Source, c, strings.Join(names, ", "))
			}
		}
	}
	return ps
}

// privilegeProblem says what a query walbust's role may not run costs,
// which depends on the rule: a lookup that fails stalls the stream (its
// keys could not be invalidated at all), a refresh query that fails flags
// its keys' values stale and the stream goes on (docs/deps-yaml.md,
// "refresh").
func privilegeProblem(table string, r *mapping.Rule, err error) string {
	const fix = "(fix: GRANT SELECT ON each table it reads TO the role in postgres.url)"
	if r.Refresh != nil {
		return fmt.Sprintf("%s %s: walbust's role may not run this refresh query, so its keys would never be refreshed: "+
			"every change of their rows would leave the cached value as it is, flagged stale in {key}:lsn, until its ttl (%s) expires; "+
			"the stream does not stall: %v %s", table, r.Name, r.Refresh.TTL, err, fix)
	}
	return fmt.Sprintf("%s %s: walbust's role may not run this lookup query, so every change of every table would stall behind it: %v %s",
		table, r.Name, err, fix)
}

// checkQueryPrivileges plans sql with NULL arguments. PREPARE does not
// check privileges but planning for EXPLAIN does, without running the query.
func checkQueryPrivileges(ctx context.Context, conn *pgx.Conn, sql string, params int) error {
	args := make([]any, params)
	rows, err := conn.Query(ctx, "EXPLAIN "+sql, args...)
	if err != nil {
		return err
	}
	rows.Close()
	return rows.Err()
}

func identityName(b byte) string {
	switch b {
	case 'd':
		return "DEFAULT (primary key only)"
	case 'n':
		return "NOTHING"
	case 'i':
		return "USING INDEX"
	case 'f':
		return "FULL"
	}
	return string(b)
}
