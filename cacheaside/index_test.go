package cacheaside

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/walbust/walbust/protocol"
)

// A fill of an indexed family's key also puts the key in the family's
// index, with a TTL at least the key's; a full index gets no more keys
// cached; a key outside the family is refused.
func TestGetIndexed(t *testing.T) {
	rdb := redisClient(t)
	ctx := context.Background()
	rdb.FlushAll(ctx)
	c := newClient(t, rdb, Options{TTL: time.Minute, MaxIndexMembers: 2})
	load := func(v string) LoadFunc {
		return func(context.Context, Observation) ([]byte, error) { return []byte(v), nil }
	}
	idx := protocol.IndexKey("search:42:")
	for _, k := range []string{"search:42:a", "search:42:b"} {
		if v, err := c.GetIndexed(ctx, "search:42:", k, load("x")); err != nil || string(v) != "x" {
			t.Fatalf("GetIndexed %s = %q, %v", k, v, err)
		}
		if !rdb.SIsMember(ctx, idx, k).Val() {
			t.Errorf("%s not in %s", k, idx)
		}
		if kttl, ittl := rdb.PTTL(ctx, k).Val(), rdb.PTTL(ctx, idx).Val(); ittl < kttl || kttl <= 0 {
			t.Errorf("index TTL %v below the key's %v", ittl, kttl)
		}
	}
	// Full: served, not cached, and the key is not left leased.
	if v, err := c.GetIndexed(ctx, "search:42:", "search:42:c", load("y")); err != nil || string(v) != "y" {
		t.Fatalf("GetIndexed with a full index = %q, %v", v, err)
	}
	if raw, _ := rdb.Get(ctx, "search:42:c").Result(); protocol.Decode(raw).Kind == protocol.KindValue {
		t.Error("a key of a full family was cached outside its index")
	}
	if n := rdb.SCard(ctx, idx).Val(); n != 2 {
		t.Errorf("index holds %d keys, bound 2", n)
	}
	// Drained by walbust (as protocol.IndexDrainScript does), the family
	// fills again into a fresh index.
	rdb.Unlink(ctx, "search:42:a", "search:42:b", idx)
	if _, err := c.GetIndexed(ctx, "search:42:", "search:42:c", load("z")); err != nil {
		t.Fatal(err)
	}
	if !rdb.SIsMember(ctx, idx, "search:42:c").Val() {
		t.Error("search:42:c not indexed after the family was drained")
	}
	if _, err := c.GetIndexed(ctx, "search:42:", "search:4:x", load("x")); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("a key outside its family: %v, want an error", err)
	}
}
