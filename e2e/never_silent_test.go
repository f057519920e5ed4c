package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/replication/wal"
)

// Tests of the rule "for every committed change walbust either applies its
// invalidations, or it is visibly not ready, says why, and acknowledges
// nothing past it; it never hangs".

const silentTimeout = 20 * time.Second

// breakCheckpoint puts a directory where the checkpoint file is: saving
// (temp file + rename over it) then fails with EISDIR, even as root, as it
// would on a read-only or full filesystem. The returned func repairs it.
func (e *env) breakCheckpoint() (repair func()) {
	e.t.Helper()
	// walbust may save (and so re-create the file) between the remove and
	// the mkdir: retry until the directory is in place.
	opsWithin(e.t, silentTimeout, func() (bool, string) {
		if err := os.Remove(e.checkpoint); err != nil && !os.IsNotExist(err) {
			return false, err.Error()
		}
		err := os.MkdirAll(filepath.Join(e.checkpoint, "blocker"), 0o755)
		return err == nil, fmt.Sprintf("cannot put a directory where the checkpoint is: %v", err)
	})
	return func() {
		if err := os.RemoveAll(e.checkpoint); err != nil {
			e.t.Fatal(err)
		}
	}
}

// silentReadyz waits until GET /readyz answers wantCode with every one of
// wantIn in its body.
func silentReadyz(t *testing.T, base string, wantCode int, wantIn ...string) string {
	t.Helper()
	var body string
	opsWithin(t, silentTimeout, func() (bool, string) {
		code, b, err := opsGet(base + "/readyz")
		body = b
		ok := err == nil && code == wantCode
		for _, w := range wantIn {
			ok = ok && strings.Contains(b, w)
		}
		return ok, fmt.Sprintf("GET /readyz = %d %q (%v), want %d with %q", code, strings.TrimSpace(b), err, wantCode, wantIn)
	})
	return body
}

// neverConfirms checks, for a while, that the slot does not confirm lsn.
func (e *env) neverConfirms(lsn wal.LSN, what string) {
	e.t.Helper()
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if c := e.opsSlotConfirmed(); c >= lsn {
			e.t.Fatalf("%s: the slot confirmed %s, past the write (ending by %s)", what, c, lsn)
		}
	}
}

// termWithin sends SIGTERM to the running walbust and returns its exit code
// and how long it took to exit; it fails the test if it takes over limit.
func (e *env) termWithin(limit time.Duration) (int, time.Duration) {
	e.t.Helper()
	cmd := e.proc
	if cmd == nil {
		e.t.Fatal("walbust is not running")
	}
	e.proc = nil
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		e.t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-e.procDone:
	case <-time.After(limit):
		cmd.Process.Kill()
		<-e.procDone
		e.t.Fatalf("walbust did not exit within %v of SIGTERM; killed it", limit)
	}
	return cmd.ProcessState.ExitCode(), time.Since(start)
}

