package invalidator

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// redisLogger routes go-redis's own messages (pool dial failures and the
// like) into walbust's structured log, so stderr stays one JSON object per
// line during an outage, exactly when operators read it.
// It is rate limited: during an outage the pool retries dials several
// times a second, and the invalidator already logs the outage itself.
type redisLogger struct {
	log  *zap.Logger
	mu   sync.Mutex
	last time.Time
	held int
}

func (l *redisLogger) Printf(_ context.Context, format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Since(l.last) < 10*time.Second {
		l.held++
		return
	}
	l.log.Warn(strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "), zap.Int("suppressed_since_last", l.held))
	l.last, l.held = time.Now(), 0
}
