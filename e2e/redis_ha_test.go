package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/internal/throwaway"
)

// The fault suite's zero-miss check (faultTracker, faultRun.audit) run
// against a Redis Cluster and a Sentinel setup while their master is
// killed mid-stream: writers keep writing and caching, walbust retries the
// batches the failover interrupts, and every key cached before its row's
// last committed write must be gone.

// haRows and haWriters size the workload: modest, so the tests take
// seconds on a shared machine.
const haRows, haWriters = 120, 4

func startRedisCluster(t *testing.T) *throwaway.RedisCluster {
	t.Helper()
	dir, err := os.MkdirTemp("", "walbust-e2e-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := throwaway.StartRedisCluster(ctx, dir, 3, 1)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
	})
	return c
}

func startRedisSentinel(t *testing.T) *throwaway.RedisSentinel {
	t.Helper()
	dir, err := os.MkdirTemp("", "walbust-e2e-sentinel-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := throwaway.StartRedisSentinel(ctx, dir, "cache", 1, 3)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close sentinel setup: %v", err)
		}
	})
	return s
}

// haRun starts walbust and the writers on o's Redis and audits once.
func haRun(t *testing.T, o faultOptions) (*faultRun, func()) {
	t.Helper()
	o.items = haRows + 1
	e := newFaultEnv(t, o)
	tr := newFaultTracker()
	f := &faultRun{t: t, e: e, tr: tr, pace: 3 * time.Second, spare: haRows + 1, faults: map[string]int{}, distinct: map[string]bool{}}
	f.active = e.startStreaming(f.nextName())
	stop := startFaultWriters(e, tr, haWriters, haRows)
	t.Cleanup(stop)
	f.pause()
	f.audit("writes flowing")
	return f, stop
}

// writes is how many commits the writers have had acknowledged so far.
func (f *faultRun) writes() int {
	w, _, _, _, _ := f.tr.counts()
	return w
}

// outage caches the spare row's keys, runs kill, commits a write of the
// spare row while Redis has lost a master, and runs promoted (which waits
// for the failover). It returns how many commits were acknowledged in
// between: at least the spare row's, whose invalidation can only reach
// Redis after the promotion (the writers, slowed by failing cache fills,
// may commit few).
func (f *faultRun) outage(kill, promoted func() error) int {
	f.t.Helper()
	keys := f.e.itemKeys(f.spare, int(f.spare%8))
	f.tr.cache(f.e.ctx, f.e.rdb, "old", keys...)
	before := f.writes()
	if err := kill(); err != nil {
		f.t.Fatal(err)
	}
	start := f.tr.committing()
	f.e.exec(`UPDATE items SET v = v + 1 WHERE id = $1`, f.spare)
	f.tr.committed(start, fmt.Sprintf("update of id=%d while a master was down", f.spare), keys...)
	begin := time.Now()
	if err := promoted(); err != nil {
		f.t.Fatal(err)
	}
	f.t.Logf("failover took %v", time.Since(begin).Round(time.Millisecond))
	return f.writes() - before
}

// finish stops the writers, audits everything, and checks nothing was
// lost. during is how many commits were acknowledged while Redis had no
// master for some slots: their invalidations could only be applied after
// the promotion (by a retry of walbust's, or go-redis's own redirects).
func (f *faultRun) finish(stopWriters func(), retriesBefore, during int) {
	f.t.Helper()
	f.pause()
	stopWriters()
	f.audit("writers stopped")
	writes, unknown, failures, sets, setFailures := f.tr.counts()
	retries := f.active.count(redisRetryMsg) - retriesBefore
	f.t.Logf("writes: %d acknowledged, %d unknown, %d failed attempts; cache fills: %d (%d failed during the failover)", writes, unknown, failures, sets, setFailures)
	f.t.Logf("keys checked: %d checks in %d audits, %d distinct keys, %d on keys cached in the Redis of the moment; missed invalidations: %d",
		f.checks, f.audits, len(f.distinct), f.live, f.missedTotal)
	f.t.Logf("%d commits acknowledged while the master was down; walbust logged %d \"redis unavailable; retrying batch\" warnings (rate-limited) across the failover", during, retries)
	if f.missedTotal > 0 {
		f.t.Errorf("%d missed invalidations (listed above)", f.missedTotal)
	}
	if f.live == 0 {
		f.t.Error("no audit checked a key cached in the live Redis: the test proved nothing")
	}
	if during == 0 {
		f.t.Error("no commit while the master was down: the failover did not happen under a stream of writes")
	}
	if code, took := f.active.term(faultStopBound); code != 0 {
		f.t.Errorf("%s: exit code %d %v after SIGTERM, want 0", f.active.name, code, took)
	}
}

// TestRedisClusterFailover: walbust in cluster mode (delete, so UNLINKs
// grouped per slot) on 3 masters with a replica each; a master is killed
// with kill -9 mid-stream, its replica is promoted, walbust retries until
// it has learnt the new slot map, and the killed node then rejoins as a
// replica. wait_replicas: 1, because Redis replicates asynchronously:
// without it, an UNLINK the master acknowledged just before it died may
// never have reached the replica, and the zero-miss check would be luck.
func TestRedisClusterFailover(t *testing.T) {
	cluster := startRedisCluster(t)
	f, stop := haRun(t, faultOptions{cluster: cluster, redis: "wait_replicas: 1"})
	ctx, cancel := context.WithTimeout(f.e.ctx, 2*time.Minute)
	defer cancel()
	m, err := cluster.MasterWithReplica(ctx)
	if err != nil {
		t.Fatal(err)
	}
	retriesBefore := f.active.count(redisRetryMsg)
	during := f.outage(m.Kill, func() error { return cluster.WaitFailover(ctx, m) })
	// The promoted master has no replica to acknowledge its writes until
	// the killed node is back as one: walbust holds the stream meanwhile.
	f.pause()
	if err := m.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cluster.WaitHealthy(ctx, 1); err != nil {
		t.Fatal(err)
	}
	f.injected("kill -9 of a cluster master, replica promoted, killed master back as its replica")
	f.finish(stop, retriesBefore, during)
}

