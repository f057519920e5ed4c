package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/walbust/walbust/internal/scaffold"
)

// initCommand writes a starter walbust.yaml and deps.yaml from the live
// schema. The Postgres URL (and the other settings it writes) come as for
// every command: flag > environment > --config file > default.
func initCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("init", `Usage: walbust init [--postgres-url URL] [--tables public.a,public.b] [--dir .] [--force]

Reads the database's schema and writes a starter walbust.yaml and deps.yaml, with rules for the
tables of the publication when it exists (else every table, or --tables). The Postgres URL,
slot, publication, Redis URL, checkpoint and listen address written are the ones given as
flags, environment variables or --config, else the defaults. No password is written.`, stderr)
	fs, loader := f.FlagSet, f.loader
	tables := fs.String("tables", "", "comma-separated tables (schema.table) to write rules for; default: the tables of the publication (--publication) when it exists and lists any, else every table outside the system schemas, partitions aside")
	dir := fs.String("dir", ".", "directory to write walbust.yaml and deps.yaml into")
	force := fs.Bool("force", false, "overwrite walbust.yaml and deps.yaml when they exist")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := loader.Load(os.LookupEnv)
	if err != nil {
		return usageError{fmt.Errorf("config: %w", err)}
	}
	for _, w := range loader.Warnings() {
		fmt.Fprintln(stderr, "warning:", w)
	}
	var names []string
	for _, n := range strings.Split(*tables, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	conn, err := scaffold.Connect(ctx, cfg.Postgres.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	opts := scaffold.Options{Settings: scaffold.SettingsFrom(cfg), Tables: names, Dir: *dir, Force: *force}
	err = scaffold.Run(ctx, scaffold.Catalog{Conn: conn}, opts, stdout)
	if errors.Is(err, scaffold.ErrExists) {
		return usageError{err}
	}
	return err
}
