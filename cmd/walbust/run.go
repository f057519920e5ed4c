package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"

	"github.com/walbust/walbust/checkpoint"
	"github.com/walbust/walbust/internal/lookup"
	"github.com/walbust/walbust/internal/metrics"
	"github.com/walbust/walbust/internal/pipeline"
	"github.com/walbust/walbust/internal/replicas"
	"github.com/walbust/walbust/internal/validate"
	"github.com/walbust/walbust/internal/visibility"
	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication"
)

// daemon is everything run wires together.
type daemon struct {
	*loaded
	store   *checkpoint.File
	inv     *invalidator.Invalidator
	visible *visibility.Checker
	// replicas is nil unless fenced keys are fenced again after replica lag.
	replicas *replicas.Watcher
	querier  mapping.Querier
	metrics  *metrics.Metrics
	reload   *reloader   // owns the registry in use from start on
	tables   *tableState // set by preflight
	// applier is the one way to Redis: the pipeline, resync and the table
	// watcher share it, since an Invalidator applies one batch at a time.
	applier *serialApplier
}

// runCommand streams until SIGINT/SIGTERM: then the batch in flight is
// finished, checkpointed and confirmed, and walbust exits 0.
func runCommand(ctx context.Context, args []string, stderr io.Writer) (err error) {
	l, err := load("run", args, stderr)
	if err != nil {
		return err
	}
	if err := l.requireShard("run"); err != nil {
		return err
	}
	defer shutdownBackstop(ctx, l.cfg.ShutdownTimeout, l.log)()
	defer func() {
		// The daemon's last word goes to the structured log too, so log
		// pipelines see why it stopped.
		if err != nil {
			l.log.Error("exiting", zap.Error(err))
		}
		_ = l.log.Sync()
	}()
	d := &daemon{loaded: l, metrics: metrics.New(version, l.cfg.Postgres.Slot)}
	d.metrics.InitSeries(l.reg.Names())
	d.reload = newReloader(d)
	defer d.reload.stop()
	if d.store, err = checkpoint.Open(l.cfg.Checkpoint.Path); err != nil {
		return err
	}
	ropts := redisOptions(l.cfg.Redis)
	ropts.EventsChannel, ropts.Logger, ropts.OnResult = l.cfg.Events.Channel, l.log.Named("redis"), d.metrics.RedisResult
	ropts.Watermark = protocol.AppliedKey(l.cfg.Postgres.Slot)
	d.inv, err = invalidator.New(ropts)
	if err != nil {
		return usageError{err}
	}
	d.applier = &serialApplier{inv: d.inv}
	defer d.inv.Close()
	d.visible = visibility.NewChecker(l.cfg.Postgres.URL)
	defer d.visible.Close(context.WithoutCancel(ctx))
	if r := l.cfg.Replicas; r.Enabled() {
		opts := replicas.Options{URLs: r.URLs}
		if r.FromPrimary {
			opts.PrimaryURL = l.cfg.Postgres.URL
		}
		d.replicas = replicas.New(opts)
		defer d.replicas.Close(context.WithoutCancel(ctx))
	}
	// Always, even without lookup queries: a reload may add the first one,
	// and the pool connects only on first use.
	pool, err := lookup.New(ctx, lookup.Options{URL: l.cfg.Postgres.URL,
		OnError: func(error) { d.metrics.LookupErrors.Inc() }})
	if err != nil {
		return err
	}
	defer pool.Close()
	d.querier = pool
	if l.cfg.Listen != "" {
		if l.cfg.Debug.Pprof {
			d.metrics.EnableProfiles()
		}
		addr, _, err := d.metrics.Listen(ctx, l.cfg.Listen)
		if err != nil {
			return err
		}
		l.log.Info("serving metrics", zap.String("addr", addr.String()), zap.Bool("pprof", l.cfg.Debug.Pprof))
	}
	if err := d.preflight(ctx); err != nil {
		return stoppedCleanly(ctx, err)
	}
	if err := d.checkRedis(ctx); err != nil {
		return err
	}
	bg, stopBackground := context.WithCancel(ctx)
	defer stopBackground()
	go every(bg, 2*time.Second, d.pingRedis)
	go d.reload.run(bg)
	go every(bg, 15*time.Second, (&slotWatcher{d: d, conn: lazyConn{url: l.cfg.Postgres.URL}}).poll)
	go every(bg, tableCheckInterval, (&tableWatcher{d: d, conn: lazyConn{url: l.cfg.Postgres.URL}}).poll)
	if l.cfg.Postgres.HeartbeatInterval > 0 {
		go every(bg, l.cfg.Postgres.HeartbeatInterval, (&heartbeat{d: d, conn: lazyConn{url: l.cfg.Postgres.URL}}).beat)
	}
	for {
		err := d.stream(ctx)
		if !errors.Is(err, replication.ErrSlotLost) || ctx.Err() != nil {
			return err
		}
		if err := d.slotLost(ctx, err); err != nil {
			return stoppedCleanly(ctx, err)
		}
	}
}

