package invalidator

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication/wal"
)

func refreshInv(key string, op mapping.RefreshOp, lsn wal.LSN, value string, ttl time.Duration) mapping.Invalidation {
	w := &mapping.RefreshWrite{Op: op}
	if value != "" {
		w.Value = []byte(value)
		w.Negative = op == mapping.RefreshRemove
	}
	if op == mapping.RefreshStale {
		w.Err = errors.New("query failed")
	}
	return mapping.Invalidation{Action: mapping.Refresh, Key: key, Version: lsn, Aux: mapping.LSNKey, TTL: ttl, Refresh: w}
}

func TestApplyRefresh(t *testing.T) {
	r := testRedis(t)
	ctx := context.Background()
	rdb := r.Client()
	defer rdb.Close()
	iv, err := New(Options{URL: r.URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer iv.Close()

	apply := func(invs ...mapping.Invalidation) {
		t.Helper()
		if _, err := iv.Apply(ctx, invs); err != nil {
			t.Fatal(err)
		}
	}
	get := func(key string) string {
		t.Helper()
		v, err := rdb.Get(ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			return "<absent>"
		}
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	expect := func(key, value, lsn string) {
		t.Helper()
		if got := get(key); got != value {
			t.Errorf("%s = %q, want %q", key, got, value)
		}
		if got := get(key + ":lsn"); got != lsn {
			t.Errorf("%s:lsn = %q, want %q", key, got, lsn)
		}
	}
	const ttl = 10 * time.Minute
	lsn := func(s string) wal.LSN {
		l, err := wal.ParseLSN(s)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}

	// A reader's own fill (no LSN key) is overwritten by the fresh value.
	rdb.Set(ctx, "p:1", "reader's", 0)
	apply(refreshInv("p:1", mapping.RefreshSet, lsn("1/200"), "v200", ttl))
	expect("p:1", "v200", "1/200")
	pttl := rdb.PTTL(ctx, "p:1").Val()
	if pttl < 9*time.Minute || pttl > 11*time.Minute {
		t.Errorf("TTL %v, want 10m ±10%%", pttl)
	}
	if lt := rdb.PTTL(ctx, "p:1:lsn").Val(); lt <= 0 || lt > 11*time.Minute {
		t.Errorf("LSN key TTL %v", lt)
	}

	// An older change never overwrites a newer one; a replay is harmless.
	apply(refreshInv("p:1", mapping.RefreshSet, lsn("1/100"), "v100", ttl))
	expect("p:1", "v200", "1/200")
	apply(refreshInv("p:1", mapping.RefreshSet, lsn("1/200"), "v200 again", ttl))
	expect("p:1", "v200", "1/200")
	// Compared as LSNs, not as strings: 1/FF < 1/200.
	apply(refreshInv("p:1", mapping.RefreshSet, lsn("1/FF"), "old", ttl))
	expect("p:1", "v200", "1/200")
	apply(refreshInv("p:1", mapping.RefreshSet, lsn("2/0"), "v2", ttl))
	expect("p:1", "v2", "2/0")

	// A failed refresh keeps the value and flags it; a newer value clears
	// the flag; a failure older than the value does nothing.
	apply(refreshInv("p:1", mapping.RefreshStale, lsn("2/10"), "", ttl))
	expect("p:1", "v2", "2/0 stale 2/10")
	apply(refreshInv("p:1", mapping.RefreshStale, lsn("2/8"), "", ttl))
	expect("p:1", "v2", "2/0 stale 2/10")
	apply(refreshInv("p:1", mapping.RefreshStale, lsn("2/20"), "", ttl))
	expect("p:1", "v2", "2/0 stale 2/20")
	if lt := rdb.PTTL(ctx, "p:1:lsn").Val(); lt <= 0 || lt > rdb.PTTL(ctx, "p:1").Val()+time.Second {
		t.Errorf("the flag outlives the value: %v", lt)
	}
	apply(refreshInv("p:1", mapping.RefreshSet, lsn("2/30"), "v3", ttl))
	expect("p:1", "v3", "2/30")
	apply(refreshInv("p:1", mapping.RefreshStale, lsn("2/25"), "", ttl))
	expect("p:1", "v3", "2/30")
	// Nothing cached: nothing to flag (a reader's next fill is fresh).
	apply(refreshInv("p:none", mapping.RefreshStale, lsn("2/25"), "", ttl))
	expect("p:none", "<absent>", "<absent>")
	// A reader's fill flagged: its LSN is unknown, 0/0.
	rdb.Set(ctx, "p:r", "reader's", time.Minute)
	apply(refreshInv("p:r", mapping.RefreshStale, lsn("2/25"), "", ttl))
	expect("p:r", "reader's", "0/0 stale 2/25")

	// DELETE removes the key and records the LSN: a replay of the older
	// INSERT does not bring the row back; a newer one does.
	apply(refreshInv("p:1", mapping.RefreshRemove, lsn("3/0"), "", ttl))
	expect("p:1", "<absent>", "3/0")
	apply(refreshInv("p:1", mapping.RefreshSet, lsn("2/30"), "v3", ttl))
	expect("p:1", "<absent>", "3/0")
	apply(refreshInv("p:1", mapping.RefreshSet, lsn("3/1"), "v4", ttl))
	expect("p:1", "v4", "3/1")

	// With a negative marker, DELETE writes it with its own TTL.
	apply(refreshInv("p:1", mapping.RefreshRemove, lsn("3/2"), "null", 30*time.Second))
	expect("p:1", "null", "3/2")
	if pttl := rdb.PTTL(ctx, "p:1").Val(); pttl < 27*time.Second || pttl > 33*time.Second {
		t.Errorf("negative marker TTL %v, want 30s ±10%%", pttl)
	}
	apply(refreshInv("p:1", mapping.RefreshRemove, lsn("3/2"), "null", 30*time.Second))
	expect("p:1", "null", "3/2")

	// Whatever type a key held, the fresh value replaces it.
	rdb.HSet(ctx, "p:h", "f", "v")
	apply(refreshInv("p:h", mapping.RefreshSet, lsn("4/0"), "s", ttl))
	expect("p:h", "s", "4/0")

	// In one batch with other actions, after a SCRIPT FLUSH (NOSCRIPT).
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	rdb.Set(ctx, "plain", "x", 0)
	apply(mapping.Invalidation{Action: mapping.Delete, Key: "plain"}, refreshInv("p:2", mapping.RefreshSet, lsn("4/1"), "two", ttl))
	expect("p:2", "two", "4/1")
	if get("plain") != "<absent>" {
		t.Errorf("the delete of the same batch was not applied")
	}
}

func TestJitter(t *testing.T) {
	for range 1000 {
		if d := jitter(time.Minute); d < 54*time.Second || d > 66*time.Second {
			t.Fatalf("jitter(1m) = %v", d)
		}
	}
	if jitter(0) != 0 {
		t.Errorf("jitter(0) != 0")
	}
}
