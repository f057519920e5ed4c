package protocol

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/internal/throwaway"
	"github.com/walbust/walbust/replication/wal"
)

// rdb is a real redis-server shared by the script tests; TestMain fails the
// package when it cannot start one. Under -short it starts none and the
// tests that need it skip (see needRedis).
var rdb *redis.Client

func TestMain(m *testing.M) {
	flag.Parse() // testing.Short needs parsed flags
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
	dir, err := os.MkdirTemp("", "walbust-protocol-redis-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	srv, err := throwaway.StartRedis(ctx, dir)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "protocol: cannot start redis-server (tests need one):", err)
		return 1
	}
	defer srv.Close()
	rdb = srv.Client()
	defer rdb.Close()
	return m.Run()
}

var (
	fenceScript = redis.NewScript(FenceScript)
	leaseScript = redis.NewScript(LeaseScript)
	casScript   = redis.NewScript(CASScript)
)

func fence(t *testing.T, key string, lsn wal.LSN, token string, ttl time.Duration) {
	t.Helper()
	if err := fenceScript.Run(context.Background(), rdb, []string{key}, strconv.FormatUint(uint64(lsn), 10), token, ttl.Milliseconds()).Err(); err != nil {
		t.Fatalf("fence %s: %v", key, err)
	}
}

func get(t *testing.T, key string) (string, time.Duration) {
	t.Helper()
	ctx := context.Background()
	v, err := rdb.Get(ctx, key).Result()
	if err == redis.Nil {
		return "", -2
	}
	if err != nil {
		t.Fatal(err)
	}
	return v, rdb.PTTL(ctx, key).Val()
}

func TestFenceScript(t *testing.T) {
	needRedis(t)
	ctx := context.Background()
	rdb.FlushDB(ctx)
	t1, t2 := NewToken(), NewToken()
	for _, tt := range []struct {
		name    string
		setup   func(key string)
		lsn     wal.LSN
		wantLSN wal.LSN
	}{
		{"absent key", func(string) {}, 100, 100},
		{"cached value", func(k string) { rdb.Set(ctx, k, "wbval:1:1:"+t1+":v:old", 0) }, 100, 100},
		{"foreign value", func(k string) { rdb.Set(ctx, k, "plain", time.Hour) }, 100, 100},
		{"older tombstone", func(k string) { rdb.Set(ctx, k, Tombstone(50, t1), time.Second) }, 100, 100},
		{"newer tombstone keeps its LSN", func(k string) { rdb.Set(ctx, k, Tombstone(200, t1), time.Second) }, 100, 200},
		{"newer lease keeps its LSN", func(k string) { rdb.Set(ctx, k, Lease(200, t1), time.Second) }, 100, 200},
		{"longer LSN is larger", func(k string) { rdb.Set(ctx, k, Tombstone(1000, t1), time.Second) }, 999, 1000},
		{"malformed tombstone is ignored", func(k string) { rdb.Set(ctx, k, "wbfence:1:999999:xyz", time.Second) }, 100, 100},
		{"another type is replaced", func(k string) { rdb.HSet(ctx, k, "f", "v") }, 100, 100},
	} {
		t.Run(tt.name, func(t *testing.T) {
			key := "fence:" + tt.name
			tt.setup(key)
			fence(t, key, tt.lsn, t2, 60*time.Second)
			v, ttl := get(t, key)
			if want := Tombstone(tt.wantLSN, t2); v != want {
				t.Errorf("key holds %q, want %q", v, want)
			}
			if ttl <= 59*time.Second || ttl > 60*time.Second {
				t.Errorf("TTL %v, want the fence TTL (60s)", ttl)
			}
		})
	}
	// Replay is idempotent: the same fence again leaves a tombstone of the
	// same LSN (with the replay's token).
	fence(t, "replayed", 7, t1, time.Minute)
	fence(t, "replayed", 7, t2, time.Minute)
	if v, _ := get(t, "replayed"); v != Tombstone(7, t2) {
		t.Errorf("after replay: %q", v)
	}
}

func TestLeaseScript(t *testing.T) {
	needRedis(t)
	ctx := context.Background()
	rdb.FlushDB(ctx)
	mine, other := NewToken(), NewToken()
	lease := func(key string) (bool, string, int64) {
		t.Helper()
		res, err := leaseScript.Run(ctx, rdb, []string{key}, mine, 5000).Slice()
		if err != nil {
			t.Fatalf("lease %s: %v", key, err)
		}
		return res[0].(int64) == 1, res[1].(string), res[2].(int64)
	}

	// Absent: a lease with LSN 0 and the given TTL.
	ok, content, ttl := lease("absent")
	if !ok || content != Lease(0, mine) || ttl != 5000 {
		t.Errorf("absent: %v %q %d", ok, content, ttl)
	}
	if v, pttl := get(t, "absent"); v != Lease(0, mine) || pttl > 5*time.Second || pttl < 4*time.Second {
		t.Errorf("absent: key holds %q ttl %v", v, pttl)
	}

	// A tombstone: its LSN and its remaining TTL carry over.
	rdb.Set(ctx, "fenced", Tombstone(42, other), 30*time.Second)
	ok, content, ttl = lease("fenced")
	if !ok || content != Lease(42, mine) || ttl > 30000 || ttl < 29000 {
		t.Errorf("fenced: %v %q %d", ok, content, ttl)
	}
	if _, pttl := get(t, "fenced"); pttl > 30*time.Second || pttl < 29*time.Second {
		t.Errorf("fenced: lease TTL %v, want the tombstone's remaining ~30s", pttl)
	}

	// A value or another reader's lease: returned, untouched.
	val := Envelope{SoftExpiry: time.Now().Add(time.Minute), Nonce: other, Payload: []byte("x")}.Encode()
	for key, held := range map[string]string{"value": val, "leased": Lease(42, other)} {
		rdb.Set(ctx, key, held, time.Minute)
		ok, content, ttl = lease(key)
		if ok || content != held || ttl < 59000 {
			t.Errorf("%s: %v %q %d, want not acquired with the content", key, ok, content, ttl)
		}
		if v, _ := get(t, key); v != held {
			t.Errorf("%s: key changed to %q", key, v)
		}
	}

	// A foreign string counts as absent.
	rdb.Set(ctx, "foreign", "legacy", time.Hour)
	if ok, content, _ = lease("foreign"); !ok || content != Lease(0, mine) {
		t.Errorf("foreign: %v %q", ok, content)
	}

	// Another type is an error, not a silent overwrite.
	rdb.HSet(ctx, "hash", "f", "v")
	if err := leaseScript.Run(ctx, rdb, []string{"hash"}, mine, 5000).Err(); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Errorf("hash: err %v, want WRONGTYPE", err)
	}
}

