package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walbust/walbust/mapping"
)

// initSchema has what init must get right: a composite primary key, a
// foreign key to it, another schema, and a table without a primary key.
const initSchema = `
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id bigint PRIMARY KEY, customer text NOT NULL);
CREATE TABLE shop.order_items (
    order_id bigint REFERENCES shop.orders (id),
    line_no  integer,
    qty      integer NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
CREATE TABLE shop.events (at timestamptz NOT NULL DEFAULT now(), note text);
`

// walbustInit runs walbust init with args; combined output and exit code.
func walbustInit(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, append([]string{"init"}, args...)...).CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	}
	t.Fatalf("walbust init: %v\n%s", err, out)
	return "", -1
}

// TestInit: walbust init against a live schema writes files that validate,
// set up and run as they are, and whose direct keys are invalidated.
func TestInit(t *testing.T) {
	e := newEnv(t, envOptions{noSetup: true, extraSchema: initSchema,
		seed: `INSERT INTO shop.orders VALUES (1, 'ada'); INSERT INTO shop.order_items VALUES (1, 1, 2), (1, 2, 1);`})
	dir := filepath.Join(t.TempDir(), "conf")
	args := []string{"--postgres-url", pg.URL(e.name), "--redis-url", rds.URL(), "--slot", e.name, "--publication", e.name,
		"--listen", "127.0.0.1:0", "--dir", dir}
	out, code := walbustInit(t, args...)
	if code != 0 {
		t.Fatalf("walbust init exited %d:\n%s", code, out)
	}
	configPath := filepath.Join(dir, "walbust.yaml")
	for _, want := range []string{"wrote " + configPath, "wrote " + filepath.Join(dir, "deps.yaml"), "shop.events: no primary key",
		"walbust validate --config " + configPath, "walbust setup --config " + configPath, "walbust run --config " + configPath} {
		if !strings.Contains(out, want) {
			t.Errorf("walbust init output lacks %q:\n%s", want, out)
		}
	}
	deps, err := os.ReadFile(filepath.Join(dir, "deps.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("walbust init said:\n%s\ndeps.yaml:\n%s", out, deps)
	for _, want := range []string{`- "order_items:{order_id}:{line_no}"`, `# - "orders:{order_id}:order_items"`, "# shop.events: left commented out.",
		`- "products:{id}"`, `# - "categories:{category_id}:products"`} {
		if !strings.Contains(string(deps), want) {
			t.Errorf("deps.yaml lacks %q:\n%s", want, deps)
		}
	}

	// Never overwrites without --force; the error names the file and the flag.
	before, _ := os.ReadFile(configPath)
	if err := os.WriteFile(filepath.Join(dir, "deps.yaml"), []byte("# mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code = walbustInit(t, args...)
	if code == 0 || !strings.Contains(out, configPath) || !strings.Contains(out, "--force") {
		t.Errorf("walbust init over existing files exited %d, want a refusal naming %s and --force:\n%s", code, configPath, out)
	}
	if mine, _ := os.ReadFile(filepath.Join(dir, "deps.yaml")); string(mine) != "# mine\n" {
		t.Errorf("deps.yaml was overwritten without --force")
	}
	if out, code = walbustInit(t, append(args, "--force")...); code != 0 {
		t.Fatalf("walbust init --force exited %d:\n%s", code, out)
	}
	if after, _ := os.ReadFile(configPath); string(after) != string(before) {
		t.Errorf("walbust init --force wrote a different walbust.yaml:\n%s\nthan before:\n%s", after, before)
	}
	t.Logf("walbust.yaml:\n%s", before)

	// The generated files, as they are: setup, validate, run.
	e.configPath = configPath
	if out, code := e.walbust("setup"); code != 0 {
		t.Fatalf("walbust setup exited %d:\n%s", code, out)
	}
	if out, code := e.walbust("validate"); code != 0 {
		t.Fatalf("walbust validate exited %d:\n%s", code, out)
	}
	e.start()
	e.cache("order_items:1:1", "order_items:1:2", "orders:1")
	e.exec("UPDATE shop.order_items SET qty = 5 WHERE order_id = 1 AND line_no = 1")
	e.waitGone("order_items:1:1")
	e.exec("DELETE FROM shop.order_items WHERE order_id = 1 AND line_no = 2")
	e.waitGone("order_items:1:2")
	e.assertPresent("orders:1")
}

// TestInitFromPublication: with a publication of some tables (created by
// their owner, as README's walkthrough does) and no --tables, init writes
// rules for exactly those, a partitioned table as its root; setup then
// finds the publication as it is, alters nothing, and creates the slot.
func TestInitFromPublication(t *testing.T) {
	e := newEnv(t, envOptions{noSetup: true, extraSchema: initSchema + `
CREATE TABLE shop.visits (id bigint, day date, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
CREATE TABLE shop.visits_2024 PARTITION OF shop.visits FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
`,
		seed: `INSERT INTO shop.orders VALUES (1, 'ada'), (2, 'bob'); INSERT INTO shop.visits VALUES (7, '2024-05-01');`})
	pub := pgx.Identifier{e.name}.Sanitize()
	e.exec("CREATE PUBLICATION " + pub + " FOR TABLE shop.orders, shop.visits WITH (publish_via_partition_root = true)")
	dir := filepath.Join(t.TempDir(), "conf")
	out, code := walbustInit(t, "--postgres-url", pg.URL(e.name), "--redis-url", rds.URL(), "--slot", e.name, "--publication", e.name,
		"--listen", "127.0.0.1:0", "--dir", dir)
	if code != 0 {
		t.Fatalf("walbust init exited %d:\n%s", code, out)
	}
	for _, want := range []string{"tables from publication " + e.name + ": shop.orders, shop.visits\n", "finds publication " + e.name} {
		if !strings.Contains(out, want) {
			t.Errorf("walbust init output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "ALTER PUBLICATION") {
		t.Errorf("walbust init says setup will alter the publication:\n%s", out)
	}
	deps, err := os.ReadFile(filepath.Join(dir, "deps.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	reg, err := mapping.Parse("deps.yaml", deps)
	if err != nil {
		t.Fatalf("deps.yaml does not load: %v\n%s", err, deps)
	}
	if got, want := reg.Names(), []string{"shop.orders", "shop.visits"}; !slices.Equal(got, want) {
		t.Errorf("deps.yaml has rules for %q, want the publication's %q:\n%s", got, want, deps)
	}

	e.configPath = filepath.Join(dir, "walbust.yaml")
	out, code = e.walbust("setup")
	if code != 0 {
		t.Fatalf("walbust setup exited %d:\n%s", code, out)
	}
	if want := "found publication " + e.name + " for shop.orders, shop.visits"; !strings.Contains(out, want) || strings.Contains(out, "updated publication") {
		t.Errorf("walbust setup output lacks %q (or altered the publication):\n%s", want, out)
	}
	if out, code := e.walbust("validate"); code != 0 {
		t.Fatalf("walbust validate exited %d:\n%s", code, out)
	}
	e.start()
	e.cache("orders:1", "orders:2", "visits:7:2024-05-01")
	e.exec("UPDATE shop.visits SET id = 8 WHERE id = 7")
	e.waitGone("visits:7:2024-05-01")
	e.exec("DELETE FROM shop.orders WHERE id = 2")
	e.waitGone("orders:2")
	e.assertPresent("orders:1")
}