// A checkpoint that cannot be saved: Redis is still invalidated, but
// walbust is not ready, says why (path and error), confirms nothing past
// it, and recovers by itself once the file can be written again.
func TestCheckpointSaveFailureIsVisibleThenRecovers(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	defer e.dumpLogOnFailure()
	e.opsWriteConfig(opsConfig{heartbeat: "0s"})
	base := e.opsStartServing()
	silentReadyz(t, base, http.StatusOK, "ready")
	// Broken before the first checkpoint is ever saved: nothing is
	// acknowledged yet, the case where a status update could confirm
	// everything received.
	repair := e.breakCheckpoint()
	e.fence()
	offset := e.opsLogSize()
	e.cache("product:1")
	e.exec("UPDATE products SET price_cents = 1 WHERE id = 1")
	write := e.opsWALInsertLSN()
	e.waitGone("product:1") // Redis is not what failed: it keeps being invalidated
	body := silentReadyz(t, base, http.StatusServiceUnavailable, "checkpoint", e.checkpoint, "not ready since")
	t.Logf("/readyz while the checkpoint fails: %s", strings.TrimSpace(body))
	opsWithin(t, silentTimeout, func() (bool, string) {
		log := e.logSince(offset)
		return strings.Contains(log, "cannot save the checkpoint") && strings.Contains(log, e.checkpoint),
			"no log line saying the checkpoint cannot be saved, with its path"
	})
	e.neverConfirms(write, "while the checkpoint cannot be saved")
	m := opsScrapeMetrics(t, base)
	if v := m.val("walbust_stalled", "cause", "checkpoint"); v != 1 {
		t.Errorf(`walbust_stalled{cause="checkpoint"} = %v while saves fail, want 1`, v)
	}
	if v := m.val("walbust_ready"); v != 0 {
		t.Errorf("walbust_ready = %v while saves fail, want 0", v)
	}
	stdout, _, _ := e.opsWalbust("status", "--listen", strings.TrimPrefix(base, "http://"))
	if !strings.Contains(stdout, "NOT READY") || !strings.Contains(stdout, "checkpoint") || !strings.Contains(stdout, "since") {
		t.Errorf("walbust status does not say the checkpoint stalls it, and since when:\n%s", stdout)
	}

	repair()
	silentReadyz(t, base, http.StatusOK, "ready")
	opsWithin(t, silentTimeout, func() (bool, string) {
		c := e.opsSlotConfirmed()
		return c >= write, fmt.Sprintf("slot confirmed %s, not past the write %s, after the checkpoint recovered", c, write)
	})
	if v := opsScrapeMetrics(t, base).val("walbust_stalled", "cause", "checkpoint"); v != 0 {
		t.Errorf(`walbust_stalled{cause="checkpoint"} = %v after recovery, want 0`, v)
	}
	e.stop()
}

// Saves that keep failing make walbust exit non-zero after
// checkpoint.retry_timeout, so a supervisor's Restart= fires.
func TestCheckpointSaveFailureExitsAfterRetryTimeout(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	defer e.dumpLogOnFailure()
	e.opsWriteConfig(opsConfig{heartbeat: "0s", checkpoint: []string{"retry_timeout: 2s"}})
	e.opsStartServing()
	e.fence()
	e.breakCheckpoint()
	e.exec("UPDATE products SET price_cents = 2 WHERE id = 1")
	select {
	case <-e.procDone:
	case <-time.After(silentTimeout):
		t.Fatalf("walbust still running %v after its checkpoint began failing with retry_timeout 2s", silentTimeout)
	}
	code := e.proc.ProcessState.ExitCode()
	e.proc = nil
	if code == 0 {
		t.Errorf("walbust exited 0 after giving up on its checkpoint, want non-zero")
	}
	if log := e.log(); !strings.Contains(log, "could not be saved for") || !strings.Contains(log, "checkpoint.retry_timeout") {
		t.Errorf("walbust's last words do not say the checkpoint could not be saved and which setting bounds it")
	}
}

