package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/internal/throwaway"
)

// secACL runs ACL SETUSER on r as its default user.
func secACL(t *testing.T, r *throwaway.Redis, rules ...string) {
	t.Helper()
	c := r.Client()
	defer c.Close()
	args := []any{"ACL", "SETUSER"}
	for _, a := range rules {
		args = append(args, a)
	}
	if err := c.Do(context.Background(), args...).Err(); err != nil {
		t.Fatalf("ACL SETUSER %v: %v", rules, err)
	}
}

// validate runs `walbust validate` and returns its output and exit code.
func (e *env) secValidate() (string, int) {
	e.t.Helper()
	stdout, stderr, code := e.opsWalbust("validate")
	return stdout + stderr, code
}

// An ACL user missing one command walbust sends is found by validate,
// which names the command, why walbust sends it and the ACL SETUSER that
// fixes it; run refuses to start with the same; docs/security.md's minimal user
// for the repository's deps.yaml (delete, patterns, events) passes and
// streams.
func TestSecurityRedisACL(t *testing.T) {
	r := opsDedicatedRedis(t)
	secACL(t, r, "walbust", "on", ">pw-walbust", "~*", "&*", "+@all", "-unlink")
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	e.opsWriteConfig(opsConfig{redisURL: "redis://walbust:pw-walbust@" + r.Addr() + "/0"})
	out, code := e.secValidate()
	if code != 1 || !strings.Contains(out, "redis user walbust may not run UNLINK") ||
		!strings.Contains(out, "delete action (public.") || !strings.Contains(out, "fix: ACL SETUSER walbust +unlink") {
		t.Errorf("validate with a user that may not UNLINK exited %d, want 1 naming UNLINK, the delete action and the fix:\n%s", code, out)
	}
	out, code = e.opsRunUntilExit(time.Minute)
	if code == 0 || !strings.Contains(out, "may not run UNLINK") {
		t.Errorf("run with a user that may not UNLINK exited %d, want a refusal naming UNLINK:\n%s", code, out)
	}

	// docs/security.md's line for delete (with patterns and events): enough.
	doc, err := os.ReadFile(filepath.Join(repoRoot, "docs", "security.md"))
	if err != nil {
		t.Fatal(err)
	}
	const want = "ACL SETUSER walbust on >PASSWORD resetkeys ~* resetchannels &walbust:events -@all +client|setname +get +info +ping +publish +scan +set +unlink"
	if !strings.Contains(string(doc), want) {
		t.Fatalf("docs/security.md does not give the minimal line for delete actions: %s", want)
	}
	secACL(t, r, "walbust", "reset")
	line := strings.Fields(strings.Replace(strings.TrimPrefix(want, "ACL SETUSER "), "PASSWORD", "pw-walbust", 1))
	secACL(t, r, line...)
	out, code = e.secValidate()
	if code != 0 || !strings.Contains(out, "redis: ok") {
		t.Errorf("validate with docs/security.md's minimal user exited %d, want 0 and redis: ok:\n%s", code, out)
	}
	e.opsUseRedis(r.Client())
	e.start()
	e.cache("product:1", "product:2")
	e.exec("UPDATE products SET price_cents = 5 WHERE id = 1")
	e.waitGone("product:1")
	e.fence()
	e.assertPresent("product:2")
}

