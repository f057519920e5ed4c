package invalidator

import (
	"context"
	"os"
	"strconv"
	"testing"

	"github.com/walbust/walbust/internal/throwaway"
	"github.com/walbust/walbust/mapping"
)

// benchRedis starts a throwaway redis-server for one benchmark. A missing
// redis-server is a failure, not a skip: a benchmark that measured nothing
// must not look like one that passed.
func benchRedis(b *testing.B) *throwaway.Redis {
	b.Helper()
	needRedis(b)
	dir, err := os.MkdirTemp("", "walbust-bench-redis-")
	if err != nil {
		b.Fatal(err)
	}
	r, err := throwaway.StartRedis(context.Background(), dir)
	if err != nil {
		os.RemoveAll(dir)
		b.Fatalf("cannot benchmark the Redis batch writer without redis-server: %v", err)
	}
	b.Cleanup(func() {
		if err := r.Close(); err != nil {
			b.Error(err)
		}
	})
	return r
}

// unlinks returns n Delete invalidations of distinct keys.
func unlinks(n int) []mapping.Invalidation {
	invs := make([]mapping.Invalidation, n)
	for i := range invs {
		invs[i] = mapping.Invalidation{Action: mapping.Delete, Key: "product:" + strconv.Itoa(i), Table: "public.products"}
	}
	return invs
}

// BenchmarkApply measures Apply of one batch of 1000 UNLINKs against a real
// redis-server on loopback: one pipeline, 256 keys per UNLINK command.
// "missing" unlinks keys that do not exist (the common case: most rows are
// not cached); "existing" sets them again before every Apply (untimed), so
// Redis really frees 1000 values per batch.
func BenchmarkApply(b *testing.B) {
	r := benchRedis(b)
	ctx := context.Background()
	const n = 1000
	invs := unlinks(n)
	for _, existing := range []bool{false, true} {
		name := "missing"
		if existing {
			name = "existing"
		}
		b.Run(name+"/keys=1000", func(b *testing.B) {
			iv, err := New(Options{URL: r.URL()})
			if err != nil {
				b.Fatal(err)
			}
			defer iv.Close()
			seed := r.Client()
			defer seed.Close()
			pairs := make([]any, 0, 2*n)
			for _, inv := range invs {
				pairs = append(pairs, inv.Key, "cached value")
			}
			if err := seed.FlushAll(ctx).Err(); err != nil {
				b.Fatal(err)
			}
			// Connect before timing.
			if err := iv.Ping(ctx); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if existing {
					b.StopTimer()
					if err := seed.MSet(ctx, pairs...).Err(); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				st, err := iv.Apply(ctx, invs)
				if err != nil {
					b.Fatal(err)
				}
				if st.Keys != n || st.Attempts != 1 {
					b.Fatalf("stats %+v", st)
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "keys/s")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/key")
			if existing {
				if left, err := seed.DBSize(ctx).Result(); err != nil || left != 0 {
					b.Fatalf("%d keys left after Apply (err %v)", left, err)
				}
			}
		})
	}
}

// BenchmarkUnlinkOneByOne is the baseline Apply exists to beat: one UNLINK
// and one round trip per key, as a naive invalidator would do it.
func BenchmarkUnlinkOneByOne(b *testing.B) {
	r := benchRedis(b)
	ctx := context.Background()
	c := r.Client()
	defer c.Close()
	invs := unlinks(1000)
	if err := c.Ping(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		for _, inv := range invs {
			if err := c.Unlink(ctx, inv.Key).Err(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N*len(invs))/b.Elapsed().Seconds(), "keys/s")
}
