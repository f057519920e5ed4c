package invalidator

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

func pat(key string) mapping.Invalidation {
	return mapping.Invalidation{Action: mapping.Delete, Key: key, Pattern: true}
}

var indexedTemplate = &mapping.Template{Source: "search:{owner_id}:*", Indexed: true}
var indexedScanTemplate = &mapping.Template{Source: "search:{owner_id}:*", Indexed: true, AlsoScan: true}

func TestCoalescePatterns(t *testing.T) {
	bump := func(key string, v uint64) mapping.Invalidation {
		return mapping.Invalidation{Action: mapping.Bump, Key: key, Pattern: true, Version: wal.LSN(v), Aux: mapping.KeyFormat{Suffix: ":v"}}
	}
	withT := func(inv mapping.Invalidation, tm *mapping.Template) mapping.Invalidation {
		inv.Template = tm
		return inv
	}
	for _, tt := range []struct {
		name string
		in   []mapping.Invalidation
		want []string // "action key version"
	}{
		{"empty", nil, nil},
		{"direct keys dropped", []mapping.Invalidation{{Key: "k:1"}, pat("p:*")}, []string{"delete p:* 0"}},
		{"duplicates once, first-seen order", []mapping.Invalidation{pat("b:*"), pat("a:*"), pat("b:*"), pat("a:*")}, []string{"delete b:* 0", "delete a:* 0"}},
		{"escaped and unescaped differ", []mapping.Invalidation{pat(`a\*:*`), pat("a*:*")}, []string{`delete a\*:* 0`, "delete a*:* 0"}},
		{"the latest version wins", []mapping.Invalidation{bump("v:*", 300), bump("v:*", 500), bump("v:*", 400)}, []string{"bump v:* 500"}},
		{"actions kept apart", []mapping.Invalidation{pat("x:*"), bump("x:*", 7)}, []string{"delete x:* 0", "bump x:* 7"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, inv := range CoalescePatterns(tt.in) {
				got = append(got, fmt.Sprintf("%s %s %d", inv.Action, inv.Key, inv.Version))
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
	// Indexed and scanned forms of one pattern: the scanning one wins, so
	// keys written without cacheaside are still found.
	got := CoalescePatterns([]mapping.Invalidation{withT(pat("s:1:*"), indexedTemplate), withT(pat("s:1:*"), indexedScanTemplate)})
	if len(got) != 1 || !alsoScan(got[0]) {
		t.Errorf("indexed then indexed+scan coalesced to %+v", got)
	}
}

// The matcher must find exactly what trying protocol.Match (Redis's MATCH)
// with every pattern finds.
func TestMatcherAgreesWithMatch(t *testing.T) {
	patterns := []string{
		"search:1:*", "search:12:*", `search:a\*\?\[:*`, "search:*", "*:x", "*", "exact", `lit\\`, "s[ab]:?",
		`search:\[1\]:*`, "h?llo", "", "search:1:[^a]*",
	}
	keys := []string{
		"search:1:a", "search:12:b", "search:a*?[:q", "search:aXY[:q", "search:a:q", "a:x", "exact", "exact2", `lit\`,
		"sa:1", "sc:1", "search:[1]:z", "search:1]:z", "hello", "hallo", "", "search:1:ab", "search:1:", "s",
	}
	var invs []mapping.Invalidation
	for _, p := range patterns {
		invs = append(invs, pat(p))
	}
	m := newMatcher(invs)
	for _, k := range keys {
		var got, want []string
		m.each(k, func(e *matchEntry) { got = append(got, e.inv.Key) })
		for _, p := range patterns {
			if protocol.Match(p, k) {
				want = append(want, p)
			}
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("key %q: matcher found %q, Match %q", k, got, want)
		}
	}
	if m.filter != "" {
		t.Errorf("filter %q with a pattern that has no literal prefix", m.filter)
	}
	if f := newMatcher([]mapping.Invalidation{pat("search:1:*"), pat(`search:a\*:*`)}).filter; f != "search:*" {
		t.Errorf("filter %q, want search:*", f)
	}
	if f := newMatcher([]mapping.Invalidation{pat(`a\*b:1:*`), pat(`a\*b:2:*`)}).filter; f != `a\*b:*` {
		t.Errorf("filter %q, want the common prefix glob-escaped", f)
	}
}

func TestLiteralPrefix(t *testing.T) {
	for p, want := range map[string]string{"search:1:*": "search:1:", `a\*b?`: "a*b", "[x]": "", "plain": "plain", `t\`: `t\`, `a\\*`: `a\`} {
		if got := LiteralPrefix(p); got != want {
			t.Errorf("LiteralPrefix(%q) = %q, want %q", p, got, want)
		}
	}
}

// One pass serves many patterns, exactly: a glob-escaped row value only
// matches its own keys; indexed families are served from their sets; a
// replay is harmless; a draining set left by a failed pass is finished.
func TestApplyPass(t *testing.T) {
	r := testRedis(t)
	ctx := context.Background()
	rdb := r.Client()
	defer rdb.Close()
	iv := newInvalidator(t, Options{URL: r.URL(), Watermark: "wm", ScanCount: 100})
	pipe := rdb.Pipeline()
	for i := range 2000 {
		pipe.Set(ctx, "unrelated:"+strconv.Itoa(i), "v", 0)
	}
	for _, k := range []string{"search:1:a", "search:1:b", "search:12:a", "search:a*?[:q", "search:aXY[:q", "search:a:q", "page:1"} {
		pipe.Set(ctx, k, "v", 0)
	}
	// An indexed family, filled as cacheaside does, and one key of it
	// written by other means (found only with also_scan).
	idx := protocol.IndexKey("feed:7:")
	pipe.Set(ctx, "feed:7:a", "v", time.Hour)
	pipe.Set(ctx, "feed:7:b", "v", time.Hour)
	pipe.SAdd(ctx, idx, "feed:7:a", "feed:7:b")
	pipe.Set(ctx, "feed:7:stray", "v", 0)
	pipe.Set(ctx, "feed:8:a", "v", 0)
	pipe.SAdd(ctx, protocol.IndexKey("feed:8:"), "feed:8:a")
	pipe.Set(ctx, "page:1:v", "3", 0)
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	feed := pat("feed:7:*")
	feed.Template = indexedTemplate
	invs := []mapping.Invalidation{
		pat("search:1:*"), pat(`search:a\*\?\[:*`), pat("search:1:*"), feed,
		{Action: mapping.Bump, Key: "page:*", Pattern: true, Version: 9, Aux: mapping.KeyFormat{Suffix: ":v"}},
	}
	st, err := iv.ApplyPass(ctx, 0x100, invs)
	if err != nil {
		t.Fatal(err)
	}
	if st.Patterns != 4 || st.IndexHits != 2 || !st.Scanned {
		t.Errorf("stats %+v, want 4 distinct patterns, 2 index hits, a scan", st)
	}
	gone := []string{"search:1:a", "search:1:b", "search:a*?[:q", "feed:7:a", "feed:7:b", idx, protocol.DrainingKey("feed:7:")}
	kept := []string{"search:12:a", "search:aXY[:q", "search:a:q", "feed:7:stray", "feed:8:a", protocol.IndexKey("feed:8:"), "unrelated:5"}
	if n := countExisting(t, ctx, rdb, gone); n != 0 {
		t.Errorf("%d of %q left", n, gone)
	}
	for _, k := range kept {
		if rdb.Exists(ctx, k).Val() != 1 {
			t.Errorf("%s removed by the pass", k)
		}
	}
	if v := rdb.Get(ctx, "page:1:v").Val(); v != "9" {
		t.Errorf("page:1:v = %q, want the bumped version 9 (and the version key not treated as a cache entry)", v)
	}
	if v := rdb.Get(ctx, "wm").Val(); v != "0/100" {
		t.Errorf("watermark %q after the pass", v)
	}
	// A replay: nothing left to do, nothing else removed.
	if _, err := iv.ApplyPass(ctx, 0x100, invs); err != nil {
		t.Fatal(err)
	}
	for _, k := range kept {
		if rdb.Exists(ctx, k).Val() != 1 {
			t.Errorf("%s removed by the replay", k)
		}
	}
	// A pass that failed after draining: the draining set is finished by
	// the retry, and keys filled since are in a fresh index, untouched.
	draining := protocol.DrainingKey("feed:8:")
	rdb.Set(ctx, "feed:8:b", "v", 0)
	rdb.SAdd(ctx, draining, "feed:8:b")
	feed8 := pat("feed:8:*")
	feed8.Template = indexedScanTemplate
	if st, err = iv.ApplyPass(ctx, 0x200, []mapping.Invalidation{feed8}); err != nil {
		t.Fatal(err)
	}
	if n := countExisting(t, ctx, rdb, []string{"feed:8:a", "feed:8:b", draining, protocol.IndexKey("feed:8:")}); n != 0 {
		t.Errorf("%d keys of feed:8: left", n)
	}
	if st.IndexHits != 2 {
		t.Errorf("%d index hits, want 2 (the index and what a failed pass left draining)", st.IndexHits)
	}
}

// A Redis that goes away mid-pass: the pass keeps retrying from the start
// and returns only once it has run to the end against the restarted
// server.
func TestApplyPassRetriesFromTheStart(t *testing.T) {
	r := testRedis(t)
	ctx := context.Background()
	rdb := r.Client()
	defer rdb.Close()
	failures := 0
	iv := newInvalidator(t, Options{URL: r.URL(), ScanCount: 10, MaxBackoff: 100 * time.Millisecond, OnResult: func(err error) {
		if err != nil {
			failures++
		}
	}})
	pipe := rdb.Pipeline()
	for i := range 20000 {
		pipe.Set(ctx, "k:"+strconv.Itoa(i), "v", 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := iv.ApplyPass(ctx, 1, []mapping.Invalidation{pat("k:1*")})
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	// Kill walbust's connections mid-pass.
	for range 5 {
		_ = rdb.Do(ctx, "client", "kill", "type", "normal", "skipme", "yes").Err()
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the pass never completed")
	}
	var left []string
	iter := rdb.Scan(ctx, 0, "k:1*", 1000).Iterator()
	for iter.Next(ctx) {
		left = append(left, iter.Val())
	}
	if len(left) != 0 {
		t.Errorf("%d keys matching k:1* left after the pass (failed attempts: %d)", len(left), failures)
	}
	t.Logf("failed attempts before the pass completed: %d", failures)
}

func TestNextCount(t *testing.T) {
	for _, tt := range []struct {
		count    int64
		returned int
		want     int64
	}{
		{1000, 0, 2000},    // empty pages: walk more per call
		{2000, 10, 4000},   // up to 4x
		{4000, 0, 4000},    // not beyond
		{4000, 3000, 2000}, // full pages: back down
		{1000, 900, 1000},  // never below ScanCount
		{4000, 1000, 4000}, // in between: unchanged
	} {
		if got := nextCount(tt.count, 1000, tt.returned); got != tt.want {
			t.Errorf("nextCount(%d, 1000, %d) = %d, want %d", tt.count, tt.returned, got, tt.want)
		}
	}
}

// An indexed family that is deleted (not also scanned) goes with the
// direct keys of its batch: one script deletes the members, those a failed
// pass left draining, and both sets; keys not in the index stay.
func TestApplyInlinesIndexedDeletes(t *testing.T) {
	r := testRedis(t)
	ctx := context.Background()
	rdb := r.Client()
	defer rdb.Close()
	iv := newInvalidator(t, Options{URL: r.URL(), Watermark: "wm"})
	idx, draining := protocol.IndexKey("feed:7:"), protocol.DrainingKey("feed:7:")
	pipe := rdb.Pipeline()
	for i := range 2500 { // more than one UNLINK of 1000
		k := "feed:7:" + strconv.Itoa(i)
		pipe.Set(ctx, k, "v", time.Hour)
		pipe.SAdd(ctx, idx, k)
	}
	pipe.Set(ctx, "feed:7:left", "v", 0)
	pipe.SAdd(ctx, draining, "feed:7:left")
	pipe.Set(ctx, "feed:7:stray", "v", 0)
	pipe.Set(ctx, "order:1", "v", 0)
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	feed := pat("feed:7:*")
	feed.Template = indexedTemplate
	if !Inline(feed) {
		t.Fatal("an indexed delete pattern is not inlined")
	}
	rdb.ScriptFlush(ctx) // the script is loaded on NOSCRIPT, in the pipeline too
	st, err := iv.ApplyBatch(ctx, 0x300, []mapping.Invalidation{{Action: mapping.Delete, Key: "order:1"}, feed})
	if err != nil {
		t.Fatal(err)
	}
	if st.IndexHits != 2501 || st.Patterns != 1 || st.Scanned || st.Keys != 1 {
		t.Errorf("stats %+v, want 2501 index hits of 1 pattern, 1 key, no scan", st)
	}
	if n := countMatching(t, ctx, rdb, "feed:7:[0-9]*") + countExisting(t, ctx, rdb, []string{"feed:7:left", idx, draining, "order:1"}); n != 0 {
		t.Errorf("%d keys of the family, its sets or the direct key left", n)
	}
	if rdb.Exists(ctx, "feed:7:stray").Val() != 1 {
		t.Error("feed:7:stray, not in the index, was removed")
	}
	if v := rdb.Get(ctx, "wm").Val(); v != wal.LSN(0x300).String() {
		t.Errorf("watermark %q", v)
	}
	for _, tm := range []*mapping.Template{indexedScanTemplate, nil} {
		p := pat("feed:7:*")
		p.Template = tm
		if Inline(p) {
			t.Errorf("template %+v inlined", tm)
		}
	}
	fence := pat("feed:7:*")
	fence.Template, fence.Action = indexedTemplate, mapping.Fence
	if Inline(fence) {
		t.Error("an indexed fence inlined: fences need a pass")
	}
}
