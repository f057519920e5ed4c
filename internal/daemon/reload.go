package daemon

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/walbust/walbust/internal/pipeline"
	"github.com/walbust/walbust/internal/validate"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication"
)

// reloader applies SIGHUP: it reads deps.yaml again, checks it against the
// live database as preflight does, and hands it to the streaming pipeline,
// which switches at the next transaction's begin. On any problem the
// running registry stays. walbust.yaml is not reloaded.
type reloader struct {
	d    *daemon
	hups chan os.Signal

	mu  sync.Mutex
	reg *mapping.Registry  // in use
	p   *pipeline.Pipeline // the pipeline streaming now, if any
}

// newReloader takes SIGHUP over at once (its default action ends the
// process); signals that come before run are kept and applied then.
func newReloader(d *daemon) *reloader {
	r := &reloader{d: d, hups: make(chan os.Signal, 1), reg: d.reg}
	signal.Notify(r.hups, syscall.SIGHUP)
	return r
}

func (r *reloader) stop() { signal.Stop(r.hups) }

// run reloads on every SIGHUP until ctx ends. Signals that come while a
// reload is being checked coalesce into one more reload.
func (r *reloader) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.hups:
			r.reload(ctx)
		}
	}
}

func (r *reloader) reload(ctx context.Context) {
	log := r.d.log.With(zap.String("deps", r.d.cfg.Deps))
	log.Info("SIGHUP: reloading the deps registry")
	reg, err := r.check(ctx)
	r.d.metrics.RegistryReloaded(err)
	if err != nil {
		log.Error("deps registry reload refused; the running registry stays in use", zap.Error(err))
		return
	}
	r.mu.Lock()
	r.reg = reg
	if r.p != nil {
		r.p.SwapRegistry(reg)
	}
	r.mu.Unlock()
	r.d.metrics.InitSeries(reg.Names(), actionNames())
	for _, w := range reg.Warnings {
		log.Warn(w)
	}
	log.Info("deps registry reloaded; it applies from the next transaction", zap.Int("tables", len(reg.Tables)), zap.Strings("names", reg.Names()))
}

// check loads deps.yaml and validates it against the database. A table the
// publication does not publish needs `walbust setup`, which run never does
// itself: it changes what every consumer of the publication receives.
func (r *reloader) check(ctx context.Context) (*mapping.Registry, error) {
	reg, err := LoadRegistry(r.d.cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := connectSQL(ctx, r.d.cfg.Postgres.URL)
	if err != nil {
		return nil, fmt.Errorf("cannot check deps.yaml against the database: %w", err)
	}
	defer closeQuietly(ctx, conn)
	pub := r.d.cfg.Postgres.Publication
	problems, err := validate.Registry(ctx, conn, reg, pub)
	if err != nil {
		return nil, fmt.Errorf("cannot check deps.yaml against the database: %w", err)
	}
	published, err := replication.PublishedTables(ctx, conn, pub)
	if err != nil {
		return nil, fmt.Errorf("cannot check deps.yaml against the database: %w", err)
	}
	var unpublished []string
	for _, t := range reg.Names() {
		if !slices.Contains(published, t) {
			unpublished = append(unpublished, t)
		}
	}
	if len(unpublished) > 0 {
		return nil, fmt.Errorf("%s names %s, which publication %q does not publish, so their changes would never reach walbust: "+
			"run `walbust setup` first (it adds them to the publication), then reload again (SIGHUP):\n%w", reg.File, strings.Join(unpublished, ", "), pub, problems)
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%s does not match the database (see `walbust validate`):\n%w", reg.File, problems)
	}
	return reg, nil
}

// registry is the registry in use.
func (r *reloader) registry() *mapping.Registry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reg
}

// newPipeline builds a pipeline over the registry in use and keeps it to
// pass later reloads on; under the lock, so no reload falls in between.
func (r *reloader) newPipeline(opts pipeline.Options) *pipeline.Pipeline {
	r.mu.Lock()
	defer r.mu.Unlock()
	opts.Registry = r.reg
	r.p = pipeline.New(opts)
	return r.p
}
