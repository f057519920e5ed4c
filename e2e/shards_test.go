package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// shardsConfig splits faultDeps's two tables into two shards.
const shardsConfig = `shards:
  items:
    tables: [public.items]
  bulk:
    tables: [public.bulk]
`

// TestShardsDrainBacklog: one deps.yaml, two shards. setup creates a slot
// and a publication per shard, each publishing only its shard's tables;
// run insists on being told its shard; two walbusts drain a backlog side by
// side, and every key of a changed row is gone. The same backlog is then
// drained by one unsharded walbust, and both rates are reported.
func TestShardsDrainBacklog(t *testing.T) {
	const rows, perTable = 12000, 10000 // rows per table; single-row transactions per table
	e := newFaultEnv(t, faultOptions{items: rows, bulkRows: rows, config: shardsConfig})

	// One unsharded instance to compare with: its own slot and publication,
	// made before the backlog so that it sees the same changes.
	base, err := os.ReadFile(e.configPath)
	if err != nil {
		t.Fatal(err)
	}
	single := strings.NewReplacer("slot: "+faultSlot, "slot: walbust_single", "publication: "+faultSlot, "publication: walbust_single",
		"path: checkpoint", "path: checkpoint.single").Replace(strings.Split(string(base), "shards:")[0])
	singlePath := filepath.Join(e.dir, "single.yaml")
	e.writeFile("single.yaml", single)
	if out, code := e.oneShot(time.Minute, "setup", "--config", singlePath); code != 0 {
		t.Fatalf("setup of the unsharded instance exited %d:\n%s", code, out)
	}

	out, code := e.oneShot(time.Minute, "setup")
	if code != 0 {
		t.Fatalf("setup exited %d:\n%s", code, out)
	}
	for _, want := range []string{"shard items: found publication walbust_faults_items for public.items", "shard items: found slot walbust_faults_items",
		"shard bulk: found publication walbust_faults_bulk for public.bulk", "shard bulk: found slot walbust_faults_bulk"} {
		if !strings.Contains(out, want) {
			t.Errorf("setup (run again) does not say %q:\n%s", want, out)
		}
	}
	pubs := map[string]string{}
	conn, err := e.connect(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := conn.Query(e.ctx, `SELECT p.pubname, coalesce(string_agg(t.schemaname || '.' || t.tablename, ',' ORDER BY t.tablename), '')
FROM pg_publication p LEFT JOIN pg_publication_tables t USING (pubname) GROUP BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var name, tables string
		if err := rs.Scan(&name, &tables); err != nil {
			t.Fatal(err)
		}
		pubs[name] = tables
	}
	conn.Close(context.Background())
	want := map[string]string{"walbust_faults_items": "public.items", "walbust_faults_bulk": "public.bulk", "walbust_single": "public.bulk,public.items"}
	if fmt.Sprint(pubs) != fmt.Sprint(want) {
		t.Errorf("publications %v, want %v (a shard publishes only its tables)", pubs, want)
	}

	out, code = e.oneShot(time.Minute, "run")
	if code != 2 || !strings.Contains(out, "defines shards (items, bulk)") || !strings.Contains(out, "--shard NAME") {
		t.Errorf("run without --shard: exit %d, want 2 and a message asking for --shard:\n%s", code, out)
	}
	out, code = e.oneShot(time.Minute, "validate")
	if code != 0 || !strings.Contains(out, "shard items: ") || !strings.Contains(out, "shard bulk: ") || strings.Count(out, "ok (1 tables)") != 2 {
		t.Errorf("validate: exit %d, want 0 and each shard ok with its one table:\n%s", code, out)
	}

	// The backlog, written while no walbust runs; the keys of every row
	// cached first.
	var touched, untouched []string
	for id := int64(1); id <= rows; id++ {
		keys := []string{fmt.Sprintf("item:%d", id), fmt.Sprintf("bulk:%d", id)}
		if id <= perTable {
			touched = append(touched, keys...)
		} else {
			untouched = append(untouched, keys...)
		}
	}
	cacheAll(t, e, append(touched, untouched...))
	begin := time.Now()
	writeBacklog(t, e, perTable)
	end := e.currentLSN()
	// A last write on each table, so that each shard has a transaction of
	// its own to confirm past end (a slot idle since its last transaction
	// is advanced by keepalives, on the status interval's clock).
	e.exec(`UPDATE items SET v = v + 1 WHERE id = $1`, perTable)
	e.exec(`UPDATE bulk SET v = v + 1 WHERE id = $1`, perTable)
	changes := 2 * perTable
	t.Logf("backlog: %d single-row transactions (%d per table) written in %v", changes, perTable, time.Since(begin).Round(time.Millisecond))

	// Two shards side by side.
	begin = time.Now()
	shards := []*faultProc{e.start("shard-items", "--shard", "items"), e.start("shard-bulk", "--shard", "bulk")}
	for _, slot := range []string{faultSlot + "_items", faultSlot + "_bulk"} {
		e.waitSlotConfirmed(slot, end, faultCatchUpTimeout)
	}
	sharded := time.Since(begin)
	if left := e.present(touched...); len(left) > 0 {
		t.Errorf("after both shards drained: %d keys of changed rows still cached, e.g. %s", len(left), left[0])
	}
	if left := e.present(untouched...); len(left) != len(untouched) {
		t.Errorf("keys of unchanged rows invalidated: %d of %d left", len(left), len(untouched))
	}
	for _, p := range shards {
		if code, took := p.term(faultStopBound); code != 0 {
			t.Errorf("%s: exit code %d %v after SIGTERM", p.name, code, took)
		}
		if !strings.Contains(p.log(), `"tables":1`) {
			t.Errorf("%s did not start with exactly its shard's one table", p.name)
		}
	}
	for _, cp := range []string{"checkpoint.items", "checkpoint.bulk"} {
		if _, err := os.Stat(filepath.Join(e.dir, cp)); err != nil {
			t.Errorf("shard checkpoint: %v", err)
		}
	}

	// One instance over the same backlog.
	cacheAll(t, e, touched)
	begin = time.Now()
	one := e.start("single", "--config", singlePath)
	e.waitSlotConfirmed("walbust_single", end, faultCatchUpTimeout)
	unsharded := time.Since(begin)
	if left := e.present(touched...); len(left) > 0 {
		t.Errorf("after the unsharded drain: %d keys of changed rows still cached", len(left))
	}
	if code, took := one.term(faultStopBound); code != 0 {
		t.Errorf("single: exit code %d %v after SIGTERM", code, took)
	}
	rate := func(d time.Duration) float64 { return float64(changes) / d.Seconds() }
	t.Logf("drain of %d row changes, process start to slot confirmed: two shards side by side %v (%.0f rows/s combined), one instance %v (%.0f rows/s): ratio %.2f",
		changes, sharded.Round(time.Millisecond), rate(sharded), unsharded.Round(time.Millisecond), rate(unsharded), rate(sharded)/rate(unsharded))
}

// cacheAll SETs keys in one pipeline.
func cacheAll(t *testing.T, e *faultEnv, keys []string) {
	t.Helper()
	pipe := e.rdb.Pipeline()
	for _, k := range keys {
		pipe.Set(e.ctx, k, "cached", 0)
	}
	if _, err := pipe.Exec(e.ctx); err != nil {
		t.Fatal(err)
	}
}

// writeBacklog updates rows 1..n of items and of bulk, one row per
// transaction, from four connections.
func writeBacklog(t *testing.T, e *faultEnv, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(e.ctx, e.pg.URL(faultDB))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			if _, err := conn.Exec(e.ctx, "SET synchronous_commit = off"); err != nil {
				errs <- err
				return
			}
			for id := w + 1; id <= n; id += 4 {
				for _, sql := range []string{`UPDATE items SET v = v + 1 WHERE id = $1`, `UPDATE bulk SET v = v + 1 WHERE id = $1`} {
					if _, err := conn.Exec(e.ctx, sql, id); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
