package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/internal/gomod"
	"github.com/walbust/walbust/internal/throwaway"
	"github.com/walbust/walbust/replication/wal"
)

const (
	dbName      = "bench"
	publication = "walbust"
	drainSlot   = "walbust_b" // slot walbust drains in part 1
	liveSlot    = "walbust_live"
)

// env is the bench's world: one Postgres, one Redis, the walbust binary and
// a work directory, all removed by close.
type env struct {
	sc      scale
	work    string // config, deps, checkpoints, logs, pgbench scripts
	binary  string
	pg      *throwaway.Postgres
	rds     *throwaway.Redis
	rdb     *redis.Client
	db      *pgx.Conn // control connection
	dbURL   string
	config  string
	deps    string // row-by-row deps.yaml
	depsCol string // the same plus on_truncate for orders (collapsible)
	logf    func(format string, args ...any)
	keep    bool // keep work (logs) at close

	mu    sync.Mutex
	procs map[*walbust]bool // running walbust processes, stopped by close
	dirs  []string
}

// schema: two published tables with 2-4 keys per row, REPLICA IDENTITY FULL
// (the old row is needed for keys built from non-key columns).
const schemaSQL = `
CREATE TABLE accounts (
    id         int         PRIMARY KEY,
    org_id     int         NOT NULL,
    email      text        NOT NULL,
    balance    bigint      NOT NULL DEFAULT 0,
    v          int         NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE accounts REPLICA IDENTITY FULL;
CREATE TABLE orders (
    id         int         PRIMARY KEY,
    account_id int         NOT NULL,
    status     text        NOT NULL,
    total      bigint      NOT NULL DEFAULT 0,
    v          int         NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE orders REPLICA IDENTITY FULL;
-- What walbust setup would create; made here so that every part (and
-- pg_recvlogical) has it whichever parts run.
CREATE PUBLICATION walbust FOR TABLE accounts, orders;
`

// orgs is how many distinct org_id values accounts spread over.
const orgs = 100

const depsYAML = `version: 1
tables:
  public.accounts:
    keys:
      - "account:{id}"
      - "account:{id}:profile"
      - "org:{org_id}:accounts"
      - "account-by-email:{email}"
  public.orders:
    keys:
      - "order:{id}"
      - "account:{account_id}:orders"
`

// depsCollapseYAML lets a huge transaction on orders fall back to
// on_truncate patterns (max_tx_changes) instead of row keys.
const depsCollapseYAML = depsYAML + `    on_truncate:
      patterns:
        - "order:*"
        - "account:*:orders"
`

// Key renderers: the same templates as depsYAML, for seeding Redis and
// checking that walbust removed what it should have.
func accountKeys(id, org int, email string) []string {
	return []string{"account:" + strconv.Itoa(id), "account:" + strconv.Itoa(id) + ":profile",
		"org:" + strconv.Itoa(org) + ":accounts", "account-by-email:" + email}
}

func orderKeys(id, account int) []string {
	return []string{"order:" + strconv.Itoa(id), "account:" + strconv.Itoa(account) + ":orders"}
}

func email(id int) string { return "user" + strconv.Itoa(id) + "@example.com" }

