package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/internal/throwaway"
)

// The operability tests: what the people who run walbust see
// from /metrics, /readyz and `walbust status`, and walbust working with
// TLS, passwords kept in files and a least-privilege role.

// opsOutageTimeout allows for the 2s Redis ping, its 2s timeout and the
// retry backoff (up to 5s) on a shared machine.
const opsOutageTimeout = 30 * time.Second

func TestOpsMetricsMoveWithWrites(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	e.opsWriteConfig(opsConfig{heartbeat: "300ms"})
	base := e.opsStartServing()

	if code, body, err := opsGet(base + "/healthz"); err != nil || code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("GET /healthz = %d %q (%v), want 200 ok", code, body, err)
	}
	opsWithin(t, startTimeout, func() (bool, string) {
		code, body, err := opsGet(base + "/readyz")
		return code == http.StatusOK, fmt.Sprintf("GET /readyz = %d %q (%v), want 200", code, body, err)
	})
	// The slot watcher polls once at start: its gauges appear then.
	opsWithin(t, startTimeout, func() (bool, string) {
		v, ok := opsScrapeMetrics(t, base).get("walbust_slot_wal_status", "status", "reserved")
		return ok && v == 1, fmt.Sprintf("walbust_slot_wal_status{status=\"reserved\"} = %v (present %v), want 1", v, ok)
	})

	e.fence() // so the labelled counters have series
	before := opsScrapeMetrics(t, base)
	for _, name := range []string{
		"walbust_transactions_total", "walbust_changes_total", "walbust_invalidations_total",
		"walbust_pattern_scans_total", "walbust_pattern_keys_total", "walbust_lookups_total", "walbust_lookup_errors_total",
		"walbust_redis_errors_total", "walbust_redis_retries_total", "walbust_heartbeat_errors_total",
		"walbust_batch_transactions_count", "walbust_batch_invalidations_count",
		"walbust_invalidation_lag_seconds_count", "walbust_invalidation_lag_seconds_sum", "walbust_invalidation_lag_seconds_bucket",
		"walbust_heartbeat_lag_seconds", "walbust_checkpoint_lsn", "walbust_last_commit_timestamp_seconds",
		"walbust_replication_lag_bytes", "walbust_slot_wal_status", "walbust_slot_safe_wal_size_bytes",
		"walbust_ready", "walbust_redis_up", "walbust_streaming", "walbust_build_info",
	} {
		if !before.has(name) {
			t.Errorf("/metrics has no %s", name)
		}
	}
	for _, g := range []string{"walbust_ready", "walbust_redis_up", "walbust_streaming"} {
		if v := before.val(g); v != 1 {
			t.Errorf("%s = %v, want 1 while streaming with Redis up", g, v)
		}
	}
	if v := before.val("walbust_slot_safe_wal_size_bytes"); !math.IsNaN(v) {
		t.Errorf("walbust_slot_safe_wal_size_bytes = %v, want NaN (max_slot_wal_keep_size is unlimited)", v)
	}
	if lag, ok := before.get("walbust_replication_lag_bytes"); !ok || lag < 0 {
		t.Errorf("walbust_replication_lag_bytes = %v (present %v), want a value >= 0", lag, ok)
	}

	startLSN := e.opsWALInsertLSN()
	keys := []string{"product:100", "category:7:products", "product:1", "category:1:products", "product:2", "category:3:products"}
	e.cache(keys...)
	e.exec("INSERT INTO products (id, category_id, name, price_cents) VALUES (100, 7, 'Tetris', 499)")
	e.exec("UPDATE products SET price_cents = 1 WHERE id = 1")
	e.exec("DELETE FROM products WHERE id = 2")
	e.waitGone(keys...)
	// The writes' batches were acknowledged before the fence was written,
	// and metrics are recorded before the next batch is applied.
	e.fence()
	after := opsScrapeMetrics(t, base)

	for _, op := range []string{"insert", "update", "delete"} {
		d := after.val("walbust_changes_total", "table", "public.products", "op", op) -
			before.val("walbust_changes_total", "table", "public.products", "op", op)
		if d != 1 {
			t.Errorf(`walbust_changes_total{table="public.products",op=%q} rose by %v, want 1`, op, d)
		}
	}
	if d := after.val("walbust_transactions_total") - before.val("walbust_transactions_total"); d < 3 {
		t.Errorf("walbust_transactions_total rose by %v, want at least 3 (the writes)", d)
	}
	if d := after.val("walbust_invalidations_total", "action", "delete", "kind", "key") -
		before.val("walbust_invalidations_total", "action", "delete", "kind", "key"); d < float64(len(keys)) {
		t.Errorf(`walbust_invalidations_total{action="delete",kind="key"} rose by %v, want at least %d`, d, len(keys))
	}
	if d := after.val("walbust_invalidation_lag_seconds_count") - before.val("walbust_invalidation_lag_seconds_count"); d < 3 {
		t.Errorf("walbust_invalidation_lag_seconds_count rose by %v, want at least 3 (the writes)", d)
	}
	if sum := after.val("walbust_invalidation_lag_seconds_sum"); sum < 0 || sum > 3600 {
		t.Errorf("walbust_invalidation_lag_seconds_sum = %v, want a plausible number of seconds", sum)
	}
	if cp := after.val("walbust_checkpoint_lsn"); cp <= before.val("walbust_checkpoint_lsn") || cp < float64(startLSN) {
		t.Errorf("walbust_checkpoint_lsn = %v, want above its earlier %v and at least %v (%s, the WAL position before the writes)",
			cp, before.val("walbust_checkpoint_lsn"), uint64(startLSN), startLSN)
	}
	if lc := after.val("walbust_last_commit_timestamp_seconds"); math.Abs(float64(time.Now().Unix())-lc) > 120 {
		t.Errorf("walbust_last_commit_timestamp_seconds = %v, want within two minutes of now (%d)", lc, time.Now().Unix())
	}
	if d := after.val("walbust_batch_transactions_count") - before.val("walbust_batch_transactions_count"); d < 1 {
		t.Errorf("walbust_batch_transactions_count did not rise")
	}
	for _, c := range []string{"walbust_redis_errors_total", "walbust_lookup_errors_total", "walbust_incomplete_invalidations_total"} {
		if v := after.val(c); v != 0 {
			t.Errorf("%s = %v, want 0", c, v)
		}
	}

	// Heartbeats every 300ms: their trip through the WAL sets the lag
	// gauge, and they are transactions even with no writes at all.
	var hb float64
	opsWithin(t, invalidateTimeout, func() (bool, string) {
		hb = opsScrapeMetrics(t, base).val("walbust_heartbeat_lag_seconds")
		return hb > 0, fmt.Sprintf("walbust_heartbeat_lag_seconds = %v, want > 0 with heartbeat_interval 300ms", hb)
	})
	if hb > 30 {
		t.Errorf("walbust_heartbeat_lag_seconds = %v, implausibly high on an idle database", hb)
	}
	idle := opsScrapeMetrics(t, base).val("walbust_transactions_total")
	opsWithin(t, invalidateTimeout, func() (bool, string) {
		now := opsScrapeMetrics(t, base).val("walbust_transactions_total")
		return now >= idle+3, fmt.Sprintf("walbust_transactions_total went from %v to %v with heartbeats every 300ms, want +3", idle, now)
	})
	final := opsScrapeMetrics(t, base)
	if v := final.val("walbust_heartbeat_errors_total"); v != 0 {
		t.Errorf("walbust_heartbeat_errors_total = %v, want 0", v)
	}
	if lag, ok := final.get("walbust_replication_lag_bytes"); !ok || lag < 0 || lag > 64<<20 {
		t.Errorf("walbust_replication_lag_bytes = %v (present %v) on an idle database, want 0..64MiB", lag, ok)
	}
}

