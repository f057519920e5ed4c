package replication

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/walbust/walbust/replication/wal"
)

// Querier is the part of a pgx connection or pool the catalog helpers use.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// ErrNoTable is returned by DescribeTable for a table that does not exist.
var ErrNoTable = errors.New("table does not exist")

// DescribeTable reads a table from the catalog as pgoutput would describe it
// in a Relation message: published columns in order, with the replica
// identity's columns marked as keys.
func DescribeTable(ctx context.Context, q Querier, qualified string) (*wal.Relation, error) {
	schema, name, err := wal.ParseQualifiedName(qualified)
	if err != nil {
		return nil, err
	}
	rows, err := q.Query(ctx, `
SELECT c.oid, c.relreplident::text, a.attname, a.atttypid,
       c.relreplident = 'f' OR COALESCE(a.attnum = ANY(i.indkey), false)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
LEFT JOIN pg_index i ON i.indrelid = c.oid
     AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
ORDER BY a.attnum`, schema, name)
	if err != nil {
		return nil, fmt.Errorf("describe %s: %w", qualified, err)
	}
	rel := &wal.Relation{Namespace: schema, Name: name}
	for rows.Next() {
		var col wal.Column
		var ident string
		if err := rows.Scan(&rel.ID, &ident, &col.Name, &col.TypeOID, &col.Key); err != nil {
			return nil, fmt.Errorf("describe %s: %w", qualified, err)
		}
		rel.ReplicaIdentity = ident[0]
		rel.Columns = append(rel.Columns, col)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("describe %s: %w", qualified, err)
	}
	if len(rel.Columns) == 0 {
		return nil, fmt.Errorf("%s: %w", qualified, ErrNoTable)
	}
	return rel, nil
}
