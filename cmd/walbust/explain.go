package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/walbust/walbust/internal/lookup"
	"github.com/walbust/walbust/internal/validate"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

// explainCommand prints what walbust would do for one row change, through
// the same mapper as run, touching nothing in Redis.
func explainCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("explain", `Usage: walbust explain --table schema.table --op insert|update|delete|truncate [--old JSON] [--new JSON]

Prints what walbust would invalidate for one row change, through the same mapper as run,
touching nothing in Redis. The table is described from the database when it is reachable
(so replica identity is as in production), else REPLICA IDENTITY FULL is assumed.`, stderr)
	table := fs.String("table", "", "table, as schema.table")
	opName := fs.String("op", "", "insert, update, delete or truncate")
	oldJSON := fs.String("old", "", `old row as JSON, e.g. '{"id":1,"team_id":3}' (update, delete)`)
	newJSON := fs.String("new", "", `new row as JSON (insert, update)`)
	l, err := loadWith(fs, args, stderr)
	if err != nil {
		return err
	}
	op, err := parseOp(*opName)
	if err != nil {
		return usageError{err}
	}
	t := l.reg.Tables[*table]
	if t == nil {
		return usageError{fmt.Errorf("--table %q is not in %s (tables: %s)", *table, l.reg.File, strings.Join(l.reg.Names(), ", "))}
	}
	oldRow, err := parseRow("--old", *oldJSON)
	if err != nil {
		return usageError{err}
	}
	newRow, err := parseRow("--new", *newJSON)
	if err != nil {
		return usageError{err}
	}
	rel, note := explainRelation(ctx, l.cfg.Postgres.URL, *table, oldRow, newRow)
	change := wal.Change{Op: op, Relation: rel, Old: rowValues(rel, oldRow), New: rowValues(rel, newRow)}
	var querier mapping.Querier
	if hasQueries(l.reg) {
		pool, err := lookup.New(ctx, lookup.Options{URL: l.cfg.Postgres.URL})
		if err != nil {
			return err
		}
		defer pool.Close()
		querier = pool
	}
	// The same steps as run: map the change as it is decoded, then run the
	// lookups its commit would trigger.
	plan := mapping.Plan{Explain: true}
	mapper := mapping.NewMapper(l.reg, querier)
	mapper.MapChange(&change, &plan)
	if err := mapper.Resolve(ctx, &plan); err != nil {
		return err
	}
	printPlan(stdout, l.reg.File, *table, op, note, &plan)
	return nil
}

func parseOp(s string) (wal.Op, error) {
	for _, op := range []wal.Op{wal.Insert, wal.Update, wal.Delete, wal.Truncate} {
		if op.String() == s {
			return op, nil
		}
	}
	return 0, fmt.Errorf("--op %q: want insert, update, delete or truncate", s)
}

// parseRow reads a JSON object of column values. Values become the text
// Postgres would print: strings as they are, numbers as written, booleans
// as t/f, null as NULL.
func parseRow(flagName, s string) (map[string]*string, error) {
	if s == "" {
		return nil, nil
	}
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var raw map[string]any
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("%s: not a JSON object: %w", flagName, err)
	}
	row := make(map[string]*string, len(raw))
	for k, v := range raw {
		var text string
		switch v := v.(type) {
		case nil:
			row[k] = nil
			continue
		case string:
			text = v
		case json.Number:
			text = v.String()
		case bool:
			text = map[bool]string{true: "t", false: "f"}[v]
		default:
			var b bytes.Buffer
			if err := json.NewEncoder(&b).Encode(v); err != nil {
				return nil, fmt.Errorf("%s: column %s: %w", flagName, k, err)
			}
			text = strings.TrimSpace(b.String())
		}
		row[k] = &text
	}
	return row, nil
}

// explainRelation describes the table from the database, so replica identity
// is as in production; without a database it assumes REPLICA IDENTITY FULL
// over the columns given.
func explainRelation(ctx context.Context, url, table string, rows ...map[string]*string) (*wal.Relation, string) {
	conn, err := connectSQL(ctx, url)
	if err == nil {
		defer closeQuietly(ctx, conn)
		rel, err := replication.DescribeTable(ctx, conn, table)
		if err == nil {
			return rel, ""
		}
		if !errors.Is(err, replication.ErrNoTable) {
			return synthesize(table, rows...), fmt.Sprintf("note: could not describe %s (%v); assuming REPLICA IDENTITY FULL", table, err)
		}
	}
	return synthesize(table, rows...), "note: database not reachable; assuming REPLICA IDENTITY FULL over the columns given"
}

func synthesize(table string, rows ...map[string]*string) *wal.Relation {
	schema, name, _ := strings.Cut(table, ".")
	rel := &wal.Relation{Namespace: schema, Name: name, ReplicaIdentity: 'f'}
	seen := map[string]bool{}
	var cols []string
	for _, r := range rows {
		for c := range r {
			if !seen[c] {
				seen[c] = true
				cols = append(cols, c)
			}
		}
	}
	sort.Strings(cols)
	for _, c := range cols {
		rel.Columns = append(rel.Columns, wal.Column{Name: c, Key: true})
	}
	return rel
}