// Stopping Redis makes walbust unready and keeps the slot from passing a
// write it could not invalidate; Redis coming back makes it ready and the
// write is applied and confirmed.
func TestOpsReadinessFollowsRedis(t *testing.T) {
	r := opsDedicatedRedis(t)
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	e.opsUseRedis(r.Client())
	// No heartbeats: the only transaction in the outage is the test's.
	e.opsWriteConfig(opsConfig{redisURL: r.URL(), heartbeat: "0s"})
	base := e.opsStartServing()

	readyz := func(wantCode int, wantIn string) {
		t.Helper()
		opsWithin(t, opsOutageTimeout, func() (bool, string) {
			code, body, err := opsGet(base + "/readyz")
			ok := err == nil && code == wantCode && strings.Contains(strings.ToLower(body), wantIn)
			return ok, fmt.Sprintf("GET /readyz = %d %q (%v), want %d with %q", code, strings.TrimSpace(body), err, wantCode, wantIn)
		})
	}
	redisUp := func(want float64) {
		t.Helper()
		opsWithin(t, opsOutageTimeout, func() (bool, string) {
			m := opsScrapeMetrics(t, base)
			up, ready := m.val("walbust_redis_up"), m.val("walbust_ready")
			return up == want && ready == want, fmt.Sprintf("walbust_redis_up = %v, walbust_ready = %v, want both %v", up, ready, want)
		})
	}
	readyz(http.StatusOK, "ready")
	redisUp(1)
	e.fence()

	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	readyz(http.StatusServiceUnavailable, "redis")
	redisUp(0)
	beforeWrite := opsScrapeMetrics(t, base)

	offset := e.opsLogSize()
	e.exec("UPDATE products SET price_cents = 4242 WHERE id = 2")
	// Every commit so far, the write included, ends at or before this.
	writeLSN := e.opsWALInsertLSN()
	// The batch has reached the invalidator once it says it is retrying.
	opsWithin(t, opsOutageTimeout, func() (bool, string) {
		return strings.Contains(e.logSince(offset), `"msg":"redis unavailable; retrying batch"`),
			"walbust has not logged that it is retrying the write's batch"
	})
	// Reports go out every 200ms: three seconds is plenty of chances to
	// confirm what must not be confirmed.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if c := e.opsSlotConfirmed(); c >= writeLSN {
			t.Fatalf("while Redis is down the slot's confirmed_flush_lsn reached %s, past the write (which ends by %s): "+
				"Postgres may discard WAL whose invalidation never happened", c, writeLSN)
		}
	}
	if cp := opsScrapeMetrics(t, base).val("walbust_checkpoint_lsn"); cp >= float64(writeLSN) {
		t.Errorf("walbust_checkpoint_lsn = %v while Redis is down, want below the write's %v", cp, uint64(writeLSN))
	}
	if b, err := os.ReadFile(e.checkpoint); err == nil {
		if cp := opsLSN(t, checkpointFileLSN(b)); cp >= writeLSN {
			t.Errorf("checkpoint file says %s while Redis is down, want below the write's %s", cp, writeLSN)
		}
	}
	if code, body, _ := opsGet(base + "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("GET /readyz = %d %q during the outage, want 503", code, body)
	}

	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	if err := r.Restart(ctx); err != nil {
		t.Fatalf("restart redis: %v", err)
	}
	readyz(http.StatusOK, "ready")
	redisUp(1)
	// The held batch goes through on a retry.
	opsWithin(t, opsOutageTimeout, func() (bool, string) {
		m := opsScrapeMetrics(t, base)
		retries := m.val("walbust_redis_retries_total") - beforeWrite.val("walbust_redis_retries_total")
		invs := m.val("walbust_invalidations_total") - beforeWrite.val("walbust_invalidations_total")
		return retries >= 1 && invs >= 2, fmt.Sprintf("after Redis returned: %v more retried batches (want >= 1), %v more invalidations (want >= 2)", retries, invs)
	})
	if v := opsScrapeMetrics(t, base).val("walbust_redis_errors_total"); v < 1 {
		t.Errorf("walbust_redis_errors_total = %v after an outage, want >= 1", v)
	}
	// A later write is invalidated, so everything before it, the write
	// made during the outage included, is confirmed.
	e.fence()
	opsWithin(t, invalidateTimeout, func() (bool, string) {
		c := e.opsSlotConfirmed()
		return c >= writeLSN, fmt.Sprintf("slot confirmed_flush_lsn %s has not passed the outage write (%s)", c, writeLSN)
	})
	e.assertRunning()
}

