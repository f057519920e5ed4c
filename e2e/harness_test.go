package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// How long walbust gets for each thing it must do. Generous: the machine is
// shared, and a pass must not depend on luck.
const (
	invalidateTimeout = 15 * time.Second
	startTimeout      = 30 * time.Second
	stopTimeout       = 20 * time.Second
)

// env is one test's world: its own database, slot, publication, config
// directory and walbust process, sharing the package's Postgres and Redis.
type env struct {
	t          *testing.T
	ctx        context.Context
	name       string // database, slot and publication name
	dir        string // config, deps.yaml, checkpoint, logs
	configPath string
	checkpoint string
	logPath    string // stdout and stderr of every walbust run, appended
	db         *pgx.Conn
	rdb        *redis.Client
	proc       *exec.Cmd // the running `walbust run`, nil when stopped
	procDone   chan struct{}
	fences     int
}

// envOptions varies the world a test starts in.
type envOptions struct {
	extraSchema string // SQL run after schema.sql
	seed        string // SQL run before setup, so walbust never sees it
	deps        string // deps.yaml contents; the repo's deps.yaml when empty
	noSetup     bool   // skip `walbust setup` (and so `walbust run`)
	noStart     bool   // run setup but do not start `walbust run`
}

// defaultSeed gives the tests a few rows to update and delete.
const defaultSeed = `
INSERT INTO categories (id, name) VALUES (1, 'books'), (3, 'music'), (7, 'games');
INSERT INTO products (id, category_id, name, price_cents) VALUES
  (1, 1, 'Dune', 999),
  (2, 3, 'Kind of Blue', 1499),
  (3, 1, 'Emma', 799);
`

// newEnv builds a test's world and, unless told otherwise, leaves walbust
// running and streaming. Everything is undone in t.Cleanup.
func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx, name: identifier(t.Name()), dir: t.TempDir()}
	e.configPath = filepath.Join(e.dir, "walbust.yaml")
	e.checkpoint = filepath.Join(e.dir, "checkpoint")
	e.logPath = filepath.Join(e.dir, "walbust.log")

	if err := e.dropDatabase(); err != nil {
		t.Fatalf("leftovers of an earlier run: %v", err)
	}
	t.Cleanup(func() {
		if err := e.dropDatabase(); err != nil {
			t.Error(err)
		}
	})
	if err := pg.CreateDatabase(ctx, e.name); err != nil {
		t.Fatal(err)
	}
	schema, err := os.ReadFile(filepath.Join(repoRoot, "schema.sql"))
	if err != nil {
		t.Fatal(err)
	}
	if err := pg.Exec(ctx, e.name, string(schema)+";\n"+o.extraSchema); err != nil {
		t.Fatalf("apply schema: %v", err)
	}
	if o.seed != "" {
		if err := pg.Exec(ctx, e.name, o.seed); err != nil {
			t.Fatalf("seed: %v", err)
		}
	}
	if e.db, err = pg.Connect(ctx, e.name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.db.Close(context.Background()) })

	deps := o.deps
	if deps == "" {
		b, err := os.ReadFile(filepath.Join(repoRoot, "deps.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		deps = string(b)
	}
	e.writeFile("deps.yaml", deps)
	// listen on port 0: several walbusts (other tests' leftovers, a demo)
	// must not fight over the default metrics port.
	// status_interval is short so the slot's confirmed position (checked by
	// the slot-advance test) moves within a second rather than ten.
	e.writeFile("walbust.yaml", fmt.Sprintf(`postgres:
  url: %s
  slot: %s
  publication: %s
  status_interval: 200ms
redis:
  url: %s
deps: deps.yaml
checkpoint:
  path: checkpoint
log:
  level: debug
listen: 127.0.0.1:0
`, pg.URL(e.name), e.name, e.name, rds.URL()))

	e.rdb = rds.Client()
	t.Cleanup(func() { e.rdb.Close() })
	if err := e.rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}

	// Cleanups run last-in first-out: the log is dumped after walbust has
	// stopped (so it shows the shutdown); the slot and database registered
	// earlier go after that.
	t.Cleanup(e.dumpLogOnFailure)
	t.Cleanup(func() {
		if e.proc != nil {
			e.stop()
		}
	})
	if o.noSetup {
		return e
	}
	if out, code := e.walbust("setup"); code != 0 {
		t.Fatalf("walbust setup exited %d:\n%s", code, out)
	}
	if !o.noStart {
		e.start()
	}
	return e
}

