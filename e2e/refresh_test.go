package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

// refreshSchema: the category listing is built by a function, so a test can
// break it (and mend it) the way a bad migration would.
const refreshSchema = `
CREATE FUNCTION category_products(c bigint) RETURNS json LANGUAGE sql STABLE AS
  $$ SELECT json_agg(id ORDER BY id) FROM products WHERE category_id = c $$;
`

const refreshDeps = `version: 1
tables:
  public.products:
    derived:
      - keys: ["product:{id}"]
        action: refresh
        value: row
        ttl: 1h
        negative: {value: "null", ttl: 5m}
      - keys: ["category:{category_id}:products"]
        action: refresh
        ttl: 1h
        query: SELECT category_products($1) AS value
        args: [category_id]
  public.categories:
    keys: ["category:{id}"]
`

// The master-data story: a category's product list is refreshed in place
// on every change of its products, never deleted. When the query that
// builds it starts failing, the key keeps its last good value, flagged
// stale in its LSN key, the failure is counted, and the stream goes on;
// once the query works again, the next change refreshes it.
func TestRefreshMasterData(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed, deps: refreshDeps, extraSchema: refreshSchema})
	offset := e.regLogOffset()

	e.exec("UPDATE products SET price_cents = 5 WHERE id = 1")
	e.waitValue("category:1:products", "[1, 3]")
	e.waitValue("product:1", `{"id":"1","category_id":"1","name":"Dune","price_cents":"5"}`)
	lsn, _ := e.regGet("category:1:products:lsn")
	if strings.Contains(lsn, "stale") || !strings.Contains(lsn, "/") {
		t.Fatalf("category:1:products:lsn = %q, want a commit LSN", lsn)
	}
	if ttl := e.rdb.PTTL(e.ctx, "category:1:products").Val(); ttl < 50*time.Minute || ttl > 67*time.Minute {
		t.Errorf("TTL %v, want 1h ±10%%", ttl)
	}

	// The query breaks. The list keeps its value, flagged stale; the batch
	// is acknowledged: the row's own key, and later changes, go through.
	e.exec(`CREATE OR REPLACE FUNCTION category_products(c bigint) RETURNS json LANGUAGE plpgsql STABLE AS
	  $$ BEGIN RAISE EXCEPTION 'category_products is broken'; END $$`)
	e.exec("INSERT INTO products (id, category_id, name, price_cents) VALUES (4, 1, 'Persuasion', 899)")
	eventually(t, invalidateTimeout, func() bool {
		v, _ := e.regGet("category:1:products:lsn")
		return strings.Contains(v, " stale ")
	}, func() string { v, _ := e.regGet("category:1:products:lsn"); return "category:1:products:lsn = " + v })
	if v, _ := e.regGet("category:1:products"); v != "[1, 3]" {
		t.Errorf("category:1:products = %q, want the last good value [1, 3]", v)
	}
	e.waitValue("product:4", `{"id":"4","category_id":"1","name":"Persuasion","price_cents":"899"}`)
	e.fence() // the stream was not stalled
	if n := e.regMetric(0, `walbust_refresh_failures_total{table="public.products"}`); n < 1 {
		t.Errorf("walbust_refresh_failures_total = %v, want ≥ 1", n)
	}
	if len(e.regLogLines(offset, "refresh query failed", "category_products is broken")) == 0 {
		t.Errorf("no log line names the failed refresh query")
	}
	stale, _ := e.regGet("category:1:products:lsn")

	// The query works again: the next change refreshes the list.
	e.exec(strings.Replace(refreshSchema, "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
	e.exec("UPDATE products SET price_cents = 900 WHERE id = 4")
	e.waitValue("category:1:products", "[1, 3, 4]")
	if v, _ := e.regGet("category:1:products:lsn"); strings.Contains(v, "stale") || strings.HasPrefix(stale, v+" ") {
		t.Errorf("category:1:products:lsn = %q after recovery (was %q)", v, stale)
	}

	// DELETE: the row's key gets the negative marker; the list is refreshed.
	e.exec("DELETE FROM products WHERE id = 3")
	e.waitValue("product:3", "null")
	e.waitValue("category:1:products", "[1, 4]")
	// A move refreshes both lists.
	e.exec("UPDATE products SET category_id = 3 WHERE id = 4")
	e.waitValue("category:3:products", "[2, 4]")
	e.waitValue("category:1:products", "[1]")
}

func (e *env) waitValue(key, want string) {
	e.t.Helper()
	eventually(e.t, invalidateTimeout, func() bool { v, _ := e.regGet(key); return v == want },
		func() string {
			v, ok := e.regGet(key)
			return fmt.Sprintf("%s = %q (present %v), want %q", key, v, ok, want)
		})
}

// A bulk UPDATE of 10k rows under 200 concurrent readers: with refresh
// the readers' loader is (almost) never called, with delete it is called
// for every key.
func TestRefreshBulkUpdateReaders(t *testing.T) {
	if testing.Short() {
		t.Skip("bulk test")
	}
	const rows = 10_000
	loads := map[string]int64{}
	for _, action := range []string{"refresh", "delete"} {
		t.Run(action, func(t *testing.T) {
			deps := `version: 1
tables:
  public.products:
    derived:
      - keys: ["product:{id}"]
        action: refresh
        value: row
        ttl: 1h
  public.categories:
    keys: ["category:{id}"]
`
			if action == "delete" {
				deps = `version: 1
tables:
  public.products:
    keys: ["product:{id}"]
  public.categories:
    keys: ["category:{id}"]
`
			}
			e := newEnv(t, envOptions{deps: deps, seed: fmt.Sprintf(`
INSERT INTO categories (id, name) VALUES (1, 'books');
INSERT INTO products (id, category_id, name, price_cents) SELECT g, 1, 'p' || g, g FROM generate_series(1, %d) g;`, rows)})
			r := newBulkReaders(t, e, rows)
			r.pass(200) // warm the cache
			r.loads.Store(0)

			stop := make(chan struct{})
			var wg sync.WaitGroup
			for i := range 200 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for k := i * (rows / 200); ; k++ {
						select {
						case <-stop:
							return
						default:
						}
						r.get(k%rows + 1)
					}
				}()
			}
			start := time.Now()
			e.exec("UPDATE products SET price_cents = price_cents + 1000000")
			e.fence() // the update is applied
			applied := time.Since(start)
			time.Sleep(200 * time.Millisecond)
			close(stop)
			wg.Wait()
			r.pass(200) // every key read once more after the update
			if err := r.err(); err != nil {
				t.Fatal(err)
			}
			loads[action] = r.loads.Load()
			t.Logf("%s: %d loader calls, %d reads; update applied in %v", action, loads[action], r.reads.Load(), applied)
			if action == "refresh" {
				// A plain GET returns exactly what the reader would have cached.
				for id := 1; id <= rows; id += 97 {
					if v, _ := e.regGet(fmt.Sprintf("product:%d", id)); v != productJSON(id, 1, fmt.Sprintf("p%d", id), id+1_000_000) {
						t.Fatalf("product:%d = %q, want the updated row as a reader renders it", id, v)
					}
				}
			}
		})
	}
	if t.Failed() {
		return
	}
	if loads["delete"] < rows*9/10 {
		t.Errorf("delete: %d loader calls, want about %d (one per key)", loads["delete"], rows)
	}
	if loads["refresh"]*100 >= loads["delete"] {
		t.Errorf("refresh: %d loader calls, want < 1%% of delete's %d", loads["refresh"], loads["delete"])
	}
}

