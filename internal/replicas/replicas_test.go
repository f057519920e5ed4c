package replicas_test

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/walbust/walbust/internal/replicas"
	"github.com/walbust/walbust/internal/throwaway"
	"github.com/walbust/walbust/replication/wal"
)

// startPair starts a primary and a streaming replica that applies WAL
// 500ms late, or fails the test with the reason. Under -short it skips the
// test instead: the fast tier starts no servers.
func startPair(t *testing.T, ctx context.Context) (primary, replica *throwaway.Postgres) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs postgres (a primary and a replica); run without -short")
	}
	start := func(name string, fn func(dir string) (*throwaway.Postgres, error)) *throwaway.Postgres {
		dir, err := os.MkdirTemp("", "walbust-replicas-"+name+"-")
		if err != nil {
			t.Fatal(err)
		}
		pg, err := fn(dir)
		if err != nil {
			os.RemoveAll(dir)
			t.Fatalf("start the %s: %v", name, err)
		}
		t.Cleanup(func() { pg.Close() })
		return pg
	}
	primary = start("primary", func(dir string) (*throwaway.Postgres, error) { return throwaway.StartPostgres(ctx, dir) })
	replica = start("replica", func(dir string) (*throwaway.Postgres, error) {
		return throwaway.StartReplica(ctx, dir, primary,
			throwaway.WithSetting("recovery_min_apply_delay", "500ms"), throwaway.WithSetting("wal_receiver_status_interval", "1s"))
	})
	return primary, replica
}

func currentLSN(t *testing.T, ctx context.Context, pg *throwaway.Postgres) wal.LSN {
	t.Helper()
	conn, err := pg.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// A commit, so there is WAL to replay past the current position (the
	// apply delay holds back commit records only).
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS t (v int)"); err != nil {
		t.Fatal(err)
	}
	var s string
	if _, err := conn.Exec(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
		t.Fatal(err)
	}
	lsn, err := wal.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// Both ways of finding replicas see the lag, and then the catch-up.
func TestReplayedFollowsALaggingReplica(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	primary, replica := startPair(t, ctx)
	for _, tt := range []struct {
		name string
		opts replicas.Options
	}{
		{"from the primary", replicas.Options{PrimaryURL: primary.URL("postgres")}},
		{"direct", replicas.Options{URLs: []string{replica.URL("postgres")}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := replicas.New(tt.opts)
			defer w.Close(ctx)
			deadline := time.Now().Add(time.Minute)
			for { // the replica connects and reports at its own pace
				if _, ok, err := w.Replayed(ctx); ok && err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the replica never showed up")
				}
				time.Sleep(50 * time.Millisecond)
			}
			target := currentLSN(t, ctx, primary)
			written := time.Now()
			var sawLag bool
			for {
				lsn, ok, err := w.Replayed(ctx)
				if err != nil || !ok {
					t.Fatalf("Replayed = %s, %v, %v", lsn, ok, err)
				}
				if lsn >= target {
					break
				}
				sawLag = true
				if time.Now().After(deadline) {
					t.Fatalf("replayed %s, never reached %s", lsn, target)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if !sawLag {
				t.Error("the replica had replayed the new commit at once, despite recovery_min_apply_delay 500ms: Replayed reports something else")
			}
			if took := time.Since(written); took < 400*time.Millisecond {
				t.Errorf("caught up after %v, less than the 500ms apply delay", took)
			}
		})
	}
}

// A replica that cannot be reached has replayed nothing, and says why.
func TestUnreachableReplicaHasReplayedNothing(t *testing.T) {
	port, err := throwaway.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	w := replicas.New(replicas.Options{URLs: []string{"postgres://nobody@127.0.0.1:" + strconv.Itoa(port) + "/x?connect_timeout=2"}})
	lsn, ok, err := w.Replayed(context.Background())
	if lsn != 0 || !ok || err == nil {
		t.Errorf("Replayed = %s, %v, %v; want 0/0, true and the connection error", lsn, ok, err)
	}
}
