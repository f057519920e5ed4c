// Package daemon is `walbust run`: it builds the pipeline's parts from the
// configuration, refuses to start when streaming could only lose
// invalidations (preflight), decides what the slot's and the checkpoint's
// positions mean, applies on_slot_loss, and runs the background loops
// (heartbeat, slot, table and publication watchers, SIGHUP reload, the
// metrics server) for as long as it streams. cmd/walbust parses flags,
// loads the configuration, handles signals and calls Run.
package daemon

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/walbust/walbust/checkpoint"
	"github.com/walbust/walbust/internal/config"
	"github.com/walbust/walbust/internal/lookup"
	"github.com/walbust/walbust/internal/metrics"
	"github.com/walbust/walbust/internal/pipeline"
	"github.com/walbust/walbust/internal/replicas"
	"github.com/walbust/walbust/internal/visibility"
	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication"
)

// Options is what Run starts from.
type Options struct {
	Config   *config.Config
	Registry *mapping.Registry // deps.yaml as loaded at start (see LoadRegistry)
	Log      *zap.Logger
	Version  string // walbust's, for the metrics and the start line
}

// UsageError is a mistake in how walbust was configured, or a setup step
// not done: the operator's to fix (cmd/walbust exits 2).
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// daemon is everything run wires together.
type daemon struct {
	cfg     *config.Config
	reg     *mapping.Registry // as loaded at start; reload owns the one in use
	log     *zap.Logger
	version string
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
	// bg runs every background goroutine, and closes what they use only
	// once all of them returned.
	bg *lifetime
}

// Run streams until ctx ends: then the batch in flight is finished,
// checkpointed and confirmed, and Run returns nil.
func Run(ctx context.Context, o Options) (err error) {
	d := &daemon{cfg: o.Config, reg: o.Registry, log: o.Log, version: o.Version, metrics: metrics.New(o.Version, o.Config.Postgres.Slot)}
	d.metrics.InitSeries(d.reg.Names(), actionNames())
	d.reload = newReloader(d)
	defer d.reload.stop()
	// Ended before anything below is closed: every goroutine it started has
	// returned by then.
	d.bg = newLifetime(ctx)
	defer d.bg.end()
	if d.store, err = checkpoint.Open(d.cfg.Checkpoint.Path); err != nil {
		return err
	}
	d.logStarting()
	ropts := RedisOptions(d.cfg.Redis)
	ropts.EventsChannel, ropts.Logger, ropts.OnResult = d.cfg.Events.Channel, d.log.Named("redis"), func(err error) {
		d.metrics.RedisResult(err, errors.Is(err, invalidator.ErrTooFewReplicas))
	}
	ropts.Watermark = protocol.AppliedKey(d.cfg.Postgres.Slot)
	// With replicas the settled position waits for the re-fence.
	ropts.Settled, ropts.SettleLater = protocol.SettledKey(d.cfg.Postgres.Slot), d.cfg.Replicas.Enabled()
	d.inv, err = invalidator.New(ropts)
	if err != nil {
		return UsageError{err}
	}
	d.applier = &serialApplier{inv: d.inv}
	d.bg.onEnd(func() { _ = d.inv.Close() })
	d.visible = visibility.NewChecker(d.cfg.Postgres.URL)
	d.bg.onEnd(func() { d.visible.Close(context.WithoutCancel(ctx)) })
	if r := d.cfg.Replicas; r.Enabled() {
		opts := replicas.Options{URLs: r.URLs}
		if r.FromPrimary {
			opts.PrimaryURL = d.cfg.Postgres.URL
		}
		d.replicas = replicas.New(opts)
		d.bg.onEnd(func() { d.replicas.Close(context.WithoutCancel(ctx)) })
	}
	// Always, even without lookup queries: a reload may add the first one,
	// and the pool connects only on first use.
	pool, err := lookup.New(ctx, lookup.Options{URL: d.cfg.Postgres.URL, MaxConns: pipeline.RefreshConcurrency, OnError: d.metrics.LookupFailed})
	if err != nil {
		return err
	}
	d.bg.onEnd(pool.Close)
	d.querier = pool
	if d.cfg.Listen != "" {
		if d.cfg.Debug.Pprof {
			d.metrics.EnableProfiles()
		}
		addr, done, err := d.metrics.Listen(d.bg.ctx, d.cfg.Listen)
		if err != nil {
			return err
		}
		d.bg.wait(done)
		d.log.Info("serving metrics", zap.String("addr", addr.String()), zap.Bool("pprof", d.cfg.Debug.Pprof))
	}
	if err := d.preflight(ctx); err != nil {
		return stoppedCleanly(ctx, err)
	}
	if err := d.checkRedis(ctx); err != nil {
		return err
	}
	url := d.cfg.Postgres.URL
	d.bg.every(2*time.Second, d.pingRedis)
	d.bg.run(d.reload.run)
	d.bg.every(15*time.Second, (&slotWatcher{d: d, conn: lazyConn{url: url}}).poll)
	d.bg.every(tableCheckInterval, (&tableWatcher{d: d, conn: lazyConn{url: url}}).poll)
	if d.cfg.Postgres.HeartbeatInterval > 0 {
		d.bg.every(d.cfg.Postgres.HeartbeatInterval, (&heartbeat{d: d, conn: lazyConn{url: url}}).beat)
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

// actionNames are deps.yaml's actions, for the metrics' series.
func actionNames() []string {
	var out []string
	for a := mapping.Delete; a <= mapping.Refresh; a++ {
		out = append(out, a.String())
	}
	return out
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
	return p.Run(ctx, src)
}

// logStarting is the first line of a run: what it is and what it starts
// from, before preflight says where it resumes ("resuming") and the
// streamer where streaming begins ("streaming").
func (d *daemon) logStarting() {
	fields := []zap.Field{zap.String("version", d.version), zap.String("shard", d.cfg.Shard), zap.String("slot", d.cfg.Postgres.Slot),
		zap.String("publication", d.cfg.Postgres.Publication), zap.String("redis_mode", d.cfg.Redis.Mode),
		zap.String("checkpoint", d.store.Path()), zap.Int("tables", len(d.reg.Tables))}
	if stored, err := d.store.Load(); err != nil {
		fields = append(fields, zap.NamedError("checkpoint_error", err)) // preflight reports it
	} else {
		fields = append(fields, zap.Stringer("checkpoint_lsn", stored))
	}
	d.log.Info("starting", fields...)
}