// identifier turns a test name into a Postgres identifier that is also a
// valid slot name: lower case letters, digits and underscores, ≤ 63 bytes.
func identifier(testName string) string {
	s := strings.ToLower(testName)
	s = regexp.MustCompile(`[^a-z0-9_]+`).ReplaceAllString(s, "_")
	s = "e2e_" + strings.TrimPrefix(s, "test")
	if len(s) > 63 {
		s = s[:63]
	}
	return s
}

func (e *env) writeFile(name, contents string) {
	e.t.Helper()
	if err := os.WriteFile(filepath.Join(e.dir, name), []byte(contents), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// walbust runs a one-shot command (setup, teardown) with the test's config
// and returns its combined output and exit code.
func (e *env) walbust(command string, args ...string) (string, int) {
	e.t.Helper()
	return e.oneShot(command, args, nil)
}

// oneShot runs a one-shot command with the test's config, extra flags and
// environment variables; combined output and exit code.
func (e *env) oneShot(command string, args, environ []string) (string, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append([]string{command, "--config", e.configPath}, args...)...)
	if environ != nil {
		cmd.Env = append(os.Environ(), environ...)
	}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	}
	e.t.Fatalf("walbust %s: %v\n%s", command, err, out)
	return "", -1
}

// launch starts `walbust run` with extra args and environment, appending
// its output to the log, without waiting for anything; it returns the log
// offset this run's lines start at.
func (e *env) launch(args, environ []string) int64 {
	e.t.Helper()
	if e.proc != nil {
		e.t.Fatal("launch: walbust is already running")
	}
	logFile, err := os.OpenFile(e.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	defer logFile.Close()
	offset, err := logFile.Seek(0, 2)
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(binary, append([]string{"run", "--config", e.configPath}, args...)...)
	if environ != nil {
		cmd.Env = append(os.Environ(), environ...)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Dies with the test binary rather than outliving it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("start walbust run: %v", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	e.proc, e.procDone = cmd, done
	return offset
}

// startWith launches `walbust run` and waits for it to say it is streaming.
func (e *env) startWith(args, environ []string) {
	e.t.Helper()
	offset := e.launch(args, environ)
	cmd, done := e.proc, e.procDone
	deadline := time.Now().Add(startTimeout)
	for {
		if strings.Contains(e.logSince(offset), `"msg":"streaming"`) {
			return
		}
		select {
		case <-done:
			e.proc = nil
			e.t.Fatalf("walbust run %s exited with code %d before streaming", strings.Join(args, " "), cmd.ProcessState.ExitCode())
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("walbust run %s did not log \"streaming\" within %v", strings.Join(args, " "), startTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// start launches `walbust run` and waits for it to say it is streaming.
func (e *env) start() {
	e.t.Helper()
	e.startWith(nil, nil)
}

// stop sends SIGTERM to `walbust run` and requires a clean exit (code 0).
func (e *env) stop() {
	e.t.Helper()
	if e.proc == nil {
		e.t.Fatal("stop: walbust is not running")
	}
	cmd := e.proc
	e.proc = nil
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		e.t.Errorf("SIGTERM walbust: %v", err)
	}
	select {
	case <-e.procDone:
	case <-time.After(stopTimeout):
		cmd.Process.Kill()
		<-e.procDone
		e.t.Errorf("walbust run did not exit within %v of SIGTERM; killed it", stopTimeout)
		return
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		e.t.Errorf("walbust run exited with code %d after SIGTERM, want 0", code)
	}
}

func (e *env) logSince(offset int64) string {
	b, err := os.ReadFile(e.logPath)
	if err != nil || int64(len(b)) < offset {
		return ""
	}
	return string(b[offset:])
}

func (e *env) log() string { return e.logSince(0) }

// dumpLogOnFailure shows what walbust said, which is usually the answer.
func (e *env) dumpLogOnFailure() {
	if !e.t.Failed() {
		return
	}
	lines := strings.Split(strings.TrimRight(e.log(), "\n"), "\n")
	const max = 300
	if len(lines) > max {
		lines = append([]string{fmt.Sprintf("... (%d earlier lines in %s)", len(lines)-max, e.logPath)}, lines[len(lines)-max:]...)
	}
	e.t.Logf("walbust log:\n%s", strings.Join(lines, "\n"))
}

// dropDatabase removes the test's slot and database, whatever the test did
// to them: a cluster allows only max_replication_slots slots, and -count=N
// reruns reuse the names. The walsender may hold the slot for a moment
// after walbust has gone, so "active" errors are retried.
func (e *env) dropDatabase() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sql := fmt.Sprintf("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '%s'", e.name)
	for {
		err := pg.Exec(ctx, "postgres", sql)
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "is active") || ctx.Err() != nil {
			return fmt.Errorf("drop slot %s: %w", e.name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return pg.Exec(ctx, "postgres", "DROP DATABASE IF EXISTS "+pgx.Identifier{e.name}.Sanitize()+" WITH (FORCE)")
}

// exec runs SQL through pgx.
func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(e.ctx, sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// psql runs SQL through the real psql binary, the way an operator or an
// application with no walbust code in it would.
func (e *env) psql(sql string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, pg.Bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg.URL(e.name), "-c", sql)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		e.t.Fatalf("psql -c %q: %v\n%s", sql, err, out.String())
	}
}

// queryRow scans one row.
func (e *env) queryRow(sql string, dest []any, args ...any) {
	e.t.Helper()
	if err := e.db.QueryRow(e.ctx, sql, args...).Scan(dest...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// cache stores each key, as an application's read path would.
func (e *env) cache(keys ...string) {
	e.t.Helper()
	for _, k := range keys {
		if err := e.rdb.Set(e.ctx, k, "cached", 0).Err(); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *env) exists(key string) bool {
	e.t.Helper()
	n, err := e.rdb.Exists(e.ctx, key).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return n == 1
}

// waitGone waits until every key has been invalidated.
func (e *env) waitGone(keys ...string) {
	e.t.Helper()
	eventually(e.t, invalidateTimeout, func() bool {
		for _, k := range keys {
			if e.exists(k) {
				return false
			}
		}
		return true
	}, func() string {
		var left []string
		for _, k := range keys {
			if e.exists(k) {
				left = append(left, shorten(k))
			}
		}
		return fmt.Sprintf("keys still in Redis: %s", strings.Join(left, ", "))
	})
}

// assertPresent checks that keys were left alone. Call it after fence, so
// that walbust has certainly processed every earlier write.
func (e *env) assertPresent(keys ...string) {
	e.t.Helper()
	for _, k := range keys {
		if !e.exists(k) {
			e.t.Errorf("key %s was invalidated, want it kept", shorten(k))
		}
	}
}

// fence commits a write of its own and waits for its key to vanish. WAL is
// applied in commit order, so afterwards every earlier commit (and every
// earlier rollback) has been processed: that is how a test proves a
// negative without sleeping.
func (e *env) fence() {
	e.t.Helper()
	e.fences++
	id := 1_000_000 + e.fences
	key := fmt.Sprintf("category:%d", id)
	e.cache(key)
	e.exec("INSERT INTO categories (id, name) VALUES ($1, 'fence')", id)
	e.waitGone(key)
}

// eventually polls cond until it holds or timeout passes; describe says
// what was still wrong.
func eventually(t *testing.T, timeout time.Duration, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not true within %v: %s", timeout, describe())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func shorten(key string) string {
	if len(key) > 60 {
		return fmt.Sprintf("%s...(%d bytes)", key[:40], len(key))
	}
	return key
}
