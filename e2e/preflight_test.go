package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walbust/walbust/internal/throwaway"
)

// Postgres preflight: validate and setup find what the server or the role
// does not allow before anything is created, and name the fix.

// wantAll fails for each of wants that out lacks.
func wantAll(t *testing.T, what, out string, wants ...string) {
	t.Helper()
	t.Logf("%s:\n%s", what, out)
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("%s does not say %q:\n%s", what, w, out)
		}
	}
}

// publicationExists asks the server whether the test's publication exists.
func (e *env) publicationExists() bool {
	e.t.Helper()
	var n int
	e.queryRow(`SELECT count(*) FROM pg_publication WHERE pubname = $1`, []any{&n}, e.name)
	return n > 0
}

// TestPreflightServerSettings: on a server with wal_level = replica, its
// one replication slot and its one WAL sender taken, validate fails with
// the statement that fixes each (today it says ok), and setup stops before
// creating the publication (today it creates it, then fails on the slot).
// Then pg_hba.conf rejects walbust: both say which line would admit it.
func TestPreflightServerSettings(t *testing.T) {
	srv, dir := opsDedicatedPostgres(t, func(string) []throwaway.PostgresOption {
		return []throwaway.PostgresOption{throwaway.WithSetting("wal_level", "replica"),
			throwaway.WithSetting("max_replication_slots", "1"), throwaway.WithSetting("max_wal_senders", "1")}
	})
	e := opsNewEnvOn(t, srv, envOptions{seed: defaultSeed})
	e.opsWriteConfig(opsConfig{pgURL: srv.URL(e.name)})
	if err := srv.Exec(e.ctx, "postgres", "SELECT pg_create_physical_replication_slot('someone_elses')"); err != nil {
		t.Fatal(err)
	}
	// A replication client holds the one WAL sender for the whole test.
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	rcfg, err := pgconn.ParseConfig(srv.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	rcfg.RuntimeParams["replication"] = "database"
	holder, err := pgconn.ConnectConfig(ctx, rcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.Background())

	out, code := e.walbust("validate")
	if code != 1 {
		t.Errorf("validate exited %d, want 1", code)
	}
	wantAll(t, "validate", out,
		"wal_level is replica", "ALTER SYSTEM SET wal_level = logical;", "restart Postgres",
		"no free replication slot for "+e.name+": max_replication_slots is 1 and 1 slots exist", "ALTER SYSTEM SET max_replication_slots = 2;",
		"no free WAL sender to stream "+e.name+": max_wal_senders is 1 and 1 replication connections are open", "ALTER SYSTEM SET max_wal_senders = 2;")

	out, code = e.walbust("setup")
	if code != 1 {
		t.Errorf("setup exited %d, want 1", code)
	}
	wantAll(t, "setup", out, "ALTER SYSTEM SET wal_level = logical;", "no free replication slot", "setup changed nothing")
	if e.publicationExists() {
		t.Errorf("setup created the publication although it could not create the slot:\n%s", out)
	}

	// Only the superuser over loopback is admitted now; walbust connects as
	// another role.
	opsSetHBA(t, srv, dir, "local all all trust\nhost all postgres 127.0.0.1/32 trust\n")
	role := "e2e_pf_hba"
	e.opsWriteConfig(opsConfig{pgURL: fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", role, srv.Port(), e.name)})
	for _, cmd := range []string{"validate", "setup"} {
		out, code := e.walbust(cmd)
		if code != 1 {
			t.Errorf("%s exited %d, want 1", cmd, code)
		}
		wantAll(t, cmd, out, "no pg_hba.conf entry", fmt.Sprintf("host  %s  %s  127.0.0.1/32  scram-sha-256", e.name, role), "SELECT pg_reload_conf()")
	}
}

// TestPreflightRoles: the walbust role has no REPLICATION and owns no
// table; the tables' owner has no REPLICATION either. validate and setup
// say who must do what; setup as the owner creates the publication and
// says the slot is the walbust role's to create; once that role has
// REPLICATION, setup as it creates the slot; teardown as it drops the slot
// and names the publication's owner as the one to drop the publication.
func TestPreflightRoles(t *testing.T) {
	const walbustRole, owner = "e2e_pf_walbust", "e2e_pf_owner"
	dropRoles := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return pg.Exec(ctx, "postgres", "DROP ROLE IF EXISTS "+walbustRole+"; DROP ROLE IF EXISTS "+owner)
	}
	t.Cleanup(func() { // after the database, which holds their grants, is gone
		if err := dropRoles(); err != nil {
			t.Error(err)
		}
	})
	e := newEnv(t, envOptions{seed: defaultSeed, noSetup: true})
	if err := dropRoles(); err != nil { // an interrupted earlier run's
		t.Fatal(err)
	}
	e.exec(fmt.Sprintf(`CREATE ROLE %[1]s LOGIN; CREATE ROLE %[2]s LOGIN;
GRANT SELECT ON categories, products TO %[1]s;
ALTER TABLE categories OWNER TO %[2]s; ALTER TABLE products OWNER TO %[2]s;
GRANT CREATE ON DATABASE %[3]s TO %[2]s`, walbustRole, owner, e.name))
	urlAs := func(role string) string {
		return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", role, pg.Port(), e.name)
	}
	e.opsWriteConfig(opsConfig{pgURL: urlAs(walbustRole)})

	sql, stderr, code := e.opsWalbust("setup", "--print-sql")
	if code != 0 {
		t.Fatalf("setup --print-sql exited %d:\n%s", code, stderr)
	}
	wantAll(t, "setup --print-sql", sql,
		"-- 1. As a superuser (only a superuser may create a role with REPLICATION):\nCREATE ROLE",
		"-- 3. As the owner of the tables, with CREATE on database", `"e2e_pf_walbust" may not: CREATE PUBLICATION needs ownership`,
		"-- 4. As \"e2e_pf_walbust\" (`walbust setup` does it, finding the publication) or a superuser: the slot.",
		"as the publication's owner or a superuser: DROP PUBLICATION")

	out, code := e.walbust("validate")
	if code != 1 {
		t.Errorf("validate exited %d, want 1", code)
	}
	wantAll(t, "validate as "+walbustRole, out,
		`role "e2e_pf_walbust" has no REPLICATION attribute`, `ALTER ROLE "e2e_pf_walbust" REPLICATION`,
		`role "e2e_pf_walbust" may not create publication "`+e.name+`"`, `CREATE on database "`+e.name+`"`,
		`ownership of public.categories, public.products (owned by "e2e_pf_owner")`, `have "e2e_pf_owner" run the CREATE PUBLICATION statement`)

	out, code = e.walbust("setup")
	if code != 1 {
		t.Errorf("setup exited %d, want 1", code)
	}
	wantAll(t, "setup as "+walbustRole, out, "has no REPLICATION attribute", "may not create publication", "setup changed nothing")
	if e.publicationExists() {
		t.Errorf("setup as %s created the publication:\n%s", walbustRole, out)
	}

	out, code = e.walbust("setup", "--postgres-url", urlAs(owner))
	if code != 1 {
		t.Errorf("setup as %s exited %d, want 1 (no slot)", owner, code)
	}
	wantAll(t, "setup as "+owner, out, "created publication "+e.name, "no replication slot created",
		`ALTER ROLE "e2e_pf_owner" REPLICATION`, "run `walbust setup` as the walbust role")
	if !e.publicationExists() {
		t.Fatalf("setup as %s did not create the publication:\n%s", owner, out)
	}

	e.exec("ALTER ROLE " + walbustRole + " REPLICATION")
	if out, code := e.walbust("validate"); code != 0 {
		t.Errorf("validate as %s with REPLICATION and the publication in place exited %d, want 0:\n%s", walbustRole, code, out)
	}
	out, code = e.walbust("setup")
	if code != 0 {
		t.Fatalf("setup as %s exited %d, want 0:\n%s", walbustRole, code, out)
	}
	wantAll(t, "setup as "+walbustRole, out, "found publication "+e.name, "created slot "+e.name)

	out, code = e.walbust("teardown")
	if code != 1 {
		t.Errorf("teardown as %s exited %d, want 1 (publication not its own)", walbustRole, code)
	}
	wantAll(t, "teardown as "+walbustRole, out, "dropped slot "+e.name,
		`only its owner, role "e2e_pf_owner", or a superuser may drop it`, "run `walbust teardown` as \"e2e_pf_owner\"",
		`DROP PUBLICATION "`+e.name+`"`)
}