// silentRedisUser makes a Redis ACL user for walbust on r, so a test can
// take commands away from walbust while PING still answers.
func silentRedisUser(t *testing.T, c *redis.Client) string {
	t.Helper()
	if err := c.Do(t.Context(), "ACL", "SETUSER", "walbust", "on", ">e2e-secret", "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	return "walbust"
}

// Redis refusing commands (NOPERM) while PING answers: walbust stays not
// ready the whole time, never flapping to ready, and recovers only once a
// batch goes through.
func TestReadinessDoesNotFlapWhileRedisRefuses(t *testing.T) {
	r := opsDedicatedRedis(t)
	admin := r.Client()
	defer admin.Close()
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	defer e.dumpLogOnFailure()
	e.opsUseRedis(r.Client())
	user := silentRedisUser(t, admin)
	url := strings.Replace(r.URL(), "redis://", "redis://"+user+":e2e-secret@", 1)
	e.opsWriteConfig(opsConfig{redisURL: url, heartbeat: "0s"})
	base := e.opsStartServing()
	silentReadyz(t, base, http.StatusOK, "ready")
	e.fence()

	if err := admin.Do(t.Context(), "ACL", "SETUSER", user, "-unlink", "-del").Err(); err != nil {
		t.Fatal(err)
	}
	e.cache("product:2")
	e.exec("UPDATE products SET price_cents = 3 WHERE id = 2")
	write := e.opsWALInsertLSN()
	silentReadyz(t, base, http.StatusServiceUnavailable, "redis", "NOPERM")
	// PING answers every 2s; watch for three rounds of it.
	for end := time.Now().Add(6 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		code, body, err := opsGet(base + "/readyz")
		if err != nil || code != http.StatusServiceUnavailable {
			t.Fatalf("GET /readyz = %d %q (%v) while Redis refuses walbust's commands, want 503 throughout", code, body, err)
		}
		if m := opsScrapeMetrics(t, base); m.val("walbust_redis_up") != 0 || m.val("walbust_ready") != 0 {
			t.Fatalf("walbust_redis_up = %v, walbust_ready = %v while Redis refuses commands, want 0", m.val("walbust_redis_up"), m.val("walbust_ready"))
		}
	}
	if c := e.opsSlotConfirmed(); c >= write {
		t.Fatalf("slot confirmed %s past the refused write %s", c, write)
	}
	if !e.exists("product:2") {
		t.Fatal("product:2 is gone although Redis refused UNLINK")
	}

	if err := admin.Do(t.Context(), "ACL", "SETUSER", user, "+unlink", "+del").Err(); err != nil {
		t.Fatal(err)
	}
	e.waitGone("product:2")
	silentReadyz(t, base, http.StatusOK, "ready")
	e.stop()
}

// The role may not run a lookup query: validate says so, naming the rule,
// and at run time walbust is not ready with the cause and since when, and
// acknowledges nothing until the privilege is back.
func TestLookupWithoutPrivilegeIsNotReady(t *testing.T) {
	const role = "e2e_silent_lookup"
	dropRole := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return pg.Exec(ctx, "postgres", "DROP ROLE IF EXISTS "+role)
	}
	t.Cleanup(func() {
		if err := dropRole(); err != nil {
			t.Error(err)
		}
	})
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true, deps: `version: 1
tables:
  public.products:
    keys: ["product:{id}"]
    derived:
      - query: "SELECT c.id FROM categories c WHERE c.id = $1"
        args: [category_id]
        keys: ["category-page:{id}"]
  public.categories:
    keys: ["category:{id}"]
`})
	defer e.dumpLogOnFailure()
	if err := dropRole(); err != nil {
		t.Fatal(err)
	}
	e.exec(fmt.Sprintf("CREATE ROLE %s LOGIN REPLICATION; GRANT SELECT ON ALL TABLES IN SCHEMA public TO %s", role, role))
	e.opsWriteConfig(opsConfig{heartbeat: "0s", pgURL: fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", role, pg.Port(), e.name)})
	if out, _, code := e.opsWalbust("validate"); code != 0 {
		t.Fatalf("walbust validate exited %d with every privilege granted:\n%s", code, out)
	}
	base := e.opsStartServing()
	e.cache("product:1", "category-page:1")
	e.exec("UPDATE products SET price_cents = 5 WHERE id = 1")
	e.waitGone("product:1", "category-page:1")

	e.exec("REVOKE SELECT ON categories FROM " + role)
	stdout, stderr, code := e.opsWalbust("validate")
	out := stdout + stderr
	if code == 0 || !strings.Contains(out, "deps.yaml:6") || !strings.Contains(out, "permission denied") || !strings.Contains(out, "GRANT SELECT") {
		t.Errorf("walbust validate exited %d after REVOKE; want non-zero naming deps.yaml:6, the denial and the GRANT fix:\n%s", code, out)
	}

	e.cache("product:3", "category-page:1")
	e.exec("UPDATE products SET price_cents = 6 WHERE id = 3")
	write := e.opsWALInsertLSN()
	body := silentReadyz(t, base, http.StatusServiceUnavailable, "lookup", "permission denied", "not ready since")
	t.Logf("/readyz while the lookup is denied: %s", strings.TrimSpace(body))
	e.neverConfirms(write, "while the lookup is denied")
	if v := opsScrapeMetrics(t, base).val("walbust_stalled", "cause", "lookup"); v != 1 {
		t.Errorf(`walbust_stalled{cause="lookup"} = %v, want 1`, v)
	}
	stdout, _, _ = e.opsWalbust("status", "--json", "--listen", strings.TrimPrefix(base, "http://"))
	var st opsStatus
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("walbust status --json: %v\n%s", err, stdout)
	}
	raw := stdout
	if st.Daemon == nil || st.Daemon.Ready || !strings.Contains(raw, `"cause": "lookup"`) || !strings.Contains(raw, "not_ready_since") {
		t.Errorf("walbust status --json does not name the lookup stall and since when:\n%s", raw)
	}

	e.exec("GRANT SELECT ON categories TO " + role)
	e.waitGone("product:3", "category-page:1")
	silentReadyz(t, base, http.StatusOK, "ready")
	e.stop()
}