// Log lines stay JSON (the default format) when things go wrong: a Redis
// outage is exactly when an operator's log pipeline must be able to parse
// what walbust says.
func TestOpsLogLinesStayJSONDuringRedisOutage(t *testing.T) {
	r := opsDedicatedRedis(t)
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	e.opsUseRedis(r.Client())
	e.opsWriteConfig(opsConfig{redisURL: r.URL(), heartbeat: "0s", extra: []string{"shutdown_timeout: 2s"}})
	base := e.opsStartServing()
	e.fence()

	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	offset := e.opsLogSize()
	e.exec("UPDATE products SET price_cents = 4343 WHERE id = 2")
	// Failed pings (every 2s) and a batch being retried.
	opsWithin(t, opsOutageTimeout, func() (bool, string) {
		errs := opsScrapeMetrics(t, base).val("walbust_redis_errors_total")
		retrying := strings.Contains(e.logSince(offset), `"msg":"redis unavailable; retrying batch"`)
		return errs >= 3 && retrying, fmt.Sprintf("walbust_redis_errors_total = %v (want >= 3), retrying logged %v", errs, retrying)
	})
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	if err := r.Restart(ctx); err != nil {
		t.Fatalf("restart redis: %v", err)
	}
	e.fence()
	e.stop()

	var bad []string
	lines := strings.Split(strings.TrimRight(e.log(), "\n"), "\n")
	for i, line := range lines {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if err := json.Unmarshal([]byte(line), &entry); err != nil || entry.Level == "" || entry.Msg == "" {
			bad = append(bad, fmt.Sprintf("line %d: %s", i+1, line))
		}
	}
	if len(bad) > 0 {
		t.Errorf("%d of %d lines of walbust's log (log.format json) are not JSON log entries with a level and msg; the first:\n%s",
			len(bad), len(lines), strings.Join(bad[:min(len(bad), 5)], "\n"))
	}
}

// opsStatus is what `walbust status --json` prints.
type opsStatus struct {
	Slot *struct {
		Name              string `json:"name"`
		Active            bool   `json:"active"`
		ActivePID         *int32 `json:"active_pid"`
		ConfirmedFlushLSN string `json:"confirmed_flush_lsn"`
		WALStatus         string `json:"wal_status"`
		SafeWALSize       *int64 `json:"safe_wal_size"`
		LagBytes          *int64 `json:"lag_bytes"`
	} `json:"slot"`
	SlotProblem       string   `json:"slot_problem"`
	PublicationTables []string `json:"publication_tables"`
	CheckpointLSN     string   `json:"checkpoint_lsn"`
	Daemon            *struct {
		Slot          string `json:"slot"`
		Streaming     bool   `json:"streaming"`
		RedisUp       bool   `json:"redis_up"`
		Ready         bool   `json:"ready"`
		CheckpointLSN string `json:"checkpoint_lsn"`
		Transactions  uint64 `json:"transactions"`
	} `json:"daemon"`
	DaemonError string `json:"daemon_error"`
}

