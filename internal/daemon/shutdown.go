package daemon

import (
	"context"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// ShutdownBackstop ends the process once a stop has taken timeout, whatever
// state walbust is in: a supervisor's stop must never hang. Exiting then
// loses nothing: only saved positions were ever acknowledged, so whatever
// was in flight is replayed at the next start. disarm is called when run
// returns by itself.
func ShutdownBackstop(ctx context.Context, timeout time.Duration, log *zap.Logger) (disarm func()) {
	var mu sync.Mutex
	var timer *time.Timer
	disarmed := false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if disarmed {
			return
		}
		timer = time.AfterFunc(timeout, func() {
			log.Error("stop did not finish within shutdown_timeout; exiting now (what was not acknowledged is replayed at the next start)",
				zap.Duration("shutdown_timeout", timeout))
			_ = log.Sync()
			os.Exit(1)
		})
	})
	return func() {
		stop()
		mu.Lock()
		defer mu.Unlock()
		disarmed = true
		if timer != nil {
			timer.Stop()
		}
	}
}

// stopGrace is how much of shutdown_timeout the batch in flight may use;
// the rest is for reporting the final position to Postgres and closing.
func stopGrace(timeout time.Duration) time.Duration {
	return timeout - min(5*time.Second, timeout/4)
}