func productJSON(id, category int, name string, price int) string {
	return fmt.Sprintf(`{"id":"%d","category_id":"%d","name":%q,"price_cents":"%d"}`, id, category, name, price)
}

// bulkReaders are cache-aside readers of product:{id}: GET, and on a miss
// a counted load from Postgres and a SET NX (never over a value walbust
// wrote meanwhile).
type bulkReaders struct {
	e            *env
	rows         int
	pool         *pgxpool.Pool
	loads, reads atomic.Int64
	mu           sync.Mutex
	first        error
}

func newBulkReaders(t *testing.T, e *env, rows int) *bulkReaders {
	cfg, err := pgxpool.ParseConfig(pg.URL(e.name))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(e.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return &bulkReaders{e: e, rows: rows, pool: pool}
}

func (r *bulkReaders) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.first == nil && !errors.Is(err, context.Canceled) {
		r.first = err
	}
}

func (r *bulkReaders) err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.first
}

func (r *bulkReaders) get(id int) {
	ctx := r.e.ctx
	key := fmt.Sprintf("product:%d", id)
	r.reads.Add(1)
	_, err := r.e.rdb.Get(ctx, key).Result()
	if err == nil {
		return
	}
	if !errors.Is(err, redis.Nil) {
		r.fail(err)
		return
	}
	r.loads.Add(1)
	var category, price int
	var name string
	if err := r.pool.QueryRow(ctx, "SELECT category_id, name, price_cents FROM products WHERE id = $1", id).Scan(&category, &name, &price); err != nil {
		r.fail(err)
		return
	}
	if err := r.e.rdb.SetNX(ctx, key, productJSON(id, category, name, price), time.Hour).Err(); err != nil {
		r.fail(err)
	}
}

// pass reads every key once, with n readers.
func (r *bulkReaders) pass(n int) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := i + 1; id <= r.rows; id += n {
				r.get(id)
			}
		}()
	}
	wg.Wait()
}

// explainRefreshDeps adds a value template to refreshDeps's rules, so
// explain shows all three sources of a refreshed value.
const explainRefreshDeps = `version: 1
tables:
  public.products:
    derived:
      - keys: ["product:{id}"]
        action: refresh
        value: row
        ttl: 1h
        negative: {value: "null", ttl: 5m}
      - keys: ["product:{id}:title"]
        action: refresh
        value: "{name} ({id})"
        ttl: 10m
      - keys: ["category:{category_id}:products"]
        action: refresh
        ttl: 1h
        query: SELECT category_products($1) AS value
        args: [category_id]
  public.categories:
    keys: ["category:{id}"]
`

