package e2e

// Tables that change under walbust: renamed, swapped, published without a
// rule, partitioned, dropped. walbust keeps invalidating, or says loudly
// what it cannot do; it never drops a change silently.

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// A table renamed while walbust runs keeps being invalidated (its rules
// are bound by OID), walbust warns that deps.yaml names the old name, and
// validate says so with the fix. A restart still finds it.
func TestTablesRenameWhileRunning(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	off := e.regLogOffset()
	e.exec("ALTER TABLE products RENAME TO products2")

	e.cache("product:1", "category:1:products", "product:2")
	e.exec("UPDATE products2 SET price_cents = 1 WHERE id = 1")
	e.waitGone("product:1", "category:1:products")
	e.fence()
	e.assertPresent("product:2")
	e.regWaitLog(off, `"level":"warn"[^\n]*table renamed[^\n]*"relation":"public.products2"[^\n]*"table":"public.products"[^\n]*write public.products2 there`, invalidateTimeout)

	deps := filepath.Join(e.dir, "deps.yaml")
	out, code := e.walbust("validate")
	if code != 1 {
		t.Errorf("walbust validate exited %d after the rename, want 1:\n%s", code, out)
	}
	if want := deps + ":4:3: table public.products does not exist: it was renamed to public.products2, which walbust run keeps invalidating (by OID); " +
		"fix: write public.products2 instead of public.products here"; !strings.Contains(out, want) {
		t.Errorf("validate output lacks\n%s\ngot:\n%s", want, out)
	}

	// Restarted, walbust runs (the OID was remembered) and still follows it.
	e.stop()
	off = e.regLogOffset()
	e.start()
	e.regWaitLog(off, `"level":"warn"[^\n]*table renamed[^\n]*"table":"public.products"[^\n]*"relation":"public.products2"`, invalidateTimeout)
	e.exec("UPDATE products2 SET price_cents = 2 WHERE id = 2")
	e.waitGone("product:2")
}

