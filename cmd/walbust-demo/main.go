// Command demo shows walbust at work against a real PostgreSQL and Redis:
// it caches a few keys, changes rows with the real psql (so the writer holds
// no walbust code at all) and reports which keys vanished and how fast.
//
// Run it from the repository with `go run ./cmd/walbust-demo` or `make demo`. Everything
// it starts lives in a temporary directory and is stopped and removed on
// exit, on error and on Ctrl-C.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/internal/gomod"
	"github.com/walbust/walbust/internal/throwaway"
)

const (
	database = "shop"
	// vanishTimeout is how long a key may take to go before the demo fails.
	vanishTimeout = 10 * time.Second
)

// seed is written before the slot exists, so walbust never sees it and the
// only changes it streams are the demo's steps.
const seed = `
INSERT INTO categories (id, name) VALUES (1, 'books'), (2, 'music'), (7, 'games');
INSERT INTO products (id, category_id, name, price_cents) VALUES
  (1, 1, 'Dune',          999),
  (2, 2, 'Kind of Blue', 1499),
  (3, 1, 'Emma',          799),
  (4, 2, 'Blue Train',   1299);
`

// cached is what an application would have in Redis: the value for each key
// as the read path stored it. product:99 holds a negative entry ("no such
// product"), which an insert must clear.
var cached = map[string]string{
	"product:1":           `{"id":1,"name":"Dune","price_cents":999}`,
	"product:2":           `{"id":2,"name":"Kind of Blue","price_cents":1499}`,
	"product:3":           `{"id":3,"name":"Emma","price_cents":799}`,
	"product:4":           `{"id":4,"name":"Blue Train","price_cents":1299}`,
	"product:99":          "nil",
	"category:1":          `{"id":1,"name":"books"}`,
	"category:2":          `{"id":2,"name":"music"}`,
	"category:7":          `{"id":7,"name":"games"}`,
	"category:1:products": "[1,3]",
	"category:2:products": "[2,4]",
	"category:7:products": "[]",
}

// step is one write and the keys it must invalidate; every other cached key
// must stay.
type step struct {
	title  string
	sql    string
	vanish []string
}

