package invalidator

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/internal/throwaway"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

// testDir is a directory removed when the test ends.
func testDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "walbust-invalidator-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newInvalidator(t *testing.T, opts Options) *Invalidator {
	t.Helper()
	iv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { iv.Close() })
	return iv
}

// TestCluster applies batches to a real 3-master cluster (each master with
// a replica) and checks every action landed on the right node: multi-key
// UNLINKs never span slots, scripts run where their keys live, a stale key
// and its stale copy in different slots are moved without a script, and
// patterns are scanned on every master.
func TestCluster(t *testing.T) {
	needRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := throwaway.StartRedisCluster(ctx, filepath.Join(testDir(t), "cluster"), 3, 1)
	if err != nil {
		t.Fatalf("cannot test cluster mode without a cluster: %v", err)
	}
	defer c.Close()
	rdb := c.Client()
	defer rdb.Close()
	iv := newInvalidator(t, Options{Mode: Cluster, URL: c.URL()})

	t.Run("slots match CLUSTER KEYSLOT", func(t *testing.T) {
		for i := range 300 {
			key := fmt.Sprintf("k:%d", i)
			if i%3 == 0 {
				key = fmt.Sprintf("{t%d}:x", i)
			}
			want, err := rdb.ClusterKeySlot(ctx, key).Result()
			if err != nil {
				t.Fatal(err)
			}
			if got := keySlot(key); int64(got) != want {
				t.Errorf("keySlot(%q) = %d, CLUSTER KEYSLOT says %d", key, got, want)
			}
		}
	})

	t.Run("watermark after a batch across slots", func(t *testing.T) {
		key := protocol.AppliedKey("cluster_slot")
		wiv := newInvalidator(t, Options{Mode: Cluster, URL: c.URL(), Watermark: key})
		var invs []mapping.Invalidation
		for i := range 100 {
			invs = append(invs, mapping.Invalidation{Action: mapping.Delete, Key: "wm:" + strconv.Itoa(i)})
		}
		for _, tt := range []struct {
			lsn  wal.LSN
			invs []mapping.Invalidation
		}{{0x16B3748, invs}, {0x16B4000, nil}} {
			if _, err := wiv.ApplyBatch(ctx, tt.lsn, tt.invs); err != nil {
				t.Fatal(err)
			}
			if v := rdb.Get(ctx, key).Val(); v != tt.lsn.String() {
				t.Errorf("%s holds %q after the batch ending at %s", key, v, tt.lsn)
			}
		}
	})

	t.Run("one batch across every slot", func(t *testing.T) {
		flushCluster(t, ctx, rdb)
		var invs []mapping.Invalidation
		var deleted []string
		for i := range 3000 {
			k := "del:" + strconv.Itoa(i)
			deleted = append(deleted, k)
			invs = append(invs, mapping.Invalidation{Action: mapping.Delete, Key: k})
		}
		stale := mapping.KeyFormat{Suffix: ":stale"}
		version := mapping.KeyFormat{Suffix: ":version"}
		for i := range 50 {
			invs = append(invs,
				mapping.Invalidation{Action: mapping.Bump, Key: "prod:" + strconv.Itoa(i), Version: 1000, Aux: version},
				mapping.Invalidation{Action: mapping.Stale, Key: fmt.Sprintf("{cfg:%d}", i), Aux: stale, TTL: time.Minute},
				mapping.Invalidation{Action: mapping.Stale, Key: fmt.Sprintf("plain:%d", i), Aux: stale, TTL: time.Minute},
			)
		}
		pipe := rdb.Pipeline()
		for _, k := range deleted {
			pipe.Set(ctx, k, "v", 0)
		}
		for i := range 50 {
			pipe.Set(ctx, fmt.Sprintf("{cfg:%d}", i), "cfg-"+strconv.Itoa(i), 0)
			pipe.HSet(ctx, fmt.Sprintf("plain:%d", i), "f", "plain-"+strconv.Itoa(i))
			pipe.Set(ctx, fmt.Sprintf("prod:%d:version", i), "999", 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		st, err := iv.Apply(ctx, invs)
		if err != nil {
			t.Fatal(err)
		}
		if st.Attempts != 1 || st.Keys != len(invs) {
			t.Errorf("stats %+v, want 1 attempt (no CROSSSLOT retry) and %d keys", st, len(invs))
		}
		if n := countExisting(t, ctx, rdb, deleted); n != 0 {
			t.Errorf("%d of %d deleted keys still exist", n, len(deleted))
		}
		for i := range 50 {
			if v := rdb.Get(ctx, fmt.Sprintf("prod:%d:version", i)).Val(); v != "1000" {
				t.Errorf("prod:%d:version = %q, want 1000", i, v)
			}
			tagged, plain := fmt.Sprintf("{cfg:%d}", i), fmt.Sprintf("plain:%d", i)
			if rdb.Exists(ctx, tagged, plain).Val() != 0 {
				t.Errorf("%s or %s still live after stale", tagged, plain)
			}
			if v := rdb.Get(ctx, tagged+":stale").Val(); v != "cfg-"+strconv.Itoa(i) {
				t.Errorf("%s:stale = %q (script, same slot)", tagged, v)
			}
			if v := rdb.HGet(ctx, plain+":stale", "f").Val(); v != "plain-"+strconv.Itoa(i) {
				t.Errorf("%s:stale field f = %q (moved across slots)", plain, v)
			}
			for _, k := range []string{tagged + ":stale", plain + ":stale"} {
				if ttl := rdb.PTTL(ctx, k).Val(); ttl <= 50*time.Second || ttl > time.Minute {
					t.Errorf("%s TTL %v, want about a minute", k, ttl)
				}
			}
		}
		// A replay is harmless: nothing to move, versions do not go back.
		if _, err := iv.Apply(ctx, invs); err != nil {
			t.Fatal(err)
		}
		if v := rdb.Get(ctx, "plain:0:stale").Err(); v == nil {
			t.Error("plain:0:stale is a hash; GET should fail with WRONGTYPE, not succeed")
		}
		if v := rdb.HGet(ctx, "plain:0:stale", "f").Val(); v != "plain-0" {
			t.Errorf("after a replay plain:0:stale field f = %q", v)
		}
	})

	t.Run("patterns scan every master", func(t *testing.T) {
		flushCluster(t, ctx, rdb)
		var keys []string
		for i := range 300 {
			keys = append(keys, "page:"+strconv.Itoa(i))
		}
		for _, k := range keys {
			if err := rdb.Set(ctx, k, "v", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if err := rdb.Set(ctx, "other:1", "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
		perMaster := map[string]int64{}
		var mu sync.Mutex
		if err := rdb.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			n, err := m.DBSize(ctx).Result()
			mu.Lock()
			perMaster[m.Options().Addr] = n
			mu.Unlock()
			return err
		}); err != nil {
			t.Fatal(err)
		}
		for addr, n := range perMaster {
			if n == 0 {
				t.Fatalf("master %s holds no key: the test would not show every master is scanned (%v)", addr, perMaster)
			}
		}
		st, err := iv.Apply(ctx, []mapping.Invalidation{{Action: mapping.Delete, Key: "page:*", Pattern: true}})
		if err != nil {
			t.Fatal(err)
		}
		if st.PatternMatches != len(keys) {
			t.Errorf("%d pattern matches, want %d (keys per master: %v)", st.PatternMatches, len(keys), perMaster)
		}
		if n := countExisting(t, ctx, rdb, keys); n != 0 {
			t.Errorf("%d keys matching page:* left", n)
		}
		if rdb.Exists(ctx, "other:1").Val() != 1 {
			t.Error("other:1 removed by page:*")
		}
	})

	t.Run("one pass: scanned patterns on every master, indexed families from their sets", func(t *testing.T) {
		flushCluster(t, ctx, rdb)
		var matched []string
		for i := range 200 {
			matched = append(matched, fmt.Sprintf("s:%d:x", i%20), fmt.Sprintf("s:%d:y%d", i%20, i))
		}
		for _, k := range matched {
			if err := rdb.Set(ctx, k, "v", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
		rdb.Set(ctx, "s:99:x", "v", 0)
		var invs []mapping.Invalidation
		for i := range 20 {
			invs = append(invs, mapping.Invalidation{Action: mapping.Delete, Key: fmt.Sprintf("s:%d:*", i), Pattern: true})
		}
		// An indexed family: its members are on other masters than its set.
		var members []string
		for i := range 50 {
			k := "f:1:" + strconv.Itoa(i)
			members = append(members, k)
			rdb.Set(ctx, k, "v", 0)
			rdb.SAdd(ctx, protocol.IndexKey("f:1:"), k)
		}
		invs = append(invs, mapping.Invalidation{Action: mapping.Delete, Key: "f:1:*", Pattern: true,
			Template: &mapping.Template{Source: "f:{id}:*", Indexed: true}})
		st, err := iv.ApplyPass(ctx, 0x500, invs)
		if err != nil {
			t.Fatal(err)
		}
		if n := countExisting(t, ctx, rdb, append(matched, members...)); n != 0 {
			t.Errorf("%d matched keys left", n)
		}
		if rdb.Exists(ctx, "s:99:x").Val() != 1 {
			t.Error("s:99:x removed")
		}
		if st.IndexHits != 50 || st.Patterns != 21 {
			t.Errorf("stats %+v, want 50 index hits and 21 patterns", st)
		}
	})

	t.Run("scripts reloaded on every master", func(t *testing.T) {
		flushCluster(t, ctx, rdb)
		if err := rdb.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			return m.ScriptFlush(ctx).Err()
		}); err != nil {
			t.Fatal(err)
		}
		var invs []mapping.Invalidation
		for i := range 30 {
			invs = append(invs, mapping.Invalidation{Action: mapping.Bump, Key: "p:" + strconv.Itoa(i), Version: 7, Aux: mapping.KeyFormat{Suffix: ":version"}})
		}
		st, err := iv.Apply(ctx, invs)
		if err != nil {
			t.Fatal(err)
		}
		if st.Attempts != 1 {
			t.Errorf("%d attempts, want 1: NOSCRIPT is answered by loading the scripts, not by backing off", st.Attempts)
		}
		for i := range 30 {
			if v := rdb.Get(ctx, fmt.Sprintf("p:%d:version", i)).Val(); v != "7" {
				t.Errorf("p:%d:version = %q, want 7", i, v)
			}
		}
	})

	t.Run("wait_replicas", func(t *testing.T) {
		flushCluster(t, ctx, rdb)
		waiting := newInvalidator(t, Options{Mode: Cluster, URL: c.URL(), WaitReplicas: 1})
		var keys []string
		var invs []mapping.Invalidation
		for i := range 500 {
			k := "w:" + strconv.Itoa(i)
			keys = append(keys, k)
			invs = append(invs, mapping.Invalidation{Action: mapping.Delete, Key: k},
				mapping.Invalidation{Action: mapping.Stale, Key: "ws:" + strconv.Itoa(i), Aux: mapping.KeyFormat{Suffix: ":stale"}, TTL: time.Minute})
			if err := rdb.Set(ctx, k, "v", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if err := rdb.Set(ctx, "ws:1", "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
		st, err := waiting.Apply(ctx, invs)
		if err != nil {
			t.Fatal(err)
		}
		if st.Attempts != 1 {
			t.Errorf("%d attempts with one replica per master and wait_replicas 1, want 1", st.Attempts)
		}
		if n := countExisting(t, ctx, rdb, keys); n != 0 {
			t.Errorf("%d keys left", n)
		}
		if rdb.Get(ctx, "ws:1:stale").Val() != "v" {
			t.Error("ws:1 not moved to ws:1:stale")
		}
		// Two replicas cannot acknowledge: the batch is never confirmed.
		var mu sync.Mutex
		var failures int
		strict := newInvalidator(t, Options{Mode: Cluster, URL: c.URL(), WaitReplicas: 2, OnResult: func(err error) {
			if err != nil {
				mu.Lock()
				failures++
				mu.Unlock()
			}
		}})
		short, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err = strict.Apply(short, invs[:10])
		if err == nil || !strings.Contains(err.Error(), "WAIT") {
			t.Errorf("Apply with wait_replicas 2 and one replica per master = %v, want a WAIT error", err)
		}
		if failures == 0 {
			t.Error("no failed attempt reported to OnResult")
		}
	})
}

func flushCluster(t *testing.T, ctx context.Context, rdb *redis.ClusterClient) {
	t.Helper()
	if err := rdb.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() }); err != nil {
		t.Fatal(err)
	}
}

func countExisting(t *testing.T, ctx context.Context, rdb redis.UniversalClient, keys []string) int {
	t.Helper()
	pipe := rdb.Pipeline()
	cmds := make([]*redis.IntCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.Exists(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range cmds {
		n += int(c.Val())
	}
	return n
}

// TestWaitReplicas: with a standalone master and one replica, wait_replicas 1
// confirms batches; wait_replicas 2 cannot be met, so nothing is confirmed.
func TestWaitReplicas(t *testing.T) {
	needRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := testDir(t)
	master, err := throwaway.StartRedis(ctx, filepath.Join(dir, "master"))
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	replica, err := throwaway.StartRedis(ctx, filepath.Join(dir, "replica"), "--replicaof", "127.0.0.1", strconv.Itoa(master.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer replica.Close()
	rc := replica.Client()
	defer rc.Close()
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(rc.Info(ctx, "replication").Val(), "master_link_status:up"); {
		if time.Now().After(deadline) {
			t.Fatal("replica not in sync after 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	mc := master.Client()
	defer mc.Close()
	if err := mc.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	iv := newInvalidator(t, Options{URL: master.URL(), WaitReplicas: 1})
	st, err := iv.Apply(ctx, []mapping.Invalidation{{Action: mapping.Delete, Key: "k"}})
	if err != nil || st.Attempts != 1 {
		t.Fatalf("Apply = %+v, %v; want one attempt", st, err)
	}
	// Acknowledged by the replica: it is gone there too, at once.
	if n := rc.Exists(ctx, "k").Val(); n != 0 {
		t.Error("k still on the replica after WAIT 1 returned")
	}
	strict := newInvalidator(t, Options{URL: master.URL(), WaitReplicas: 2})
	short, cancel := context.WithTimeout(ctx, 2500*time.Millisecond)
	defer cancel()
	if _, err := strict.Apply(short, []mapping.Invalidation{{Action: mapping.Delete, Key: "k"}}); err == nil || !strings.Contains(err.Error(), "1 of the 2 replicas") {
		t.Errorf("Apply with wait_replicas 2 and one replica = %v, want a WAIT error", err)
	}
}