func newEnv(ctx context.Context, sc scale, binary string, keep bool, logf func(string, ...any)) (e *env, err error) {
	e = &env{sc: sc, binary: binary, keep: keep, logf: logf, procs: map[*walbust]bool{}}
	defer func() {
		if err != nil {
			e.close()
			e = nil
		}
	}()
	if e.work, err = e.tempDir("walbust-bench-"); err != nil {
		return e, err
	}
	if e.binary == "" {
		e.binary = filepath.Join(e.work, "walbust")
		logf("building walbust")
		build := exec.CommandContext(ctx, "go", "build", "-o", e.binary, "./cmd/walbust")
		build.Dir, err = gomod.Root(ctx, "go run ./cmd/walbust-bench")
		if err != nil {
			return e, err
		}
		if out, err := build.CombinedOutput(); err != nil {
			return e, fmt.Errorf("go build ./cmd/walbust: %w\n%s", err, out)
		}
	}
	// Each server's directory comes straight from MkdirTemp: as root,
	// Postgres runs as the postgres user and must be able to reach it.
	pgDir, err := e.tempDir("walbust-bench-pg-")
	if err != nil {
		return e, err
	}
	logf("starting postgres and redis-server")
	e.pg, err = throwaway.StartPostgres(ctx, pgDir,
		throwaway.WithSetting("max_wal_size", "4GB"),
		throwaway.WithSetting("checkpoint_timeout", "1h"),
		throwaway.WithSetting("shared_buffers", "512MB"),
		throwaway.WithSetting("max_replication_slots", "20"),
		throwaway.WithSetting("max_wal_senders", "20"),
		// Writers wait for their commit record to be written (fsync stays
		// off): with asynchronous commit, logical decoding only sees a
		// commit once the WAL writer flushes it (up to wal_writer_delay
		// later), which would put 0-200 ms of Postgres into every lag
		// figure. Backlog generation turns it off per session.
		throwaway.WithSetting("synchronous_commit", "on"),
	)
	if err != nil {
		return e, err
	}
	redisDir, err := e.tempDir("walbust-bench-redis-")
	if err != nil {
		return e, err
	}
	if e.rds, err = throwaway.StartRedis(ctx, redisDir); err != nil {
		return e, err
	}
	e.rdb = redis.NewClient(&redis.Options{Addr: e.rds.Addr(), PoolSize: 32, ReadTimeout: time.Minute, WriteTimeout: time.Minute})
	if err := e.pg.CreateDatabase(ctx, dbName); err != nil {
		return e, err
	}
	e.dbURL = e.pg.URL(dbName)
	if e.db, err = e.pg.Connect(ctx, dbName); err != nil {
		return e, err
	}
	if err := e.exec(ctx, schemaSQL); err != nil {
		return e, fmt.Errorf("schema: %w", err)
	}
	logf("loading %d accounts and %d orders", sc.Accounts, sc.Orders)
	// Row 0 of accounts is the fence row: never written by the workload.
	if err := e.exec(ctx, fmt.Sprintf(`
INSERT INTO accounts (id, org_id, email) SELECT g, g %% %d, 'user' || g || '@example.com' FROM generate_series(0, %d) g;
INSERT INTO orders (id, account_id, status) SELECT g, g %% %d + 1, 'new' FROM generate_series(1, %d) g;`,
		orgs, sc.Accounts, sc.Accounts, sc.Orders)); err != nil {
		return e, fmt.Errorf("load rows: %w", err)
	}
	// One statement each: VACUUM cannot run in the implicit transaction of
	// a multi-statement string.
	for _, sql := range []string{"VACUUM ANALYZE accounts", "VACUUM ANALYZE orders", "CHECKPOINT"} {
		if err := e.exec(ctx, sql); err != nil {
			return e, fmt.Errorf("%s: %w", sql, err)
		}
	}
	e.deps = filepath.Join(e.work, "deps.yaml")
	e.depsCol = filepath.Join(e.work, "deps-collapse.yaml")
	e.config = filepath.Join(e.work, "walbust.yaml")
	files := map[string]string{
		e.deps: depsYAML, e.depsCol: depsCollapseYAML,
		e.config: fmt.Sprintf(`postgres:
  url: %s
  slot: %s
  publication: %s
  heartbeat_interval: 0s
redis:
  url: %s
deps: deps.yaml
checkpoint:
  path: checkpoint
log:
  level: info
listen: 127.0.0.1:0
`, e.dbURL, drainSlot, publication, e.rds.URL()),
	}
	for path, body := range files {
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			return e, err
		}
	}
	return e, nil
}

func (e *env) tempDir(pattern string) (string, error) {
	d, err := os.MkdirTemp("", pattern)
	if err != nil {
		return "", err
	}
	e.mu.Lock()
	e.dirs = append(e.dirs, d)
	e.mu.Unlock()
	return d, nil
}

// close stops every process the bench started and removes its directories.
func (e *env) close() {
	e.mu.Lock()
	procs := make([]*walbust, 0, len(e.procs))
	for p := range e.procs {
		procs = append(procs, p)
	}
	e.mu.Unlock()
	for _, p := range procs {
		if err := p.stop(); err != nil {
			e.logf("%v", err)
		}
	}
	if e.db != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		e.db.Close(ctx)
		cancel()
	}
	if e.rdb != nil {
		e.rdb.Close()
	}
	if e.rds != nil {
		if err := e.rds.Close(); err != nil {
			e.logf("stop redis: %v", err)
		}
	}
	if e.pg != nil {
		if err := e.pg.Close(); err != nil {
			e.logf("stop postgres: %v", err)
		}
	}
	for _, d := range e.dirs {
		if e.keep && d == e.work {
			e.logf("kept %s", d)
			continue
		}
		os.RemoveAll(d)
	}
}

func (e *env) exec(ctx context.Context, sql string, args ...any) error {
	_, err := e.db.Exec(ctx, sql, args...)
	return err
}

func (e *env) lsn(ctx context.Context, sql string, args ...any) (wal.LSN, error) {
	var s *string
	if err := e.db.QueryRow(ctx, sql, args...).Scan(&s); err != nil {
		return 0, err
	}
	if s == nil {
		return 0, nil
	}
	return wal.ParseLSN(*s)
}

// insertLSN is the end of all WAL written so far, committed or not.
func (e *env) insertLSN(ctx context.Context) (wal.LSN, error) {
	return e.lsn(ctx, "SELECT pg_current_wal_insert_lsn()::text")
}

