package main

import (
	"context"
	"io"

	"go.uber.org/zap"

	"github.com/walbust/walbust/internal/daemon"
)

// runCommand streams until SIGINT/SIGTERM: then the batch in flight is
// finished, checkpointed and confirmed, and walbust exits 0.
func runCommand(ctx context.Context, args []string, stderr io.Writer) (err error) {
	l, err := load("run", `Usage: walbust run [--config walbust.yaml] [--shard NAME]

Streams changes from the replication slot and invalidates the cache keys deps.yaml derives
from them, until SIGINT/SIGTERM (then the batch in flight is finished and confirmed, exit 0).
SIGHUP reloads deps.yaml.`, args, stderr)
	if err != nil {
		return err
	}
	if err := l.requireShard("run"); err != nil {
		return err
	}
	defer daemon.ShutdownBackstop(ctx, l.cfg.ShutdownTimeout, l.log)()
	defer func() {
		// The daemon's last word goes to the structured log too, so log
		// pipelines see why it stopped.
		if err != nil {
			l.log.Error("exiting", zap.Error(err))
		}
		_ = l.log.Sync()
	}()
	return daemon.Run(ctx, daemon.Options{Config: l.cfg, Registry: l.reg, Log: l.log, Version: version})
}
