package invalidator

import (
	"context"
	_ "embed" // lua/refresh.lua
	"math/rand/v2"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/walbust/walbust/mapping"
)

//go:embed lua/refresh.lua
var refreshSource string

// refreshScript compares and sets a refreshed key and its LSN key in one
// step (see lua/refresh.lua): an older change never overwrites a newer
// value, so replays and retries are harmless.
var refreshScript = redis.NewScript(refreshSource)

func init() { scripts = append(scripts, refreshScript) }

// crossSlotOnce: the warning about refreshed keys whose LSN key is in
// another cluster slot is given once per process.
var crossSlotOnce sync.Once

// refresh queues the script that applies a Refresh to key.
func (b *batch) refresh(ctx context.Context, inv mapping.Invalidation, key string) error {
	w := inv.Refresh
	if w == nil {
		return b.unlink(ctx, key)
	}
	lkey := inv.Aux.For(key)
	if b.iv.cluster != nil && keySlot(key) != keySlot(lkey) {
		// A script may only touch keys of one slot: without a hash tag the
		// value cannot be compared and set with its LSN. Remove it instead:
		// a miss too many, never a stale value.
		crossSlotOnce.Do(func() {
			b.iv.log.Warn("refreshed key and its LSN key hash to different cluster slots; removing it instead of refreshing (put a hash tag in the key, e.g. {product:42})",
				zap.String("key", key), zap.String("lsn_key", lkey))
		})
		return b.unlink(ctx, key)
	}
	pipe, err := b.pipeFor(ctx, key)
	if err != nil {
		return err
	}
	args := []any{w.Op.String(), inv.Version.String(), jitter(inv.TTL).Milliseconds()}
	switch {
	case w.Op == mapping.RefreshSet, w.Op == mapping.RefreshRemove && w.Negative:
		args = append(args, w.Value)
	}
	refreshScript.EvalSha(ctx, pipe, []string{key, lkey}, args...)
	return nil
}

// jitter spreads a TTL by ±10%, so keys refreshed together do not all
// expire together.
func jitter(ttl time.Duration) time.Duration {
	if ttl <= 0 {
		return ttl
	}
	d := time.Duration(float64(ttl) * (0.9 + 0.2*rand.Float64()))
	return max(d, time.Millisecond)
}
