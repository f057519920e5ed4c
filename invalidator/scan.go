package invalidator

import (
	"context"
	"fmt"
	"strings"

	"github.com/walbust/walbust/mapping"
)

// scan applies inv's action to every key matching inv.Key, one SCAN page
// (one pipeline) at a time. SCAN walks the whole keyspace, so its cost grows
// with the number of keys in Redis, not with the number that match.
func (iv *Invalidator) scan(ctx context.Context, inv mapping.Invalidation) (int, error) {
	var cursor uint64
	matched := 0
	for {
		keys, next, err := iv.client.Scan(ctx, cursor, inv.Key, iv.opts.ScanCount).Result()
		if err != nil {
			return matched, fmt.Errorf("scan %q: %w", inv.Key, err)
		}
		pipe := iv.client.Pipeline()
		for _, k := range keys {
			if inv.Aux != (mapping.KeyFormat{}) && isCompanion(inv.Aux, k) {
				continue // a version or stale key is not itself a cache entry
			}
			iv.queue(ctx, pipe, inv, k)
			matched++
		}
		iv.flushUnlink(ctx, pipe)
		if err := execPipeline(ctx, pipe); err != nil {
			return matched, err
		}
		if next == 0 {
			return matched, nil
		}
		cursor = next
	}
}

func isCompanion(f mapping.KeyFormat, key string) bool {
	return len(key) > len(f.Prefix)+len(f.Suffix) && strings.HasPrefix(key, f.Prefix) && strings.HasSuffix(key, f.Suffix)
}