// clusterStaleDeps: items with the stale action, two keys with a hash tag
// (one script: key and stale copy share a slot) and one without (moved
// with DUMP, RESTORE, UNLINK), which validate warns about.
const clusterStaleDeps = `version: 1
tables:
  public.items:
    action: stale
    stale_ttl: 10m
    keys:
      - "{{item:{id}}}"
      - "grp:{{{grp}}}:items"
      - "grp:{grp}:count"
    on_truncate:
      patterns:
        - "{{item:*}}"
        - "grp:*"
  public.bulk:
    keys:
      - "bulk:{id}"
    on_truncate:
      patterns:
        - "bulk:*"
`

func clusterStaleKeys(id int64, grp int) []string {
	return []string{fmt.Sprintf("{item:%d}", id), fmt.Sprintf("grp:{%d}:items", grp), fmt.Sprintf("grp:%d:count", grp)}
}

// TestRedisClusterStaleWaitReplicas: the stale action (scripts, which the
// promoted replica does not have, and cross-slot moves) with
// wait_replicas: 1. After the kill the promoted master has no replica, so
// no batch writing to it can be confirmed: walbust holds the stream until
// the killed node is back as its replica, and then nothing was lost.
func TestRedisClusterStaleWaitReplicas(t *testing.T) {
	cluster := startRedisCluster(t)
	f, stop := haRun(t, faultOptions{cluster: cluster, deps: clusterStaleDeps, itemKeys: clusterStaleKeys, redis: "wait_replicas: 1"})
	e := f.e
	out, code := e.oneShot(time.Minute, "validate")
	if code != 0 {
		t.Fatalf("validate exited %d:\n%s", code, out)
	}
	if !strings.Contains(out, `warning: `) || !strings.Contains(out, `stale action on "grp:{grp}:count" cannot be atomic`) {
		t.Errorf("validate does not warn that grp:{grp}:count cannot be atomic in cluster mode:\n%s", out)
	}
	for _, tagged := range []string{`"{{item:{id}}}" cannot`, `"grp:{{{grp}}}:items" cannot`, `"{{item:*}}" cannot`} {
		if strings.Contains(out, tagged) {
			t.Errorf("validate warns about %s, which has a hash tag:\n%s", tagged, out)
		}
	}
	t.Logf("validate:\n%s", out)

	ctx, cancel := context.WithTimeout(e.ctx, 2*time.Minute)
	defer cancel()
	m, err := cluster.MasterWithReplica(ctx)
	if err != nil {
		t.Fatal(err)
	}
	retriesBefore := f.active.count(redisRetryMsg)
	during := f.outage(m.Kill, func() error { return cluster.WaitFailover(ctx, m) })
	// The promoted master has no replica to acknowledge: walbust waits.
	e.waitLog(f.active, "wait_replicas requires acknowledged", 1, invalidateTimeout)
	if err := m.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cluster.WaitHealthy(ctx, 1); err != nil {
		t.Fatal(err)
	}
	f.injected("kill -9 of a cluster master; walbust held until it was back as a replica")
	f.finish(stop, retriesBefore, during)

	// The live keys went to their stale copies, by script and by move.
	rdb := e.redisClient()
	defer rdb.Close()
	tagged, moved := countKeys(t, ctx, rdb.(*redis.ClusterClient), "{item:*}:stale"), countKeys(t, ctx, rdb.(*redis.ClusterClient), "grp:*:count:stale")
	t.Logf("stale copies: %d of {item:N} (one script each), %d of grp:N:count (moved across slots)", tagged, moved)
	if tagged == 0 || moved == 0 {
		t.Errorf("stale copies: %d tagged, %d moved; want both", tagged, moved)
	}
}

// countKeys counts the keys matching pattern on every master.
func countKeys(t *testing.T, ctx context.Context, c *redis.ClusterClient, pattern string) int {
	t.Helper()
	var mu sync.Mutex
	n := 0
	err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		iter := m.Scan(ctx, 0, pattern, 1000).Iterator()
		found := 0
		for iter.Next(ctx) {
			found++
		}
		mu.Lock()
		n += found
		mu.Unlock()
		return iter.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestRedisSentinelFailover: walbust in sentinel mode; the master is killed
// with kill -9 mid-stream, the sentinels promote the replica, walbust's
// retries carry the interrupted batches over to it, and the old master
// comes back as a replica. wait_replicas: 1, as in the cluster test.
func TestRedisSentinelFailover(t *testing.T) {
	s := startRedisSentinel(t)
	f, stop := haRun(t, faultOptions{sentinel: s, redis: "wait_replicas: 1"})
	ctx, cancel := context.WithTimeout(f.e.ctx, 2*time.Minute)
	defer cancel()
	old, err := s.Master(ctx)
	if err != nil {
		t.Fatal(err)
	}
	retriesBefore := f.active.count(redisRetryMsg)
	during := f.outage(old.Kill, func() error {
		promoted, err := s.WaitFailover(ctx, old)
		if err == nil {
			t.Logf("kill -9 of master %s: the sentinels promoted %s", old.Addr(), promoted.Addr())
		}
		return err
	})
	// As in the cluster test, wait_replicas holds the stream until the old
	// master is back as the new one's replica.
	f.pause()
	if err := s.RestartAsReplica(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	f.injected("kill -9 of the Sentinel-managed master, replica promoted, old master back as its replica")
	f.finish(stop, retriesBefore, during)
}
