package cacheaside

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/internal/throwaway"
	"github.com/walbust/walbust/replication/wal"
)

// refreshLua is walbust's own refresh script: the tests play walbust with
// it, so what they read is what the daemon writes.
func refreshLua(t *testing.T) *redis.Script {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "invalidator", "lua", "refresh.lua"))
	if err != nil {
		t.Fatal(err)
	}
	return redis.NewScript(string(src))
}

// walbustRefresh does what walbust's refresh action does to key for a
// change at lsn: op set, del or stale; value is the value (set) or the
// negative marker (del; nil deletes).
func walbustRefresh(t *testing.T, rdb redis.UniversalClient, script *redis.Script, key, op string, lsn wal.LSN, value []byte) {
	t.Helper()
	args := []any{op, lsn.String(), time.Hour.Milliseconds()}
	if value != nil {
		args = append(args, value)
	}
	if err := script.Run(context.Background(), rdb, []string{key, key + ":lsn"}, args...).Err(); err != nil && !errors.Is(err, redis.Nil) {
		t.Fatalf("refresh.lua %s %s: %v", op, key, err)
	}
}

// checkRefreshed runs the story of one refreshed key through GetRefreshed:
// a reader's fill, walbust's writes, a failed refresh (stale), recovery,
// and a DELETE with and without the negative marker.
func checkRefreshed(t *testing.T, rdb redis.UniversalClient, c *Client, key string) {
	t.Helper()
	ctx := context.Background()
	script := refreshLua(t)
	expect := func(step string, want Refreshed, wantFound bool) {
		t.Helper()
		got, found, err := c.GetRefreshed(ctx, key)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if found != wantFound || string(got.Value) != string(want.Value) || got.LSN != want.LSN || got.Stale != want.Stale || got.StaleLSN != want.StaleLSN {
			t.Errorf("%s: GetRefreshed = %+v (value %q), found %v; want %+v (value %q), found %v", step, got, got.Value, found, want, want.Value, wantFound)
		}
	}
	expect("never cached", Refreshed{}, false)
	if err := rdb.SetNX(ctx, key, "filled", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	expect("a reader's fill", Refreshed{Value: []byte("filled")}, true)
	walbustRefresh(t, rdb, script, key, "stale", 0x50, nil)
	expect("a reader's fill flagged stale", Refreshed{Value: []byte("filled"), Stale: true, StaleLSN: 0x50}, true)
	walbustRefresh(t, rdb, script, key, "set", 0x100, []byte(`{"id":"1"}`))
	expect("refreshed", Refreshed{Value: []byte(`{"id":"1"}`), LSN: 0x100}, true)
	walbustRefresh(t, rdb, script, key, "stale", 0x200, nil)
	expect("refresh failed", Refreshed{Value: []byte(`{"id":"1"}`), LSN: 0x100, Stale: true, StaleLSN: 0x200}, true)
	walbustRefresh(t, rdb, script, key, "stale", 0x1_0000_0000, nil)
	expect("failed again", Refreshed{Value: []byte(`{"id":"1"}`), LSN: 0x100, Stale: true, StaleLSN: 0x1_0000_0000}, true)
	walbustRefresh(t, rdb, script, key, "set", 0x80, []byte("old"))
	expect("an older change replayed", Refreshed{Value: []byte(`{"id":"1"}`), LSN: 0x100, Stale: true, StaleLSN: 0x1_0000_0000}, true)
	walbustRefresh(t, rdb, script, key, "set", 0x1_0000_0010, []byte(`{"id":"1","v":"2"}`))
	expect("recovered", Refreshed{Value: []byte(`{"id":"1","v":"2"}`), LSN: 0x1_0000_0010}, true)
	walbustRefresh(t, rdb, script, key, "del", 0x1_0000_0020, []byte("null"))
	expect("deleted, negative marker", Refreshed{Value: []byte("null"), LSN: 0x1_0000_0020}, true)
	walbustRefresh(t, rdb, script, key, "set", 0x1_0000_0030, []byte("back"))
	walbustRefresh(t, rdb, script, key, "del", 0x1_0000_0040, nil)
	expect("deleted", Refreshed{}, false)
}

func TestGetRefreshed(t *testing.T) {
	rdb := redisClient(t)
	flush(t, rdb)
	c := newClient(t, rdb, Options{})
	// Standalone: any key, tagged or not.
	checkRefreshed(t, rdb, c, "product:1")
	checkRefreshed(t, rdb, c, "{product:2}")
}

// On a Redis Cluster the key needs a hash tag: then it and its LSN key
// share a slot, for walbust's script and for the MGET. Without one the
// read is refused before any round trip.
func TestGetRefreshedCluster(t *testing.T) {
	needRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl, err := throwaway.StartRedisCluster(ctx, t.TempDir(), 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	rdb := cl.Client()
	t.Cleanup(func() { rdb.Close() })
	c := newClient(t, rdb, Options{})
	checkRefreshed(t, rdb, c, "{product:1}")
	checkRefreshed(t, rdb, c, "category:{7}:products")
	if err := rdb.Set(ctx, "product:1", "filled", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if _, found, err := c.GetRefreshed(ctx, "product:1"); !errors.Is(err, ErrNoHashTag) || found {
		t.Errorf("GetRefreshed of a key without a hash tag on a cluster: found %v, %v; want ErrNoHashTag", found, err)
	}
}