// stream runs one pipeline from the stored checkpoint.
func (d *daemon) stream(ctx context.Context) error {
	stored, err := d.store.Load()
	if err != nil {
		return err
	}
	opts := pipeline.Options{
		Registry: d.reg, Querier: d.querier, Applier: d.applier, Store: d.store, Logger: d.log, Observer: d.metrics, Health: d.metrics,
		TableOIDs:  d.tables.oids,
		Checkpoint: stored, ShutdownGrace: stopGrace(d.cfg.ShutdownTimeout), CheckpointRetry: d.cfg.Checkpoint.RetryTimeout,
		MaxTxChanges: d.cfg.MaxTxChanges, Visibility: d.visible, ReplicaWaitMax: d.cfg.Replicas.WaitMax,
	}
	if d.replicas != nil {
		opts.Replicas = d.replicas // not assigned when nil: a nil *Watcher in the interface is not nil
	}
	p := d.reload.newPipeline(opts)
	src := replication.NewStreamer(replication.Options{
		URL: d.cfg.Postgres.URL, Slot: d.cfg.Postgres.Slot, Publication: d.cfg.Postgres.Publication,
		StatusInterval: d.cfg.Postgres.StatusInterval, Logger: d.log.Named("replication"),
		OnConnected: d.metrics.Connected, OnReport: d.metrics.Reported, SaveIdle: d.saveIdle, BeforeStart: d.recheckSlot,
	}, stored, p)
	d.log.Info("starting", zap.String("version", version), zap.String("shard", d.cfg.Shard), zap.String("slot", d.cfg.Postgres.Slot),
		zap.String("redis_mode", d.cfg.Redis.Mode),
		zap.Stringer("checkpoint_lsn", stored), zap.String("checkpoint", d.store.Path()), zap.Int("tables", len(d.reload.registry().Tables)))
	return p.Run(ctx, src)
}

