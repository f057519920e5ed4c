package daemon

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/walbust/walbust/internal/config"
	"github.com/walbust/walbust/internal/redischeck"
	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
)

// redisCheckTimeout bounds one round of Redis checks.
const redisCheckTimeout = 15 * time.Second

// redisWaitLog is how often run repeats that Redis is still unusable.
const redisWaitLog = 10 * time.Second

// RedisOptions is how every command reaches Redis: one place, so run and
// validate connect alike (same mode, TLS files and credentials).
func RedisOptions(r config.Redis) invalidator.Options {
	return invalidator.Options{Mode: r.Mode, URL: r.URL, SentinelMaster: r.SentinelMaster,
		CAFile: r.CAFile, CertFile: r.CertFile, KeyFile: r.KeyFile, WaitReplicas: r.WaitReplicas}
}

// RedisCheck checks that Redis answers and lets walbust run every command
// reg needs: run's preflight and validate's.
func RedisCheck(ctx context.Context, cfg *config.Config, reg *mapping.Registry) redischeck.Report {
	ctx, cancel := context.WithTimeout(ctx, redisCheckTimeout)
	defer cancel()
	r := cfg.Redis
	return redischeck.Check(ctx, redischeck.Options{Registry: reg, Redis: invalidator.Options{
		Mode: r.Mode, URL: r.URL, SentinelMaster: r.SentinelMaster, CAFile: r.CAFile,
		WaitReplicas: r.WaitReplicas, EventsChannel: cfg.Events.Channel, Watermark: protocol.AppliedKey(cfg.Postgres.Slot)}})
}

func (d *daemon) redisCheck(ctx context.Context) redischeck.Report {
	return RedisCheck(ctx, d.cfg, d.reg)
}

// checkRedis is run's Redis preflight: problems stop it; while Redis is
// unusable it streams anyway (changes wait in the slot, batches retry)
// and says so every redisWaitLog until Redis answers, then checks again.
func (d *daemon) checkRedis(ctx context.Context) error {
	rep := d.redisCheck(ctx)
	if rep.Unreachable == nil {
		return d.reportRedis(rep)
	}
	d.log.Error("redis is unusable; streaming anyway, holding changes until it answers", zap.String("cause", rep.Unreachable.Error()))
	d.bg.run(func(ctx context.Context) {
		start, lastLog := time.Now(), time.Now()
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			rep := d.redisCheck(ctx)
			if ctx.Err() != nil {
				return
			}
			if rep.Unreachable == nil {
				d.log.Info("redis answers now", zap.Duration("after", time.Since(start).Round(time.Second)))
				if err := d.reportRedis(rep); err != nil {
					d.log.Error("redis checks failed: batches will fail until this is fixed", zap.Error(err))
				}
				return
			}
			if time.Since(lastLog) >= redisWaitLog {
				d.log.Error("redis is still unusable; waiting, holding changes", zap.String("cause", rep.Unreachable.Error()),
					zap.Duration("waiting", time.Since(start).Round(time.Second)))
				lastLog = time.Now()
			}
		}
	})
	return nil
}

func (d *daemon) reportRedis(rep redischeck.Report) error {
	for _, w := range rep.Warnings {
		d.log.Warn(w)
	}
	if len(rep.Problems) > 0 {
		msg := "redis is not set up for walbust (see walbust validate):"
		for _, p := range rep.Problems {
			msg += "\n" + p
		}
		return UsageError{fmt.Errorf("%s", msg)}
	}
	d.log.Info("redis checked", zap.String("redis", rep.Summary))
	return nil
}