// explain shows what refresh rules would write for a change: per key the
// value's source (the row as JSON in table column order, the template
// rendered, or the query and the arguments it would run with), the TTL,
// the LSN key, and what a DELETE leaves; it writes nothing to Redis.
func TestRefreshExplain(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed, deps: explainRefreshDeps, extraSchema: refreshSchema, noStart: true})
	cached := []string{"product:1", "product:1:title", "category:1:products", "category:3:products"}
	e.cache(cached...)
	const dune = `{"id":1,"category_id":1,"name":"Dune","price_cents":999}`
	lsn := func(key string) string { return ", commit LSN in " + key + ":lsn, only over an older one" }
	query := func(key, arg string) string {
		return `write the value of the query "SELECT category_products($1) AS value" with $1="` + arg +
			`" (run after the commit, not by explain), ttl 1h0m0s ±10%` + lsn(key) +
			"; no row or NULL: delete; query fails: the value stays, flagged stale in " + key + ":lsn"
	}
	cases := []struct {
		name       string
		args       []string
		header     string
		want       []regExplainLine
		unrendered [][]string
	}{{
		name:   "update moving the product",
		args:   []string{"--op", "update", "--old", dune, "--new", strings.Replace(dune, `"category_id":1`, `"category_id":3`, 1)},
		header: "update public.products: 0 invalidation(s), 4 refreshed key(s), 0 rule(s) skipped, 0 lookup(s)",
		want: []regExplainLine{
			{"refresh", "key", "product:1", "deps.yaml:5:16", "derived[0]",
				`write the row as JSON {"id":"1","category_id":"3","name":"Dune","price_cents":"999"}, ttl 1h0m0s ±10%` + lsn("product:1")},
			{"refresh", "key", "product:1:title", "deps.yaml:10:16", "derived[1]",
				`write "Dune (1)" (value "{name} ({id})"), ttl 10m0s ±10%` + lsn("product:1:title")},
			{"refresh", "key", "category:1:products", "deps.yaml:14:16", "derived[2]", query("category:1:products", "1")},
			{"refresh", "key", "category:3:products", "deps.yaml:14:16", "derived[2]", query("category:3:products", "3")},
		},
	}, {
		name:   "delete",
		args:   []string{"--op", "delete", "--old", dune},
		header: "delete public.products: 0 invalidation(s), 3 refreshed key(s), 0 rule(s) skipped, 0 lookup(s)",
		want: []regExplainLine{
			{"refresh", "key", "product:1", "deps.yaml:5:16", "derived[0]", `the row was deleted: write the negative marker "null", ttl 5m0s` + lsn("product:1")},
			{"refresh", "key", "product:1:title", "deps.yaml:10:16", "derived[1]", "the row was deleted: delete" + lsn("product:1:title")},
			{"refresh", "key", "category:1:products", "deps.yaml:14:16", "derived[2]", query("category:1:products", "1")},
		},
	}, {
		name:   "delete with only the key given",
		args:   []string{"--op", "delete", "--old", `{"id":1}`},
		header: "delete public.products: 0 invalidation(s), 2 refreshed key(s), 0 rule(s) skipped, 0 lookup(s)",
		want: []regExplainLine{
			{"refresh", "key", "product:1", "deps.yaml:5:16", "derived[0]", `the row was deleted: write the negative marker "null", ttl 5m0s` + lsn("product:1")},
			{"refresh", "key", "product:1:title", "deps.yaml:10:16", "derived[1]", "the row was deleted: delete" + lsn("product:1:title")},
		},
		unrendered: [][]string{{"query arguments", "deps.yaml:17:16", "derived[2]", "missing from the old row: category_id"}},
	}}
	for _, c := range cases {
		out, code := e.walbust("explain", append([]string{"--table", "public.products"}, c.args...)...)
		if code != 0 {
			t.Errorf("%s: walbust explain exited %d:\n%s", c.name, code, out)
			continue
		}
		if !strings.Contains(out, c.header+"\n") {
			t.Errorf("%s: explain output lacks the summary %q:\n%s", c.name, c.header, out)
		}
		if got := regParseExplain(out); !slices.Equal(got, c.want) {
			t.Errorf("%s: explain printed\n%s\nwant the lines (in order)\n%q\ngot %q", c.name, out, c.want, got)
		}
	next:
		for _, words := range c.unrendered {
			for _, line := range strings.Split(out, "\n") {
				if regContainsAll(line, words) {
					continue next
				}
			}
			t.Errorf("%s: explain output has no line naming the unrendered key with %q:\n%s", c.name, words, out)
		}
	}
	// Nothing in Redis changed: no value written, no LSN key made.
	e.regAssertKeys(cached...)
	for _, k := range cached {
		if v, _ := e.regGet(k); v != "cached" {
			t.Errorf("%s = %q after explain, want it untouched", k, v)
		}
	}
}
