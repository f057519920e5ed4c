package throwaway

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestRedisCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := filepath.Join(serverDir(t), "cluster")
	begin := time.Now()
	c, err := StartRedisCluster(ctx, dir, 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	}()
	t.Logf("6-node cluster up in %v", time.Since(begin).Round(time.Millisecond))
	cl := c.Client()
	defer cl.Close()
	for i := range 100 {
		if err := cl.Set(ctx, fmt.Sprintf("k%d", i), "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	nodes, err := c.Topology(ctx)
	if err != nil {
		t.Fatal(err)
	}
	masters := 0
	for _, n := range nodes {
		if n.Master && n.Slots > 0 {
			masters++
		}
	}
	if len(nodes) != 6 || masters != 3 {
		t.Fatalf("%d nodes, %d masters with slots; want 6 and 3: %+v", len(nodes), masters, nodes)
	}

	// Replication is asynchronous: the writes must have reached the
	// replicas before a master dies, or its replica rightly lacks them.
	waitReplicated(t, ctx, cl)

	// kill -9 a master: its replica takes over, and the cluster serves
	// every key again (the ones on the dead master's slots from the replica).
	m, err := c.MasterWithReplica(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	begin = time.Now()
	if err := c.WaitFailover(ctx, m); err != nil {
		t.Fatal(err)
	}
	t.Logf("failover of %s took %v", m.Addr(), time.Since(begin).Round(time.Millisecond))
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; i < 100; i++ {
		n, err := cl.Exists(ctx, fmt.Sprintf("k%d", i)).Result()
		if err != nil || n != 1 {
			if time.Now().Before(deadline) {
				// go-redis learns the new slot map when told to (or
				// within a minute).
				cl.ReloadState(ctx)
				i--
				time.Sleep(50 * time.Millisecond)
				continue
			}
			t.Fatalf("k%d after the failover: exists %d, err %v", i, n, err)
		}
	}

	// Restarted, it comes back empty as the new master's replica.
	if err := m.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx, 1); err != nil {
		t.Fatal(err)
	}
	nodes, err = c.Topology(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Addr == m.Addr() && (n.Master || n.MasterID == "") {
			t.Errorf("restarted %s is %+v, want a replica", m.Addr(), n)
		}
	}
}

func TestRedisSentinel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	begin := time.Now()
	s, err := StartRedisSentinel(ctx, filepath.Join(serverDir(t), "sentinel"), "cache", 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}()
	t.Logf("master, replica and 3 sentinels up in %v", time.Since(begin).Round(time.Millisecond))
	c := s.Client()
	defer c.Close()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	old, err := s.Master(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if old != s.Data()[0] {
		t.Errorf("master %s, want the first data node %s", old.Addr(), s.Data()[0].Addr())
	}
	if err := old.Kill(); err != nil {
		t.Fatal(err)
	}
	begin = time.Now()
	promoted, err := s.WaitFailover(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("failover from %s to %s took %v", old.Addr(), promoted.Addr(), time.Since(begin).Round(time.Millisecond))
	// The failover client finds the new master, which has the key.
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := c.Get(ctx, "k").Result()
		if err == nil && v == "v" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET k through the failover client: %q, %v", v, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The old master, restarted empty, becomes the new one's replica.
	begin = time.Now()
	if err := s.RestartAsReplica(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("old master back as a replica after %v", time.Since(begin).Round(time.Millisecond))
	if m, err := s.Master(ctx); err != nil || m != promoted {
		t.Errorf("master after the restart: %v (err %v), want %s", m, err, promoted.Addr())
	}
}

// waitReplicated waits until every master's replicas have acknowledged its
// whole replication stream (INFO replication: each slave's offset reaches
// master_repl_offset).
func waitReplicated(t *testing.T, ctx context.Context, cl *redis.ClusterClient) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		behind := ""
		err := cl.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			info, err := m.Info(ctx, "replication").Result()
			if err != nil {
				return err
			}
			var master int64
			var replicas []int64
			for _, line := range strings.Split(info, "\r\n") {
				if v, ok := strings.CutPrefix(line, "master_repl_offset:"); ok {
					master, _ = strconv.ParseInt(v, 10, 64)
				}
				if strings.HasPrefix(line, "slave") {
					for _, f := range strings.Split(line, ",") {
						if v, ok := strings.CutPrefix(f, "offset="); ok {
							n, _ := strconv.ParseInt(v, 10, 64)
							replicas = append(replicas, n)
						}
					}
				}
			}
			for _, r := range replicas {
				if r < master {
					behind = fmt.Sprintf("%s: replica at %d of %d", m.Options().Addr, r, master)
				}
			}
			return nil
		})
		if err == nil && behind == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas did not catch up: %s %v", behind, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