func (e *env) confirmedLSN(ctx context.Context, slot string) (wal.LSN, error) {
	return e.lsn(ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot)
}

// fence returns a position at or after every commit so far, then commits
// one more transaction on a published table (the fence row, id 0, which the
// workload never touches) so that a consumer has something to acknowledge
// beyond it.
func (e *env) fence(ctx context.Context) (wal.LSN, error) {
	target, err := e.insertLSN(ctx)
	if err != nil {
		return 0, err
	}
	return target, e.exec(ctx, "UPDATE accounts SET balance = balance WHERE id = 0")
}

// waitConfirmed polls until slot's confirmed_flush_lsn reaches target, and
// returns when it saw that. A walbust that exits meanwhile is an error.
func (e *env) waitConfirmed(ctx context.Context, slot string, target wal.LSN, timeout, every time.Duration, w *walbust) (time.Time, error) {
	conn, err := e.pg.Connect(ctx, dbName)
	if err != nil {
		return time.Time{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	deadline := time.Now().Add(timeout)
	var last wal.LSN
	for {
		var s *string
		if err := conn.QueryRow(ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&s); err != nil {
			return time.Time{}, fmt.Errorf("poll slot %s: %w", slot, err)
		}
		now := time.Now()
		if s != nil {
			if last, err = wal.ParseLSN(*s); err != nil {
				return time.Time{}, err
			}
			if last >= target {
				return now, nil
			}
		}
		if w != nil && w.exited() {
			return time.Time{}, fmt.Errorf("walbust exited (%v) before slot %s reached %s (at %s)\n%s", w.err, slot, target, last, w.logTail(20))
		}
		if now.After(deadline) {
			return time.Time{}, fmt.Errorf("slot %s did not reach %s within %v (at %s)", slot, target, timeout, last)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(every):
		}
	}
}

// dropSlot drops slot if it exists, first waiting (up to 30 s) for the
// walsender of a consumer that just exited to release it.
func (e *env) dropSlot(ctx context.Context, slot string) error {
	for deadline := time.Now().Add(30 * time.Second); ; {
		var active *bool
		err := e.db.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&active)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		if !*active {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replication slot %s is still in use after 30s", slot)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return e.exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", slot)
}

// dropAllSlots drops every slot of the bench database.
func (e *env) dropAllSlots(ctx context.Context) error {
	rows, err := e.db.Query(ctx, "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()")
	if err != nil {
		return err
	}
	slots, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, s := range slots {
		if err := e.dropSlot(ctx, s); err != nil {
			return err
		}
	}
	return nil
}

// setup runs `walbust setup` for slot (publication and slot, idempotent).
func (e *env) setup(ctx context.Context, slot string) error {
	cmd := exec.CommandContext(ctx, e.binary, "setup", "--config", e.config, "--slot", slot)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("walbust setup --slot %s: %w\n%s", slot, err, out)
	}
	return nil
}

// flushRedis empties Redis.
func (e *env) flushRedis(ctx context.Context) error {
	return e.rdb.FlushAll(ctx).Err()
}

// setKeys stores keys (value "cached") in pipelined MSETs.
func (e *env) setKeys(ctx context.Context, keys []string) error {
	const chunk = 1000
	pipe := e.rdb.Pipeline()
	args := make([]any, 0, 2*chunk)
	for i := 0; i < len(keys); i += chunk {
		args = args[:0]
		for _, k := range keys[i:min(i+chunk, len(keys))] {
			args = append(args, k, "cached")
		}
		pipe.MSet(ctx, args...)
		if pipe.Len() >= 50 || i+chunk >= len(keys) {
			if _, err := pipe.Exec(ctx); err != nil {
				return fmt.Errorf("seed redis: %w", err)
			}
		}
	}
	return nil
}

// countExisting returns how many of keys exist in Redis.
func (e *env) countExisting(ctx context.Context, keys []string) (int64, error) {
	const chunk = 1000
	var n int64
	pipe := e.rdb.Pipeline()
	var cmds []*redis.IntCmd
	for i := 0; i < len(keys); i += chunk {
		cmds = append(cmds, pipe.Exists(ctx, keys[i:min(i+chunk, len(keys))]...))
		if pipe.Len() >= 50 || i+chunk >= len(keys) {
			if _, err := pipe.Exec(ctx); err != nil {
				return 0, fmt.Errorf("check redis: %w", err)
			}
			for _, c := range cmds {
				n += c.Val()
			}
			cmds = cmds[:0]
		}
	}
	return n, nil
}

// walbust is one `walbust run` process.
type walbust struct {
	e           *env
	cmd         *exec.Cmd
	logPath     string
	done        chan struct{}
	err         error
	streaming   chan struct{}
	addrKnown   chan struct{} // closed once metricsAddr is set
	metricsAddr string
	started     time.Time
	streamingAt time.Time // when the "streaming" line was read; set before streaming is closed
	stopOnce    sync.Once
	stopErr     error
}

// startWalbust launches `walbust run` on slot with a checkpoint file of its
// own. It does not wait for streaming: see waitStreaming.
func (e *env) startWalbust(ctx context.Context, name, slot, deps string) (*walbust, error) {
	return e.startWalbustArgs(ctx, name, slot, deps)
}

// startWalbustArgs is startWalbust with more flags (which win over the
// config file's settings, and over the flags before them).
func (e *env) startWalbustArgs(ctx context.Context, name, slot, deps string, args ...string) (*walbust, error) {
	w := &walbust{e: e, logPath: filepath.Join(e.work, name+".log"), done: make(chan struct{}),
		streaming: make(chan struct{}), addrKnown: make(chan struct{})}
	logFile, err := os.OpenFile(w.logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	w.cmd = exec.Command(e.binary, append([]string{"run", "--config", e.config, "--slot", slot,
		"--checkpoint", filepath.Join(e.work, name+".checkpoint"), "--deps", deps}, args...)...)
	// Own process group: a Ctrl-C aimed at the bench reaches walbust only
	// through the bench's orderly stop. SIGKILL if the bench dies first.
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := w.cmd.StderrPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	w.cmd.Stdout = logFile
	w.started = time.Now()
	if err := w.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start walbust: %w", err)
	}
	e.mu.Lock()
	e.procs[w] = true
	e.mu.Unlock()
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		w.scanLog(stderr, logFile)
	}()
	go func() {
		<-scanned
		w.err = w.cmd.Wait()
		logFile.Close()
		close(w.done)
	}()
	return w, nil
}

