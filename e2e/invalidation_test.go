package e2e

import (
	"os"
	"strings"
	"testing"
)

// The write goes through the real psql, so nothing of walbust is in the
// writer: the invalidation can only have come from the WAL.
func TestInsertThroughPsqlClearsNegativeCacheKey(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	// "nil" is how applications cache "no such product" (a negative entry).
	if err := e.rdb.Set(e.ctx, "product:100", "nil", 0).Err(); err != nil {
		t.Fatal(err)
	}
	e.cache("category:7:products", "product:1", "category:1:products")

	e.psql("INSERT INTO products (id, category_id, name, price_cents) VALUES (100, 7, 'Tetris', 499)")

	e.waitGone("product:100", "category:7:products")
	e.fence()
	e.assertPresent("product:1", "category:1:products")
}

func TestUpdate(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	unrelated := []string{"product:3", "category:3:products", "category:3", "session:abc"}
	e.cache(append([]string{"product:2", "category:3:products"}, unrelated...)...)

	// A price change: the product and its category's listing.
	e.exec("UPDATE products SET price_cents = 1299 WHERE id = 2")
	e.waitGone("product:2", "category:3:products")
	e.fence()
	e.assertPresent("product:3", "category:3", "session:abc")

	// A move between categories: REPLICA IDENTITY FULL on products sends
	// the old row, so the listing the product left goes as well as the one
	// it joined.
	e.cache("product:1", "category:1:products", "category:7:products", "category:3:products")
	e.exec("UPDATE products SET category_id = 7 WHERE id = 1")
	e.waitGone("product:1", "category:1:products", "category:7:products")
	e.fence()
	e.assertPresent("product:3", "category:3:products", "category:3", "session:abc")
}

func TestDelete(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	e.cache("product:2", "category:3:products", "product:1", "category:1:products", "category:3")

	e.exec("DELETE FROM products WHERE id = 2")

	e.waitGone("product:2", "category:3:products")
	e.fence()
	e.assertPresent("product:1", "category:1:products", "category:3")
}

func TestRolledBackTransactionInvalidatesNothing(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	e.cache("product:1", "category:1:products", "category:7:products", "product:2", "category:3:products")

	e.psql(`BEGIN;
UPDATE products SET category_id = 7 WHERE id = 1;
DELETE FROM products WHERE id = 2;
ROLLBACK;`)
	// A later commit to another row: once its key is gone, the rollback
	// (earlier in the WAL) has been seen too.
	e.fence()

	e.assertPresent("product:1", "category:1:products", "category:7:products", "product:2", "category:3:products")
}

func TestTransactionTouchingTwoTables(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	e.cache("category:3", "category:3:products", "product:1", "category:1:products", "product:2", "category:7")

	e.psql(`BEGIN;
UPDATE categories SET name = 'jazz' WHERE id = 3;
UPDATE products SET price_cents = 1000 WHERE id = 1;
COMMIT;`)

	e.waitGone("category:3", "category:3:products", "product:1", "category:1:products")
	e.fence()
	e.assertPresent("product:2", "category:7")
}

// The slot keeps WAL while walbust is down, so a write made then is
// invalidated once walbust is back.
func TestWriteWhileStopped(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	// Something applied before the stop, so the restart resumes from a
	// checkpoint rather than from the slot's creation.
	e.fence()
	e.stop()

	e.cache("product:1", "category:1:products", "product:2")
	e.psql("UPDATE products SET name = 'Dune Messiah' WHERE id = 1")
	if !e.exists("product:1") {
		t.Fatal("product:1 vanished while walbust was stopped: something else is invalidating")
	}

	e.start()
	e.waitGone("product:1", "category:1:products")
	e.fence()
	e.assertPresent("product:2")
}