func (e *env) opsStatusJSON() (opsStatus, int, string) {
	e.t.Helper()
	stdout, stderr, code := e.opsWalbust("status", "--json")
	var st opsStatus
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		e.t.Fatalf("walbust status --json (exit %d) printed no JSON: %v\nstdout:\n%s\nstderr:\n%s", code, err, stdout, stderr)
	}
	return st, code, stdout
}

func TestOpsStatusReportsSlotAndExitCodes(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	// status asks the daemon at the configured address, so a real port.
	port, err := throwaway.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	e.opsWriteConfig(opsConfig{listen: listen, heartbeat: "0s"})
	e.start()
	fenceFrom := e.opsWALInsertLSN()
	e.fence()

	// "" until the first save: the slot may already be past fenceFrom
	// before the fence's checkpoint lands.
	checkpointFile := func() string {
		b, err := os.ReadFile(e.checkpoint)
		if os.IsNotExist(err) {
			return ""
		}
		if err != nil {
			t.Fatal(err)
		}
		return checkpointFileLSN(b)
	}
	// The fence's key goes before its checkpoint is saved, recorded and
	// confirmed to Postgres: let those land before comparing them.
	opsWithin(t, invalidateTimeout, func() (bool, string) {
		c := e.opsSlotConfirmed()
		return c >= fenceFrom, fmt.Sprintf("slot confirmed_flush_lsn %s has not reached the fence (after %s)", c, fenceFrom)
	})
	opsWithin(t, invalidateTimeout, func() (bool, string) {
		_, body, err := opsGet("http://" + listen + "/status")
		var d struct {
			CheckpointLSN string `json:"checkpoint_lsn"`
		}
		if err == nil {
			err = json.Unmarshal([]byte(body), &d)
		}
		cp := checkpointFile()
		return err == nil && cp != "" && d.CheckpointLSN == cp && opsLSN(t, cp) >= fenceFrom,
			fmt.Sprintf("daemon /status checkpoint_lsn %q (%v), file %q, want equal and past %s", d.CheckpointLSN, err, cp, fenceFrom)
	})
	var pid int32
	e.queryRow("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", []any{&pid}, e.name)

	st, code, raw := e.opsStatusJSON()
	if code != 0 {
		t.Errorf("walbust status --json exited %d while healthy, want 0:\n%s", code, raw)
	}
	if s := st.Slot; s == nil {
		t.Errorf("status has no slot:\n%s", raw)
	} else {
		if s.Name != e.name || !s.Active {
			t.Errorf("slot = %q active %v, want %q active", s.Name, s.Active, e.name)
		}
		if s.ActivePID == nil || *s.ActivePID != pid {
			t.Errorf("slot.active_pid = %v, want %d (pg_replication_slots)", s.ActivePID, pid)
		}
		if c := opsLSN(t, s.ConfirmedFlushLSN); c < fenceFrom {
			t.Errorf("slot.confirmed_flush_lsn = %s, want at least %s: the fence written after it was applied", c, fenceFrom)
		}
		if s.WALStatus != "reserved" {
			t.Errorf("slot.wal_status = %q, want reserved", s.WALStatus)
		}
		if s.LagBytes == nil || *s.LagBytes < 0 {
			t.Errorf("slot.lag_bytes = %v, want a number >= 0", s.LagBytes)
		}
		if s.SafeWALSize != nil {
			t.Errorf("slot.safe_wal_size = %d, want null (unlimited)", *s.SafeWALSize)
		}
	}
	if st.SlotProblem != "" {
		t.Errorf("slot_problem = %q on a healthy slot", st.SlotProblem)
	}
	if want := []string{"public.categories", "public.products"}; !slices.Equal(st.PublicationTables, want) {
		t.Errorf("publication_tables = %v, want %v", st.PublicationTables, want)
	}
	if cp := checkpointFile(); st.CheckpointLSN != cp {
		t.Errorf("checkpoint_lsn = %q, want the checkpoint file's %q", st.CheckpointLSN, cp)
	}
	if d := st.Daemon; d == nil {
		t.Errorf("status has no daemon section while walbust runs at %s (daemon_error %q):\n%s", listen, st.DaemonError, raw)
	} else {
		if !d.Ready || !d.Streaming || !d.RedisUp {
			t.Errorf("daemon ready %v streaming %v redis_up %v, want all true", d.Ready, d.Streaming, d.RedisUp)
		}
		if d.Slot != e.name {
			t.Errorf("daemon.slot = %q, want %q", d.Slot, e.name)
		}
		if d.CheckpointLSN != st.CheckpointLSN || d.Transactions < 1 {
			t.Errorf("daemon checkpoint_lsn %q (file %q), transactions %d: want the file's position and at least the fence",
				d.CheckpointLSN, st.CheckpointLSN, d.Transactions)
		}
	}

	human, stderr, code := e.opsWalbust("status")
	if code != 0 {
		t.Errorf("walbust status exited %d while healthy:\n%s%s", code, human, stderr)
	}
	for _, want := range []string{
		fmt.Sprintf("slot %s: active (pid %d)", e.name, pid), "wal_status reserved",
		fmt.Sprintf("publication %s: 2 table(s)", e.name), "daemon " + listen + " (", "): ready, lag",
	} {
		if !strings.Contains(human, want) {
			t.Errorf("walbust status does not say %q:\n%s", want, human)
		}
	}

	// Stopped: the slot is fine (exit 0), the daemon is not reachable.
	e.stop()
	opsWithin(t, stopTimeout, func() (bool, string) {
		var active bool
		e.queryRow("SELECT active FROM pg_replication_slots WHERE slot_name = $1", []any{&active}, e.name)
		return !active, "slot still active after walbust stopped"
	})
	st, code, raw = e.opsStatusJSON()
	if code != 0 {
		t.Errorf("walbust status --json exited %d with walbust stopped but the slot intact, want 0:\n%s", code, raw)
	}
	if st.Slot == nil || st.Slot.Active || st.Slot.ActivePID != nil {
		t.Errorf("slot should be present and inactive with no pid:\n%s", raw)
	}
	if st.Daemon != nil || st.DaemonError == "" {
		t.Errorf("with walbust stopped want no daemon section and a daemon_error:\n%s", raw)
	}
	if cp := checkpointFile(); st.CheckpointLSN != cp {
		t.Errorf("checkpoint_lsn = %q with walbust stopped, want the file's %q", st.CheckpointLSN, cp)
	}

	// The slot dropped: exit 1, so status can back an alert.
	e.exec("SELECT pg_drop_replication_slot($1)", e.name)
	st, code, raw = e.opsStatusJSON()
	if code != 1 {
		t.Errorf("walbust status --json exited %d with the slot missing, want 1:\n%s", code, raw)
	}
	if st.Slot != nil {
		t.Errorf("slot should be null once dropped:\n%s", raw)
	}
	if !strings.Contains(st.SlotProblem, "does not exist") {
		t.Errorf("slot_problem = %q, want it to say the slot does not exist", st.SlotProblem)
	}
	human, stderr, code = e.opsWalbust("status")
	if code != 1 {
		t.Errorf("walbust status exited %d with the slot missing, want 1", code)
	}
	if want := fmt.Sprintf("slot %s: PROBLEM", e.name); !strings.Contains(human, want) || !strings.Contains(human, "does not exist") {
		t.Errorf("walbust status with the slot missing does not say %q ... does not exist:\n%s%s", want, human, stderr)
	}
}