// scanLog copies walbust's log to its file and watches for the lines the
// bench needs.
func (w *walbust) scanLog(r io.Reader, out io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	streaming := false
	for sc.Scan() {
		line := sc.Bytes()
		out.Write(line)
		out.Write([]byte{'\n'})
		if !streaming && strings.Contains(string(line), `"msg":"streaming"`) {
			streaming = true
			w.streamingAt = time.Now()
			close(w.streaming)
		}
		if strings.Contains(string(line), `"msg":"serving metrics"`) {
			var m struct {
				Addr string `json:"addr"`
			}
			if json.Unmarshal(line, &m) == nil && m.Addr != "" && w.metricsAddr == "" {
				w.metricsAddr = m.Addr
				close(w.addrKnown)
			}
		}
	}
	io.Copy(out, r)
}

func (w *walbust) waitStreaming(ctx context.Context) error {
	select {
	case <-w.streaming:
		return nil
	case <-w.done:
		return fmt.Errorf("walbust exited before streaming: %v\n%s", w.err, w.logTail(30))
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(60 * time.Second):
		return fmt.Errorf("walbust did not start streaming within a minute\n%s", w.logTail(30))
	}
}

func (w *walbust) exited() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

func (w *walbust) pid() int { return w.cmd.Process.Pid }

// stop sends SIGTERM (walbust finishes its batch, checkpoints and exits 0)
// and waits; after a minute it kills.
func (w *walbust) stop() error {
	w.stopOnce.Do(func() {
		defer func() {
			w.e.mu.Lock()
			delete(w.e.procs, w)
			w.e.mu.Unlock()
		}()
		if w.exited() {
			w.stopErr = fmt.Errorf("walbust had already exited: %v\n%s", w.err, w.logTail(20))
			return
		}
		_ = w.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-w.done:
			if w.err != nil {
				w.stopErr = fmt.Errorf("walbust exited with %v after SIGTERM\n%s", w.err, w.logTail(20))
			}
		case <-time.After(time.Minute):
			_ = syscall.Kill(-w.cmd.Process.Pid, syscall.SIGKILL)
			<-w.done
			w.stopErr = fmt.Errorf("walbust did not stop within a minute of SIGTERM; killed it\n%s", w.logTail(20))
		}
	})
	return w.stopErr
}

// peakRSS is VmHWM, the process's peak resident set so far, in kB.
func (w *walbust) peakRSS() (int64, error) { return procStatusKB(w.pid(), "VmHWM") }

func procStatusKB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

func (w *walbust) logTail(n int) string {
	b, err := os.ReadFile(w.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "walbust log (tail):\n" + strings.Join(lines, "\n")
}

// metricsURL is walbust's /metrics, once it has logged its address.
func (w *walbust) metricsURL(ctx context.Context) (string, error) {
	select {
	case <-w.addrKnown:
		return "http://" + w.metricsAddr + "/metrics", nil
	case <-ctx.Done():
		return "", ctx.Err()
	case <-time.After(10 * time.Second):
		return "", errors.New("walbust did not log its metrics address")
	}
}
