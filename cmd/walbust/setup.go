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

	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/validate"
)

func connectSQL(ctx context.Context, url string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	return conn, nil
}

// setupCommand creates the publication, then the slot (in that order: see
// replication.EnsureSlot), idempotently.
func setupCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, loader := newFlags("setup", stderr)
	printSQL := fs.Bool("print-sql", false, "print the SQL a DBA runs to prepare a least-privilege role, and exit")
	l, err := loadWith(fs, loader, args, stderr)
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
	for _, t := range targets {
		msg, err := replication.EnsurePublication(ctx, conn, t.cfg.Postgres.Publication, t.reg.Names())
		if err != nil {
			return fmt.Errorf("%s%w", t.shardPrefix(), err)
		}
		fmt.Fprintln(stdout, t.shardPrefix()+msg)
		msg, err = replication.EnsureSlot(ctx, conn, t.cfg.Postgres.Slot)
		if err != nil {
			return fmt.Errorf("%s%w", t.shardPrefix(), err)
		}
		fmt.Fprintln(stdout, t.shardPrefix()+msg)
	}
	return nil
}

// teardownCommand drops the slot and the publication so a retired
// deployment stops retaining WAL.
func teardownCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	l, err := load("teardown", args, stderr)
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
			return fmt.Errorf("%s%w", t.shardPrefix(), err)
		}
		fmt.Fprintln(stdout, t.shardPrefix()+msg)
	}
	return nil
}

// printSetupSQL prints what a DBA runs so walbust needs no superuser: a
// LOGIN REPLICATION role, the publication (which needs table ownership),
// the slot, and SELECT grants for validation and lookup queries.
func printSetupSQL(w io.Writer, l *loaded, targets []*loaded) error {
	cfg, err := pgconn.ParseConfig(l.cfg.Postgres.URL)
	if err != nil {
		return usageError{fmt.Errorf("postgres url: %w", err)}
	}
	role := pgx.Identifier{cfg.User}.Sanitize()
	tables := make([]string, 0, len(l.reg.Tables))
	schemas := map[string]bool{}
	for _, name := range l.reg.Names() {
		t := l.reg.Tables[name]
		schemas[t.Schema] = true
		tables = append(tables, pgx.Identifier{t.Schema, t.Relname}.Sanitize())
	}
	fmt.Fprintf(w, "-- Run as a superuser (or the owner of the tables) in database %s.\n", pgx.Identifier{cfg.Database}.Sanitize())
	fmt.Fprintf(w, "CREATE ROLE %s LOGIN REPLICATION PASSWORD 'change-me';\n", role)
	fmt.Fprintf(w, "GRANT CONNECT ON DATABASE %s TO %s;\n", pgx.Identifier{cfg.Database}.Sanitize(), role)
	for _, schema := range slices.Sorted(maps.Keys(schemas)) {
		fmt.Fprintf(w, "GRANT USAGE ON SCHEMA %s TO %s;\n", pgx.Identifier{schema}.Sanitize(), role)
	}
	fmt.Fprintf(w, "-- validate prepares queries and reads the tables' catalog entries:\n")
	fmt.Fprintf(w, "GRANT SELECT ON %s TO %s;\n", strings.Join(tables, ", "), role)
	for _, name := range l.reg.Names() {
		for _, r := range l.reg.Tables[name].Rules {
			if r.Query != nil {
				fmt.Fprintf(w, "-- %s:%d: %s %s runs: %s\n--   grant SELECT on the tables it reads.\n", l.reg.File, r.Query.Line, name, r.Name, r.Query.SQL)
			}
		}
	}
	for _, t := range targets {
		if t.cfg.Shard != "" {
			fmt.Fprintf(w, "-- Shard %s:\n", t.cfg.Shard)
		}
		fmt.Fprintf(w, "CREATE PUBLICATION %s FOR TABLE %s WITH (publish_via_partition_root = true);\n", pgx.Identifier{t.cfg.Postgres.Publication}.Sanitize(), strings.Join(quotedTables(t.reg.Names()), ", "))
		fmt.Fprintf(w, "-- The slot can be created by the role itself with `walbust setup`, or here:\n")
		fmt.Fprintf(w, "SELECT pg_create_logical_replication_slot('%s', 'pgoutput');\n", t.cfg.Postgres.Slot)
	}
	fmt.Fprintf(w, "-- Tables whose key templates use non-key columns need old values on UPDATE/DELETE:\n")
	for _, t := range tables {
		fmt.Fprintf(w, "-- ALTER TABLE %s REPLICA IDENTITY FULL;\n", t)
	}
	for _, t := range targets {
		which := ""
		if t.cfg.Shard != "" {
			which = " shard " + t.cfg.Shard
		}
		fmt.Fprintf(w, "-- Retiring walbust%s: SELECT pg_drop_replication_slot('%s'); DROP PUBLICATION %s;\n",
			which, t.cfg.Postgres.Slot, pgx.Identifier{t.cfg.Postgres.Publication}.Sanitize())
	}
	return nil
}

func quotedTables(names []string) []string {
	out := make([]string, len(names))
	for i, name := range names {
		schema, table, _ := replication.ParseQualifiedName(name) // registry names parse
		out[i] = pgx.Identifier{schema, table}.Sanitize()
	}
	return out
}