// The rename-swap migration: the old table is renamed away, a new one is
// created under the old name and published. Changes of both invalidate:
// over-invalidate, never under.
func TestTablesRenameSwap(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	off := e.regLogOffset()
	e.exec("ALTER TABLE products RENAME TO products_old")
	e.exec("CREATE TABLE products (LIKE products_old INCLUDING ALL)")
	e.exec("ALTER TABLE products REPLICA IDENTITY FULL")
	e.exec(fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE products", e.name))

	e.cache("product:1", "product:10", "product:11", "unrelated")
	e.exec("UPDATE products_old SET price_cents = 1 WHERE id = 1")
	e.waitGone("product:1")
	e.exec("INSERT INTO products (id, name, price_cents) VALUES (10, 'new', 5)")
	e.waitGone("product:10")
	e.exec("INSERT INTO products (id, name, price_cents) VALUES (11, 'newer', 5)")
	e.waitGone("product:11")
	e.fence()
	e.assertPresent("unrelated")
	e.regWaitLog(off, `"level":"warn"[^\n]*another table took a registered name[^\n]*"relation":"public.products"`, invalidateTimeout)
	e.regWaitLog(off, `"level":"warn"[^\n]*table renamed[^\n]*"relation":"public.products_old"`, invalidateTimeout)

	// After a restart both are still mapped: the new one by name, the old
	// one by its remembered OID while it is published.
	e.stop()
	off = e.regLogOffset()
	e.start()
	e.regWaitLog(off, `"level":"warn"[^\n]*renamed away from a name in deps.yaml is still published[^\n]*"relation":"public.products_old"[^\n]*run walbust setup`, invalidateTimeout)
	e.cache("product:1", "product:10")
	e.exec("UPDATE products_old SET price_cents = 2 WHERE id = 1")
	e.exec("UPDATE products SET price_cents = 6 WHERE id = 10")
	e.waitGone("product:1", "product:10")
}

// A change of a published table that no rule maps is counted per table
// and warned about once.
func TestTablesUnmappedChangesCounted(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	off := e.regLogOffset()
	e.exec(fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE audit_log", e.name))
	for i := range 3 {
		e.exec("INSERT INTO audit_log (note) VALUES ($1)", fmt.Sprint("note ", i))
	}
	e.exec("UPDATE audit_log SET note = 'x'")
	e.fence()
	for op, want := range map[string]float64{"insert": 3, "update": 3} {
		metric := fmt.Sprintf(`walbust_unmapped_changes_total{op=%q,table="public.audit_log"}`, op)
		eventually(t, invalidateTimeout, func() bool { return e.regMetric(0, metric) == want },
			func() string { return fmt.Sprintf("%s = %v, want %v", metric, e.regMetric(0, metric), want) })
	}
	lines := e.regLogLines(off, `"level":"warn"`, "not mapped by any rule", `"relation":"public.audit_log"`)
	if len(lines) != 1 {
		t.Errorf("%d warnings about the unmapped public.audit_log, want 1:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for _, want := range []string{"walbust_unmapped_changes_total", "add it to"} {
		if len(lines) > 0 && !strings.Contains(lines[0], want) {
			t.Errorf("the warning lacks %q: %s", want, lines[0])
		}
	}
}

const tablesPartitionSchema = `
CREATE TABLE orders (id bigint NOT NULL, region text NOT NULL, total bigint NOT NULL, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN ('eu');
CREATE TABLE orders_us PARTITION OF orders FOR VALUES IN ('us');
CREATE TABLE events (id bigint NOT NULL, kind text NOT NULL, PRIMARY KEY (id, kind)) PARTITION BY LIST (kind);
CREATE TABLE events_click PARTITION OF events FOR VALUES IN ('click');
CREATE TABLE events_view PARTITION OF events FOR VALUES IN ('view');
`

const tablesPartitionDeps = `version: 1
tables:
  public.orders:
    keys: ["order:{id}"]
  public.events_click:
    keys: ["click:{id}"]
  public.categories:
    keys: ["category:{id}"]
`

// A partitioned parent in deps.yaml works out of the box: setup publishes
// via the partition root, validate is happy (and stays happy), and rows
// changed in any partition, one attached after setup included, invalidate
// the parent's keys. A partition named directly works too.
func TestTablesPartitioned(t *testing.T) {
	e := newEnv(t, envOptions{extraSchema: tablesPartitionSchema, deps: tablesPartitionDeps, noStart: true,
		seed: "INSERT INTO orders VALUES (1, 'eu', 10), (2, 'us', 20); INSERT INTO events VALUES (1, 'view');"})
	for i := range 2 { // twice: no "not in the publication", "run setup", "updated" loop
		out, code := e.walbust("validate")
		if code != 0 || !strings.Contains(out, "deps.yaml: ok (3 tables)") {
			t.Fatalf("validate (round %d) exited %d, want 0 and ok (3 tables):\n%s", i+1, code, out)
		}
		out, code = e.walbust("setup")
		if code != 0 || !strings.Contains(out, "found publication") {
			t.Fatalf("setup (round %d) exited %d, want 0 and the publication found as it is:\n%s", i+1, code, out)
		}
	}
	e.start()

	e.cache("order:1", "order:2", "order:3", "order:4", "click:1", "click:2", "unrelated")
	e.exec("UPDATE orders_eu SET total = 11 WHERE id = 1") // through the partition's own name
	e.exec("UPDATE orders SET total = 21 WHERE id = 2")
	e.waitGone("order:1", "order:2")

	// Partitions made after setup, created or attached, are published too.
	e.exec("CREATE TABLE orders_asia PARTITION OF orders FOR VALUES IN ('asia')")
	e.exec("CREATE TABLE orders_sa (LIKE orders INCLUDING ALL)")
	e.exec("ALTER TABLE orders ATTACH PARTITION orders_sa FOR VALUES IN ('sa')")
	e.exec("INSERT INTO orders VALUES (3, 'asia', 30)")
	e.exec("INSERT INTO orders_sa VALUES (4, 'sa', 40)")
	e.waitGone("order:3", "order:4")

	e.exec("INSERT INTO events VALUES (1, 'click')")
	e.waitGone("click:1")
	e.exec("INSERT INTO events VALUES (2, 'view')") // events_view is not published
	e.fence()
	e.assertPresent("unrelated", "click:2")

	if out, code := e.walbust("validate"); code != 0 {
		t.Errorf("validate exited %d with partitions attached while running, want 0:\n%s", code, out)
	}
}

// A table whose name has a dot in it is written quoted in deps.yaml; setup
// publishes it, validate finds it and its changes invalidate.
func TestTablesQuotedDottedName(t *testing.T) {
	e := newEnv(t, envOptions{extraSchema: `CREATE TABLE "a.b" (id bigint PRIMARY KEY); CREATE TABLE "odd.schema.x" (id bigint PRIMARY KEY);`,
		deps: `version: 1
tables:
  public."a.b":
    keys: ["ab:{id}"]
  public."odd.schema.x":
    keys: ["odd:{id}"]
  public.categories:
    keys: ["category:{id}"]
`, noStart: true})
	if out, code := e.walbust("validate"); code != 0 || !strings.Contains(out, "deps.yaml: ok (3 tables)") {
		t.Fatalf("validate exited %d, want 0 and ok (3 tables):\n%s", code, out)
	}
	e.start()
	e.cache("ab:1", "odd:1", "ab:2")
	e.exec(`INSERT INTO "a.b" VALUES (1)`)
	e.exec(`INSERT INTO "odd.schema.x" VALUES (1)`)
	e.waitGone("ab:1", "odd:1")
	e.fence()
	e.assertPresent("ab:2")
}

// A mapped table dropped while walbust runs: walbust warns, applies its
// on_truncate rules, and keeps serving the other tables, also after a
// restart (which used to exit 2); validate still reports it.
func TestTablesDroppedWhileRunning(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	e.cache("product:1", "product:99", "category:1:products", "category:5", "unrelated")
	off := e.regLogOffset()
	e.exec("DROP TABLE products")
	e.waitGone("product:1", "product:99", "category:1:products")
	line := e.regWaitLog(off, `[^\n]*"level":"error"[^\n]*a table in deps.yaml was dropped[^\n]*`, invalidateTimeout)
	for _, want := range []string{`"table":"public.products"`, `"noticed":"while running"`, "deps.yaml:4:3", "remove public.products from"} {
		if !strings.Contains(line, want) {
			t.Errorf("the drop's log line lacks %s: %s", want, line)
		}
	}
	e.regWaitLog(off, `"level":"warn"[^\n]*applied the on_truncate rules of dropped table\(s\)[^\n]*public.products`, invalidateTimeout)
	if n := e.regMetric(0, `walbust_table_missing{table="public.products"}`); n != 1 {
		t.Errorf("walbust_table_missing for public.products = %v, want 1", n)
	}

	// Once: the keys cached again afterwards stay (until the restart).
	e.cache("product:1")
	e.cache("category:7")
	e.exec("UPDATE categories SET name = 'renamed' WHERE id = 7")
	e.waitGone("category:7")
	e.fence()
	e.assertPresent("category:5", "unrelated", "product:1")
	if n := len(e.regLogLines(off, "applied the on_truncate rules of dropped table(s)")); n != 1 {
		t.Errorf("on_truncate of the dropped table applied %d times while running, want once", n)
	}

	e.stop()
	off = e.regLogOffset()
	e.start() // fails the test if walbust exits (it used to, with code 2)
	e.regWaitLog(off, `"level":"error"[^\n]*a table in deps.yaml was dropped[^\n]*"noticed":"at start"`, invalidateTimeout)
	e.cache("category:3")
	e.exec("UPDATE categories SET name = 'again' WHERE id = 3")
	e.waitGone("category:3")

	out, code := e.walbust("validate")
	if want := filepath.Join(e.dir, "deps.yaml") + ":4:3: table public.products does not exist"; code != 1 || !strings.Contains(out, want) {
		t.Errorf("walbust validate exited %d, want 1 and %q:\n%s", code, want, out)
	}
}

// DROP and CREATE under the same name, in one transaction: the name never
// goes missing, but the rows cached from the old table are wrong, so its
// on_truncate rules are applied; the new table is mapped by name.
func TestTablesDroppedAndRecreated(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	e.cache("category:1", "category:3:products", "product:1", "unrelated")
	off := e.regLogOffset()
	e.exec(fmt.Sprintf(`BEGIN;
DROP TABLE categories CASCADE;
CREATE TABLE categories (id bigint PRIMARY KEY, name text NOT NULL);
ALTER PUBLICATION %s ADD TABLE categories;
COMMIT`, e.name))
	e.waitGone("category:1", "category:3:products")
	e.regWaitLog(off, `"level":"error"[^\n]*a table in deps.yaml was dropped[^\n]*"table":"public.categories"[^\n]*OID \d+, the table named public.categories when walbust started, was dropped`, invalidateTimeout)
	e.fence() // an INSERT into the new categories
	e.cache("product:1")
	e.exec("UPDATE products SET price_cents = 3 WHERE id = 1")
	e.waitGone("product:1")
	e.fence()
	e.assertPresent("unrelated")
}

// Naming a partitioned parent and one of its partitions: the partition's
// rows arrive as the parent, so its own rules would never run. validate
// says so, with the fix, instead of sending the operator to setup.
func TestTablesPartitionAndParentBothNamed(t *testing.T) {
	e := newEnv(t, envOptions{extraSchema: tablesPartitionSchema, noStart: true, deps: tablesPartitionDeps + `  public.orders_eu:
    keys: ["order-eu:{id}"]
`})
	out, code := e.walbust("validate")
	want := filepath.Join(e.dir, "deps.yaml") + ":9:3: table public.orders_eu is a partition of public.orders, which is published too, " +
		"so its rows arrive as public.orders (publish_via_partition_root) and these rules never run: move them to public.orders's entry, or name only the partition"
	if code != 1 || !strings.Contains(out, want) {
		t.Errorf("validate exited %d, want 1 and\n%s\ngot:\n%s", code, want, out)
	}
}
