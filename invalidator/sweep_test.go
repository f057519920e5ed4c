package invalidator

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication/wal"
)

func fill(t *testing.T, ctx context.Context, rdb *redis.Client, prefix string, n int) {
	t.Helper()
	pipe := rdb.Pipeline()
	for i := range n {
		pipe.Set(ctx, prefix+strconv.Itoa(i), "v", 0)
		if i%5000 == 4999 {
			if _, err := pipe.Exec(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
}

func countMatching(t *testing.T, ctx context.Context, rdb *redis.Client, match string) int {
	t.Helper()
	n := 0
	iter := rdb.Scan(ctx, 0, match, 1000).Iterator()
	for iter.Next(ctx) {
		n++
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// A pass that starts while another pass's walk is half way joins that walk
// rather than waiting for it to end, and is done once the walk is back
// where it joined: about one walk of pages, not one and a half.
func TestPassJoinsTheWalkUnderWay(t *testing.T) {
	r := testRedis(t)
	ctx := context.Background()
	rdb := r.Client()
	defer rdb.Close()
	fill(t, ctx, rdb, "t:f:", 20000)
	fill(t, ctx, rdb, "t:a:", 300)
	fill(t, ctx, rdb, "t:b:", 300)
	iv := newInvalidator(t, Options{URL: r.URL(), Watermark: "wm", ScanCount: 20})
	sw := iv.sweep
	// Patterns whose literal prefix is "t:": the MATCH filter is t:* for
	// either, so every page returns about ScanCount keys and a walk is
	// the same number of pages whoever is in it.
	a := iv.StartPass(ctx, 0x100, []mapping.Invalidation{pat("t:[a]:*")})
	joined := waitPages(t, sw, 300)
	b := iv.StartPass(ctx, 0x200, []mapping.Invalidation{pat("t:[b]:*")})
	if _, err := a.Wait(); err != nil {
		t.Fatal(err)
	}
	walk := sw.pages.Load()
	bst, err := b.Wait()
	if err != nil {
		t.Fatal(err)
	}
	took := sw.pages.Load() - joined
	t.Logf("a's walk: %d pages; b joined at page %d and was done %d pages later", walk, joined, took)
	if n := countMatching(t, ctx, rdb, "t:a:*") + countMatching(t, ctx, rdb, "t:b:*"); n != 0 {
		t.Errorf("%d keys of t:a:* and t:b:* left", n)
	}
	if n := countMatching(t, ctx, rdb, "t:f:*"); n != 20000 {
		t.Errorf("%d of 20000 t:f:* keys left: the passes removed keys they do not match", n)
	}
	if bst.PatternMatches != 300 || bst.Patterns != 1 || !bst.Scanned {
		t.Errorf("b's stats %+v, want 300 matches of 1 pattern", bst)
	}
	// Waiting for a's walk to end first would add its remaining pages.
	if took > walk*5/4 {
		t.Errorf("b took %d pages after joining at page %d of a %d-page walk: it waited for the walk to end", took, joined, walk)
	}
	if v := rdb.Get(ctx, "wm").Val(); v != wal.LSN(0x200).String() {
		t.Errorf("watermark %q, want %s", v, wal.LSN(0x200))
	}
}

// A pass that joined mid-walk misses no key present throughout while Redis
// grows its hash table under the walk (rehashing: the cursor's position
// in the hash space still only grows).
func TestPassJoinedMidWalkStaysExactThroughARehash(t *testing.T) {
	r := testRedis(t)
	ctx := context.Background()
	rdb := r.Client()
	defer rdb.Close()
	fill(t, ctx, rdb, "t:f:", 20000)
	fill(t, ctx, rdb, "t:b:", 2000)
	iv := newInvalidator(t, Options{URL: r.URL(), ScanCount: 20})
	a := iv.StartPass(ctx, 1, []mapping.Invalidation{pat("t:[a]:*")})
	waitPages(t, iv.sweep, 300)
	b := iv.StartPass(ctx, 2, []mapping.Invalidation{pat("t:[b]:*")})
	fill(t, ctx, rdb, "t:g:", 60000) // 32k buckets to 128k, under the walk
	for _, p := range []*Pass{a, b} {
		if _, err := p.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	if n := countMatching(t, ctx, rdb, "t:b:*"); n != 0 {
		t.Errorf("%d of 2000 t:b:* keys left after a rehash under the walk", n)
	}
	if n := countMatching(t, ctx, rdb, "t:g:*"); n != 60000 {
		t.Errorf("%d of 60000 t:g:* keys left", n)
	}
}

func waitPages(t *testing.T, sw *sweep, n int64) int64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for sw.pages.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("the walk did not get to page %d in 30s (at %d)", n, sw.pages.Load())
		}
		time.Sleep(time.Millisecond)
	}
	return sw.pages.Load()
}

// The watermark follows the order passes were started in, whatever order
// they finish in: a later pass that finishes first does not record its
// position until the earlier one has.
func TestPassWatermarkInStartOrder(t *testing.T) {
	r := testRedis(t)
	ctx := context.Background()
	rdb := r.Client()
	defer rdb.Close()
	fill(t, ctx, rdb, "w:f:", 20000)
	iv := newInvalidator(t, Options{URL: r.URL(), Watermark: "wm", ScanCount: 20, Logger: zaptest.NewLogger(t)})
	a := iv.StartPass(ctx, 0x100, []mapping.Invalidation{pat("w:*")})
	// No patterns: done at once, but it must wait for a.
	b := iv.StartPass(ctx, 0x200, nil)
	select {
	case <-b.Done():
		select {
		case <-a.Done():
		default:
			t.Fatal("the later pass ended before the earlier one")
		}
	case <-a.Done():
	}
	if _, err := b.Wait(); err != nil {
		t.Fatal(err)
	}
	if v := rdb.Get(ctx, "wm").Val(); v != wal.LSN(0x200).String() {
		t.Errorf("watermark %q, want %s", v, wal.LSN(0x200))
	}
}

// A restart with the data kept (an RDB reload: a new hash seed, so the
// cursor means nothing there) in the middle of a walk: the walk notices
// (run_id) and starts over, so no key present throughout is missed.
func TestPassSurvivesARestartThatKeepsTheData(t *testing.T) {
	r := testRedis(t)
	ctx := context.Background()
	rdb := r.Client()
	defer rdb.Close()
	fill(t, ctx, rdb, "k:", 40000)
	iv := newInvalidator(t, Options{URL: r.URL(), ScanCount: 10, MaxBackoff: 100 * time.Millisecond})
	want := countMatching(t, ctx, rdb, "k:1*")
	p := iv.StartPass(ctx, 1, []mapping.Invalidation{pat("k:1*")})
	deadline := time.Now().Add(30 * time.Second)
	for countMatching(t, ctx, rdb, "k:1*") > want*9/10 {
		if time.Now().After(deadline) {
			t.Fatal("the walk removed nothing in 30s")
		}
		time.Sleep(time.Millisecond)
	}
	if err := rdb.Save(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := r.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	left := countMatching(t, ctx, rdb, "k:1*")
	if left == 0 {
		t.Fatal("the restarted server has no k:1* key: the test restarted too late")
	}
	st, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if n := countMatching(t, ctx, rdb, "k:1*"); n != 0 {
		t.Errorf("%d keys matching k:1* left after the restart (%d there when it came back; attempts %d)", n, left, st.Attempts)
	}
	if st.Attempts < 2 {
		t.Errorf("attempts %d: the walk did not start over on the restarted server", st.Attempts)
	}
}

func TestParseServerInfo(t *testing.T) {
	for _, tt := range []struct {
		text string
		want serverInfo
	}{
		{"# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\nrun_id:0123456789abcdef0123456789abcdef01234567\r\nexecutable:/usr/bin/redis-server\r\n", serverInfo{runID: "0123456789abcdef0123456789abcdef01234567", oneTable: true}},
		{"# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\nrun_id:0123456789abcdef0123456789abcdef01234567\r\n", serverInfo{runID: "0123456789abcdef0123456789abcdef01234567"}}, // not known to be Redis
		{"redis_mode:standalone\r\nrun_id:abc\r\nexecutable:/x\r\n", serverInfo{runID: "abc"}},
		{"# Server\r\nredis_mode:cluster\r\nrun_id:abc\r\n", serverInfo{runID: "abc"}},
		{"# Server\r\nredis_mode:sentinel\r\nrun_id:abc\r\n", serverInfo{runID: "abc"}},
		{"redis_mode:standalone\r\n", serverInfo{}},
		{"dragonfly_version:df-v1\r\nredis_mode:standalone\r\nrun_id:x\r\n", serverInfo{runID: "x"}},
		{"", serverInfo{}},
	} {
		if got := parseServerInfo(tt.text); got != tt.want {
			t.Errorf("parseServerInfo(%q) = %+v, want %+v", tt.text, got, tt.want)
		}
	}
}

// A page whose scripts Redis lost (SCRIPT FLUSH, a new server) is sent
// again, rebuilt: go-redis empties a pipeline it ran, so sending the same
// one again would send nothing and the page's bumps would be lost.
func TestPassPageAfterNoScript(t *testing.T) {
	r := testRedis(t)
	ctx := context.Background()
	rdb := r.Client()
	defer rdb.Close()
	fill(t, ctx, rdb, "v:", 50)
	iv := newInvalidator(t, Options{URL: r.URL()})
	bump := mapping.Invalidation{Action: mapping.Bump, Key: "v:*", Pattern: true, Version: 7, Aux: mapping.KeyFormat{Suffix: ":ver"}}
	if _, err := iv.ApplyPass(ctx, 1, []mapping.Invalidation{bump}); err != nil {
		t.Fatal(err)
	}
	rdb.ScriptFlush(ctx)
	bump.Version = 9
	if _, err := iv.ApplyPass(ctx, 2, []mapping.Invalidation{bump}); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if v := rdb.Get(ctx, "v:"+strconv.Itoa(i)+":ver").Val(); v != "9" {
			t.Fatalf("v:%d:ver = %q after a pass that met NOSCRIPT, want 9", i, v)
		}
	}
}

// A pass before this one that failed in an earlier run (its context
// ended: the pipeline stopped) does not fail the passes of the next run;
// one of the same run (same context) does, and records nothing.
func TestPassAfterAFailedOne(t *testing.T) {
	r := testRedis(t)
	ctx := context.Background()
	rdb := r.Client()
	defer rdb.Close()
	fill(t, ctx, rdb, "x:", 20000)
	iv := newInvalidator(t, Options{URL: r.URL(), Watermark: "wm", ScanCount: 10})
	old, cancel := context.WithCancel(ctx)
	a := iv.StartPass(old, 0x100, []mapping.Invalidation{pat("x:*")})
	b := iv.StartPass(old, 0x200, nil)
	cancel()
	if _, err := a.Wait(); err == nil {
		t.Fatal("a pass whose context ended returned nil")
	}
	if _, err := b.Wait(); err == nil {
		t.Fatal("a pass after a failed one of the same run returned nil")
	}
	if v := rdb.Get(ctx, "wm").Val(); v != "" {
		t.Errorf("watermark %q written by a run that failed", v)
	}
	if _, err := iv.ApplyPass(ctx, 0x50, []mapping.Invalidation{pat("nothing:*")}); err != nil {
		t.Fatalf("the next run's pass: %v", err)
	}
	if v := rdb.Get(ctx, "wm").Val(); v != wal.LSN(0x50).String() {
		t.Errorf("watermark %q, want %s", v, wal.LSN(0x50))
	}
	iv.Close()
	if _, err := iv.ApplyPass(ctx, 0x60, []mapping.Invalidation{pat("x:*")}); err == nil {
		t.Error("a pass after Close returned nil")
	}
}
