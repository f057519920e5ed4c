package invalidator

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/internal/throwaway"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

// needRedis skips tb under -short: the fast tier (go test -short ./...)
// starts no servers. Without -short a test that needs one always runs.
func needRedis(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("needs redis-server; run without -short")
	}
}

// testRedis starts a throwaway redis-server for one test; without one the
// test fails, it does not skip (except under -short, see needRedis).
func testRedis(t *testing.T) *throwaway.Redis {
	t.Helper()
	needRedis(t)
	dir, err := os.MkdirTemp("", "walbust-invalidator-redis-")
	if err != nil {
		t.Fatal(err)
	}
	r, err := throwaway.StartRedis(context.Background(), dir)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("the fence tests need redis-server: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

func TestApplyFence(t *testing.T) {
	r := testRedis(t)
	ctx := context.Background()
	rdb := r.Client()
	defer rdb.Close()
	iv, err := New(Options{URL: r.URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer iv.Close()

	other := protocol.NewToken()
	val := protocol.Envelope{SoftExpiry: time.Now().Add(time.Hour), Nonce: other, Payload: []byte("old")}.Encode()
	rdb.Set(ctx, "order:1", val, time.Hour)
	rdb.Set(ctx, "search:1:a", val, time.Hour)
	rdb.Set(ctx, "search:1:b", protocol.Lease(0, other), 10*time.Second) // a reader filling it
	rdb.Set(ctx, "search:2:a", val, time.Hour)                           // not matched
	rdb.Set(ctx, "order:9", protocol.Tombstone(900, other), time.Minute) // fenced by a later commit already

	fence := func(key string, lsn wal.LSN, pattern bool) mapping.Invalidation {
		return mapping.Invalidation{Action: mapping.Fence, Key: key, Pattern: pattern, Version: lsn, TTL: 30 * time.Second}
	}
	batch := []mapping.Invalidation{
		fence("order:1", 500, false),
		fence("order:2", 500, false), // absent: fenced anyway, so a fill that is under way fails
		fence("order:9", 500, false),
		fence(`search:1:*`, 500, true),
	}
	st, err := iv.Apply(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	if st.Keys != 3 || st.Patterns != 1 || st.PatternMatches != 2 {
		t.Errorf("stats %+v, want 3 keys, 1 pattern, 2 matches", st)
	}
	tokens := map[string]bool{}
	for key, wantLSN := range map[string]wal.LSN{"order:1": 500, "order:2": 500, "order:9": 900, "search:1:a": 500, "search:1:b": 500} {
		v, err := rdb.Get(ctx, key).Result()
		if err != nil {
			t.Errorf("%s: %v", key, err)
			continue
		}
		f, err := protocol.ParseTombstone(v)
		if err != nil {
			t.Errorf("%s holds %q, not a tombstone: %v", key, v, err)
			continue
		}
		if f.LSN != wantLSN {
			t.Errorf("%s: tombstone LSN %d, want %d", key, f.LSN, wantLSN)
		}
		tokens[f.Token] = true
		if ttl := rdb.PTTL(ctx, key).Val(); ttl <= 25*time.Second || ttl > 30*time.Second {
			t.Errorf("%s: TTL %v, want fence_ttl 30s", key, ttl)
		}
	}
	// Fresh tokens: one for the direct keys, and the pattern's from the
	// keyspace walk (a new one for every page it writes).
	if len(tokens) == 0 || len(tokens) > 2 || tokens[other] {
		t.Errorf("tokens %v: want fresh ones, one for the direct keys and one for the pattern's page", tokens)
	}
	if v := rdb.Get(ctx, "search:2:a").Val(); v != val {
		t.Errorf("search:2:a = %q: a key the pattern does not match was touched", v)
	}

	// A replay (after a crash, or a retry) fences again with a new token
	// and the same LSN: idempotent for LSNs, and fills that observed the
	// first tombstone fail.
	first := rdb.Get(ctx, "order:1").Val()
	rdb.ScriptFlush(ctx) // also: EVALSHA in a pipeline must recover from NOSCRIPT
	if _, err := iv.Apply(ctx, batch); err != nil {
		t.Fatal(err)
	}
	again := rdb.Get(ctx, "order:1").Val()
	f1, _ := protocol.ParseTombstone(first)
	f2, err := protocol.ParseTombstone(again)
	if err != nil || f2.LSN != f1.LSN || f2.Token == f1.Token {
		t.Errorf("after replay order:1 = %q (was %q): want the same LSN, another token", again, first)
	}

	// Another type in a fenced key is replaced, not an error that would
	// stall the stream.
	rdb.Del(ctx, "order:1")
	rdb.HSet(ctx, "order:1", "f", "v")
	if _, err := iv.Apply(ctx, batch[:1]); err != nil {
		t.Fatal(err)
	}
	if typ := rdb.Type(ctx, "order:1").Val(); typ != "string" {
		t.Errorf("order:1 is a %s after the fence", typ)
	}
	if err := rdb.Get(ctx, "order:1").Err(); err == redis.Nil {
		t.Error("order:1 missing after the fence")
	}
}
