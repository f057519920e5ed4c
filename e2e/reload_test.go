package e2e

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// reloadTimeout bounds one SIGHUP reload: deps.yaml read, checked against
// the database, handed to the pipeline.
const reloadTimeout = 30 * time.Second

// TestReloadSIGHUP: SIGHUP reloads deps.yaml without a restart. A valid
// file applies to the changes after it; a file with a YAML error, a rule
// naming a missing column, or a table the publication does not publish is
// refused with the reason (file:line, or "run walbust setup"), counted, and
// the running registry keeps invalidating. After setup, the same file loads.
func TestReloadSIGHUP(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	base := e.opsStartServing()
	e.fence()
	deps, err := os.ReadFile(e.dir + "/deps.yaml")
	if err != nil {
		t.Fatal(err)
	}
	original := string(deps)
	// A second key template for an already published table.
	withV2 := strings.Replace(original, `      - "product:{id}"`, "      - \"product:{id}\"\n      - \"product:v2:{id}\"", 1)
	if withV2 == original {
		t.Fatal("deps.yaml does not have the product:{id} line this test edits")
	}

	// Before the reload the new key is not walbust's business.
	e.cache("product:v2:1")
	e.exec("UPDATE products SET price_cents = price_cents + 1 WHERE id = 1")
	e.fence()
	e.assertPresent("product:v2:1")

	e.writeFile("deps.yaml", withV2)
	e.reloadApplied(base, 1)
	e.cache("product:v2:1")
	e.exec("UPDATE products SET price_cents = price_cents + 1 WHERE id = 1")
	e.waitGone("product:v2:1")

	// Each refused reload: logged with its reason, counted, gauge 0, and
	// the registry in use (with product:v2) still invalidates.
	refused := []struct {
		name, deps string
		want       []string // in the refusal's log line
	}{
		{"yaml error", withV2 + "  public.categories: [unclosed\n", []string{`deps\.yaml:\d+:\d+: invalid YAML`}},
		{"missing column", strings.Replace(withV2, `"product:v2:{id}"`, `"product:v2:{no_such_column}"`, 1),
			[]string{`deps.yaml:\d+:\d+: `, `no column \\"no_such_column\\"`}},
		{"unpublished table", withV2 + "  public.audit_log:\n    keys: [\"audit:{id}\"]\n",
			[]string{`public\.audit_log`, "not publish", "run `walbust setup` first"}},
	}
	for i, c := range refused {
		e.writeFile("deps.yaml", c.deps)
		line := e.reloadRefused(base, i+1)
		t.Logf("%s: %s", c.name, line)
		for _, re := range c.want {
			if !regexp.MustCompile(re).MatchString(line) {
				t.Errorf("%s: the refusal does not match %q:\n%s", c.name, re, line)
			}
		}
		e.cache("product:1", "product:v2:1")
		e.exec("UPDATE products SET price_cents = price_cents + 1 WHERE id = 1")
		e.waitGone("product:1", "product:v2:1")
	}

	// The fix the refusal names: setup publishes the table, then reload.
	if out, code := e.walbust("setup"); code != 0 {
		t.Fatalf("walbust setup exited %d:\n%s", code, out)
	}
	e.reloadApplied(base, 2)
	var id int64
	e.queryRow("INSERT INTO audit_log (note) VALUES ('reloaded') RETURNING id", []any{&id})
	e.cache("audit:" + strconv.FormatInt(id, 10))
	e.exec("UPDATE audit_log SET note = 'again' WHERE id = $1", id)
	e.waitGone("audit:" + strconv.FormatInt(id, 10))
	e.assertRunning()
	// Cleanup stops it with SIGTERM and requires exit 0, as before SIGHUP.
}

// reloadSignal sends SIGHUP to the running walbust and returns the log offset
// from which its reload is reported.
func (e *env) reloadSignal() int64 {
	e.t.Helper()
	offset := e.opsLogSize()
	if err := e.proc.Process.Signal(syscall.SIGHUP); err != nil {
		e.t.Fatalf("SIGHUP walbust: %v", err)
	}
	return offset
}

// reloadApplied sends SIGHUP and waits for the reload to be applied, the n-th
// successful one.
func (e *env) reloadApplied(base string, n int) {
	e.t.Helper()
	offset := e.reloadSignal()
	e.regWaitLog(offset, `"msg":"(deps registry reloaded[^"]*|deps registry reload refused[^"]*)"`, reloadTimeout)
	if lines := e.regLogLines(offset, "reload refused"); len(lines) > 0 {
		e.t.Fatalf("reload refused:\n%s", lines[0])
	}
	e.assertRunning()
	m := opsScrapeMetrics(e.t, base)
	if v := m.val("walbust_registry_reloads_total", "result", "ok"); v != float64(n) {
		e.t.Errorf(`walbust_registry_reloads_total{result="ok"} = %v, want %d`, v, n)
	}
	if v := m.val("walbust_registry_last_reload_success"); v != 1 {
		e.t.Errorf("walbust_registry_last_reload_success = %v after a good reload, want 1", v)
	}
}

// reloadRefused sends SIGHUP, waits for the refusal (the n-th) and returns
// its log line.
func (e *env) reloadRefused(base string, n int) string {
	e.t.Helper()
	offset := e.reloadSignal()
	e.regWaitLog(offset, `"msg":"(deps registry reloaded[^"]*|deps registry reload refused[^"]*)"`, reloadTimeout)
	lines := e.regLogLines(offset, "deps registry reload refused; the running registry stays in use")
	if len(lines) == 0 {
		e.t.Fatalf("reload applied, want it refused:\n%s", e.logSince(offset))
	}
	e.assertRunning()
	m := opsScrapeMetrics(e.t, base)
	if v := m.val("walbust_registry_reloads_total", "result", "error"); v != float64(n) {
		e.t.Errorf(`walbust_registry_reloads_total{result="error"} = %v, want %d`, v, n)
	}
	if v := m.val("walbust_registry_last_reload_success"); v != 0 {
		e.t.Errorf("walbust_registry_last_reload_success = %v after a refused reload, want 0", v)
	}
	return lines[0]
}