var steps = []step{
	{
		title:  "Change a price",
		sql:    "UPDATE products SET price_cents = 1199 WHERE id = 1",
		vanish: []string{"product:1", "category:1:products"},
	},
	{
		title: "Move a product from category 2 to category 7",
		sql:   "UPDATE products SET category_id = 7 WHERE id = 2",
		// The old category's listing comes from the old row, which Postgres
		// sends because products has REPLICA IDENTITY FULL.
		vanish: []string{"product:2", "category:2:products", "category:7:products"},
	},
	{
		title:  "Delete a product",
		sql:    "DELETE FROM products WHERE id = 3",
		vanish: []string{"product:3", "category:1:products"},
	},
	{
		title:  `Insert a product whose absence was cached ("nil")`,
		sql:    "INSERT INTO products (id, category_id, name, price_cents) VALUES (99, 7, 'Tetris', 499)",
		vanish: []string{"product:99", "category:7:products"},
	},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) (err error) {
	root, err := gomod.Root(ctx, "go run ./cmd/walbust-demo")
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "walbust-demo-")
	if err != nil {
		return err
	}
	defer func() {
		if rmErr := os.RemoveAll(tmp); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("remove %s: %w", tmp, rmErr))
		}
	}()
	// As root, Postgres runs as the postgres user, which must be able to
	// pass through this directory to reach its own.
	if err := os.Chmod(tmp, 0o711); err != nil {
		return err
	}

	fmt.Println("Building walbust...")
	binary := filepath.Join(tmp, "walbust")
	build := exec.CommandContext(ctx, "go", "build", "-o", binary, "./cmd/walbust")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/walbust: %w\n%s", err, out)
	}

	fmt.Println("Starting a throwaway PostgreSQL and Redis...")
	// throwaway turns synchronous_commit off for speed, but then a commit
	// reaches the walsender only when the WAL writer next flushes (every
	// 200ms), which would show up as walbust latency. With fsync off a
	// synchronous commit costs nothing, so the demo measures walbust itself.
	pg, err := throwaway.StartPostgres(ctx, filepath.Join(tmp, "postgres"), throwaway.WithSetting("synchronous_commit", "on"))
	if err != nil {
		return err
	}
	defer closeAndReport("postgres", pg.Close)
	rds, err := throwaway.StartRedis(ctx, filepath.Join(tmp, "redis"))
	if err != nil {
		return err
	}
	defer closeAndReport("redis", rds.Close)
	rdb := rds.Client()
	defer rdb.Close()

	schema, err := os.ReadFile(filepath.Join(root, "schema.sql"))
	if err != nil {
		return err
	}
	if err := pg.CreateDatabase(ctx, database); err != nil {
		return err
	}
	if err := pg.Exec(ctx, database, string(schema)); err != nil {
		return fmt.Errorf("apply schema.sql: %w", err)
	}
	if err := pg.Exec(ctx, database, seed); err != nil {
		return fmt.Errorf("seed: %w", err)
	}

	configPath := filepath.Join(tmp, "walbust.yaml")
	config := fmt.Sprintf(`postgres:
  url: %s
  slot: walbust_demo
  publication: walbust_demo
redis:
  url: %s
deps: %s
checkpoint:
  path: checkpoint
log:
  format: console
  level: info
# Port 0: never clash with another walbust on the default metrics port.
listen: 127.0.0.1:0
`, pg.URL(database), rds.URL(), filepath.Join(root, "deps.yaml"))
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		return err
	}

	setup := exec.CommandContext(ctx, binary, "setup", "--config", configPath)
	out, err := setup.CombinedOutput()
	if err != nil {
		return fmt.Errorf("walbust setup: %w\n%s", err, out)
	}
	fmt.Printf("\n$ walbust setup\n%s", indent(string(out)))

	logPath := filepath.Join(tmp, "walbust.log")
	wb, err := startWalbust(ctx, binary, configPath, logPath)
	if err != nil {
		return err
	}
	defer func() {
		// Also on error and Ctrl-C: the log's end usually says why.
		fmt.Printf("\nwalbust's log (%s, removed with the temp dir), last lines:\n%s", logPath, indent(tail(logPath, 15)))
	}()
	defer func() {
		if stopErr := wb.stop(); stopErr != nil {
			err = errors.Join(err, stopErr)
		}
	}()
	fmt.Printf("\nwalbust run is streaming from slot walbust_demo (pid %d)\n", wb.cmd.Process.Pid)

	failed := 0
	for i, s := range steps {
		ok, err := runStep(ctx, i+1, s, pg.Bin("psql"), pg.URL(database), rdb)
		if err != nil {
			return err
		}
		if !ok {
			failed++
		}
	}

	fmt.Println("\nStopping walbust with SIGTERM...")
	stopErr := wb.stop()
	if stopErr != nil {
		return stopErr
	}
	fmt.Println("walbust exited 0 after saving its checkpoint.")
	if failed > 0 {
		return fmt.Errorf("%d of %d steps left keys in Redis that should have vanished within %v", failed, len(steps), vanishTimeout)
	}
	fmt.Println("\nAll expected keys vanished.")
	return nil
}

