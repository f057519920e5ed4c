package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/walbust/walbust/cacheaside"
	"github.com/walbust/walbust/internal/daemon"
	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

// waitCommand waits until walbust has applied (and, with replicas,
// re-fenced) every change up to --lsn, for scripts that write and then
// read through the cache: exit 0 once applied, 1 on timeout (saying where
// walbust is), 2 on a usage mistake.
func waitCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("wait", `Usage: walbust wait --lsn LSN [--timeout 30s]

Waits until walbust has applied (and, with replicas:, re-fenced) every change up to LSN, e.g.
the pg_current_wal_insert_lsn() read after a COMMIT: then a read through the cache sees that
write. Exit 0 once applied, 1 on timeout (saying where walbust is), 2 on a usage mistake.`, stderr)
	lsnText := fs.String("lsn", "", "the LSN to wait for (pg_lsn text, e.g. from SELECT pg_current_wal_insert_lsn() after COMMIT)")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long (exit 1)")
	l, err := loadWith(fs, args, stderr)
	if err != nil {
		return err
	}
	if err := l.requireShard("wait"); err != nil {
		return err
	}
	if *lsnText == "" {
		return usageError{errors.New("wait: --lsn is required")}
	}
	lsn, err := wal.ParseLSN(*lsnText)
	if err != nil {
		return usageError{fmt.Errorf("wait: --lsn %q: %w", *lsnText, err)}
	}
	if *timeout <= 0 {
		return usageError{fmt.Errorf("wait: --timeout %v: must be positive", *timeout)}
	}
	probe, err := invalidator.NewProbe(daemon.RedisOptions(l.cfg.Redis))
	if err != nil {
		return usageError{err}
	}
	defer probe.Close()
	channel := l.cfg.Events.Channel
	if channel == "" {
		channel = "-"
	}
	c, err := cacheaside.New(probe.Client, cacheaside.Options{Wait: cacheaside.WaitOptions{Slot: l.cfg.Postgres.Slot, Channel: channel}})
	if err != nil {
		return err
	}
	defer c.Close()
	wctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	werr := c.WaitApplied(wctx, lsn)
	if werr == nil {
		fmt.Fprintf(stdout, "applied: %s (after %v)\n", lsn, time.Since(start).Round(time.Millisecond))
		return nil
	}
	key := protocol.SettledKey(l.cfg.Postgres.Slot)
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer rcancel()
	cur, found, rerr := c.Applied(rctx)
	var where string
	switch {
	case rerr != nil:
		where = fmt.Sprintf("cannot read walbust's position (redis %s): %v", key, rerr)
	case !found:
		where = fmt.Sprintf("walbust has recorded no position yet (redis %s missing): is walbust running on slot %s?", key, l.cfg.Postgres.Slot)
	default:
		where = fmt.Sprintf("walbust's applied position is %s (redis %s), %d bytes behind", cur, key, max(int64(lsn)-int64(cur), 0))
	}
	if ctx.Err() != nil {
		return fmt.Errorf("wait for %s: interrupted; %s", lsn, where)
	}
	return fmt.Errorf("wait for %s: not applied within %v; %s", lsn, *timeout, where)
}