// A database whose only writes are to tables walbust does not follow must
// not make the slot retain WAL forever.
func TestSlotAdvancesPastUnpublishedWrites(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	e.exec("INSERT INTO audit_log (note) SELECT 'note ' || i FROM generate_series(1, 1000) i")
	e.exec("UPDATE audit_log SET note = note || '!'")
	var lsn string
	e.queryRow("SELECT pg_current_wal_lsn()::text", []any{&lsn})

	var confirmed string
	var advanced bool
	eventually(t, invalidateTimeout, func() bool {
		e.queryRow(`SELECT coalesce(confirmed_flush_lsn::text, ''), coalesce(confirmed_flush_lsn >= $2::pg_lsn, false)
FROM pg_replication_slots WHERE slot_name = $1`, []any{&confirmed, &advanced}, e.name, lsn)
		return advanced
	}, func() string {
		return "slot " + e.name + " confirmed_flush_lsn " + confirmed + " has not reached " + lsn
	})
}

// An UPDATE that leaves a TOASTed column alone sends it as "unchanged" in
// the new row; the key built from it must come from the old row instead.
func TestUnchangedToastValue(t *testing.T) {
	e := newEnv(t, envOptions{
		extraSchema: `
CREATE TABLE documents (
    id    bigint PRIMARY KEY,
    title text NOT NULL,
    body  text NOT NULL
);
-- EXTERNAL: stored out of line and never compressed, so the body is
-- certainly TOASTed.
ALTER TABLE documents ALTER COLUMN body SET STORAGE EXTERNAL;
ALTER TABLE documents REPLICA IDENTITY FULL;`,
		deps: defaultDeps + `
  public.documents:
    keys:
      - "document:{id}"
      - "document-by-body:{body}"
`,
		// Written before setup, so walbust never sees the INSERT and the
		// UPDATE below is the only change. 400 md5s make 12,800 bytes.
		seed: defaultSeed + `
INSERT INTO documents (id, title, body)
SELECT 1, 'draft', string_agg(md5(random()::text || i), '') FROM generate_series(1, 400) i;`,
	})
	var body string
	var toasted bool
	e.queryRow(`SELECT d.body, pg_relation_size(c.reltoastrelid) > 0
FROM documents d, pg_class c WHERE d.id = 1 AND c.relname = 'documents'`, []any{&body, &toasted})
	if !toasted {
		t.Fatal("the body was not TOASTed, so this test would prove nothing")
	}
	bodyKey := "document-by-body:" + body
	e.cache("document:1", bodyKey)

	e.exec("UPDATE documents SET title = 'final' WHERE id = 1")

	e.waitGone("document:1", bodyKey)
}

// A NULL in a template column renders no key for that row image; the other
// keys still go and walbust carries on.
func TestNullTemplateColumn(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	// What a naive renderer might produce for NULL.
	bogus := []string{"category::products", "category:<nil>:products", "category:NULL:products", "category:null:products"}
	e.cache(bogus...)
	e.cache("product:50", "category:1:products")

	e.exec("INSERT INTO products (id, category_id, name, price_cents) VALUES (50, NULL, 'Loose', 100)")
	e.waitGone("product:50")

	e.cache("product:50")
	e.exec("UPDATE products SET category_id = 1 WHERE id = 50")
	e.waitGone("product:50", "category:1:products")

	e.fence()
	e.assertPresent(bogus...)
	for _, line := range strings.Split(e.log(), "\n") {
		if strings.Contains(line, `"level":"error"`) {
			t.Errorf("walbust logged an error: %s", line)
		}
	}
}

func TestCheckpointWrittenAfterWrite(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	e.cache("product:1")
	e.exec("UPDATE products SET price_cents = 5 WHERE id = 1")
	e.waitGone("product:1")

	// The checkpoint is saved after the keys are unlinked, so poll for it.
	var size int64
	eventually(t, invalidateTimeout, func() bool {
		fi, err := os.Stat(e.checkpoint)
		if err == nil {
			size = fi.Size()
		}
		return err == nil && size > 0
	}, func() string {
		return "checkpoint " + e.checkpoint + " missing or empty"
	})
}

// defaultDeps mirrors the repo's deps.yaml, for tests that add tables.
const defaultDeps = `version: 1
tables:
  public.products:
    keys:
      - "product:{id}"
      - "category:{category_id}:products"
  public.categories:
    keys:
      - "category:{id}"
      - "category:{id}:products"`
