package validate

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication/wal"
)

// Option adjusts what Registry knows beyond the catalog.
type Option func(*options)

type options struct {
	renamed map[string]string // registry name -> the name its table has now
}

// Renamed tells Registry which registry tables walbust run has followed
// (by OID) to a new name, so a missing table is reported as renamed.
func Renamed(m map[string]string) Option { return func(o *options) { o.renamed = m } }

// missingTable is the problem of a table that does not exist, with the
// likeliest fix: its new name when it was renamed, else what to do.
func missingTable(reg *mapping.Registry, t *mapping.Table, renamedTo string, unmapped []string) Problem {
	p := Problem{File: reg.File, Line: t.Line, Column: t.Column, MissingTable: t.Name}
	switch {
	case renamedTo != "":
		p.Msg = fmt.Sprintf("table %s does not exist: it was renamed to %s, which walbust run keeps invalidating (by OID); fix: write %s instead of %s here",
			t.Name, renamedTo, renamedTo, t.Name)
	case len(unmapped) > 0:
		p.Msg = fmt.Sprintf("table %s does not exist; the publication has %s, which no rule maps: if %s was renamed, write its new name here; "+
			"if it was dropped, remove it (walbust run serves the other tables meanwhile)", t.Name, strings.Join(unmapped, ", "), t.Name)
	default:
		p.Msg = fmt.Sprintf("table %s does not exist (dropped, or not created yet): walbust run serves the other tables and applies this one's on_truncate rules once; "+
			"fix: remove it from %s, or create it", t.Name, reg.File)
	}
	return p
}

// unmapped lists published tables that deps.yaml does not name.
func unmapped(reg *mapping.Registry, published map[string]bool) []string {
	var out []string
	for name := range published {
		if reg.Tables[name] == nil {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// notPublished says why a table is not in the publication and what to do.
// With partitions the answer is not always "run walbust setup": a
// partition whose parent is published arrives as the parent, and a
// publication made without publish_via_partition_root lists a parent's
// partitions instead of the parent.
func notPublished(ctx context.Context, conn *pgx.Conn, rel *wal.Relation, publication string, published map[string]bool) (string, error) {
	name := rel.QualifiedName()
	ancestors, err := partitionRelatives(ctx, conn, rel.ID, `pg_partition_ancestors($1::oid::regclass)`)
	if err != nil {
		return "", err
	}
	for _, a := range ancestors {
		if published[a] {
			return fmt.Sprintf("table %s is a partition of %s, which is published too, so its rows arrive as %s (publish_via_partition_root) "+
				"and these rules never run: move them to %s's entry, or name only the partition", name, a, a, a), nil
		}
	}
	msg := fmt.Sprintf("table %s is not in publication %s, so its changes never reach walbust (run walbust setup)", name, publication)
	partitions, err := partitionRelatives(ctx, conn, rel.ID, `pg_partition_tree($1::oid::regclass)`)
	if err != nil {
		return "", err
	}
	if slices.ContainsFunc(partitions, func(p string) bool { return published[p] }) {
		msg += "; the publication lists its partitions instead: it was made without publish_via_partition_root, which walbust setup turns on"
	}
	return msg, nil
}

// partitionRelatives names the tables fn (a partition function of
// Postgres) returns for oid, other than oid itself.
func partitionRelatives(ctx context.Context, conn *pgx.Conn, oid uint32, fn string) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT n.nspname, c.relname FROM `+fn+` p
JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.relid <> $1::oid::regclass`, oid)
	if err != nil {
		return nil, fmt.Errorf("look up partitions of table %d: %w", oid, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (string, error) {
		var schema, table string
		err := row.Scan(&schema, &table)
		return wal.QualifiedName(schema, table), err
	})
	if err != nil {
		return nil, fmt.Errorf("look up partitions of table %d: %w", oid, err)
	}
	return out, nil
}
