package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/internal/config"
)

// TestSandbox runs the sandbox as a client test suite would: in the
// background with --env-file, then against the servers it printed.
func TestSandbox(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped under -short: starts PostgreSQL, redis-server and walbust (go test ./cmd/walbust-sandbox runs it)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "walbust-sandbox")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	envFile := filepath.Join(dir, "sandbox.env")
	cmd := exec.Command(bin, "--env-file", envFile)
	// Files, not buffers: the test reads them while the sandbox runs.
	stdoutPath, stderrPath := filepath.Join(dir, "stdout"), filepath.Join(dir, "stderr")
	for path, w := range map[string]*io.Writer{stdoutPath: &cmd.Stdout, stderrPath: &cmd.Stderr} {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		*w = f
	}
	// A pipe the test holds open: closing it would stop the sandbox.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	exited := false
	t.Cleanup(func() {
		if !exited {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			<-done
		}
		stdin.Close()
		b, _ := os.ReadFile(stderrPath)
		t.Logf("sandbox stderr:\n%s", b)
	})

	// Building walbust on a busy machine can take a while.
	deadline := time.Now().Add(4 * time.Minute)
	for {
		if _, err := os.Stat(envFile); err == nil {
			break
		}
		select {
		case <-done:
			t.Fatalf("the sandbox exited before writing %s: %v", envFile, cmd.ProcessState)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 4 minutes", envFile)
		}
	}
	b, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	env := parseEnv(t, string(b))
	for _, k := range []string{"POSTGRES_URL", "REDIS_MODE", "REDIS_URL", "EVENTS_CHANNEL", "SLOT", "METRICS_URL", "LOG", "PID", "READY"} {
		if env[k] == "" {
			t.Errorf("%s has no WALBUST_SANDBOX_%s", envFile, k)
		}
	}
	if env["REDIS_MODE"] != "standalone" || env["EVENTS_CHANNEL"] != "walbust:events" || env["READY"] != "1" {
		t.Errorf("env file:\n%s", b)
	}
	// stdout carries the same lines; the sandbox wrote them before or just
	// after the file.
	var out []byte
	for wait := time.Now().Add(5 * time.Second); len(out) < len(b) && time.Now().Before(wait); {
		time.Sleep(20 * time.Millisecond)
		out, _ = os.ReadFile(stdoutPath)
	}
	if string(out) != string(b) {
		t.Errorf("stdout %q differs from the env file %q", out, b)
	}
	if _, err := os.Stat(env["LOG"]); err != nil {
		t.Errorf("WALBUST_SANDBOX_LOG: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pgx.Connect(ctx, env["POSTGRES_URL"])
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close(context.Background())
	opt, err := redis.ParseURL(env["REDIS_URL"])
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()

	// gone caches key, runs sql, and waits for walbust to remove the key.
	gone := func(key, sql string) {
		t.Helper()
		if err := rdb.Set(ctx, key, "cached", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := pg.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		until := time.Now().Add(15 * time.Second)
		for {
			n, err := rdb.Exists(ctx, key).Result()
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				return
			}
			if time.Now().After(until) {
				t.Fatalf("%s still cached 15s after %q", key, sql)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// The insert's own invalidation must be over before the update's key is
	// cached, or it could pass for the update's.
	gone("product:1", "INSERT INTO categories (id, name) VALUES (1, 'books'); "+
		"INSERT INTO products (id, category_id, name, price_cents) VALUES (1, 1, 'Dune', 999)")
	sub := rdb.Subscribe(ctx, env["EVENTS_CHANNEL"])
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil { // the subscription confirmation
		t.Fatal(err)
	}
	gone("product:1", "UPDATE products SET price_cents = 1199 WHERE id = 1")
	select {
	case msg := <-sub.Channel():
		if !strings.Contains(msg.Payload, `"product:1"`) {
			t.Errorf("event on %s = %s, want one naming product:1", env["EVENTS_CHANNEL"], msg.Payload)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("no event on %s within 10s of the update", env["EVENTS_CHANNEL"])
	}
	sub.Close()
	rdb.Close()
	pg.Close(ctx)

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		exited = true
	case <-time.After(90 * time.Second):
		t.Fatal("the sandbox did not exit within 90s of SIGTERM")
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("the sandbox exited with code %d after SIGTERM, want 0", code)
	}
	pgURL, err := url.Parse(env["POSTGRES_URL"])
	if err != nil {
		t.Fatal(err)
	}
	for what, addr := range map[string]string{"PostgreSQL": pgURL.Host, "Redis": opt.Addr} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s at %s still accepts connections after the sandbox exited", what, addr)
		}
	}
	for _, p := range []string{envFile, filepath.Dir(env["LOG"])} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after the sandbox exited (%v)", p, err)
		}
	}
}

