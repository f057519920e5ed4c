package e2e

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walbust/walbust/cacheaside"
	"github.com/walbust/walbust/protocol"
)

// Read your writes: after COMMIT, pg_current_wal_insert_lsn(), then
// WaitApplied, then a read through the cache sees the write. A write no
// rule maps (no event, no batch) still ends the wait, through the idle
// position; `walbust wait` exits 0, 1 or 2. (The throwaway server runs with
// synchronous_commit=off, so each wait takes up to wal_writer_delay.)
func TestReadYourWrites(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed, extraSchema: `CREATE TABLE notes (id int PRIMARY KEY, body text);`, deps: `version: 1
tables:
  public.products:
    action: fence
    keys: ["product:{id}"]
  public.categories:
    keys: ["category:{id}"]
`})
	c, err := cacheaside.New(e.rdb, cacheaside.Options{Wait: cacheaside.WaitOptions{Slot: e.name}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	load := func(ctx context.Context, _ cacheaside.Observation) ([]byte, error) {
		var price int
		if err := e.db.QueryRow(ctx, `SELECT price_cents FROM products WHERE id = 1`).Scan(&price); err != nil {
			return nil, err
		}
		return []byte(strconv.Itoa(price)), nil
	}
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	get := func() string {
		t.Helper()
		v, err := c.Get(ctx, "product:1", load)
		if err != nil {
			t.Fatal(err)
		}
		return string(v)
	}
	if v := get(); v != "999" {
		t.Fatalf("first read %q, want 999", v)
	}
	for i, price := range []int{5, 6, 7} {
		e.exec(`UPDATE products SET price_cents = $1 WHERE id = 1`, price)
		lsn := e.opsWALInsertLSN()
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		start := time.Now()
		err := c.WaitApplied(wctx, lsn)
		wcancel()
		if err != nil {
			t.Fatalf("write %d: WaitApplied(%s): %v", i, lsn, err)
		}
		t.Logf("write %d: WaitApplied(%s) returned after %v", i, lsn, time.Since(start))
		if v := get(); v != strconv.Itoa(price) {
			t.Fatalf("write %d: read after WaitApplied %q, want %d (the cache served the old row)", i, v, price)
		}
	}
	if mark := e.rdb.Get(ctx, protocol.AppliedKey(e.name)).Val(); mark == "" {
		t.Error("no applied watermark")
	}

	// Unmapped (and unpublished) table: no batch, no event; the idle
	// position must still pass the write within a bound.
	e.exec(`INSERT INTO notes VALUES (1, 'hello')`)
	lsn := e.opsWALInsertLSN()
	start := time.Now()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	err = c.WaitApplied(wctx, lsn)
	wcancel()
	if err != nil {
		t.Fatalf("WaitApplied after a write to an unmapped table: %v (after %v)", err, time.Since(start))
	}
	t.Logf("unmapped write: WaitApplied returned after %v", time.Since(start))

	// walbust wait.
	lsn = e.opsWALInsertLSN()
	if out, errOut, code := e.opsWalbust("wait", "--lsn", lsn.String(), "--timeout", "10s"); code != 0 {
		t.Errorf("walbust wait --lsn %s exited %d, want 0:\n%s%s", lsn, code, out, errOut)
	}
	out, errOut, code := e.opsWalbust("wait", "--lsn", "FFFF/0", "--timeout", "300ms")
	if code != 1 || !strings.Contains(errOut, "applied position is") {
		t.Errorf("walbust wait for a future LSN exited %d, want 1 with the current position:\n%s%s", code, out, errOut)
	}
	for _, args := range [][]string{{"--lsn", "nonsense"}, {"--timeout", "1s"}, {"--lsn", "0/1", "--timeout", "0s"}} {
		if out, errOut, code := e.opsWalbust("wait", args...); code != 2 {
			t.Errorf("walbust wait %q exited %d, want 2:\n%s%s", args, code, out, errOut)
		}
	}
}

// With replicas: the settled position, which WaitApplied waits for, moves
// only once the re-fence is done, after the replica replayed the write;
// the applied position moves with the first fence.
func TestReadYourWritesWaitsForRefence(t *testing.T) {
	const delay = 1500 * time.Millisecond
	e, replica := refenceEnv(t, delay)
	e.regStartWith("--replica-urls", replica.URL(e.name), "--replica-wait-max", "30s")
	c, err := cacheaside.New(e.rdb, cacheaside.Options{Wait: cacheaside.WaitOptions{Slot: e.name}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	e.cache("product:1")
	e.exec("UPDATE products SET price_cents = 1 WHERE id = 1")
	committed := time.Now()
	lsn := e.opsWALInsertLSN()
	eventually(t, invalidateTimeout, func() bool {
		v, _ := e.regGet("product:1")
		_, err := protocol.ParseTombstone(v)
		return err == nil
	}, func() string { v, _ := e.regGet("product:1"); return "product:1 = " + v + ", want a tombstone" })
	first, _ := e.regGet("product:1")
	ctx, cancel := context.WithTimeout(e.ctx, delay+invalidateTimeout)
	defer cancel()
	if err := c.WaitApplied(ctx, lsn); err != nil {
		t.Fatalf("WaitApplied(%s): %v", lsn, err)
	}
	waited := time.Since(committed)
	if waited < delay-200*time.Millisecond {
		t.Errorf("WaitApplied returned %v after the commit, before the replica could replay it (apply delay %v)", waited, delay)
	}
	if v, _ := e.regGet("product:1"); v == first {
		t.Errorf("WaitApplied returned while product:1 still held the first tombstone: the re-fence had not happened")
	}
	applied := opsLSN(t, e.rdb.Get(e.ctx, protocol.AppliedKey(e.name)).Val())
	settled := opsLSN(t, e.rdb.Get(e.ctx, protocol.SettledKey(e.name)).Val())
	if settled > applied || settled < lsn {
		t.Errorf("settled %s, applied %s, lsn %s: want lsn <= settled <= applied", settled, applied, lsn)
	}
	t.Logf("WaitApplied returned %v after the commit (replica apply delay %v)", waited, delay)
}
