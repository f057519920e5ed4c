package e2e

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/walbust/walbust/cacheaside"
	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

// readYourWritesClusterDeps: items' own key fenced, as in the standalone
// test; the tombstones land on whichever master holds each key's slot,
// and the positions on whichever holds theirs.
const readYourWritesClusterDeps = `version: 1
tables:
  public.items:
    action: fence
    keys: ["item:{id}"]
`

// TestReadYourWritesCluster: TestReadYourWrites with walbust on a 3-master
// Redis Cluster. After COMMIT, pg_current_wal_insert_lsn(), then
// WaitApplied through a cluster client, then a read through the cache sees
// the write; a write no rule maps still ends the wait, through the idle
// position.
func TestReadYourWritesCluster(t *testing.T) {
	cluster := startRedisCluster(t)
	f := newFaultEnv(t, faultOptions{cluster: cluster, deps: readYourWritesClusterDeps, items: 3})
	f.startStreaming("walbust")
	c, err := cacheaside.New(f.rdb, cacheaside.Options{Wait: cacheaside.WaitOptions{Slot: faultSlot}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(f.ctx, time.Minute)
	defer cancel()
	loads := 0
	get := func(id int) string {
		t.Helper()
		v, err := c.Get(ctx, "item:"+strconv.Itoa(id), func(ctx context.Context, _ cacheaside.Observation) ([]byte, error) {
			loads++
			var v int64
			if err := f.tryQuery(10*time.Second, `SELECT v FROM items WHERE id = $1`, []any{id}, &v); err != nil {
				return nil, err
			}
			return []byte(strconv.FormatInt(v, 10)), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return string(v)
	}
	for id := 1; id <= 3; id++ {
		if v := get(id); v != "0" {
			t.Fatalf("first read of item:%d %q, want 0", id, v)
		}
	}
	if before := loads; get(1) != "0" || loads != before {
		t.Fatalf("second read of item:1 was not served from the cache (%d loads, was %d)", loads, before)
	}
	for i, v := range []int{5, 6, 7} {
		id := i%3 + 1
		f.exec(`UPDATE items SET v = $1 WHERE id = $2`, v, id)
		lsn := wal.LSN(f.currentLSN())
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		start := time.Now()
		err := c.WaitApplied(wctx, lsn)
		wcancel()
		if err != nil {
			t.Fatalf("write %d: WaitApplied(%s): %v", i, lsn, err)
		}
		t.Logf("write %d (item:%d, slot %d): WaitApplied(%s) returned after %v", i, id,
			f.rdb.ClusterKeySlot(ctx, "item:"+strconv.Itoa(id)).Val(), lsn, time.Since(start))
		if got := get(id); got != strconv.Itoa(v) {
			t.Fatalf("write %d: read of item:%d after WaitApplied %q, want %d (the cache served the old row)", i, id, got, v)
		}
	}
	for _, k := range []string{protocol.AppliedKey(faultSlot), protocol.SettledKey(faultSlot)} {
		if mark := f.rdb.Get(ctx, k).Val(); mark == "" {
			t.Errorf("no %s", k)
		}
	}

	// A table no rule maps (filler is not published): no batch, no event;
	// the idle position must still pass the write within a bound.
	f.exec(`INSERT INTO filler (pad) VALUES ('hello')`)
	lsn := wal.LSN(f.currentLSN())
	start := time.Now()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	err = c.WaitApplied(wctx, lsn)
	wcancel()
	if err != nil {
		t.Fatalf("WaitApplied after a write to an unmapped table: %v (after %v)", err, time.Since(start))
	}
	t.Logf("unmapped write: WaitApplied returned after %v", time.Since(start))
}
