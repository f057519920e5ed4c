package throwaway

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serverDir is a directory for a test's servers, like t.TempDir but under
// os.TempDir directly: t.TempDir's parent is private to root, and as root
// postgres runs as another user. Every test here starts servers and calls
// it first, so it is where they skip under -short (the fast tier starts no
// servers); without -short they run, and fail when a server cannot start.
func serverDir(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("starts postgres or redis-server; run without -short")
	}
	dir, err := os.MkdirTemp("", "throwaway-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestPostgres(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := serverDir(t)
	pg, err := StartPostgres(ctx, dir, WithSetting("max_connections", "30"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := pg.Close(); err != nil {
			t.Error(err)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("Close left %s behind (stat: %v)", dir, err)
		}
	}()

	if err := pg.CreateDatabase(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	if err := pg.Exec(ctx, "app", "SET synchronous_commit = on; CREATE TABLE t (id int); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	conn, err := pg.Connect(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	var walLevel string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if walLevel != "logical" {
		t.Errorf("wal_level = %q, want logical", walLevel)
	}

	// A crash and a restart keep the port and the data committed with
	// synchronous_commit on (the server default is off; see Kill).
	port := pg.Port()
	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}
	if pg.Running() {
		t.Fatal("still running after Kill")
	}
	if err := pg.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if pg.Port() != port {
		t.Errorf("port changed from %d to %d", port, pg.Port())
	}
	if err := pg.Exec(ctx, "app", "INSERT INTO t SELECT 2 FROM t WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	if err := pg.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pg.Exec(ctx, "app", "SELECT 1"); err == nil {
		t.Error("Exec succeeded after Stop")
	}
}

func TestPostgresStartFailureShowsLog(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err := StartPostgres(ctx, serverDir(t), WithSetting("no_such_setting", "1"))
	if err == nil {
		t.Fatal("started with an unknown setting")
	}
	if want := "no_such_setting"; !strings.Contains(err.Error(), want) {
		t.Errorf("error does not show the server log (want %q in it):\n%v", want, err)
	}
}

func TestRedis(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := StartRedis(ctx, filepath.Join(serverDir(t), "redis"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c := r.Client()
	defer c.Close()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	addr := r.Addr()
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := r.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if r.Addr() != addr {
		t.Errorf("address changed from %s to %s", addr, r.Addr())
	}
	n, err := c.Exists(ctx, "k").Result()
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Error("data survived a restart; Redis should come back empty")
	}
	if err := r.Close(); err != nil {
		t.Error(err)
	}
}

func TestReplica(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	primary, err := StartPostgres(ctx, serverDir(t), WithSetting("synchronous_commit", "on"))
	if err != nil {
		t.Fatal(err)
	}
	defer primary.Close()
	if err := primary.Exec(ctx, "postgres", "CREATE TABLE t (id int)"); err != nil {
		t.Fatal(err)
	}
	const delay = 2 * time.Second
	replica, err := StartReplica(ctx, serverDir(t), primary, WithSetting("recovery_min_apply_delay", delay.String()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := replica.Close(); err != nil {
			t.Error(err)
		}
	}()
	if replica.Port() == primary.Port() {
		t.Fatal("replica on the primary's port")
	}
	conn, err := replica.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || !inRecovery {
		t.Fatalf("pg_is_in_recovery() = %v, %v: want a standby", inRecovery, err)
	}
	if err := replica.Exec(ctx, "postgres", "CREATE TABLE u (id int)"); err == nil {
		t.Error("the replica accepted a write")
	}

	committed := time.Now()
	if err := primary.Exec(ctx, "postgres", "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 0 && time.Since(committed) < delay {
		t.Errorf("the replica applied the commit at once despite recovery_min_apply_delay %v", delay)
	}
	deadline := time.Now().Add(30 * time.Second)
	for count() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the replica never applied the commit")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if lag := time.Since(committed); lag < delay {
		t.Errorf("applied after %v, before the %v delay", lag, delay)
	}
	// The primary sees it streaming.
	pc, err := primary.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx)
	var senders int
	if err := pc.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").Scan(&senders); err != nil || senders != 1 {
		t.Errorf("pg_stat_replication streaming = %d, %v; want 1", senders, err)
	}
}

// Unit: the -short guard refuses exactly under -short (it starts nothing
// either way).
func TestRefuseUnderShort(t *testing.T) {
	err := refuseUnderShort("redis-server")
	if testing.Short() != (err != nil) {
		t.Errorf("testing.Short() = %t, refuseUnderShort = %v", testing.Short(), err)
	}
}
