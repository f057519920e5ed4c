package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/walbust/walbust/internal/throwaway"
)

// In the HA modes wait_replicas defaults to 1: a failover cannot lose an
// acknowledged invalidation, and a master without a replica in sync holds
// the stream, visibly; validate warns when the topology cannot satisfy it.

// TestRedisSentinelWaitReplicasDefault: sentinel mode, wait_replicas not
// set. With the replica down, validate warns and walbust holds the batch
// it cannot confirm, not ready with the reason; with the replica back it
// confirms it and is ready again.
func TestRedisSentinelWaitReplicasDefault(t *testing.T) {
	dir, err := os.MkdirTemp("", "walbust-e2e-sentinel-wait-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := throwaway.StartRedisSentinel(ctx, dir, "cache", 1, 1)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	master, err := s.Master(ctx)
	if err != nil {
		t.Fatal(err)
	}
	replica := s.Data()[1]

	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	e.opsUseRedis(master.Client())
	e.opsWriteConfig(opsConfig{redisURL: s.URL(), heartbeat: "0s",
		redisExtra: []string{"mode: sentinel", "sentinel_master: " + s.MasterName()}})
	out, code := e.walbust("validate")
	if code != 0 || strings.Contains(out, "wait_replicas") {
		t.Errorf("validate with the replica in sync exited %d, want 0 without a wait_replicas warning:\n%s", code, out)
	}
	base := e.opsStartServing()
	e.cache("product:1")
	e.exec("UPDATE products SET price_cents = 1 WHERE id = 1")
	e.waitGone("product:1")

	if err := replica.Kill(); err != nil {
		t.Fatal(err)
	}
	mc := master.Client()
	defer mc.Close()
	opsWithin(t, startTimeout, func() (bool, string) {
		info, err := mc.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "connected_slaves:0"), fmt.Sprintf("the master still lists its replica (%v):\n%s", err, info)
	})
	out, code = e.walbust("validate")
	if code != 0 {
		t.Errorf("validate exited %d, want 0 (a warning is not a problem):\n%s", code, out)
	}
	wantAll(t, "validate with the replica down", out, `warning: redis master "cache" has 0 replica(s) in sync but redis.wait_replicas is 1`)

	e.exec("UPDATE products SET price_cents = 2 WHERE id = 2")
	opsWithin(t, invalidateTimeout, func() (bool, string) {
		code, body, err := opsGet(base + "/readyz")
		return err == nil && code == 503 && strings.Contains(body, "redis replicas behind") && strings.Contains(body, "wait_replicas"),
			fmt.Sprintf("GET /readyz = %d %q (%v), want 503 saying the redis replicas are behind", code, strings.TrimSpace(body), err)
	})
	// The periodic PING (every 2s), which the master answers, must not make
	// walbust ready while the batch is held: watch over a few of them.
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if code, body, err := opsGet(base + "/readyz"); err != nil || code != 503 {
			t.Fatalf("GET /readyz = %d %q (%v) while the batch is held, want 503", code, body, err)
		}
	}
	if !strings.Contains(e.log(), "redis replicas behind wait_replicas; holding the stream") {
		t.Error(`walbust did not log "redis replicas behind wait_replicas; holding the stream"`)
	}

	if err := s.RestartAsReplica(ctx, replica); err != nil {
		t.Fatal(err)
	}
	opsWithin(t, startTimeout, func() (bool, string) {
		code, body, err := opsGet(base + "/readyz")
		return err == nil && code == 200, fmt.Sprintf("GET /readyz = %d %q (%v), want 200 once the replica is back", code, strings.TrimSpace(body), err)
	})
	e.cache("product:3")
	e.exec("UPDATE products SET price_cents = 3 WHERE id = 3")
	e.waitGone("product:3")
}

// TestRedisClusterValidateWaitReplicas: a cluster whose masters have no
// replicas cannot satisfy the default wait_replicas 1, and validate says
// so for each master; an explicit 0 gets the failover warning instead.
func TestRedisClusterValidateWaitReplicas(t *testing.T) {
	dir, err := os.MkdirTemp("", "walbust-e2e-cluster-wait-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := throwaway.StartRedisCluster(ctx, dir, 3, 0)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	e := newEnv(t, envOptions{noStart: true})
	e.opsWriteConfig(opsConfig{redisURL: c.URL(), redisExtra: []string{"mode: cluster"}})
	out, code := e.walbust("validate")
	if code != 0 {
		t.Errorf("validate exited %d, want 0: warnings are not problems", code)
	}
	wantAll(t, "validate", out, "has 0 replica(s) in sync but redis.wait_replicas is 1")
	if n := strings.Count(out, "has 0 replica(s) in sync"); n != 3 {
		t.Errorf("validate warns about %d masters, want 3:\n%s", n, out)
	}
	e.opsWriteConfig(opsConfig{redisURL: c.URL(), redisExtra: []string{"mode: cluster", "wait_replicas: 0"}})
	out, _ = e.walbust("validate")
	wantAll(t, "validate with wait_replicas: 0", out, "redis.wait_replicas is 0 in cluster mode", "can be missing on the replica promoted")
	if strings.Contains(out, "replica(s) in sync") {
		t.Errorf("validate with wait_replicas: 0 warns about replicas in sync:\n%s", out)
	}
}