// allkeys-* eviction is warned about with its consequence; a server of
// another kind than redis.mode says is refused with the mode to set.
func TestSecurityRedisPolicyAndMode(t *testing.T) {
	e := newEnv(t, envOptions{noStart: true})

	lru := opsDedicatedRedis(t, "--maxmemory-policy", "allkeys-lru")
	e.opsWriteConfig(opsConfig{redisURL: lru.URL()})
	out, code := e.secValidate()
	if code != 0 || !strings.Contains(out, "warning: redis:") || !strings.Contains(out, "maxmemory-policy allkeys-lru") ||
		!strings.Contains(out, "reopens") || !strings.Contains(out, "noeviction") {
		t.Errorf("validate against allkeys-lru exited %d, want 0 with a warning of the reopened race and the fix:\n%s", code, out)
	}

	dir := t.TempDir()
	node := opsDedicatedRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf"))
	e.opsWriteConfig(opsConfig{redisURL: node.URL()})
	out, code = e.secValidate()
	if code != 1 || !strings.Contains(out, "redis.mode is standalone but redis at "+node.Addr()+" reports redis_mode:cluster") ||
		!strings.Contains(out, "set redis.mode: cluster") {
		t.Errorf("validate in standalone mode against a cluster node exited %d, want 1 saying to set redis.mode: cluster:\n%s", code, out)
	}
	out, code = e.opsRunUntilExit(time.Minute)
	if code == 0 || !strings.Contains(out, "set redis.mode: cluster") {
		t.Errorf("run in standalone mode against a cluster node exited %d, want a refusal:\n%s", code, out)
	}

	e.opsWriteConfig(opsConfig{redisExtra: []string{"mode: cluster"}})
	out, code = e.secValidate()
	if code != 1 || !strings.Contains(out, "reports redis_mode:standalone") || !strings.Contains(out, "set redis.mode: standalone") {
		t.Errorf("validate in cluster mode against a standalone server exited %d, want 1 saying to set redis.mode: standalone:\n%s", code, out)
	}

	e.opsWriteConfig(opsConfig{redisURL: rds.Addr()})
	out, code = e.secValidate()
	if code != 2 || !strings.Contains(out, "redis.url has no scheme: write it as redis://HOST:PORT/DB") {
		t.Errorf("validate with redis.url %s exited %d, want 2 with the form to write:\n%s", rds.Addr(), code, out)
	}
}

// Redis down when run starts: run streams, says so at once and again
// while it waits, and carries on once Redis is back.
func TestSecurityRunWaitsForRedisLoudly(t *testing.T) {
	r := opsDedicatedRedis(t)
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	e.opsWriteConfig(opsConfig{redisURL: r.URL()})
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	offset := e.opsLogSize()
	e.start()
	opsWithin(t, time.Minute, func() (bool, string) {
		log := e.logSince(offset)
		return strings.Contains(log, `"msg":"redis is unusable; streaming anyway, holding changes until it answers"`) &&
				strings.Count(log, `"msg":"redis is still unusable; waiting, holding changes"`) >= 2 &&
				strings.Contains(log, "is not reachable") && strings.Contains(log, "check redis.url's host and port"),
			"walbust has not said, and said again, that Redis is not reachable and what to check"
	})
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	if err := r.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	opsWithin(t, time.Minute, func() (bool, string) {
		return strings.Contains(e.logSince(offset), `"msg":"redis answers now"`), "walbust has not noticed Redis is back"
	})
	e.opsUseRedis(redis.NewClient(&redis.Options{Addr: r.Addr()}))
	e.cache("product:1")
	e.exec("UPDATE products SET price_cents = 7 WHERE id = 1")
	e.waitGone("product:1")
}

// In sentinel and cluster mode the checks reach the master(s) through the
// sentinels or seed nodes; a sentinel named in standalone mode is refused.
func TestSecurityRedisHAModesChecked(t *testing.T) {
	e := newEnv(t, envOptions{noStart: true})
	dir, err := os.MkdirTemp("", "walbust-e2e-sec-sentinel-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := throwaway.StartRedisSentinel(ctx, dir, "cache", 1, 1)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	e.opsWriteConfig(opsConfig{redisURL: s.URL(), redisExtra: []string{"mode: sentinel", "sentinel_master: cache"}})
	out, code := e.secValidate()
	if code != 0 || !strings.Contains(out, "redis: ok (sentinel, 1 master(s), Redis 7") {
		t.Errorf("validate in sentinel mode exited %d, want 0 and redis: ok:\n%s", code, out)
	}
	e.opsWriteConfig(opsConfig{redisURL: s.URL()})
	out, code = e.secValidate()
	if code != 1 || !strings.Contains(out, "reports redis_mode:sentinel: it is a Sentinel: set redis.mode: sentinel") {
		t.Errorf("validate in standalone mode against a sentinel exited %d, want 1 saying to set redis.mode: sentinel:\n%s", code, out)
	}

	cdir, err := os.MkdirTemp("", "walbust-e2e-sec-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	c, err := throwaway.StartRedisCluster(ctx, cdir, 3, 0)
	if err != nil {
		os.RemoveAll(cdir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	e.opsWriteConfig(opsConfig{redisURL: c.URL(), redisExtra: []string{"mode: cluster"}})
	out, code = e.secValidate()
	if code != 0 || !strings.Contains(out, "redis: ok (cluster, 3 master(s), Redis 7") {
		t.Errorf("validate in cluster mode exited %d, want 0 and redis: ok with 3 masters:\n%s", code, out)
	}
}
