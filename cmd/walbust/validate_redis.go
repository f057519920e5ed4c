package main

import (
	"context"
	"fmt"
	"time"

	"github.com/walbust/walbust/internal/config"
	"github.com/walbust/walbust/internal/daemon"
	"github.com/walbust/walbust/invalidator"
)

// replicaWarnings are validate's warnings about redis.wait_replicas: a
// topology that cannot satisfy it (walbust would hold the stream), or an
// HA mode that does not wait (a failover can lose an acknowledged
// invalidation).
func replicaWarnings(ctx context.Context, r config.Redis) []string {
	ha := r.Mode == config.ModeSentinel || r.Mode == config.ModeCluster
	if r.WaitReplicas == 0 {
		if !ha {
			return nil
		}
		return []string{fmt.Sprintf("redis.wait_replicas is 0 in %s mode: an invalidation a master acknowledged just before it died can be "+
			"missing on the replica promoted in its place, and the stale value it removed is served again; "+
			"remove the setting to get this mode's default, 1", r.Mode)}
	}
	iv, err := invalidator.New(daemon.RedisOptions(r))
	if err != nil {
		return []string{fmt.Sprintf("cannot check redis.wait_replicas against the Redis topology: %v", err)}
	}
	defer iv.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	masters, err := iv.Replicas(ctx)
	if err != nil {
		return []string{fmt.Sprintf("cannot check redis.wait_replicas against the Redis topology: %v", err)}
	}
	var out []string
	for _, m := range masters {
		if m.Replicas < r.WaitReplicas {
			out = append(out, fmt.Sprintf("redis master %s has %d replica(s) in sync but redis.wait_replicas is %d: walbust will hold the stream "+
				"from the first batch written to it (/readyz: \"redis replicas behind\") until it has %d; add replicas, or lower redis.wait_replicas "+
				"at the risk of losing acknowledged invalidations in a failover", m.Addr, m.Replicas, r.WaitReplicas, r.WaitReplicas))
		}
	}
	return out
}
