package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walbust/walbust/internal/validate"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

// setupCommand creates the publication, then the slot (in that order: see
// replication.EnsureSlot), idempotently.
func setupCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("setup", `Usage: walbust setup [--config walbust.yaml] [--shard NAME] [--print-sql]

Creates the publication (deps.yaml's tables), then the replication slot, idempotently.
With shards and no --shard, every shard's.`, stderr)
	printSQL := fs.Bool("print-sql", false, "print the SQL a DBA runs to prepare a least-privilege role, and exit")
	l, err := loadWith(fs, args, stderr)
	if err != nil {
		return err
	}
	targets, err := l.targets()
	if err != nil {
		return err
	}
	if *printSQL {
		return printSetupSQL(stdout, l, targets)
	}
	conn, err := connectSQL(ctx, l.cfg.Postgres.URL)
	if err != nil {
		return err
	}
	defer closeQuietly(ctx, conn)
	// Problems are shown, not fatal: setup must be able to run before the
	// schema is final, and validate and run refuse what is still wrong.
	problems, err := validate.Registry(ctx, conn, l.reg, "")
	if err != nil {
		return err
	}
	for _, p := range problems {
		fmt.Fprintln(stderr, "warning:", p.Error())
	}
	slotErr, err := setupPreflight(ctx, conn, targets, stderr)
	if err != nil {
		return err
	}
	for _, t := range targets {
		msg, err := replication.EnsurePublication(ctx, conn, t.cfg.Postgres.Publication, t.reg.Names())
		if err != nil {
			return fmt.Errorf("%s%w", t.shardPrefix(), err)
		}
		fmt.Fprintln(stdout, t.shardPrefix()+msg)
		if slotErr != nil {
			continue
		}
		msg, err = replication.EnsureSlot(ctx, conn, t.cfg.Postgres.Slot)
		if err != nil {
			return fmt.Errorf("%s%w", t.shardPrefix(), err)
		}
		fmt.Fprintln(stdout, t.shardPrefix()+msg)
	}
	return slotErr
}

// teardownCommand drops the slot and the publication so a retired
// deployment stops retaining WAL.
func teardownCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	l, err := load("teardown", `Usage: walbust teardown [--config walbust.yaml] [--shard NAME]

Drops the replication slot (which otherwise retains WAL) and the publication.
With shards and no --shard, every shard's.`, args, stderr)
	if err != nil {
		return err
	}
	targets, err := l.targets()
	if err != nil {
		return err
	}
	conn, err := connectSQL(ctx, l.cfg.Postgres.URL)
	if err != nil {
		return err
	}
	defer closeQuietly(ctx, conn)
	for _, t := range targets {
		msg, err := replication.DropSlot(ctx, conn, t.cfg.Postgres.Slot)
		if err != nil {
			return fmt.Errorf("%s%w", t.shardPrefix(), err)
		}
		fmt.Fprintln(stdout, t.shardPrefix()+msg)
		msg, err = replication.DropPublication(ctx, conn, t.cfg.Postgres.Publication)
		if err != nil {
			return fmt.Errorf("%s%w", t.shardPrefix(), teardownPublicationError(ctx, conn, t.cfg.Postgres.Publication, err))
		}
		fmt.Fprintln(stdout, t.shardPrefix()+msg)
	}
	return nil
}