func TestCASScript(t *testing.T) {
	needRedis(t)
	ctx := context.Background()
	rdb.FlushDB(ctx)
	a, b := NewToken(), NewToken()
	cas := func(key, expected, next string, ttl time.Duration) bool {
		t.Helper()
		n, err := casScript.Run(ctx, rdb, []string{key}, expected, next, ttl.Milliseconds()).Int()
		if err != nil {
			t.Fatalf("cas %s: %v", key, err)
		}
		return n == 1
	}
	rdb.Set(ctx, "k", Lease(5, a), 10*time.Second)
	if cas("k", Lease(5, b), "v1", time.Minute) {
		t.Error("CAS succeeded with another lease's content")
	}
	if !cas("k", Lease(5, a), "v1", time.Minute) {
		t.Error("CAS failed with the key's content")
	}
	if v, ttl := get(t, "k"); v != "v1" || ttl < 59*time.Second {
		t.Errorf("after CAS: %q ttl %v", v, ttl)
	}
	// TTL 0 keeps the TTL (revalidation claims).
	if !cas("k", "v1", "v2", 0) {
		t.Error("CAS with TTL 0 failed")
	}
	if v, ttl := get(t, "k"); v != "v2" || ttl < 59*time.Second {
		t.Errorf("after keep-TTL CAS: %q ttl %v", v, ttl)
	}
	// Absent and other types never match.
	if cas("absent", "", "v", time.Minute) {
		t.Error("CAS on an absent key matched the empty string")
	}
	rdb.HSet(ctx, "h", "f", "v")
	if cas("h", "v", "x", time.Minute) {
		t.Error("CAS on a hash succeeded")
	}
}

// The populate race, by the protocol alone: a reader's lease is replaced by
// walbust's fence while it loads, so its fill fails; the next reader takes
// a lease over the tombstone and fills.
func TestFenceBeatsSlowFill(t *testing.T) {
	needRedis(t)
	ctx := context.Background()
	rdb.FlushDB(ctx)
	r1, r2, w := NewToken(), NewToken(), NewToken()
	res, _ := leaseScript.Run(ctx, rdb, []string{"k"}, r1, 5000).Slice()
	lease1 := res[1].(string)
	fence(t, "k", 77, w, time.Minute) // the write commits; walbust fences
	if n, _ := casScript.Run(ctx, rdb, []string{"k"}, lease1, "stale", 60000).Int(); n != 0 {
		t.Fatal("a fill that began before the fence landed")
	}
	res, _ = leaseScript.Run(ctx, rdb, []string{"k"}, r2, 5000).Slice()
	if res[0].(int64) != 1 || res[1].(string) != Lease(77, r2) {
		t.Fatalf("second reader: %v", res)
	}
	if n, _ := casScript.Run(ctx, rdb, []string{"k"}, res[1].(string), "fresh", 60000).Int(); n != 1 {
		t.Fatal("a fill that observed the current tombstone failed")
	}
}

// Match agrees with SCAN MATCH on random patterns over random keys.
func TestMatchAgreesWithRedis(t *testing.T) {
	needRedis(t)
	ctx := context.Background()
	rdb.FlushDB(ctx)
	rng := rand.New(rand.NewPCG(1, 2))
	const keyAlphabet = "ab:*?[]^-\\"
	const patAlphabet = "ab:*?[]^-\\"
	randString := func(alphabet string, max int) string {
		n := rng.IntN(max + 1)
		b := make([]byte, n)
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return string(b)
	}
	keys := map[string]bool{}
	for len(keys) < 300 {
		keys[randString(keyAlphabet, 6)] = true
	}
	pipe := rdb.Pipeline()
	for k := range keys {
		pipe.Set(ctx, k, "1", 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 400; i++ {
		pattern := randString(patAlphabet, 7)
		if pattern == "" {
			continue // go-redis sends no MATCH for an empty pattern
		}
		var got []string
		iter := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			got = append(got, iter.Val())
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
		var want []string
		for k := range keys {
			if Match(pattern, k) {
				want = append(want, k)
			}
		}
		sort.Strings(got)
		sort.Strings(want)
		if strings.Join(got, "\x00") != strings.Join(want, "\x00") {
			t.Errorf("pattern %q: redis matched %d keys %.200q, Match %d keys %.200q", pattern, len(got), got, len(want), want)
		}
	}
}
