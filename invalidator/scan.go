package invalidator

import (
	"context"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/mapping"
)

// scan applies inv's action to every key matching inv.Key on every master
// (a cluster's keys are spread over its masters), one SCAN page (one
// pipeline) at a time. SCAN walks the whole keyspace, so its cost grows
// with the number of keys in Redis, not with the number that match.
func (iv *Invalidator) scan(ctx context.Context, inv mapping.Invalidation) (int, error) {
	nodes, err := iv.masters(ctx)
	if err != nil {
		return 0, err
	}
	matched := 0
	// One master after another: the batch buffers are not shared.
	for _, node := range nodes {
		n, err := iv.scanNode(ctx, node, inv)
		matched += n
		if err != nil {
			return matched, err
		}
	}
	return matched, nil
}

func (iv *Invalidator) scanNode(ctx context.Context, node redis.UniversalClient, inv mapping.Invalidation) (int, error) {
	var cursor uint64
	matched := 0
	for {
		keys, next, err := node.Scan(ctx, cursor, inv.Key, iv.opts.ScanCount).Result()
		if err != nil {
			return matched, fmt.Errorf("scan %q: %w", inv.Key, err)
		}
		b := iv.newBatch()
		for _, k := range keys {
			if inv.Aux != (mapping.KeyFormat{}) && isCompanion(inv.Aux, k) {
				continue // a version or stale key is not itself a cache entry
			}
			if err := b.queue(ctx, inv, k); err != nil {
				return matched, err
			}
			matched++
		}
		if err := b.exec(ctx); err != nil {
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
