package main

import (
	"context"
	"fmt"
	"io"

	"github.com/walbust/walbust/internal/daemon"
	"github.com/walbust/walbust/internal/validate"
)

// validateCommand checks deps.yaml against the live database and reports
// every problem with its position; exit status 1 when there is any. With
// shards and none chosen, every shard is checked against its publication.
func validateCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	l, err := load("validate", `Usage: walbust validate [--config walbust.yaml] [--shard NAME]

Checks deps.yaml against the live database and Redis and reports every problem at once,
with file:line:column and the statement that fixes it; exit 1 when there is any.`, args, stderr)
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
	for _, w := range l.reg.Warnings {
		fmt.Fprintln(stdout, "warning:", w)
	}
	for _, w := range daemon.ClusterWarnings(l.cfg, l.reg) {
		fmt.Fprintln(stdout, "warning:", w)
	}
	for _, w := range replicaWarnings(ctx, l.cfg.Redis) {
		fmt.Fprintln(stdout, "warning:", w)
	}
	total, err := validateServer(ctx, conn, targets, stdout)
	if err != nil {
		return err
	}
	for _, t := range targets {
		// What walbust run bound by OID tells a renamed table from a dropped one.
		renamed, err := daemon.RenamedTables(ctx, conn, t.reg, t.cfg.Postgres.Publication, t.cfg.Checkpoint.Path)
		if err != nil {
			return err
		}
		problems, err := validate.Registry(ctx, conn, t.reg, t.cfg.Postgres.Publication, validate.Renamed(renamed))
		if err != nil {
			return err
		}
		for _, p := range problems {
			fmt.Fprintln(stdout, t.shardPrefix()+p.Error())
		}
		total += len(problems)
		if len(problems) == 0 {
			fmt.Fprintf(stdout, "%s%s: ok (%d tables)\n", t.shardPrefix(), t.reg.File, len(t.reg.Tables))
		}
		for _, line := range validate.PatternPaths(t.reg) {
			fmt.Fprintln(stdout, t.shardPrefix()+line)
		}
	}
	redisProblems := validateRedis(ctx, stdout, l)
	if total > 0 || redisProblems > 0 {
		return fmt.Errorf("%s: %d problem(s); redis: %d problem(s)", l.reg.File, total, redisProblems)
	}
	return nil
}
