package cacheaside

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/internal/throwaway"
	"github.com/walbust/walbust/protocol"
)

// srv is one real redis-server for the package; TestMain fails the package
// (it does not skip) when it cannot start one. Under -short it starts none
// and the tests that need it skip (see needRedis).
var srv *throwaway.Redis

func TestMain(m *testing.M) {
	flag.Parse() // testing.Short needs parsed flags
	if os.Getenv(stampedeChildEnv) != "" {
		os.Exit(stampedeChild())
	}
	if testing.Short() {
		os.Exit(m.Run())
	}
	os.Exit(run(m))
}

// needRedis skips t under -short: the fast tier starts no servers.
func needRedis(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs redis-server; run without -short")
	}
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "walbust-cacheaside-redis-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	srv, err = throwaway.StartRedis(ctx, dir)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cacheaside: cannot start redis-server (these tests need one):", err)
		return 1
	}
	defer srv.Close()
	return m.Run()
}

// redisClient returns a client of its own (a "process") for one test.
func redisClient(t *testing.T) *redis.Client {
	t.Helper()
	needRedis(t)
	c := srv.Client()
	t.Cleanup(func() { c.Close() })
	return c
}

func newClient(t *testing.T, rdb redis.UniversalClient, opts Options) *Client {
	t.Helper()
	c, err := New(rdb, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// walbustFence does what walbust's fence action does to key.
func walbustFence(t *testing.T, rdb redis.UniversalClient, key string, lsn uint64, ttl time.Duration) {
	t.Helper()
	err := redis.NewScript(protocol.FenceScript).Run(context.Background(), rdb, []string{key},
		strconv.FormatUint(lsn, 10), protocol.NewToken(), ttl.Milliseconds()).Err()
	if err != nil {
		t.Fatalf("fence %s: %v", key, err)
	}
}

// stored decodes what key holds in Redis.
func stored(t *testing.T, rdb redis.UniversalClient, key string) (protocol.Content, time.Duration) {
	t.Helper()
	ctx := context.Background()
	v, err := rdb.Get(ctx, key).Result()
	if err == redis.Nil {
		return protocol.Content{Kind: protocol.KindAbsent}, 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return protocol.Decode(v), rdb.PTTL(ctx, key).Val()
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, timeout time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not true within %v: %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func flush(t *testing.T, rdb redis.UniversalClient) {
	t.Helper()
	if err := rdb.FlushDB(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
}