// rowValues lays a JSON row out in relation column order; columns not given
// are Missing, as in a key-only old image.
func rowValues(rel *wal.Relation, row map[string]*string) []wal.Value {
	if row == nil {
		return nil
	}
	vals := make([]wal.Value, len(rel.Columns))
	for i, c := range rel.Columns {
		v, ok := row[c.Name]
		switch {
		case !ok:
			vals[i] = wal.Value{Kind: wal.Missing}
		case v == nil:
			vals[i] = wal.Value{Kind: wal.Null}
		default:
			vals[i] = wal.Value{Kind: wal.Text, Data: []byte(*v)}
		}
	}
	return vals
}

func printPlan(w io.Writer, file, table string, op wal.Op, note string, plan *mapping.Plan) {
	if note != "" {
		fmt.Fprintln(w, note)
	}
	refreshes := plan.ExplainRefreshes()
	refreshed := ""
	if len(refreshes) > 0 {
		refreshed = fmt.Sprintf(", %d refreshed key(s)", len(refreshes))
	}
	fmt.Fprintf(w, "%s %s: %d invalidation(s)%s, %d rule(s) skipped, %d lookup(s)\n", op, table, plan.Len(), refreshed, plan.Skipped, plan.Lookups)
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	for _, inv := range plan.Invalidations() {
		kind := "key"
		if inv.Pattern {
			kind = "pattern"
		}
		detail := ""
		switch inv.Action {
		case mapping.Bump:
			detail = fmt.Sprintf("set %s to the commit LSN if higher", inv.Aux.For(inv.Key))
		case mapping.Stale:
			detail = fmt.Sprintf("move to %s for %s", inv.Aux.For(inv.Key), inv.TTL)
		case mapping.Fence:
			detail = fmt.Sprintf("replace with a tombstone of the commit LSN for %s", inv.TTL)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s:%d:%d\t%s\t%s\n", inv.Action, kind, inv.Key, file, inv.Template.Line, inv.Template.Column, inv.Rule.Name, detail)
	}
	for _, inv := range refreshes {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s:%d:%d\t%s\t%s\n", inv.Action, "key", inv.Key, file, inv.Template.Line, inv.Template.Column, inv.Rule.Name, refreshDetail(op, inv))
	}
	tw.Flush()
	for _, inv := range plan.Invalidations() {
		if inv.Pattern {
			fmt.Fprintf(w, "pattern %s: path %s\n", inv.Key, validate.PatternPath(inv.Template))
		}
	}
	if plan.Unrendered > 0 {
		fmt.Fprintf(w, "%d key(s) could not be rendered: a value they need was not given (or not sent by the replica identity):\n", plan.Unrendered)
		tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
		for _, u := range plan.UnrenderedKeys {
			what, line, col := "", u.Rule.Line, u.Rule.Column
			switch {
			case u.Template != nil:
				what, line, col = u.Template.Source, u.Template.Line, u.Template.Column
			case u.Rule.Query != nil:
				what, line, col = "query arguments", u.Rule.Query.Line, u.Rule.Query.Column
			}
			fmt.Fprintf(tw, "  %s\t%s:%d:%d\t%s\tmissing from the %s row: %s\n", what, file, line, col, u.Rule.Name, u.Image, strings.Join(u.Missing, ", "))
		}
		tw.Flush()
	}
	for _, p := range plan.Problems {
		fmt.Fprintln(w, "problem:", p.Msg)
	}
}

// refreshDetail says what a refresh writes to its key and where the value
// comes from: the row as JSON, the value template rendered over the row,
// or the rule's query with the arguments it would run with (explain does
// not run it: the value is only written by run, after the commit).
func refreshDetail(op wal.Op, inv mapping.Invalidation) string {
	w, spec := inv.Refresh, inv.Rule.Refresh
	lsn := fmt.Sprintf("commit LSN in %s, only over an older one", inv.Aux.For(inv.Key))
	ttl := fmt.Sprintf("ttl %s ±10%%", inv.TTL)
	gone := "delete"
	if spec.Negative != nil {
		gone = fmt.Sprintf("write the negative marker %q with ttl %s", spec.Negative.Value, spec.Negative.TTL)
	}
	switch w.Op {
	case mapping.RefreshSet:
		from := fmt.Sprintf("the row as JSON %s", w.Value)
		if spec.Value != nil {
			from = fmt.Sprintf("%q (value %q)", w.Value, spec.Value.Source)
		}
		return fmt.Sprintf("write %s, %s, %s", from, ttl, lsn)
	case mapping.RefreshRemove:
		why := "no new value for this key (the row moved to another key, or its value could not be built)"
		if op == wal.Delete {
			why = "the row was deleted"
		}
		if w.Negative {
			return fmt.Sprintf("%s: write the negative marker %q, ttl %s, %s", why, w.Value, inv.TTL, lsn)
		}
		return fmt.Sprintf("%s: delete, %s", why, lsn)
	case mapping.RefreshQuery:
		q := inv.Rule.Query
		args := make([]string, len(w.Args))
		for i, a := range w.Args {
			args[i] = fmt.Sprintf("$%d=NULL", i+1)
			if a != nil {
				args[i] = fmt.Sprintf("$%d=%q", i+1, a)
			}
		}
		with := ""
		if len(args) > 0 {
			with = " with " + strings.Join(args, ", ")
		}
		return fmt.Sprintf("write the value of the query %q%s (run after the commit, not by explain), %s, %s; no row or NULL: %s; query fails: the value stays, flagged stale in %s",
			strings.Join(strings.Fields(q.SQL), " "), with, ttl, lsn, gone, inv.Aux.For(inv.Key))
	}
	return w.Op.String()
}
