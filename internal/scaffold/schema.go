// Package scaffold writes a starter walbust.yaml and deps.yaml from a live
// database's schema (walbust init). Reading the catalog sits behind Schema,
// so generation, which is pure, can be tested with a schema made up in Go.
package scaffold

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

// Table is what init needs to know of one table.
type Table struct {
	Schema, Name string // unquoted
	// Partitioned: a partitioned table (relkind p), whose rows arrive as
	// it (publish_via_partition_root).
	Partitioned bool
	// PartitionOf is the parent ("schema.table") of a partition, "" else.
	PartitionOf string
	// ReplicaIdentity is pg_class.relreplident: d (default: the primary
	// key), f (full), i (an index), n (nothing).
	ReplicaIdentity byte
	Columns         []Column
	PrimaryKey      []string // in key order; nil without one
	IdentityIndex   []string // columns of the replica identity index (identity i)
	ForeignKeys     []ForeignKey
}

// Column is one column of a table.
type Column struct {
	Name    string
	Type    string // as format_type prints it, e.g. "bigint", "character varying(80)"
	NotNull bool
	// Generated: a generated column, which logical replication does not
	// send, so no key may use it.
	Generated bool
}

// ForeignKey is one FOREIGN KEY constraint of a table.
type ForeignKey struct {
	Name                string
	Columns             []string // of the table, in constraint order
	RefSchema, RefTable string
	RefColumns          []string // of the referenced table, matching Columns
}

// QualifiedName is the table's name as deps.yaml writes it.
func (t *Table) QualifiedName() string { return wal.QualifiedName(t.Schema, t.Name) }

// Publication is an existing publication, as walbust setup compares it
// with deps.yaml.
type Publication struct {
	Name string
	// Tables are what pg_publication_tables lists, as sorted
	// "schema.table": with ViaRoot, a partitioned table as itself (not
	// its partitions).
	Tables  []string
	ViaRoot bool // publish_via_partition_root
}

// Schema reads the tables of a database.
type Schema interface {
	// Tables returns every ordinary and partitioned table outside the
	// system schemas, partitions included.
	Tables(ctx context.Context) ([]Table, error)
	// Publication returns the publication of that name, or nil when
	// there is none.
	Publication(ctx context.Context, name string) (*Publication, error)
}

// Catalog reads the schema from pg_catalog over a connection.
type Catalog struct{ Conn *pgx.Conn }

const tablesSQL = `
SELECT c.oid, n.nspname, c.relname, c.relkind = 'p', c.relreplident::text,
       coalesce(pn.nspname, ''), coalesce(pc.relname, '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_inherits i ON c.relispartition AND i.inhrelid = c.oid
LEFT JOIN pg_class pc ON pc.oid = i.inhparent
LEFT JOIN pg_namespace pn ON pn.oid = pc.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
ORDER BY n.nspname, c.relname`

const columnsSQL = `
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attgenerated <> ''
FROM pg_attribute a
WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum`

// indexSQL lists the columns of primary keys and replica identity
// indexes in index order.
const indexSQL = `
SELECT i.indrelid, i.indisprimary, i.indisreplident, a.attname
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = ANY($1::oid[]) AND (i.indisprimary OR i.indisreplident)
  AND k.ord <= i.indnkeyatts
ORDER BY i.indrelid, i.indexrelid, k.ord`

const foreignKeysSQL = `
SELECT con.conrelid, con.conname, rn.nspname, rc.relname, a.attname, ra.attname
FROM pg_constraint con
JOIN pg_class rc ON rc.oid = con.confrelid
JOIN pg_namespace rn ON rn.oid = rc.relnamespace
CROSS JOIN LATERAL unnest(con.conkey, con.confkey) WITH ORDINALITY AS k(attnum, refnum, ord)
JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
JOIN pg_attribute ra ON ra.attrelid = con.confrelid AND ra.attnum = k.refnum
WHERE con.contype = 'f' AND con.conrelid = ANY($1::oid[]) AND con.conparentid = 0
ORDER BY con.conrelid, con.conname, k.ord`

// Tables implements Schema.
func (c Catalog) Tables(ctx context.Context) ([]Table, error) {
	rows, err := c.Conn.Query(ctx, tablesSQL)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	var tables []Table
	var oids []uint32
	byOID := map[uint32]int{}
	for rows.Next() {
		var t Table
		var oid uint32
		var ident, parentSchema, parent string
		if err := rows.Scan(&oid, &t.Schema, &t.Name, &t.Partitioned, &ident, &parentSchema, &parent); err != nil {
			rows.Close()
			return nil, fmt.Errorf("list tables: %w", err)
		}
		if parent != "" {
			t.PartitionOf = wal.QualifiedName(parentSchema, parent)
		}
		if ident != "" {
			t.ReplicaIdentity = ident[0]
		}
		byOID[oid] = len(tables)
		tables = append(tables, t)
		oids = append(oids, oid)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	if len(tables) == 0 {
		return nil, nil
	}
	if err := c.each(ctx, columnsSQL, oids, func(row pgx.CollectableRow) error {
		var oid uint32
		var col Column
		if err := row.Scan(&oid, &col.Name, &col.Type, &col.NotNull, &col.Generated); err != nil {
			return err
		}
		t := &tables[byOID[oid]]
		t.Columns = append(t.Columns, col)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read columns: %w", err)
	}
	if err := c.each(ctx, indexSQL, oids, func(row pgx.CollectableRow) error {
		var oid uint32
		var primary, ident bool
		var col string
		if err := row.Scan(&oid, &primary, &ident, &col); err != nil {
			return err
		}
		t := &tables[byOID[oid]]
		if primary {
			t.PrimaryKey = append(t.PrimaryKey, col)
		}
		if ident {
			t.IdentityIndex = append(t.IdentityIndex, col)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read primary keys: %w", err)
	}
	if err := c.each(ctx, foreignKeysSQL, oids, func(row pgx.CollectableRow) error {
		var oid uint32
		var name, refSchema, refTable, col, refCol string
		if err := row.Scan(&oid, &name, &refSchema, &refTable, &col, &refCol); err != nil {
			return err
		}
		t := &tables[byOID[oid]]
		if n := len(t.ForeignKeys); n == 0 || t.ForeignKeys[n-1].Name != name {
			t.ForeignKeys = append(t.ForeignKeys, ForeignKey{Name: name, RefSchema: refSchema, RefTable: refTable})
		}
		fk := &t.ForeignKeys[len(t.ForeignKeys)-1]
		fk.Columns = append(fk.Columns, col)
		fk.RefColumns = append(fk.RefColumns, refCol)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read foreign keys: %w", err)
	}
	return tables, nil
}

// Publication implements Schema. Its tables are read as walbust setup
// reads them, so a deps.yaml of exactly these tables is the publication
// setup finds unchanged.
func (c Catalog) Publication(ctx context.Context, name string) (*Publication, error) {
	p := &Publication{Name: name}
	err := c.Conn.QueryRow(ctx, `SELECT pubviaroot FROM pg_publication WHERE pubname = $1`, name).Scan(&p.ViaRoot)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up publication %s: %w", name, err)
	}
	if p.Tables, err = replication.PublishedTables(ctx, c.Conn, name); err != nil {
		return nil, err
	}
	return p, nil
}

func (c Catalog) each(ctx context.Context, sql string, oids []uint32, fn func(pgx.CollectableRow) error) error {
	rows, err := c.Conn.Query(ctx, sql, oids)
	if err != nil {
		return err
	}
	_, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (struct{}, error) { return struct{}{}, fn(row) })
	return err
}