// parseEnv reads WALBUST_SANDBOX_ lines as a client would: split at the
// first '='.
func parseEnv(t *testing.T, text string) map[string]string {
	t.Helper()
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		name, prefixed := strings.CutPrefix(k, "WALBUST_SANDBOX_")
		if !ok || !prefixed {
			t.Errorf("line %q is not WALBUST_SANDBOX_NAME=VALUE", sc.Text())
			continue
		}
		out[name] = v
	}
	return out
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil || o.redisMode != "standalone" || o.database != "sandbox" || o.replica {
		t.Errorf("defaults: %+v, %v", o, err)
	}
	o, err = parseFlags([]string{"--redis", "cluster", "--replica", "--replica-delay", "500ms", "--env-file", "x"}, io.Discard)
	if err != nil || o.redisMode != "cluster" || !o.replica || o.replicaDelay != 500*time.Millisecond || o.envFile != "x" {
		t.Errorf("flags: %+v, %v", o, err)
	}
	for _, args := range [][]string{
		{"--redis", "sentinel"},
		{"--replica-delay", "1s"},
		{"--database", "Bad-Name"},
		{"extra"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) succeeded, want an error", args)
		}
	}
}

func TestResolveRefusesMissingFiles(t *testing.T) {
	o := &options{schema: "no-such-schema.sql", deps: "no-such-deps.yaml", walbust: "/bin/true"}
	if _, err := o.resolve(context.Background()); err == nil {
		t.Error("resolve accepted a missing schema and deps")
	}
	o = &options{envFile: "/no/such/dir/sandbox.env", walbust: "/bin/true"}
	if _, err := o.resolve(context.Background()); err == nil || !strings.Contains(err.Error(), "--env-file") {
		t.Errorf("resolve with an env file in a missing directory: %v", err)
	}
}

func TestFormatVars(t *testing.T) {
	got, err := formatVars([]envVar{{"A", "postgres://postgres@127.0.0.1:5/db?sslmode=disable"}, {"B", "127.0.0.1:1,127.0.0.1:2"}})
	want := "WALBUST_SANDBOX_A=postgres://postgres@127.0.0.1:5/db?sslmode=disable\nWALBUST_SANDBOX_B=127.0.0.1:1,127.0.0.1:2\n"
	if err != nil || got != want {
		t.Errorf("formatVars = %q, %v; want %q", got, err, want)
	}
	for _, bad := range []string{"/tmp/with space/walbust.log", "a&b", "it's", "$HOME"} {
		if _, err := formatVars([]envVar{{"X", bad}}); err == nil {
			t.Errorf("formatVars accepted %q, which needs shell quoting", bad)
		}
	}
}

// The generated walbust.yaml must load as walbust itself loads it.
func TestWalbustConfigLoads(t *testing.T) {
	dir := t.TempDir()
	for _, mode := range []string{"standalone", "cluster"} {
		redisURL := "redis://127.0.0.1:6380/0"
		if mode == "cluster" {
			redisURL = "redis://127.0.0.1:7000?addr=127.0.0.1:7001&addr=127.0.0.1:7002"
		}
		path := filepath.Join(dir, mode+".yaml")
		text := walbustConfig("postgres://postgres@127.0.0.1:5433/sandbox?sslmode=disable", mode, redisURL,
			"/repo/deps.yaml", "postgres://postgres@127.0.0.1:5434/sandbox?sslmode=disable")
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		fs := flag.NewFlagSet("walbust", flag.ContinueOnError)
		l := config.NewLoader(fs)
		if err := fs.Parse([]string{"--config", path}); err != nil {
			t.Fatal(err)
		}
		cfg, err := l.Load(func(string) (string, bool) { return "", false })
		if err != nil {
			t.Fatalf("%s config:\n%s\n%v", mode, text, err)
		}
		if cfg.Events.Channel != eventsChannel || cfg.Redis.Mode != mode || cfg.Redis.URL != redisURL ||
			cfg.Redis.WaitReplicas != 0 || cfg.Listen != "127.0.0.1:0" || cfg.Log.Format != "json" ||
			len(cfg.Replicas.URLs) != 1 || cfg.Postgres.Slot != slot || cfg.Deps != "/repo/deps.yaml" {
			t.Errorf("%s config loads as %+v", mode, cfg)
		}
	}
}
