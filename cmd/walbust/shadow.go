package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/walbust/walbust/internal/daemon"
	"github.com/walbust/walbust/internal/shadow"
	"github.com/walbust/walbust/mapping"
)

// shadowCommand tries a candidate deps.yaml on live traffic: it streams
// the publication's changes from a temporary slot of its own through the
// candidate and the running deps.yaml, and reports the candidate's cost
// and how its invalidations differ. Nothing is written to Redis.
func shadowCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("shadow", `Usage: walbust shadow --deps candidate.yaml [--duration 60s] [--json]

Tries a deps.yaml change on live traffic before deploying it. Streams the publication's changes for
--duration (or until SIGINT) from a TEMPORARY replication slot of its own, gone when shadow
disconnects, through the candidate and the running deps.yaml (the config's deps) with the real
mapper, and reports per table and rule: changes/s, keys/s, patterns/s with a SCAN-cost estimate from
the keyspace size (DBSIZE), lookups/s and their latency (the candidate's queries run for real, in
read-only transactions), and the keys and patterns only one of the two renders. Nothing is written
to Redis and the configured slot is not used. Needs the REPLICATION role, plus SELECT for lookups.`, stderr)
	candidate := fs.String("deps", "", "the candidate deps.yaml to try (required); the running one is the config's deps")
	duration := fs.Duration("duration", 60*time.Second, "how long to stream live changes (SIGINT ends sooner, with the report)")
	asJSON := fs.Bool("json", false, "print JSON")
	examples := fs.Int("examples", 5, "example keys shown per difference")
	l, err := loadWith(fs, args, stderr)
	if err != nil {
		return err
	}
	if *candidate == "" {
		return usageError{errors.New("shadow: --deps candidate.yaml is required (the deps.yaml change to try)")}
	}
	if *duration <= 0 || *examples < 1 {
		return usageError{errors.New("shadow: --duration and --examples must be positive")}
	}
	if err := l.requireShard("shadow"); err != nil {
		return err
	}
	cand, err := mapping.Load(*candidate)
	if err != nil {
		return usageError{fmt.Errorf("candidate deps.yaml does not load, nothing was streamed:\n%w", err)}
	}
	running, err := daemon.LoadRegistry(l.cfg)
	if err != nil {
		return usageError{fmt.Errorf("the running deps.yaml (%s): %w", l.cfg.Deps, err)}
	}
	var q shadow.TimedQuerier
	if hasQueries(cand) || hasQueries(running) {
		pool, err := shadow.NewReadOnlyPool(ctx, l.cfg.Postgres.URL, 0)
		if err != nil {
			return err
		}
		defer pool.Close()
		q = pool
	}
	ks := shadow.MeasureKeyspace(ctx, daemon.RedisOptions(l.cfg.Redis))
	core := shadow.NewCore(running, cand, q, l.cfg.MaxTxChanges, *examples)
	slot, elapsed, err := shadow.Stream(ctx, shadow.StreamOptions{
		URL: l.cfg.Postgres.URL, Publication: l.cfg.Postgres.Publication, Duration: *duration,
		StatusInterval: l.cfg.Postgres.StatusInterval, Core: core, Logger: l.log.Named("shadow"),
	})
	if errors.Is(err, shadow.ErrNoPublication) {
		return usageError{err}
	}
	if err != nil && elapsed == 0 {
		return err
	}
	rep := core.Aggregator().Report(elapsed, ks)
	rep.Slot, rep.Publication = slot, l.cfg.Postgres.Publication
	if err != nil {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("streaming ended early after %s: %v", elapsed.Round(time.Millisecond), err))
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if jerr := enc.Encode(rep); jerr != nil {
			return jerr
		}
	} else {
		rep.Print(stdout)
	}
	if err != nil {
		return fmt.Errorf("shadow: streaming ended early: %w", err)
	}
	return nil
}