// runStep caches every key, makes the write with psql and watches Redis.
// It reports false if an expected key was still there after vanishTimeout.
func runStep(ctx context.Context, num int, s step, psql, url string, rdb *redis.Client) (bool, error) {
	fmt.Printf("\n%d. %s\n", num, s.title)
	// Like an application's read path refilling the cache after the last
	// step's invalidations.
	for k, v := range cached {
		if err := rdb.Set(ctx, k, v, 0).Err(); err != nil {
			return false, fmt.Errorf("cache %s: %w", k, err)
		}
	}
	fmt.Printf("   $ psql -c %q\n", s.sql)
	cmd := exec.CommandContext(ctx, psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", s.sql)
	if out, err := cmd.CombinedOutput(); err != nil {
		return false, fmt.Errorf("psql: %w\n%s", err, out)
	}
	returned := time.Now()

	// Poll every millisecond: the point is to show how soon keys go.
	goneAfter := map[string]time.Duration{}
	deadline := returned.Add(vanishTimeout)
	for len(goneAfter) < len(s.vanish) && time.Now().Before(deadline) {
		for _, k := range s.vanish {
			if _, seen := goneAfter[k]; seen {
				continue
			}
			n, err := rdb.Exists(ctx, k).Result()
			if err != nil {
				return false, fmt.Errorf("redis: %w", err)
			}
			if n == 0 {
				goneAfter[k] = time.Since(returned)
			}
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}

	var vanished, missing, stayed, alsoGone []string
	for _, k := range s.vanish {
		if d, ok := goneAfter[k]; ok {
			vanished = append(vanished, fmt.Sprintf("%s (%s)", k, ms(d)))
		} else {
			missing = append(missing, k)
		}
	}
	expected := map[string]bool{}
	for _, k := range s.vanish {
		expected[k] = true
	}
	for _, k := range sortedKeys(cached) {
		if expected[k] {
			continue
		}
		n, err := rdb.Exists(ctx, k).Result()
		if err != nil {
			return false, fmt.Errorf("redis: %w", err)
		}
		if n == 1 {
			stayed = append(stayed, k)
		} else {
			alsoGone = append(alsoGone, k)
		}
	}
	fmt.Printf("   vanished: %s   (time after psql returned)\n", list(vanished))
	if len(missing) > 0 {
		fmt.Printf("   STILL CACHED after %v: %s\n", vanishTimeout, list(missing))
	}
	if len(alsoGone) > 0 {
		fmt.Printf("   also vanished, not expected: %s\n", list(alsoGone))
	}
	fmt.Printf("   stayed:   %s\n", list(stayed))
	return len(missing) == 0, nil
}

// walbust is the running `walbust run`.
type walbust struct {
	cmd     *exec.Cmd
	done    chan struct{}
	stopped bool
}

func startWalbust(ctx context.Context, binary, configPath, logPath string) (*walbust, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(binary, "run", "--config", configPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group, so Ctrl-C reaches only the demo, which then
	// stops walbust in order; and it dies with the demo if the demo is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start walbust run: %w", err)
	}
	w := &walbust{cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(w.done)
	}()

	// The console log's message column is tab-separated.
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(logPath)
		if bytes.Contains(b, []byte("\tstreaming\t")) {
			return w, nil
		}
		var why string
		select {
		case <-w.done:
			why = fmt.Sprintf("walbust run exited with code %d", cmd.ProcessState.ExitCode())
		case <-ctx.Done():
			why = ctx.Err().Error()
		case <-time.After(20 * time.Millisecond):
			if time.Now().After(deadline) {
				why = "walbust run did not start streaming within 30s"
			}
		}
		if why != "" {
			stopErr := w.stop()
			return nil, errors.Join(fmt.Errorf("%s; its log:\n%s", why, indent(tail(logPath, 30))), stopErr)
		}
	}
}

// stop sends SIGTERM and waits; walbust must exit 0. Safe to call twice.
func (w *walbust) stop() error {
	if w.stopped {
		return nil
	}
	w.stopped = true
	select {
	case <-w.done:
		return nil // already exited; start reported why
	default:
	}
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("SIGTERM walbust: %w", err)
	}
	select {
	case <-w.done:
	case <-time.After(20 * time.Second):
		w.cmd.Process.Kill()
		<-w.done
		return errors.New("walbust did not exit within 20s of SIGTERM; killed it")
	}
	if code := w.cmd.ProcessState.ExitCode(); code != 0 {
		return fmt.Errorf("walbust exited with code %d after SIGTERM, want 0", code)
	}
	return nil
}

func closeAndReport(what string, closeFn func() error) {
	if err := closeFn(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: stop %s: %v\n", what, err)
	}
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)\n", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n") + "\n"
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	return "   " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n   ") + "\n"
}

func ms(d time.Duration) string {
	if d < time.Millisecond {
		return "<1 ms"
	}
	return fmt.Sprintf("%d ms", d.Milliseconds())
}

func list(keys []string) string {
	if len(keys) == 0 {
		return "(none)"
	}
	return strings.Join(keys, ", ")
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