// walbust reaches Postgres over TLS with verify-full against a CA made
// here, on a cluster whose pg_hba.conf admits TLS connections only.
func TestOpsTLSToPostgres(t *testing.T) {
	ca := opsNewCA(t, "walbust e2e CA")
	certPEM, keyPEM := ca.issueServer(t, "127.0.0.1", "localhost")
	srv, dir := opsDedicatedPostgres(t, func(dir string) []throwaway.PostgresOption {
		crt, key := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
		if err := os.WriteFile(crt, certPEM, 0o644); err != nil {
			t.Fatal(err)
		}
		// Postgres refuses a key readable by others or owned by another
		// user than itself (or root).
		if err := os.WriteFile(key, keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		uid, gid := opsPostgresOwner(t)
		for _, f := range []string{crt, key} {
			if err := os.Lchown(f, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
		return []throwaway.PostgresOption{
			throwaway.WithSetting("ssl", "on"),
			throwaway.WithSetting("ssl_cert_file", crt),
			throwaway.WithSetting("ssl_key_file", key),
		}
	})
	e := opsNewEnvOn(t, srv, envOptions{seed: defaultSeed})
	caPath := filepath.Join(e.dir, "ca.pem")
	e.writeFile("ca.pem", string(ca.pem))

	opsSetHBA(t, srv, dir, `local all all trust
hostssl all all 127.0.0.1/32 trust
hostssl replication all 127.0.0.1/32 trust
`)
	opsWithin(t, invalidateTimeout, func() (bool, string) {
		conn, err := pgx.Connect(e.ctx, srv.URL(e.name))
		if err == nil {
			conn.Close(e.ctx)
			return false, "a connection without TLS is still accepted after the pg_hba.conf reload"
		}
		return strings.Contains(err.Error(), "no pg_hba.conf entry"), err.Error()
	})

	tlsURL := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=verify-full&sslrootcert=%s", srv.Port(), e.name, caPath)
	conn, err := pgx.Connect(e.ctx, tlsURL)
	if err != nil {
		t.Fatalf("the test's own verify-full connection: %v", err)
	}
	e.db.Close(e.ctx)
	e.db = conn

	e.opsWriteConfig(opsConfig{pgURL: tlsURL})
	if out, code := e.walbust("setup"); code != 0 {
		t.Fatalf("walbust setup over TLS exited %d:\n%s", code, out)
	}
	e.start()
	e.cache("product:1", "category:1:products", "product:2")
	e.exec("UPDATE products SET price_cents = 77 WHERE id = 1")
	e.waitGone("product:1", "category:1:products")
	e.fence()
	e.assertPresent("product:2")

	// The walsender holding the slot is walbust's, and it is encrypted.
	var ssl bool
	var version, app string
	e.queryRow(`SELECT s.ssl, coalesce(s.version, ''), a.application_name
FROM pg_replication_slots r JOIN pg_stat_ssl s ON s.pid = r.active_pid JOIN pg_stat_activity a ON a.pid = r.active_pid
WHERE r.slot_name = $1`, []any{&ssl, &version, &app}, e.name)
	if !ssl || version == "" {
		t.Errorf("walbust's replication connection: ssl %v version %q, want TLS", ssl, version)
	}
	if app != "walbust" {
		t.Errorf("the slot is held by application %q, want walbust", app)
	}

	// verify-full really verifies: a CA that did not sign the server's
	// certificate is refused.
	other := opsNewCA(t, "some other CA")
	e.writeFile("other-ca.pem", string(other.pem))
	e.opsWriteConfig(opsConfig{pgURL: strings.Replace(tlsURL, caPath, filepath.Join(e.dir, "other-ca.pem"), 1)})
	stdout, stderr, code := e.opsWalbust("status")
	if code == 0 || !strings.Contains(stdout+stderr, "certificate") {
		t.Errorf("walbust status trusting the wrong CA exited %d, want a failure naming the certificate:\n%s%s", code, stdout, stderr)
	}
	e.opsWriteConfig(opsConfig{pgURL: tlsURL})
}

// Passwords come from files, for Postgres (scram-sha-256 required) and for
// a Redis ACL user, and never reach a log line or a command's output,
// including runs that fail because a password is wrong.
func TestOpsPasswordFilesAndNoPasswordInLogs(t *testing.T) {
	const pgRole, redisUser = "walbust_pw", "walbust"
	// Each secret has a random core a scan can find however the characters
	// around it (which need escaping in URLs) were escaped.
	secrets := map[string]string{}
	secret := func(what string) string {
		core := opsRandomHex(t, 12)
		secrets[what] = core
		return what + "-" + core + "-@:/%?#&="
	}
	pgPassword, redisPassword := secret("pg"), secret("redis")
	wrongPGFile, wrongPGInline, wrongRedis, redisAdmin := secret("wrongpgfile"), secret("wrongpginline"), secret("wrongredis"), secret("redisadmin")

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
	roleURL := func(password string) string {
		u := url.URL{Scheme: "postgres", Host: fmt.Sprintf("127.0.0.1:%d", srv.Port()), Path: "/" + e.name, RawQuery: "sslmode=disable"}
		u.User = url.User(pgRole)
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
	if conn, err := pgx.Connect(e.ctx, roleURL(pgPassword)); err != nil {
		t.Fatalf("%s cannot connect with its password: %v", pgRole, err)
	} else {
		conn.Close(e.ctx)
	}

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
	anon := r.Client()
	if err := anon.Ping(e.ctx).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("Redis answers without a password (%v): the test would prove nothing", err)
	}
	anon.Close()
	e.opsUseRedis(redis.NewClient(&redis.Options{Addr: r.Addr(), Username: redisUser, Password: redisPassword}))
	if err := e.rdb.Ping(e.ctx).Err(); err != nil {
		t.Fatalf("Redis user %s: %v", redisUser, err)
	}

	// Every output of a one-shot command; `walbust run` output is in e.log().
	var outputs []string
	record := func(what, out string) { outputs = append(outputs, "["+what+"]\n"+out) }
	writeSecret := func(name, password string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(e.dir, name), []byte(password+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	config := opsConfig{
		pgURL:      roleURL(""),
		pgExtra:    []string{"password_file: pg.password"},
		redisURL:   "redis://" + redisUser + "@" + r.Addr() + "/0",
		redisExtra: []string{"password_file: redis.password"},
		// A run stuck on a wrong Redis password stops promptly.
		extra: []string{"shutdown_timeout: 2s"},
	}
	writeSecret("pg.password", pgPassword)
	writeSecret("redis.password", redisPassword)
	e.opsWriteConfig(config)

	out, code := e.walbust("setup")
	record("setup", out)
	if code != 0 {
		t.Fatalf("walbust setup with password files exited %d:\n%s", code, out)
	}
	base := e.opsStartServing()
	e.cache("product:1", "category:1:products")
	e.exec("UPDATE products SET price_cents = 11 WHERE id = 1")
	e.waitGone("product:1", "category:1:products")
	var user string
	e.queryRow(`SELECT a.usename FROM pg_replication_slots r JOIN pg_stat_activity a ON a.pid = r.active_pid WHERE r.slot_name = $1`,
		[]any{&user}, e.name)
	if user != pgRole {
		t.Errorf("the slot is streamed by %q, want %s", user, pgRole)
	}
	stdout, stderr, code := e.opsWalbust("status", "--json")
	record("status --json", stdout+stderr)
	if code != 0 {
		t.Errorf("walbust status with password files exited %d:\n%s%s", code, stdout, stderr)
	}
	for _, path := range []string{"/status", "/readyz", "/metrics"} {
		_, body, err := opsGet(base + path)
		if err != nil {
			t.Fatal(err)
		}
		record("GET "+path, body)
	}
	e.stop()

	// A wrong password in the file: refused, and the refusal says why.
	writeSecret("pg.password", wrongPGFile)
	out, code = e.opsRunUntilExit(time.Minute)
	if code == 0 || !strings.Contains(out, "password authentication failed") {
		t.Errorf("walbust run with a wrong Postgres password exited %d, want a failure saying password authentication failed:\n%s", code, out)
	}
	out, code = e.walbust("setup")
	record("setup, wrong password file", out)
	if code == 0 {
		t.Errorf("walbust setup with a wrong Postgres password exited 0")
	}

	// A wrong password written into the URL itself.
	inline := config
	inline.pgURL, inline.pgExtra = roleURL(wrongPGInline), nil
	e.opsWriteConfig(inline)
	out, code = e.opsRunUntilExit(time.Minute)
	if code == 0 {
		t.Errorf("walbust run with a wrong password in the URL exited 0:\n%s", out)
	}
	stdout, stderr, code = e.opsWalbust("status")
	record("status, wrong password in URL", stdout+stderr)
	if code == 0 {
		t.Errorf("walbust status with a wrong password in the URL exited 0")
	}

	// A wrong Redis password: walbust streams but is not ready, and holds
	// the write it cannot apply.
	writeSecret("pg.password", pgPassword)
	writeSecret("redis.password", wrongRedis)
	e.opsWriteConfig(config)
	offset := e.opsLogSize()
	base = e.opsStartServing()
	e.cache("product:3")
	e.exec("UPDATE products SET price_cents = 33 WHERE id = 3")
	opsWithin(t, opsOutageTimeout, func() (bool, string) {
		code, body, err := opsGet(base + "/readyz")
		return err == nil && code == http.StatusServiceUnavailable && strings.Contains(strings.ToLower(body), "redis"),
			fmt.Sprintf("GET /readyz = %d %q (%v) with a wrong Redis password, want 503 naming redis", code, body, err)
	})
	opsWithin(t, opsOutageTimeout, func() (bool, string) {
		return strings.Contains(e.logSince(offset), `"msg":"redis unavailable; retrying batch"`), "walbust has not reported the failing batch"
	})
	for _, path := range []string{"/status", "/readyz"} {
		_, body, err := opsGet(base + path)
		if err != nil {
			t.Fatal(err)
		}
		record("GET "+path+", wrong Redis password", body)
	}
	if !e.exists("product:3") {
		t.Fatal("product:3 vanished although walbust could not authenticate to Redis")
	}
	e.stop()

	// The right password again: the held write is replayed and applied.
	writeSecret("redis.password", redisPassword)
	e.start()
	e.waitGone("product:3")
	e.fence()
	e.stop()

	sources := append([]string{"[walbust run logs]\n" + e.log()}, outputs...)
	if n := strings.Count(e.log(), `"msg":"streaming"`); n < 3 {
		t.Errorf("the log shows %d streaming runs, want 3: the scan below covers less than it should", n)
	}
	for _, src := range sources {
		name, _, _ := strings.Cut(src, "\n")
		for i, line := range strings.Split(src, "\n") {
			for what, core := range secrets {
				if strings.Contains(line, core) {
					t.Errorf("%s line %d contains the %s password: %s", name, i, what, line)
				}
			}
		}
	}
}

// A DBA runs what `walbust setup --print-sql` prints; walbust then sets up
// its slot and runs as a LOGIN REPLICATION role with no other powers.
func TestOpsNonSuperuserRole(t *testing.T) {
	const role = "e2e_ops_walbust"
	dropRole := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return pg.Exec(ctx, "postgres", "DROP ROLE IF EXISTS "+role)
	}
	// Registered before newEnv, so it runs after the database (holding the
	// role's grants) is dropped.
	t.Cleanup(func() {
		if err := dropRole(); err != nil {
			t.Error(err)
		}
	})
	e := newEnv(t, envOptions{seed: defaultSeed, noSetup: true})
	if err := dropRole(); err != nil { // an interrupted earlier run's
		t.Fatal(err)
	}
	e.opsWriteConfig(opsConfig{
		pgURL:     fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", role, pg.Port(), e.name),
		heartbeat: "300ms",
	})

	sql, stderr, code := e.opsWalbust("setup", "--print-sql")
	if code != 0 {
		t.Fatalf("walbust setup --print-sql exited %d:\n%s", code, stderr)
	}
	for _, want := range []string{
		fmt.Sprintf(`CREATE ROLE "%s" LOGIN REPLICATION PASSWORD 'change-me';`, role),
		fmt.Sprintf(`CREATE PUBLICATION "%s" FOR TABLE`, e.name),
		"GRANT SELECT ON",
	} {
		if !strings.Contains(sql, want) {
			t.Errorf("setup --print-sql does not print %q:\n%s", want, sql)
		}
	}
	// What the DBA runs: the printed SQL with a real password, leaving the
	// slot to `walbust setup` as the role.
	var dba []string
	for _, line := range strings.Split(strings.ReplaceAll(sql, "'change-me'", "'"+opsRandomHex(t, 12)+"'"), "\n") {
		if !strings.HasPrefix(line, "SELECT pg_create_logical_replication_slot") {
			dba = append(dba, line)
		}
	}
	if err := pg.Exec(e.ctx, e.name, strings.Join(dba, "\n")); err != nil {
		t.Fatalf("running the printed SQL as superuser: %v\n%s", err, strings.Join(dba, "\n"))
	}
	var super, repl bool
	e.queryRow("SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = $1", []any{&super, &repl}, role)
	if super || !repl {
		t.Fatalf("role %s: superuser %v, replication %v; want a plain REPLICATION role", role, super, repl)
	}

	out, code := e.walbust("setup")
	if code != 0 {
		t.Fatalf("walbust setup as %s exited %d:\n%s", role, code, out)
	}
	if !strings.Contains(out, "created slot") {
		t.Errorf("walbust setup as %s did not create the slot:\n%s", role, out)
	}
	base := e.opsStartServing()

	var user string
	opsWithin(t, startTimeout, func() (bool, string) {
		e.queryRow(`SELECT coalesce((SELECT a.usename::text FROM pg_replication_slots r JOIN pg_stat_activity a ON a.pid = r.active_pid
WHERE r.slot_name = $1), '')`, []any{&user}, e.name)
		return user == role, fmt.Sprintf("the slot is streamed by %q, want %s", user, role)
	})
	e.cache("product:1", "category:1:products", "product:2", "category:3:products", "product:3")
	e.exec("UPDATE products SET category_id = 3 WHERE id = 1")
	e.exec("DELETE FROM products WHERE id = 2")
	e.waitGone("product:1", "category:1:products", "product:2", "category:3:products")
	e.fence()
	e.assertPresent("product:3")

	// Heartbeats are written by the role too: they arrive, and none fails.
	opsWithin(t, invalidateTimeout, func() (bool, string) {
		v := opsScrapeMetrics(t, base).val("walbust_heartbeat_lag_seconds")
		return v > 0, fmt.Sprintf("walbust_heartbeat_lag_seconds = %v, want > 0", v)
	})
	from := opsScrapeMetrics(t, base).val("walbust_transactions_total")
	opsWithin(t, invalidateTimeout, func() (bool, string) {
		now := opsScrapeMetrics(t, base).val("walbust_transactions_total")
		return now >= from+5, fmt.Sprintf("walbust_transactions_total went from %v to %v, want +5 heartbeats", from, now)
	})
	m := opsScrapeMetrics(t, base)
	if v := m.val("walbust_heartbeat_errors_total"); v != 0 {
		t.Errorf("walbust_heartbeat_errors_total = %v as %s, want 0", v, role)
	}
	opsWithin(t, startTimeout, func() (bool, string) {
		v := opsScrapeMetrics(t, base).val("walbust_slot_wal_status", "status", "reserved")
		return v == 1, fmt.Sprintf("walbust_slot_wal_status{status=\"reserved\"} = %v as %s, want 1", v, role)
	})
	for _, line := range strings.Split(e.log(), "\n") {
		if strings.Contains(line, `"level":"error"`) || strings.Contains(line, "heartbeat failed") ||
			strings.Contains(line, "permission denied") || strings.Contains(line, "must be superuser") {
			t.Errorf("walbust as %s logged: %s", role, line)
		}
	}
	st, code, raw := e.opsStatusJSON()
	if code != 0 || st.Slot == nil || !st.Slot.Active {
		t.Errorf("walbust status as %s exited %d, want 0 with the slot active:\n%s", role, code, raw)
	}
}

// A password written into a URL that does not parse (here an unescaped %,
// as a pasted password may well have) must not be echoed in the error that
// says so: "passwords in URLs are never logged".
func TestOpsMalformedURLNeverEchoesPassword(t *testing.T) {
	for _, which := range []string{"postgres", "redis"} {
		t.Run(which, func(t *testing.T) {
			e := newEnv(t, envOptions{noSetup: true})
			core := opsRandomHex(t, 12)
			password := "%zz" + core // "%zz" is not a valid escape
			c := opsConfig{}
			if which == "postgres" {
				c.pgURL = fmt.Sprintf("postgres://walbust:%s@127.0.0.1:%d/%s?sslmode=disable", password, pg.Port(), e.name)
			} else {
				c.redisURL = fmt.Sprintf("redis://walbust:%s@%s/0", password, rds.Addr())
			}
			e.opsWriteConfig(c)
			outputs := map[string]string{}
			out, code := e.opsRunUntilExit(time.Minute)
			outputs["run"] = out
			if code == 0 {
				t.Errorf("walbust run with a malformed %s URL exited 0", which)
			}
			for _, args := range [][]string{{"setup"}, {"setup", "--print-sql"}, {"status"}, {"validate"}, {"teardown"}} {
				out, _ := e.walbust(args[0], args[1:]...)
				outputs[strings.Join(args, " ")] = out
			}
			for cmd, out := range outputs {
				if strings.Contains(out, core) {
					t.Errorf("walbust %s echoes the password of the malformed %s URL:\n%s", cmd, which, out)
				}
			}
		})
	}
}
