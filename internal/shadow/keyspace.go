package shadow

import (
	"context"
	"time"

	"github.com/walbust/walbust/invalidator"
)

// MeasureKeyspace reads DBSIZE of every master of the configured Redis:
// read-only, the one command shadow sends to Redis. An unreachable Redis
// makes the keyspace (and so SCAN costs) unknown, not an error.
func MeasureKeyspace(ctx context.Context, opts invalidator.Options) Keyspace {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	probe, err := invalidator.NewProbe(opts)
	if err != nil {
		return Keyspace{Error: err.Error()}
	}
	defer probe.Close()
	masters, err := probe.Masters(ctx)
	if err != nil {
		return Keyspace{Error: "redis not reachable: " + err.Error()}
	}
	ks := Keyspace{Known: true, PerMaster: map[string]int64{}}
	for addr, c := range masters {
		n, err := c.DBSize(ctx).Result()
		if err != nil {
			return Keyspace{Error: "redis not reachable: DBSIZE on " + addr + ": " + err.Error()}
		}
		ks.PerMaster[addr] = n
		ks.Keys += n
	}
	return ks
}
