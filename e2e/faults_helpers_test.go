package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/internal/throwaway"
)

// The fault tests crash, stop and partition their servers, so each starts
// its own Postgres and Redis (never the package's shared ones) and tears
// them down afterwards.

const (
	faultDB   = "app"
	faultSlot = "walbust_faults"
	// faultRecoverTimeout bounds how long walbust may take to be streaming again
	// after a fault: reconnect backoff, a lingering walsender holding the
	// slot until wal_sender_timeout, crash recovery of the server.
	faultRecoverTimeout = 90 * time.Second
	// faultCatchUpTimeout bounds how long the slot may take to confirm a given
	// position, including re-decoding a million-row transaction.
	faultCatchUpTimeout = 6 * time.Minute
)

// faultSchema: items is what the writers change (REPLICA IDENTITY FULL, so
// an UPDATE or DELETE carries the old grp and both groups' keys go);
// bulk is for the million-row transaction; filler is unpublished and only
// makes WAL.
const faultSchema = `
CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, v bigint NOT NULL DEFAULT 0, note text);
ALTER TABLE items REPLICA IDENTITY FULL;
CREATE TABLE bulk (id bigint PRIMARY KEY, v bigint NOT NULL DEFAULT 0);
CREATE TABLE filler (id bigserial PRIMARY KEY, pad text);
`

// faultDeps: three key templates for items, one for bulk, and on_truncate
// patterns for both, which are what a huge transaction (past
// max_tx_changes) and a slot resync fall back to.
const faultDeps = `version: 1
tables:
  public.items:
    keys:
      - "item:{id}"
      - "grp:{grp}:items"
      - "grp:{grp}:count"
    on_truncate:
      patterns:
        - "item:*"
        - "grp:*"
  public.bulk:
    keys:
      - "bulk:{id}"
    on_truncate:
      patterns:
        - "bulk:*"
`

// itemKeys renders items' templates, like faultDeps does.
func faultItemKeys(id int64, grp int) []string {
	return []string{fmt.Sprintf("item:%d", id), fmt.Sprintf("grp:%d:items", grp), fmt.Sprintf("grp:%d:count", grp)}
}

// faultOptions varies a fault test's world.
type faultOptions struct {
	pgSettings map[string]string // -c settings for the dedicated Postgres
	proxy      bool              // walbust reaches Postgres through a tcpProxy
	items      int               // rows seeded in items (grp = id % 8)
	bulkRows   int               // rows seeded in bulk
	config     string            // extra top-level walbust.yaml lines
	// Instead of a standalone redis-server of its own, the test's cluster
	// (redis.mode cluster) or Sentinel setup (redis.mode sentinel), which
	// the test starts and closes.
	cluster  *throwaway.RedisCluster
	sentinel *throwaway.RedisSentinel
	redis    string // extra walbust.yaml lines in the redis section, e.g. "wait_replicas: 1"
	deps     string // deps.yaml; faultDeps when empty
	// itemKeys renders the keys deps caches for an items row, the row's own
	// key first; faultItemKeys when nil.
	itemKeys func(id int64, grp int) []string
}

// faultEnv is one fault test's world: dedicated servers, a walbust config
// and the walbust processes started from it.
type faultEnv struct {
	t          *testing.T
	ctx        context.Context
	pg         *throwaway.Postgres
	rds        *throwaway.Redis // nil with a cluster or Sentinel setup
	cluster    *throwaway.RedisCluster
	sentinel   *throwaway.RedisSentinel
	itemKeys   func(id int64, grp int) []string
	proxy      *tcpProxy
	dir        string
	configPath string
	checkpoint string
	rdb        redis.UniversalClient

	mu    sync.Mutex
	procs []*faultProc
}