// printSetupSQL prints what a DBA runs so walbust needs no superuser: a
// LOGIN REPLICATION role, the publication (which needs table ownership),
// the slot, and SELECT grants for validation and lookup queries. Each block
// says who may run it: no single role but a superuser may run them all.
func printSetupSQL(w io.Writer, l *loaded, targets []*loaded) error {
	cfg, err := pgconn.ParseConfig(l.cfg.Postgres.URL)
	if err != nil {
		return usageError{fmt.Errorf("postgres url: %w", err)}
	}
	role := pgx.Identifier{cfg.User}.Sanitize()
	db := pgx.Identifier{cfg.Database}.Sanitize()
	tables := make([]string, 0, len(l.reg.Tables))
	schemas := map[string]bool{}
	for _, name := range l.reg.Names() {
		t := l.reg.Tables[name]
		schemas[t.Schema] = true
		tables = append(tables, pgx.Identifier{t.Schema, t.Relname}.Sanitize())
	}
	fmt.Fprintf(w, "-- What `walbust setup` needs, for a DBA to run in database %s; walbust then connects as %s, no superuser.\n", db, role)
	fmt.Fprintf(w, "-- Each block says who runs it; a superuser may run them all.\n")
	fmt.Fprintf(w, "-- First, SHOW wal_level; must say logical. If not, as a superuser: ALTER SYSTEM SET wal_level = logical; and restart Postgres.\n")
	fmt.Fprintf(w, "\n-- 1. As a superuser (only a superuser may create a role with REPLICATION):\n")
	fmt.Fprintf(w, "CREATE ROLE %s LOGIN REPLICATION PASSWORD 'change-me';\n", role)
	fmt.Fprintf(w, "\n-- 2. Each as the owner of what it grants on (database %s, the schema, the tables) or a superuser: what validate and lookup queries read.\n", db)
	fmt.Fprintf(w, "GRANT CONNECT ON DATABASE %s TO %s;\n", db, role)
	for _, schema := range slices.Sorted(maps.Keys(schemas)) {
		fmt.Fprintf(w, "GRANT USAGE ON SCHEMA %s TO %s;\n", pgx.Identifier{schema}.Sanitize(), role)
	}
	fmt.Fprintf(w, "GRANT SELECT ON %s TO %s;\n", strings.Join(tables, ", "), role)
	for _, name := range l.reg.Names() {
		for _, r := range l.reg.Tables[name].Rules {
			if r.Query != nil {
				fmt.Fprintf(w, "-- %s:%d: %s %s runs: %s\n--   grant SELECT on the tables it reads.\n", l.reg.File, r.Query.Line, name, r.Name, r.Query.SQL)
			}
		}
	}
	fmt.Fprintf(w, "\n-- 3. As the owner of the tables, with CREATE on database %s (or a superuser): the publication.\n", db)
	fmt.Fprintf(w, "--    %s may not: CREATE PUBLICATION needs ownership of every table it publishes.\n", role)
	for _, t := range targets {
		if t.cfg.Shard != "" {
			fmt.Fprintf(w, "-- Shard %s:\n", t.cfg.Shard)
		}
		fmt.Fprintf(w, "CREATE PUBLICATION %s FOR TABLE %s WITH (publish_via_partition_root = true);\n", pgx.Identifier{t.cfg.Postgres.Publication}.Sanitize(), strings.Join(quotedTables(t.reg.Names()), ", "))
	}
	fmt.Fprintf(w, "\n-- 4. As %s (`walbust setup` does it, finding the publication) or a superuser: the slot.\n", role)
	fmt.Fprintf(w, "--    A table owner without REPLICATION may not.\n")
	for _, t := range targets {
		fmt.Fprintf(w, "SELECT pg_create_logical_replication_slot('%s', 'pgoutput');\n", t.cfg.Postgres.Slot)
	}
	fmt.Fprintf(w, "\n-- 5. As the owner of each table (or a superuser), for tables whose key templates use non-key columns\n")
	fmt.Fprintf(w, "--    (validate names them): old values on UPDATE/DELETE.\n")
	for _, t := range tables {
		fmt.Fprintf(w, "-- ALTER TABLE %s REPLICA IDENTITY FULL;\n", t)
	}
	fmt.Fprintf(w, "\n-- Retiring walbust (`walbust teardown` does both when run as a superuser or as a role that owns the publication and has REPLICATION):\n")
	for _, t := range targets {
		which := ""
		if t.cfg.Shard != "" {
			which = " shard " + t.cfg.Shard
		}
		fmt.Fprintf(w, "--%s as %s or a superuser: SELECT pg_drop_replication_slot('%s');\n", which, role, t.cfg.Postgres.Slot)
		fmt.Fprintf(w, "--%s as the publication's owner or a superuser: DROP PUBLICATION %s;\n", which, pgx.Identifier{t.cfg.Postgres.Publication}.Sanitize())
	}
	return nil
}

func quotedTables(names []string) []string {
	out := make([]string, len(names))
	for i, name := range names {
		schema, table, _ := wal.ParseQualifiedName(name) // registry names parse
		out[i] = pgx.Identifier{schema, table}.Sanitize()
	}
	return out
}
