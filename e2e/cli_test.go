package e2e

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestSetupIsIdempotent(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})

	if out, code := e.walbust("setup"); code != 0 {
		t.Fatalf("second walbust setup exited %d:\n%s", code, out)
	}

	var slots int
	e.queryRow("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", []any{&slots}, e.name)
	if slots != 1 {
		t.Errorf("%d slots named %s, want 1", slots, e.name)
	}
	rows, err := e.db.Query(e.ctx, "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1", e.name)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, name)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	// Exactly the deps.yaml tables: audit_log must not be published.
	if want := []string{"public.categories", "public.products"}; !slices.Equal(tables, want) {
		t.Errorf("publication %s has tables %v, want %v", e.name, tables, want)
	}

	// And the result of running it twice still works.
	e.start()
	e.cache("product:1")
	e.exec("UPDATE products SET price_cents = 2 WHERE id = 1")
	e.waitGone("product:1")
}

func TestTeardownRemovesSlotAndPublication(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	e.fence()
	e.stop()

	// The walsender may still hold the slot for a moment after walbust has
	// exited; a teardown that fails then is reported, not retried around.
	var active bool
	eventually(t, 10*time.Second, func() bool {
		e.queryRow("SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1", []any{&active}, e.name)
		return !active
	}, func() string { return "slot still active 10s after walbust exited" })

	if out, code := e.walbust("teardown"); code != 0 {
		t.Fatalf("walbust teardown exited %d:\n%s", code, out)
	}
	var slots, pubs int
	e.queryRow("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", []any{&slots}, e.name)
	e.queryRow("SELECT count(*) FROM pg_publication WHERE pubname = $1", []any{&pubs}, e.name)
	if slots != 0 || pubs != 0 {
		t.Errorf("after teardown: %d slots and %d publications named %s, want none", slots, pubs, e.name)
	}
}

func TestBadDepsFileIsAUsageError(t *testing.T) {
	e := newEnv(t, envOptions{noSetup: true, deps: `version: 1
tables:
  public.products:
    keyz:
      - "product:{id}"
`})
	cmd := exec.CommandContext(e.ctx, binary, "run", "--config", e.configPath)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("walbust run with a bad deps.yaml: %v, want exit code 2\n%s", err, out)
	}
	if exit.ExitCode() != 2 {
		t.Errorf("exit code %d, want 2 (usage/config error)", exit.ExitCode())
	}
	// The operator must be told where: the file and the line of "keyz".
	if want := "deps.yaml:4"; !strings.Contains(string(out), want) {
		t.Errorf("error does not name %s:\n%s", want, out)
	}
	if !strings.Contains(string(out), "keyz") {
		t.Errorf("error does not name the unknown field keyz:\n%s", out)
	}
}