func newFaultEnv(t *testing.T, o faultOptions) *faultEnv {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &faultEnv{t: t, ctx: ctx, dir: t.TempDir(), cluster: o.cluster, sentinel: o.sentinel, itemKeys: o.itemKeys}
	if e.itemKeys == nil {
		e.itemKeys = faultItemKeys
	}
	e.configPath = filepath.Join(e.dir, "walbust.yaml")
	e.checkpoint = filepath.Join(e.dir, "checkpoint")

	startCtx, cancelStart := context.WithTimeout(ctx, 2*time.Minute)
	defer cancelStart()
	// Directories made by MkdirTemp itself: as root, Postgres runs as the
	// postgres user and must be able to reach its directory.
	pgDir, err := os.MkdirTemp("", "walbust-fault-pg-")
	if err != nil {
		t.Fatal(err)
	}
	opts := []throwaway.PostgresOption{}
	for name, value := range o.pgSettings {
		opts = append(opts, throwaway.WithSetting(name, value))
	}
	if e.pg, err = throwaway.StartPostgres(startCtx, pgDir, opts...); err != nil {
		os.RemoveAll(pgDir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.pg.Close(); err != nil {
			t.Errorf("close postgres: %v", err)
		}
	})
	var redisConfig string
	switch {
	case o.cluster != nil:
		redisConfig = fmt.Sprintf("  mode: cluster\n  url: %s\n", o.cluster.URL())
	case o.sentinel != nil:
		redisConfig = fmt.Sprintf("  mode: sentinel\n  url: %s\n  sentinel_master: %s\n", o.sentinel.URL(), o.sentinel.MasterName())
	default:
		redisDir, err := os.MkdirTemp("", "walbust-fault-redis-")
		if err != nil {
			t.Fatal(err)
		}
		if e.rds, err = throwaway.StartRedis(startCtx, redisDir); err != nil {
			os.RemoveAll(redisDir)
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := e.rds.Close(); err != nil {
				t.Errorf("close redis: %v", err)
			}
		})
		redisConfig = fmt.Sprintf("  url: %s\n", e.rds.URL())
	}
	for _, line := range strings.Split(strings.TrimSpace(o.redis), "\n") {
		if line != "" {
			redisConfig += "  " + line + "\n"
		}
	}
	e.rdb = e.redisClient()
	t.Cleanup(func() { e.rdb.Close() })

	if err := e.pg.CreateDatabase(startCtx, faultDB); err != nil {
		t.Fatal(err)
	}
	seed := faultSchema
	if o.items > 0 {
		seed += fmt.Sprintf("INSERT INTO items (id, grp) SELECT g, g %% 8 FROM generate_series(1, %d) g;\n", o.items)
	}
	if o.bulkRows > 0 {
		seed += fmt.Sprintf("INSERT INTO bulk (id) SELECT g FROM generate_series(1, %d) g;\n", o.bulkRows)
	}
	// Seeded before setup creates the slot, so walbust never sees it.
	if err := e.pg.Exec(startCtx, faultDB, seed); err != nil {
		t.Fatalf("schema: %v", err)
	}

	pgURL := e.pg.URL(faultDB)
	if o.proxy {
		e.proxy = startTCPProxy(t, fmt.Sprintf("127.0.0.1:%d", e.pg.Port()))
		pgURL = fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", e.proxy.Addr(), faultDB)
	}
	deps := o.deps
	if deps == "" {
		deps = faultDeps
	}
	e.writeFile("deps.yaml", deps)
	// status_interval 1s: the slot's position moves promptly, and a silent
	// connection is given up after 3s (3 × status_interval).
	e.writeFile("walbust.yaml", fmt.Sprintf(`postgres:
  url: %s
  slot: %s
  publication: %s
  status_interval: 1s
  heartbeat_interval: 1s
redis:
%sdeps: deps.yaml
checkpoint:
  path: checkpoint
log:
  level: debug
listen: 127.0.0.1:0
%s`, pgURL, faultSlot, faultSlot, redisConfig, o.config))

	// Registered after the servers, so it runs before they stop: no
	// walbust outlives its test, and the logs show what went wrong.
	t.Cleanup(func() {
		e.killAll()
		if t.Failed() {
			e.dumpLogs()
		}
		e.keepLogs()
	})
	if out, code := e.oneShot(time.Minute, "setup"); code != 0 {
		t.Fatalf("walbust setup exited %d:\n%s", code, out)
	}
	return e
}

