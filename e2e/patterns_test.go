package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/cacheaside"
	"github.com/walbust/walbust/protocol"
)

// patternDeps: items with a scanned pattern family and an indexed one,
// both keyed by the row's note, whose value may hold glob characters.
const patternDeps = `version: 1
tables:
  public.items:
    keys: ["item:{id}"]
    derived:
      - patterns:
          - "scan:{note}:*"
          - match: "idx:{note}:*"
            index: true
`

// The notes of the rows: one full of glob characters, and rows whose
// notes that value would match if it were not escaped.
var patternNotes = map[int64]string{1: "a*?[", 2: "aX[", 3: "ab", 4: "a*?[b", 5: `a\`}

func patternEnv(t *testing.T, o faultOptions) (*faultEnv, *faultProc) {
	t.Helper()
	o.deps, o.items = patternDeps, 10
	f := newFaultEnv(t, o)
	for id, note := range patternNotes {
		f.exec(`UPDATE items SET note = $2 WHERE id = $1`, id, note)
	}
	p := f.startStreaming("walbust")
	f.waitConfirmed(f.currentLSN(), invalidateTimeout)
	return f, p
}

// fillPatternKeys caches two keys of each family of every row: the scanned
// ones as any writer would, the indexed ones through cacheaside.
func fillPatternKeys(t *testing.T, f *faultEnv) (scanned, indexed map[int64][]string) {
	t.Helper()
	ctx := f.ctx
	c, err := cacheaside.New(f.rdb, cacheaside.Options{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	load := func(context.Context, cacheaside.Observation) ([]byte, error) { return []byte("v"), nil }
	scanned, indexed = map[int64][]string{}, map[int64][]string{}
	for id, note := range patternNotes {
		for q := range 2 {
			sk := fmt.Sprintf("scan:%s:q%d", note, q)
			if err := f.rdb.Set(ctx, sk, "v", time.Hour).Err(); err != nil {
				t.Fatal(err)
			}
			scanned[id] = append(scanned[id], sk)
			ik := fmt.Sprintf("idx:%s:q%d", note, q)
			if _, err := c.GetIndexed(ctx, "idx:"+note+":", ik, load); err != nil {
				t.Fatal(err)
			}
			indexed[id] = append(indexed[id], ik)
			if !f.rdb.SIsMember(ctx, protocol.IndexKey("idx:"+note+":"), ik).Val() {
				t.Fatalf("%s not in its family's index after GetIndexed", ik)
			}
		}
	}
	return scanned, indexed
}

func existing(t *testing.T, rdb redis.UniversalClient, keys []string) []string {
	t.Helper()
	var out []string
	for _, k := range keys {
		n, err := rdb.Exists(context.Background(), k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			out = append(out, k)
		}
	}
	return out
}

// checkOnly asserts that the keys of changed rows are gone and every other
// row's keys are still there.
func checkOnly(t *testing.T, f *faultEnv, changed map[int64]bool, families ...map[int64][]string) {
	t.Helper()
	for _, fam := range families {
		for id, keys := range fam {
			left := existing(t, f.rdb, keys)
			switch {
			case changed[id] && len(left) > 0:
				t.Errorf("row %d (note %q) changed but %q still cached", id, patternNotes[id], left)
			case !changed[id] && len(left) != len(keys):
				t.Errorf("row %d (note %q) unchanged but only %q of %q left", id, patternNotes[id], left, keys)
			}
		}
	}
}

// TestPatternInvalidationExact: a row value full of glob characters only
// removes its own keys, through SCAN and through the index alike; a
// replay (walbust restarted from an older checkpoint) is harmless.
func TestPatternInvalidationExact(t *testing.T) {
	f, p := patternEnv(t, faultOptions{})
	// A million other keys would slow the test; a few thousand still make
	// the SCAN take several pages.
	pipe := f.rdb.Pipeline()
	for i := range 5000 {
		pipe.Set(f.ctx, "other:"+strconv.Itoa(i), "v", 0)
	}
	if _, err := pipe.Exec(f.ctx); err != nil {
		t.Fatal(err)
	}
	scanned, indexed := fillPatternKeys(t, f)
	f.exec(`UPDATE items SET v = v + 1 WHERE id = 1`)
	f.waitConfirmed(f.currentLSN(), invalidateTimeout)
	checkOnly(t, f, map[int64]bool{1: true}, scanned, indexed)
	if f.rdb.Exists(f.ctx, protocol.IndexKey("idx:a*?[:"), protocol.DrainingKey("idx:a*?[:")).Val() != 0 {
		t.Error("the drained family's index or draining set is still there")
	}
	if n := f.rdb.DBSize(f.ctx).Val(); n < 5000 {
		t.Errorf("%d keys left in Redis: unrelated keys were removed", n)
	}
	// Several changes in quick succession: every family served, once each.
	f.exec(`UPDATE items SET v = v + 1 WHERE id IN (3, 5)`)
	f.exec(`UPDATE items SET v = v + 1 WHERE id = 3`)
	f.waitConfirmed(f.currentLSN(), invalidateTimeout)
	checkOnly(t, f, map[int64]bool{1: true, 3: true, 5: true}, scanned, indexed)
	if strings.Contains(p.log(), `"level":"error"`) {
		t.Errorf("errors logged:\n%s", faultTail(p.log(), 20))
	}
}

// TestPatternRedisRestartMidPass: Redis restarts while a pass walks a large
// keyspace. Nothing is acknowledged while the pass cannot complete; the
// pass is retried from the start against the restarted server, and only
// then is the transaction confirmed.
func TestPatternRedisRestartMidPass(t *testing.T) {
	f, p := patternEnv(t, faultOptions{})
	// Enough keys that a SCAN pass takes a while.
	pipe := f.rdb.Pipeline()
	for i := range 400000 {
		pipe.Set(f.ctx, "other:"+strconv.Itoa(i), "v", 0)
		if pipe.Len() == 10000 {
			if _, err := pipe.Exec(f.ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := pipe.Exec(f.ctx); err != nil {
		t.Fatal(err)
	}
	before := f.checkpointLSN()
	retries := p.count("retrying pattern pass")
	if err := f.rdb.ConfigResetStat(f.ctx).Err(); err != nil {
		t.Fatal(err)
	}
	f.exec(`UPDATE items SET v = v + 1 WHERE id = 2`)
	commit := f.currentLSN()
	// Wait for the pass to be under way: SCANs have started.
	deadline := time.Now().Add(invalidateTimeout)
	for !regexp.MustCompile(`cmdstat_scan:calls=[1-9]`).MatchString(f.rdb.Info(f.ctx, "commandstats").Val()) {
		if time.Now().After(deadline) {
			t.Fatal("no SCAN within the timeout: the pass never started")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := f.rds.Stop(); err != nil {
		t.Fatal(err)
	}
	f.waitLog(p, "retrying pattern pass", retries+1, invalidateTimeout)
	// Down: whatever the pass had done, the transaction is not confirmed.
	time.Sleep(1500 * time.Millisecond)
	if s, err := f.slot(); err != nil || s.confirmed >= commit {
		t.Fatalf("slot confirmed %s (err %v) while the pass for the commit before %s could not complete", faultLSN(s.confirmed), err, faultLSN(commit))
	}
	if ck := f.checkpointLSN(); ck >= commit {
		t.Fatalf("checkpoint %s passed the transaction whose pass failed (before: %s)", faultLSN(ck), faultLSN(before))
	}
	ctx, cancel := context.WithTimeout(f.ctx, time.Minute)
	defer cancel()
	if err := f.rds.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	f.waitConfirmed(commit, invalidateTimeout)
	f.waitLog(p, "redis recovered; pattern pass applied", 1, invalidateTimeout)
	// The restarted server is empty; the keys filled now are the next
	// change's, and that change removes them.
	scanned, indexed := fillPatternKeys(t, f)
	f.exec(`UPDATE items SET v = v + 1 WHERE id = 4`)
	f.waitConfirmed(f.currentLSN(), invalidateTimeout)
	checkOnly(t, f, map[int64]bool{4: true}, scanned, indexed)
}

// TestPatternCluster: both paths in cluster mode. Keys are spread over the
// masters, and the index sets live in other slots than their members.
func TestPatternCluster(t *testing.T) {
	cluster := startRedisCluster(t)
	f, _ := patternEnv(t, faultOptions{cluster: cluster})
	scanned, indexed := fillPatternKeys(t, f)
	f.exec(`UPDATE items SET v = v + 1 WHERE id IN (1, 3)`)
	f.waitConfirmed(f.currentLSN(), invalidateTimeout)
	checkOnly(t, f, map[int64]bool{1: true, 3: true}, scanned, indexed)
}
