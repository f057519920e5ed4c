package e2e

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// secCommand runs a one-shot walbust command with the test's config plus
// flags and environment variables; combined output and exit code.
func (e *env) secCommand(command string, args, environ []string) (string, int) {
	e.t.Helper()
	out, code := e.oneShot(command, args, environ)
	if f, err := os.OpenFile(e.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
		f.WriteString(out)
		f.Close()
	}
	return out, code
}

// secStart is e.start with flags and environment variables, returning the
// base URL of the HTTP server.
func (e *env) secStart(args, environ []string) string {
	e.t.Helper()
	offset := e.opsLogSize()
	e.startWith(args, environ)
	addr := opsMetricsAddr(e.logSince(offset))
	if addr == "" {
		e.t.Fatal(`walbust is streaming but logged no "serving metrics" line`)
	}
	return "http://" + addr
}

// A password in every place walbust takes one (a flag's URL, the
// environment's URL, password files, a Redis ACL user's password, a
// requirepass) never shows in a log line (debug level), an endpoint
// (pprof included, when on), `status`, `validate` or an error; the one
// given more specifically wins; a flag's password is warned about; and a
// wrong password is reported as such, before the TLS probe's refusal.
func TestSecurityNoSecretLeaves(t *testing.T) {
	const pgRole, redisUser = "walbust_sec", "walbust"
	secrets := map[string]string{}
	secret := func(what string) string {
		core := opsRandomHex(t, 12)
		secrets[what] = core
		return what + "-" + core + "-@:/%?#&="
	}
	pgPassword, redisPassword := secret("pg"), secret("redis")
	wrongPGFile, wrongPGFlag, wrongRedisFile, wrongRedisEnv, redisAdmin := secret("wrongpgfile"), secret("wrongpgflag"), secret("wrongredisfile"), secret("wrongredisenv"), secret("redisadmin")

	srv, dir := opsDedicatedPostgres(t, nil)
	e := opsNewEnvOn(t, srv, envOptions{seed: defaultSeed})
	if err := srv.Exec(e.ctx, "postgres", fmt.Sprintf("CREATE ROLE %s LOGIN SUPERUSER PASSWORD '%s'", pgRole, pgPassword)); err != nil {
		t.Fatal(err)
	}
	opsSetHBA(t, srv, dir, fmt.Sprintf(`local all all trust
host all %[1]s 127.0.0.1/32 scram-sha-256
host replication %[1]s 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
`, pgRole))
	// No sslmode: prefer, which tries TLS first (this server has none).
	roleURL := func(password string) string {
		u := url.URL{Scheme: "postgres", Host: fmt.Sprintf("127.0.0.1:%d", srv.Port()), Path: "/" + e.name, User: url.User(pgRole)}
		if password != "" {
			u.User = url.UserPassword(pgRole, password)
		}
		return u.String()
	}
	opsWithin(t, invalidateTimeout, func() (bool, string) {
		conn, err := pgx.Connect(e.ctx, roleURL(""))
		if err == nil {
			conn.Close(e.ctx)
			return false, pgRole + " still connects without a password after the pg_hba.conf reload"
		}
		return true, ""
	})

	r := opsDedicatedRedis(t)
	admin := r.Client()
	for _, args := range [][]any{
		{"ACL", "SETUSER", redisUser, "on", ">" + redisPassword, "~*", "&*", "+@all"},
		{"CONFIG", "SET", "requirepass", redisAdmin},
	} {
		if err := admin.Do(e.ctx, args...).Err(); err != nil {
			t.Fatalf("%v: %v", args[:2], err)
		}
	}
	admin.Close()
	e.opsUseRedis(redis.NewClient(&redis.Options{Addr: r.Addr(), Username: redisUser, Password: redisPassword}))

	writeSecret := func(name, password string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(e.dir, name), []byte(password+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// walbust.yaml's password files hold wrong passwords: the flag's
	// Postgres URL and the environment's Redis URL must win over them.
	writeSecret("pg.password", wrongPGFile)
	writeSecret("redis.password", wrongRedisFile)
	e.opsWriteConfig(opsConfig{
		pgURL:      roleURL(""),
		pgExtra:    []string{"password_file: pg.password"},
		redisURL:   "redis://" + redisUser + "@" + r.Addr() + "/0",
		redisExtra: []string{"password_file: redis.password"},
		extra:      []string{"shutdown_timeout: 2s"},
	})
	redisEnv := func(password string) []string {
		u := url.URL{Scheme: "redis", Host: r.Addr(), Path: "/0", User: url.UserPassword(redisUser, password)}
		return []string{"WALBUST_REDIS_URL=" + u.String()}
	}
	good := []string{"--postgres-url", roleURL(pgPassword)}

	var outputs []string
	record := func(what, out string) { outputs = append(outputs, "["+what+"]\n"+out) }
	out, code := e.secCommand("setup", good, redisEnv(redisPassword))
	record("setup", out)
	if code != 0 {
		t.Fatalf("walbust setup with the password in --postgres-url (and a wrong one in postgres.password_file) exited %d:\n%s", code, out)
	}
	if !strings.Contains(out, "--postgres-url holds a password") || !strings.Contains(out, "postgres.password_file (--postgres-password-file") {
		t.Errorf("setup with a password in --postgres-url did not warn, pointing to password_file and the environment:\n%s", out)
	}
	out, code = e.secCommand("validate", good, redisEnv(redisPassword))
	record("validate", out)
	if code != 0 || !strings.Contains(out, "redis: ok") {
		t.Errorf("walbust validate exited %d, want 0 with redis: ok:\n%s", code, out)
	}

	base := e.secStart(append(good, "--debug-pprof=true"), redisEnv(redisPassword))
	e.cache("product:1", "category:1:products")
	e.exec("UPDATE products SET price_cents = 11 WHERE id = 1")
	e.waitGone("product:1", "category:1:products")
	paths := []string{"/metrics", "/status", "/readyz", "/healthz", "/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/symbol",
		"/debug/pprof/goroutine?debug=2", "/debug/pprof/goroutine?debug=1", "/debug/pprof/heap?debug=1", "/debug/pprof/allocs?debug=1",
		"/debug/pprof/threadcreate?debug=1", "/debug/pprof/block?debug=1", "/debug/pprof/mutex?debug=1",
		"/debug/pprof/profile?seconds=1", "/debug/pprof/trace?seconds=1", "/debug/pprof/heap"}
	for _, path := range paths {
		code, body, err := opsGet(base + path)
		if err != nil {
			t.Fatal(err)
		}
		if code != http.StatusOK {
			t.Errorf("GET %s = %d with debug.pprof on, want 200", path, code)
		}
		record("GET "+path, body)
	}
	if _, body, _ := opsGet(base + "/debug/pprof/cmdline"); body != "walbust\x00run\x00[flags not shown]" && !strings.HasSuffix(body, "\x00run\x00[flags not shown]") {
		t.Errorf("/debug/pprof/cmdline = %q, want the program and the command only", body)
	}
	out, code = e.secCommand("status", good, redisEnv(redisPassword))
	record("status", out)
	if code != 0 {
		t.Errorf("walbust status exited %d:\n%s", code, out)
	}
	e.stop()

	// Profiling off (the default): nothing under /debug/pprof/.
	base = e.secStart(good, redisEnv(redisPassword))
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/heap"} {
		if code, _, err := opsGet(base + path); err != nil || code != http.StatusNotFound {
			t.Errorf("GET %s = %d (%v) without debug.pprof, want 404", path, code, err)
		}
	}
	e.stop()

	// A wrong Postgres password: every command says so first.
	bad := []string{"--postgres-url", roleURL(wrongPGFlag)}
	for _, command := range []string{"run", "status", "validate", "setup"} {
		out, code := e.secCommand(command, bad, redisEnv(redisPassword))
		record(command+", wrong Postgres password", out)
		var errLine string
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "walbust: ") {
				errLine = line
			}
		}
		if code == 0 || !strings.HasPrefix(errLine, "walbust: connect to postgres: ") ||
			!strings.Contains(errLine, "password authentication failed") || strings.Contains(errLine, "tls error") ||
			!strings.Contains(errLine, "check the password") {
			t.Errorf("walbust %s with a wrong Postgres password exited %d; want its error line to lead with the failed password and what to check, got %q:\n%s",
				command, code, errLine, out)
		}
	}

	// A wrong Redis password (the environment's): validate names it.
	out, code = e.secCommand("validate", good, redisEnv(wrongRedisEnv))
	record("validate, wrong Redis password", out)
	if code != 1 || !strings.Contains(out, "refused walbust's user and password") {
		t.Errorf("walbust validate with a wrong Redis password exited %d, want 1 saying the password was refused:\n%s", code, out)
	}

	sources := append([]string{"[walbust log]\n" + e.log()}, outputs...)
	if n := strings.Count(e.log(), `"level":"debug"`); n == 0 {
		t.Error("no debug lines in the log: the scan below covers less than it should")
	}
	for _, src := range sources {
		name, _, _ := strings.Cut(src, "\n")
		for i, line := range strings.Split(src, "\n") {
			for what, core := range secrets {
				if strings.Contains(line, core) {
					t.Errorf("%s line %d contains the %s password: %.300s", name, i, what, line)
				}
			}
		}
	}
}
