package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/internal/throwaway"
	"github.com/walbust/walbust/replication/wal"
)

const dbName = "app"

// schema: two tables with the same rows, one per mode, so both modes see
// the same writes in the same transactions. marker pushes the slot past
// the last write when the run ends.
const schemaSQL = `
CREATE TABLE items_delete (id int PRIMARY KEY, val bigint NOT NULL DEFAULT 0);
CREATE TABLE items_fence  (id int PRIMARY KEY, val bigint NOT NULL DEFAULT 0);
CREATE TABLE marker       (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
INSERT INTO marker VALUES (1, 0);
`

// depsYAML: mode (a) deletes, mode (b) fences; each has a key space for
// the readers of the primary (p) and one for the readers of the replica
// (r), so the halves can be judged apart.
const depsYAML = `version: 1
tables:
  public.items_delete:
    action: delete
    keys: ["del:p:{id}", "del:r:{id}"]
    on_truncate: {patterns: ["del:*"]}
  public.items_fence:
    action: fence
    keys: ["fen:p:{id}", "fen:r:{id}"]
    on_truncate: {patterns: ["fen:*"]}
  public.marker:
    keys: ["marker:{id}"]
    on_truncate: {keys: ["marker:1"]}
`

// replicasYAML asks walbust to re-fence once the replicas have replayed
// each transaction.
const replicasYAML = `replicas:
  from_primary: true
  wait_max: %s
`

// env is the run's world: primary, replica, Redis, walbust, work dir.
type env struct {
	cfg     config
	logf    func(string, ...any)
	work    string
	root    string // the module's root directory
	binary  string
	primary *throwaway.Postgres
	replica *throwaway.Postgres
	redis   *throwaway.Redis
	rdb     *redis.Client
	primDB  *pgxpool.Pool
	replDB  *pgxpool.Pool
	ctl     *pgx.Conn // control connection to the primary
	listen  string    // walbust's /readyz address
	config  string

	mu   sync.Mutex
	proc *walbust
	dirs []string
}

func newEnv(ctx context.Context, cfg config, root string, logf func(string, ...any)) (e *env, err error) {
	e = &env{cfg: cfg, logf: logf, root: root, binary: cfg.Binary}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.work, err = e.tempDir("walbust-consistency-"); err != nil {
		return e, err
	}
	if e.binary == "" {
		e.binary = filepath.Join(e.work, "walbust")
		logf("building walbust")
		build := exec.CommandContext(ctx, "go", "build", "-o", e.binary, "./cmd/walbust")
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			return e, fmt.Errorf("go build ./cmd/walbust: %w\n%s", err, out)
		}
	}
	logf("starting primary, replica (recovery_min_apply_delay %v) and redis-server", cfg.ApplyDelay)
	dir, err := e.tempDir("walbust-consistency-pg-")
	if err != nil {
		return e, err
	}
	// synchronous_commit on: decoding sees each commit when it returns,
	// not up to wal_writer_delay later (fsync stays off).
	if e.primary, err = throwaway.StartPostgres(ctx, dir, throwaway.WithSetting("synchronous_commit", "on"),
		throwaway.WithSetting("max_connections", "200")); err != nil {
		return e, err
	}
	if err := e.primary.CreateDatabase(ctx, dbName); err != nil {
		return e, err
	}
	if err := e.primary.Exec(ctx, dbName, schemaSQL+fmt.Sprintf(
		"INSERT INTO items_delete SELECT g, 0 FROM generate_series(1, %d) g; INSERT INTO items_fence SELECT g, 0 FROM generate_series(1, %d) g;",
		cfg.Rows, cfg.Rows)); err != nil {
		return e, fmt.Errorf("schema: %w", err)
	}
	if dir, err = e.tempDir("walbust-consistency-replica-"); err != nil {
		return e, err
	}
	if e.replica, err = throwaway.StartReplica(ctx, dir, e.primary,
		throwaway.WithSetting("max_connections", "200"),
		throwaway.WithSetting("recovery_min_apply_delay", fmt.Sprintf("%dms", cfg.ApplyDelay.Milliseconds())),
		throwaway.WithSetting("hot_standby_feedback", "on"),
		// Report replay progress to the primary (pg_stat_replication) every
		// second rather than every 10 s, so a re-fence that watches it
		// follows the replica closely.
		throwaway.WithSetting("wal_receiver_status_interval", "1s"),
		throwaway.WithSetting("max_standby_streaming_delay", "-1")); err != nil {
		return e, err
	}
	if dir, err = e.tempDir("walbust-consistency-redis-"); err != nil {
		return e, err
	}
	if e.redis, err = throwaway.StartRedis(ctx, dir); err != nil {
		return e, err
	}
	e.rdb = redis.NewClient(&redis.Options{Addr: e.redis.Addr(), PoolSize: 64})
	if e.ctl, err = e.primary.Connect(ctx, dbName); err != nil {
		return e, err
	}
	pool := func(url string) (*pgxpool.Pool, error) {
		pc, err := pgxpool.ParseConfig(url)
		if err != nil {
			return nil, err
		}
		// Per database: a group of mode (a) and one per language of mode
		// (b) (the Python and Node loads go through the harness), writers.
		pc.MaxConns = int32(cfg.Readers*(1+len(cfg.Langs)) + cfg.Writers + 4)
		return pgxpool.NewWithConfig(ctx, pc)
	}
	if e.primDB, err = pool(e.primary.URL(dbName)); err != nil {
		return e, err
	}
	if e.replDB, err = pool(e.replica.URL(dbName)); err != nil {
		return e, err
	}
	return e, e.setupWalbust(ctx)
}