// preflight refuses to start when streaming could only lose invalidations:
// no slot, a lost slot, or a registry that does not match the database.
func (d *daemon) preflight(ctx context.Context) error {
	conn, err := connectSQL(ctx, d.cfg.Postgres.URL)
	if err != nil {
		return err
	}
	defer closeQuietly(ctx, conn)
	if err := d.checkPublication(ctx, conn); err != nil {
		return err
	}
	problems, err := validate.Registry(ctx, conn, d.reg, d.cfg.Postgres.Publication)
	if err != nil {
		return err
	}
	if problems, err = d.bindTables(ctx, conn, problems); err != nil {
		return err
	}
	if len(problems) > 0 {
		return usageError{fmt.Errorf("deps registry does not match the database (see walbust validate):\n%w", problems)}
	}
	for _, w := range d.reg.Warnings {
		d.log.Warn(w)
	}
	for _, w := range clusterWarnings(d.loaded) {
		d.log.Warn(w)
	}
	if err := d.bindCheckpoint(ctx); err != nil {
		return err
	}
	slot, err := replication.LookupSlot(ctx, conn, d.cfg.Postgres.Slot)
	if errors.Is(err, replication.ErrNoSlot) {
		stored, lerr := d.store.Load()
		if lerr != nil {
			return lerr
		}
		if stored == 0 {
			return usageError{fmt.Errorf("replication slot %q does not exist: run `walbust setup` first", d.cfg.Postgres.Slot)}
		}
		// A checkpoint without its slot: the slot was dropped, or this is a
		// promoted standby that never had it.
		return d.slotLost(ctx, fmt.Errorf("%w: slot %q does not exist but checkpoint %s says walbust streamed from it", replication.ErrSlotLost, d.cfg.Postgres.Slot, stored))
	}
	if err != nil {
		return err
	}
	if slot.WALStatus == "lost" {
		return d.slotLost(ctx, fmt.Errorf("%w: slot %q has wal_status=lost: Postgres removed WAL it still needed", replication.ErrSlotLost, slot.Name))
	}
	if err := d.checkSlotPosition(ctx, slot); err != nil {
		return err
	}
	stored, err := d.store.Load()
	if err != nil {
		return err
	}
	d.log.Info("resuming", zap.Stringer("slot_confirmed_lsn", slot.ConfirmedFlushLSN), zap.Stringer("checkpoint_lsn", stored),
		zap.Stringer("from", max(stored, slot.ConfirmedFlushLSN)))
	return nil
}

// slotLost applies on_slot_loss. With resync it recreates the slot first and
// only then invalidates everything derivable from on_truncate rules, so no
// change falls between the invalidation and the new slot's start.
func (d *daemon) slotLost(ctx context.Context, cause error) error {
	if d.cfg.OnSlotLoss != "resync" {
		if errors.Is(cause, replication.ErrPublicationMissing) {
			return d.publicationLostError(cause)
		}
		return fmt.Errorf("%w\nChanges may have been missed, so caches fed by these tables may be stale. Either set on_slot_loss: resync "+
			"(recreates the slot and applies every table's on_truncate rules), or flush the affected caches, remove the checkpoint file %s "+
			"and run `walbust setup`", cause, d.store.Path())
	}
	if errors.Is(cause, replication.ErrPublicationMissing) {
		if err := d.awaitPublication(ctx); err != nil {
			return err
		}
	}
	d.log.Error("replication slot lost; resyncing: recreating the slot and invalidating everything derived from published tables",
		zap.Error(cause), zap.String("slot", d.cfg.Postgres.Slot))
	conn, err := connectSQL(ctx, d.cfg.Postgres.URL)
	if err != nil {
		return err
	}
	defer closeQuietly(ctx, conn)
	if _, err := replication.DropSlot(ctx, conn, d.cfg.Postgres.Slot); err != nil {
		return err
	}
	lsn, err := replication.CreateSlot(ctx, conn, d.cfg.Postgres.Slot)
	if err != nil {
		return err
	}
	var plan mapping.Plan
	mapping.NewMapper(d.reload.registry(), nil).MapEverything(lsn, &plan)
	for _, p := range plan.Problems {
		d.log.Error("resync cannot invalidate a table's keys; flush them by hand", zap.String("table", p.Table), zap.String("problem", p.Msg))
	}
	st, err := d.applier.ApplyBatch(ctx, lsn, plan.Invalidations())
	if err != nil {
		return fmt.Errorf("resync: %w", err)
	}
	if err := d.store.Save(lsn); err != nil {
		return err
	}
	d.metrics.SlotResyncs.Inc()
	d.log.Warn("resync complete", zap.Stringer("slot_lsn", lsn), zap.Int("patterns", st.Patterns),
		zap.Int("keys_removed_by_patterns", st.PatternMatches), zap.Int("keys", st.Keys))
	return nil
}