// SIGTERM ends walbust within shutdown_timeout whatever it is stuck on.
func TestStopWithinShutdownTimeoutInEveryState(t *testing.T) {
	const timeout = 3 * time.Second
	limit := timeout + 3*time.Second // process start-up of the signal handler, exit
	t.Run("checkpoint failing", func(t *testing.T) {
		e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
		defer e.dumpLogOnFailure()
		e.opsWriteConfig(opsConfig{heartbeat: "0s", extra: []string{"shutdown_timeout: 3s"}})
		base := e.opsStartServing()
		e.fence()
		e.breakCheckpoint()
		e.exec("UPDATE products SET price_cents = 7 WHERE id = 1")
		silentReadyz(t, base, http.StatusServiceUnavailable, "checkpoint")
		_, took := e.termWithin(limit)
		t.Logf("stopped in %v", took)
	})
	t.Run("redis refusing", func(t *testing.T) {
		r := opsDedicatedRedis(t)
		admin := r.Client()
		defer admin.Close()
		e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
		defer e.dumpLogOnFailure()
		e.opsUseRedis(r.Client())
		user := silentRedisUser(t, admin)
		e.opsWriteConfig(opsConfig{heartbeat: "0s", redisURL: strings.Replace(r.URL(), "redis://", "redis://"+user+":e2e-secret@", 1),
			extra: []string{"shutdown_timeout: 3s"}})
		base := e.opsStartServing()
		e.fence()
		if err := admin.Do(t.Context(), "ACL", "SETUSER", user, "-unlink", "-del").Err(); err != nil {
			t.Fatal(err)
		}
		e.exec("UPDATE products SET price_cents = 8 WHERE id = 1")
		silentReadyz(t, base, http.StatusServiceUnavailable, "NOPERM")
		_, took := e.termWithin(limit)
		t.Logf("stopped in %v", took)
	})
	t.Run("redis down", func(t *testing.T) {
		r := opsDedicatedRedis(t)
		e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
		defer e.dumpLogOnFailure()
		e.opsUseRedis(r.Client())
		e.opsWriteConfig(opsConfig{heartbeat: "0s", redisURL: r.URL(), extra: []string{"shutdown_timeout: 3s"}})
		base := e.opsStartServing()
		e.fence()
		if err := r.Stop(); err != nil {
			t.Fatal(err)
		}
		e.exec("UPDATE products SET price_cents = 9 WHERE id = 1")
		silentReadyz(t, base, http.StatusServiceUnavailable, "redis")
		_, took := e.termWithin(limit)
		t.Logf("stopped in %v", took)
	})
	t.Run("postgres partitioned", func(t *testing.T) {
		e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
		defer e.dumpLogOnFailure()
		proxy := startTCPProxy(t, fmt.Sprintf("127.0.0.1:%d", pg.Port()))
		e.opsWriteConfig(opsConfig{heartbeat: "0s", pgURL: fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", proxy.Addr(), e.name),
			extra: []string{"shutdown_timeout: 3s"}})
		e.opsStartServing()
		e.fence()
		proxy.Freeze()
		_, took := e.termWithin(limit)
		t.Logf("stopped in %v", took)
	})
}
