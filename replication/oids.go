package replication

import (
	"context"
	"fmt"

	"github.com/walbust/walbust/replication/wal"
)

// TableOIDs resolves qualified table names (tables and partitioned tables)
// to their OIDs, the IDs Relation messages carry. Names that do not exist
// are absent from the result.
func TableOIDs(ctx context.Context, q Querier, names []string) (map[string]uint32, error) {
	schemas, tables := make([]string, 0, len(names)), make([]string, 0, len(names))
	for _, n := range names {
		s, t, err := wal.ParseQualifiedName(n)
		if err != nil {
			return nil, err
		}
		schemas, tables = append(schemas, s), append(tables, t)
	}
	rows, err := q.Query(ctx, `
SELECT n.nspname, c.relname, c.oid
FROM unnest($1::text[], $2::text[]) AS w(nspname, relname)
JOIN pg_namespace n ON n.nspname = w.nspname
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.relname AND c.relkind IN ('r', 'p')`, schemas, tables)
	if err != nil {
		return nil, fmt.Errorf("look up table OIDs: %w", err)
	}
	defer rows.Close()
	out := make(map[string]uint32, len(names))
	for rows.Next() {
		var schema, table string
		var oid uint32
		if err := rows.Scan(&schema, &table, &oid); err != nil {
			return nil, fmt.Errorf("look up table OIDs: %w", err)
		}
		out[wal.QualifiedName(schema, table)] = oid
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("look up table OIDs: %w", err)
	}
	return out, nil
}

// TableNames returns the current qualified names of the tables with these
// OIDs; OIDs of tables that no longer exist are absent.
func TableNames(ctx context.Context, q Querier, oids []uint32) (map[uint32]string, error) {
	rows, err := q.Query(ctx, `
SELECT c.oid, n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = ANY($1::oid[]) AND c.relkind IN ('r', 'p')`, oids)
	if err != nil {
		return nil, fmt.Errorf("look up tables by OID: %w", err)
	}
	defer rows.Close()
	out := make(map[uint32]string, len(oids))
	for rows.Next() {
		var oid uint32
		var schema, table string
		if err := rows.Scan(&oid, &schema, &table); err != nil {
			return nil, fmt.Errorf("look up tables by OID: %w", err)
		}
		out[oid] = wal.QualifiedName(schema, table)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("look up tables by OID: %w", err)
	}
	return out, nil
}