func (e *faultEnv) writeFile(name, contents string) {
	e.t.Helper()
	if err := os.WriteFile(filepath.Join(e.dir, name), []byte(contents), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// redisClient does not retry: a test must know whether its command ran.
// (A cluster client still follows redirects, and a Sentinel one the master.)
func (e *faultEnv) redisClient() redis.UniversalClient {
	const dial, rw = 2 * time.Second, 5 * time.Second
	switch {
	case e.cluster != nil:
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: e.cluster.Addrs(), MaxRetries: -1, DialTimeout: dial, ReadTimeout: rw, WriteTimeout: rw})
	case e.sentinel != nil:
		return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: e.sentinel.MasterName(), SentinelAddrs: e.sentinel.SentinelAddrs(),
			MaxRetries: -1, DialTimeout: dial, ReadTimeout: rw, WriteTimeout: rw})
	}
	return redis.NewClient(&redis.Options{Addr: e.rds.Addr(), MaxRetries: -1, DialTimeout: dial, ReadTimeout: rw, WriteTimeout: rw})
}

// oneShot runs a walbust command to completion with the test's config and
// returns its combined output and exit code.
func (e *faultEnv) oneShot(timeout time.Duration, command string, args ...string) (string, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append([]string{command, "--config", e.configPath}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case ctx.Err() != nil:
		e.t.Fatalf("walbust %s did not finish within %v:\n%s", command, timeout, out)
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	}
	e.t.Fatalf("walbust %s: %v\n%s", command, err, out)
	return "", -1
}

// faultProc is one `walbust run` with a log of its own.
type faultProc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when it has exited
	started time.Time

	mu       sync.Mutex
	expected bool // the test stopped or killed it, so exiting is fine
}

