package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/walbust/walbust/replication/wal"
)

// EnsurePublication makes publication name publish exactly tables. It
// returns a sentence saying what it created, changed or found.
func EnsurePublication(ctx context.Context, conn *pgx.Conn, name string, tables []string) (string, error) {
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, name).Scan(&exists); err != nil {
		return "", fmt.Errorf("look up publication %s: %w", name, err)
	}
	list, err := tableList(tables)
	if err != nil {
		return "", err
	}
	if !exists {
		// Via the partition root: a partitioned table's rows arrive under its
		// own name (the one deps.yaml uses), partitions attached later included.
		if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish_via_partition_root = true)", pgx.Identifier{name}.Sanitize(), list)); err != nil {
			return "", fmt.Errorf("create publication %s: %w", name, err)
		}
		return fmt.Sprintf("created publication %s for %s (publish_via_partition_root)", name, strings.Join(tables, ", ")), nil
	}
	viaRoot, err := ensureViaRoot(ctx, conn, name)
	if err != nil {
		return "", err
	}
	current, err := PublishedTables(ctx, conn, name)
	if err != nil {
		return "", err
	}
	want := slices.Sorted(slices.Values(tables))
	if slices.Equal(current, want) {
		return fmt.Sprintf("found publication %s for %s%s", name, strings.Join(want, ", "), viaRoot), nil
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER PUBLICATION %s SET TABLE %s", pgx.Identifier{name}.Sanitize(), list)); err != nil {
		return "", fmt.Errorf("alter publication %s: %w", name, err)
	}
	return fmt.Sprintf("updated publication %s: was %s, now %s%s", name, strings.Join(current, ", "), strings.Join(want, ", "), viaRoot), nil
}

// PublishedTables lists a publication's tables as sorted "schema.table".
func PublishedTables(ctx context.Context, conn *pgx.Conn, publication string) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1`, publication)
	if err != nil {
		return nil, fmt.Errorf("list tables of publication %s: %w", publication, err)
	}
	tables, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (string, error) {
		var schema, table string
		err := row.Scan(&schema, &table)
		return wal.QualifiedName(schema, table), err
	})
	if err != nil {
		return nil, fmt.Errorf("list tables of publication %s: %w", publication, err)
	}
	slices.Sort(tables)
	return tables, nil
}

func tableList(tables []string) (string, error) {
	quoted := make([]string, len(tables))
	for i, t := range tables {
		schema, name, err := wal.ParseQualifiedName(t)
		if err != nil {
			return "", err
		}
		quoted[i] = pgx.Identifier{schema, name}.Sanitize()
	}
	return strings.Join(quoted, ", "), nil
}

// SlotInfo is a replication slot as pg_replication_slots shows it.
type SlotInfo struct {
	Name              string
	Plugin            string
	Database          string
	Active            bool
	ActivePID         *int32
	ConfirmedFlushLSN wal.LSN
	WALStatus         string // reserved, extended, unreserved, lost
	SafeWALSize       *int64 // bytes before the slot is lost; nil: unlimited
}

// ErrNoSlot is returned when the slot does not exist.
var ErrNoSlot = errors.New("replication slot does not exist")

// LookupSlot reads the slot's row from pg_replication_slots.
func LookupSlot(ctx context.Context, conn *pgx.Conn, slot string) (*SlotInfo, error) {
	s := &SlotInfo{Name: slot}
	var plugin, db, walStatus *string
	var confirmed *string
	err := conn.QueryRow(ctx, `SELECT plugin, database, active, active_pid, confirmed_flush_lsn::text, wal_status, safe_wal_size
FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&plugin, &db, &s.Active, &s.ActivePID, &confirmed, &walStatus, &s.SafeWALSize)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %s", ErrNoSlot, slot)
	}
	if err != nil {
		return nil, fmt.Errorf("look up slot %s: %w", slot, err)
	}
	s.Plugin, s.Database, s.WALStatus = deref(plugin), deref(db), deref(walStatus)
	if confirmed != nil {
		if s.ConfirmedFlushLSN, err = wal.ParseLSN(*confirmed); err != nil {
			return nil, fmt.Errorf("slot %s: %w", slot, err)
		}
	}
	return s, nil
}

// EnsureSlot creates the logical slot with the pgoutput plugin if it does not
// exist. Create the publication first: pgoutput reads it through the
// catalog as of each decoded change, so a publication younger than the slot
// fails decoding of the WAL between them.
func EnsureSlot(ctx context.Context, conn *pgx.Conn, slot string) (string, error) {
	info, err := LookupSlot(ctx, conn, slot)
	if err == nil {
		var currentDB string
		if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&currentDB); err != nil {
			return "", fmt.Errorf("current database: %w", err)
		}
		if info.Plugin != "pgoutput" || info.Database != currentDB {
			return "", fmt.Errorf("slot %s exists but is for plugin %q in database %q; walbust needs pgoutput in %q: pick another slot name or drop it",
				slot, info.Plugin, info.Database, currentDB)
		}
		return fmt.Sprintf("found slot %s (confirmed up to %s, wal_status %s)", slot, info.ConfirmedFlushLSN, info.WALStatus), nil
	}
	if !errors.Is(err, ErrNoSlot) {
		return "", err
	}
	lsn, err := CreateSlot(ctx, conn, slot)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("created slot %s at %s", slot, lsn), nil
}

// CreateSlot creates a logical slot with the pgoutput plugin and returns the
// position from which it will stream.
func CreateSlot(ctx context.Context, conn *pgx.Conn, slot string) (wal.LSN, error) {
	var text string
	if err := conn.QueryRow(ctx, `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')`, slot).Scan(&text); err != nil {
		return 0, fmt.Errorf("create slot %s: %w", slot, err)
	}
	return wal.ParseLSN(text)
}

// DropSlot drops the slot if it exists, so Postgres stops retaining WAL for it.
func DropSlot(ctx context.Context, conn *pgx.Conn, slot string) (string, error) {
	info, err := LookupSlot(ctx, conn, slot)
	if errors.Is(err, ErrNoSlot) {
		return fmt.Sprintf("slot %s does not exist", slot), nil
	}
	if err != nil {
		return "", err
	}
	if info.Active {
		return "", fmt.Errorf("slot %s is in use (pid %d): stop walbust first", slot, deref(info.ActivePID))
	}
	if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot); err != nil {
		return "", fmt.Errorf("drop slot %s: %w", slot, err)
	}
	return fmt.Sprintf("dropped slot %s", slot), nil
}

// DropPublication drops the publication if it exists.
func DropPublication(ctx context.Context, conn *pgx.Conn, name string) (string, error) {
	tag, err := conn.Exec(ctx, `SELECT 1 FROM pg_publication WHERE pubname = $1`, name)
	if err != nil {
		return "", fmt.Errorf("look up publication %s: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Sprintf("publication %s does not exist", name), nil
	}
	if _, err := conn.Exec(ctx, "DROP PUBLICATION "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("drop publication %s: %w", name, err)
	}
	return fmt.Sprintf("dropped publication %s", name), nil
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