// setupWalbust writes the config and runs walbust setup.
func (e *env) setupWalbust(ctx context.Context) error {
	port, err := throwaway.FreePort()
	if err != nil {
		return err
	}
	e.listen = fmt.Sprintf("127.0.0.1:%d", port)
	if err := os.WriteFile(filepath.Join(e.work, "deps.yaml"), []byte(depsYAML), 0o644); err != nil {
		return err
	}
	e.config = filepath.Join(e.work, "walbust.yaml")
	body := fmt.Sprintf(`postgres:
  url: %s
  status_interval: 200ms
  heartbeat_interval: 0s
redis:
  url: %s
deps: deps.yaml
checkpoint:
  path: checkpoint
listen: %s
log:
  level: info
`, e.primary.URL(dbName), e.redis.URL(), e.listen) + fmt.Sprintf(replicasYAML, e.cfg.WaitMax)
	if err := os.WriteFile(e.config, []byte(body), 0o644); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, e.binary, "setup", "--config", e.config).CombinedOutput(); err != nil {
		return fmt.Errorf("walbust setup: %w\n%s", err, out)
	}
	return nil
}

// walbust is one `walbust run` process.
type walbust struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func (e *env) startWalbust(ctx context.Context) error {
	logFile, err := os.OpenFile(filepath.Join(e.work, "walbust.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(e.binary, "run", "--config", e.config)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start walbust: %w", err)
	}
	w := &walbust{cmd: cmd, done: make(chan struct{})}
	go func() { w.err = cmd.Wait(); close(w.done) }()
	e.mu.Lock()
	e.proc = w
	e.mu.Unlock()
	return e.waitReady(ctx, w)
}

// waitReady polls /readyz: streaming from the slot and Redis answering.
func (e *env) waitReady(ctx context.Context, w *walbust) error {
	deadline := time.Now().Add(60 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get("http://" + e.listen + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-w.done:
			return fmt.Errorf("walbust exited (%v) before it was ready:\n%s", w.err, e.logTail(20))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("walbust not ready within 60s:\n%s", e.logTail(20))
		}
	}
}

// killWalbust is kill -9: no shutdown, no final checkpoint.
func (e *env) killWalbust() error {
	e.mu.Lock()
	w := e.proc
	e.mu.Unlock()
	if w == nil {
		return errors.New("walbust is not running")
	}
	if err := w.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill -9 walbust: %w", err)
	}
	<-w.done
	return nil
}

func (e *env) stopWalbust() {
	e.mu.Lock()
	w := e.proc
	e.proc = nil
	e.mu.Unlock()
	if w == nil {
		return
	}
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.done:
	case <-time.After(30 * time.Second):
		_ = w.cmd.Process.Kill()
		<-w.done
	}
}

func (e *env) walbustExited() error {
	e.mu.Lock()
	w := e.proc
	e.mu.Unlock()
	if w == nil {
		return nil
	}
	select {
	case <-w.done:
		return fmt.Errorf("walbust exited: %v\n%s", w.err, e.logTail(20))
	default:
		return nil
	}
}

func (e *env) logTail(n int) string {
	b, err := os.ReadFile(filepath.Join(e.work, "walbust.log"))
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// lsn runs a query returning one pg_lsn as text (NULL: 0).
func lsn(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, sql string, args ...any) (wal.LSN, error) {
	var s *string
	if err := q.QueryRow(ctx, sql, args...).Scan(&s); err != nil {
		return 0, err
	}
	if s == nil {
		return 0, nil
	}
	return wal.ParseLSN(*s)
}

// settle waits until walbust has confirmed, and the replica has replayed,
// everything written so far: the lag bound of the run's end.
func (e *env) settle(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	target, err := lsn(ctx, e.ctl, "SELECT pg_current_wal_insert_lsn()::text")
	if err != nil {
		return 0, err
	}
	// Something published past the target for walbust to confirm.
	if _, err := e.ctl.Exec(ctx, "UPDATE marker SET n = n + 1 WHERE id = 1"); err != nil {
		return 0, err
	}
	deadline := start.Add(timeout)
	for {
		confirmed, err := lsn(ctx, e.ctl, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'walbust'")
		if err != nil {
			return 0, err
		}
		replayed, err := lsn(ctx, e.replDB, "SELECT pg_last_wal_replay_lsn()::text")
		if err != nil {
			return 0, err
		}
		if confirmed >= target && replayed >= target {
			return time.Since(start), nil
		}
		if err := e.walbustExited(); err != nil {
			return 0, err
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("not settled within %v: target %s, walbust confirmed %s, replica replayed %s",
				timeout, target, confirmed, replayed)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (e *env) tempDir(pattern string) (string, error) {
	d, err := os.MkdirTemp("", pattern)
	if err != nil {
		return "", err
	}
	e.dirs = append(e.dirs, d)
	return d, nil
}

func (e *env) close() {
	e.stopWalbust()
	if e.primDB != nil {
		e.primDB.Close()
	}
	if e.replDB != nil {
		e.replDB.Close()
	}
	if e.ctl != nil {
		e.ctl.Close(context.Background())
	}
	if e.rdb != nil {
		e.rdb.Close()
	}
	if e.redis != nil {
		_ = e.redis.Close()
	}
	if e.replica != nil {
		_ = e.replica.Close()
	}
	if e.primary != nil {
		_ = e.primary.Close()
	}
	for _, d := range e.dirs {
		if e.cfg.Keep && d == e.work {
			e.logf("kept %s", d)
			continue
		}
		os.RemoveAll(d)
	}
}
