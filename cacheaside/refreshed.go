package cacheaside

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

// Refreshed is a key under walbust's refresh action (deps.yaml action:
// refresh), as GetRefreshed read it.
type Refreshed struct {
	// Value is exactly what the key holds: the value walbust wrote (the
	// row as JSON, a template, a query's result, or the rule's negative
	// marker), or what a reader cached with SET NX.
	Value []byte
	// LSN is the commit LSN of Value; 0 when walbust has not written it
	// (a reader's fill).
	LSN wal.LSN
	// Stale: the refresh of a later change failed (its value query erred
	// or timed out), so Value is older than that change. walbust keeps it
	// until its TTL or the next refresh that works. Treat it as a miss, or
	// serve it and refresh in the background.
	Stale bool
	// StaleLSN is the newest change whose refresh failed, when Stale.
	StaleLSN wal.LSN
}

// ErrNoHashTag: on a Redis Cluster, a refreshed key and its LSN key share
// a slot only when the key has a hash tag ("{product:42}"); without one,
// walbust does not refresh the key at all (it removes it instead, and
// walbust validate warns about the rule).
var ErrNoHashTag = errors.New("cacheaside: the key has no hash tag, so it and its LSN key are in different cluster slots")

// GetRefreshed reads a key walbust refreshes and its LSN key
// (protocol.RefreshLSNKey) in one round trip, MGET key key:lsn. found is
// false when the key is absent (never cached, deleted by walbust, or
// expired). It neither loads nor fills: fill a miss with SET key value NX
// PX ttl, so the fill never replaces a value walbust wrote meanwhile. On
// a Cluster client a key without a hash tag is refused with ErrNoHashTag
// (before any round trip).
func (c *Client) GetRefreshed(ctx context.Context, key string) (r Refreshed, found bool, err error) {
	if _, cluster := c.rdb.(*redis.ClusterClient); cluster && !protocol.HasHashTag(key) {
		return Refreshed{}, false, fmt.Errorf("cacheaside: get refreshed %q: %w (give the deps.yaml key a hash tag, e.g. \"{{product:{id}}}\")", key, ErrNoHashTag)
	}
	vals, err := c.rdb.MGet(ctx, key, protocol.RefreshLSNKey(key)).Result()
	if err != nil {
		return Refreshed{}, false, fmt.Errorf("cacheaside: get refreshed %q: %w", key, err)
	}
	v, ok := vals[0].(string)
	if !ok {
		return Refreshed{}, false, nil
	}
	mark, _ := vals[1].(string)
	m := protocol.ParseRefreshMark(mark)
	return Refreshed{Value: []byte(v), LSN: m.LSN, Stale: m.Stale, StaleLSN: m.StaleLSN}, true, nil
}