// start launches `walbust run` without waiting for it to stream.
func (e *faultEnv) start(name string, args ...string) *faultProc {
	e.t.Helper()
	p := &faultProc{name: name, logPath: filepath.Join(e.dir, name+".log"), done: make(chan struct{})}
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	defer logFile.Close()
	p.cmd = exec.Command(binary, append([]string{"run", "--config", e.configPath}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		e.t.Fatalf("start walbust run: %v", err)
	}
	p.started = time.Now()
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	return p
}

// startStreaming starts `walbust run` and waits for it to stream.
func (e *faultEnv) startStreaming(name string, args ...string) *faultProc {
	e.t.Helper()
	p := e.start(name, args...)
	e.waitLog(p, `"msg":"streaming"`, 1, faultRecoverTimeout)
	return p
}

func (p *faultProc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// count is how many log lines contain s.
func (p *faultProc) count(s string) int { return strings.Count(p.log(), s) }

func (p *faultProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *faultProc) expect() {
	p.mu.Lock()
	p.expected = true
	p.mu.Unlock()
}

func (p *faultProc) unexpectedExit() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.expected && p.exited()
}

// waitLog waits until p's log has at least n lines containing s; it fails
// the test if p exits or time runs out first.
func (e *faultEnv) waitLog(p *faultProc, s string, n int, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for p.count(s) < n {
		if p.exited() {
			e.t.Fatalf("%s exited (code %d) while waiting for %d× %s in its log", p.name, p.cmd.ProcessState.ExitCode(), n, s)
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: fewer than %d× %s in its log after %v", p.name, n, s, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill sends SIGKILL and waits for p to be gone.
func (p *faultProc) kill() {
	p.expect()
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// term sends SIGTERM and returns the exit code and how long the exit took;
// after limit it kills p and returns code -1.
func (p *faultProc) term(limit time.Duration) (int, time.Duration) {
	p.expect()
	begin := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode(), time.Since(begin)
	case <-time.After(limit):
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		return -1, time.Since(begin)
	}
}

// vmHWM is the process's peak resident set size in bytes.
func (p *faultProc) vmHWM() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err != nil {
				return 0, fmt.Errorf("parse %q: %w", line, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", p.cmd.Process.Pid)
}

// assertAlive fails the test if a walbust the test did not stop has exited.
func (e *faultEnv) assertAlive() {
	e.t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, p := range e.procs {
		if p.unexpectedExit() {
			e.t.Fatalf("%s exited on its own with code %d; log tail:\n%s", p.name, p.cmd.ProcessState.ExitCode(), faultTail(p.log(), 40))
		}
	}
}

func (e *faultEnv) allProcs() []*faultProc {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*faultProc(nil), e.procs...)
}

func (e *faultEnv) killAll() {
	for _, p := range e.allProcs() {
		if !p.exited() {
			p.kill()
		}
	}
}

func (e *faultEnv) dumpLogs() {
	for _, p := range e.allProcs() {
		e.t.Logf("%s log (tail):\n%s", p.name, faultTail(p.log(), 150))
	}
	if b, err := os.ReadFile(e.pg.LogPath()); err == nil {
		e.t.Logf("postgres log (tail):\n%s", faultTail(string(b), 60))
	}
}

// keepLogs copies the walbust and Postgres logs to $WALBUST_KEEP_LOGS, if
// set, for a look after the test's directories are gone.
func (e *faultEnv) keepLogs() {
	dir := os.Getenv("WALBUST_KEEP_LOGS")
	if dir == "" {
		return
	}
	prefix := filepath.Join(dir, identifier(e.t.Name()))
	copyFile := func(from, to string) {
		if b, err := os.ReadFile(from); err == nil {
			if err := os.WriteFile(to, b, 0o644); err != nil {
				e.t.Logf("keep logs: %v", err)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Logf("keep logs: %v", err)
		return
	}
	for _, p := range e.allProcs() {
		copyFile(p.logPath, prefix+"-"+p.name+".log")
	}
	copyFile(e.pg.LogPath(), prefix+"-postgres.log")
}

func faultTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d earlier lines)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// connect opens a direct connection (never through the proxy) to the
// test database, retrying while the server restarts.
func (e *faultEnv) connect(timeout time.Duration) (*pgx.Conn, error) {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
		conn, err := pgx.Connect(ctx, e.pg.URL(faultDB))
		cancel()
		if err == nil {
			return conn, nil
		}
		if time.Now().After(deadline) || e.ctx.Err() != nil {
			return nil, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// query runs one statement on a fresh direct connection and scans its row
// (if dest is given).
func (e *faultEnv) query(sql string, args []any, dest ...any) {
	e.t.Helper()
	if err := e.tryQuery(time.Minute, sql, args, dest...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

func (e *faultEnv) tryQuery(timeout time.Duration, sql string, args []any, dest ...any) error {
	conn, err := e.connect(timeout)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(e.ctx, timeout)
	defer cancel()
	defer conn.Close(context.Background())
	if len(dest) == 0 {
		_, err = conn.Exec(ctx, sql, args...)
		return err
	}
	return conn.QueryRow(ctx, sql, args...).Scan(dest...)
}

// faultSlotState is the slot's row in pg_replication_slots.
type faultSlotState struct {
	exists    bool
	active    bool
	confirmed uint64
	walStatus string
}

func (e *faultEnv) slot() (faultSlotState, error) { return e.slotNamed(faultSlot) }

func (e *faultEnv) slotNamed(name string) (faultSlotState, error) {
	var s faultSlotState
	var confirmed *int64
	var walStatus *string
	err := e.tryQuery(30*time.Second, `SELECT active, (confirmed_flush_lsn - '0/0')::bigint, wal_status
FROM pg_replication_slots WHERE slot_name = $1`, []any{name}, &s.active, &confirmed, &walStatus)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	s.exists = true
	if confirmed != nil {
		s.confirmed = uint64(*confirmed)
	}
	if walStatus != nil {
		s.walStatus = *walStatus
	}
	return s, nil
}

// currentLSN is the server's WAL insert position: every commit
// acknowledged so far ends at or before it. (Not pg_current_wal_lsn(), the
// write position: with synchronous_commit=off a commit is acknowledged
// before its record is written, so it can lie beyond that.)
func (e *faultEnv) currentLSN() uint64 {
	e.t.Helper()
	var lsn int64
	e.query(`SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint`, nil, &lsn)
	return uint64(lsn)
}

// waitConfirmed waits until the slot has confirmed lsn: from then on,
// every transaction that committed before lsn has had its invalidations
// acknowledged by Redis (walbust confirms nothing it has not applied).
func (e *faultEnv) waitConfirmed(lsn uint64, timeout time.Duration) time.Duration {
	e.t.Helper()
	return e.waitSlotConfirmed(faultSlot, lsn, timeout)
}

func (e *faultEnv) waitSlotConfirmed(slot string, lsn uint64, timeout time.Duration) time.Duration {
	e.t.Helper()
	begin := time.Now()
	deadline := begin.Add(timeout)
	for {
		s, err := e.slotNamed(slot)
		if err == nil && s.confirmed >= lsn {
			return time.Since(begin)
		}
		e.assertAlive()
		if time.Now().After(deadline) {
			e.t.Fatalf("slot %s did not confirm %s within %v (now at %s, err %v)", slot, faultLSN(lsn), timeout, faultLSN(s.confirmed), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitSlotInactive waits until no walsender holds the slot.
func (e *faultEnv) waitSlotInactive(timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s, err := e.slot()
		if err == nil && !s.active {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("slot %s still active after %v (err %v)", faultSlot, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkpointLSN reads walbust's checkpoint file (0 when there is none).
func (e *faultEnv) checkpointLSN() uint64 {
	e.t.Helper()
	b, err := os.ReadFile(e.checkpoint)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		e.t.Fatal(err)
	}
	lsn, err := faultParseLSN(string(bytes.TrimSpace(b)))
	if err != nil {
		e.t.Fatalf("checkpoint file: %v", err)
	}
	return lsn
}

func faultParseLSN(s string) (uint64, error) {
	var hi, lo uint32
	if _, err := fmt.Sscanf(s, "%X/%X", &hi, &lo); err != nil {
		return 0, fmt.Errorf("parse LSN %q: %w", s, err)
	}
	return uint64(hi)<<32 | uint64(lo), nil
}

func faultLSN(lsn uint64) string { return fmt.Sprintf("%X/%X", uint32(lsn>>32), uint32(lsn)) }

// redisDo runs an idempotent command, retrying a few times: after a Redis
// restart the client's pooled connections are dead.
func (e *faultEnv) redisDo(f func(redis.UniversalClient) error) {
	e.t.Helper()
	var err error
	for range 5 {
		if err = f(e.rdb); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatal(err)
}

// cache SETs keys in the test's Redis.
func (e *faultEnv) cache(keys ...string) {
	e.t.Helper()
	for _, k := range keys {
		e.redisDo(func(c redis.UniversalClient) error { return c.Set(e.ctx, k, "cached", 0).Err() })
	}
}

// present returns those of keys that are in Redis.
func (e *faultEnv) present(keys ...string) []string {
	e.t.Helper()
	var out []string
	for _, k := range keys {
		var n int64
		e.redisDo(func(c redis.UniversalClient) (err error) {
			n, err = c.Exists(e.ctx, k).Result()
			return err
		})
		if n == 1 {
			out = append(out, k)
		}
	}
	return out
}

// waitGone waits until none of keys is in Redis.
func (e *faultEnv) waitGone(timeout time.Duration, keys ...string) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		left := e.present(keys...)
		if len(left) == 0 {
			return
		}
		e.assertAlive()
		if time.Now().After(deadline) {
			e.t.Fatalf("still cached after %v: %s", timeout, strings.Join(left, ", "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// exec runs SQL on a fresh direct connection.
func (e *faultEnv) exec(sql string, args ...any) {
	e.t.Helper()
	e.query(sql, args)
}

// preCommitLSN runs sql in a transaction and returns the WAL insert
// position just before its commit: the commit record ends after it.
func (e *faultEnv) preCommitLSN(sql string, args ...any) uint64 {
	e.t.Helper()
	conn, err := e.connect(time.Minute)
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Minute)
	defer cancel()
	tx, err := conn.Begin(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	var lsn int64
	if err := tx.QueryRow(ctx, `SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint`).Scan(&lsn); err != nil {
		e.t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		e.t.Fatal(err)
	}
	return uint64(lsn)
}
