// Package e2e tests the walbust binary as a black box: a real PostgreSQL and
// a real Redis, the binary built from ./cmd/walbust, and writes made with
// plain SQL (sometimes through the real psql) that know nothing of walbust.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walbust/walbust/internal/gomod"
	"github.com/walbust/walbust/internal/throwaway"
)

// Shared by every test in the package; set up once by TestMain.
var (
	repoRoot string              // where go.mod is
	binary   string              // the walbust binary under test
	pg       *throwaway.Postgres // one cluster; each test gets its own database
	rds      *throwaway.Redis    // one server; each test flushes it first
	cleanups []func()            // run by TestMain on exit or interrupt
	tornDown sync.Once
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// The fast tier (go test -short ./...) is unit tests with fakes;
		// this suite needs real servers and minutes. Said, not silent.
		fmt.Fprintln(os.Stderr, "e2e: -short: not running the end-to-end suite (real Postgres and Redis); `make test` runs it")
		os.Exit(0)
	}
	code := 1
	if err := setUp(); err != nil {
		// Never skip: a missing service means the suite proved nothing.
		fmt.Fprintln(os.Stderr, "e2e: setup failed:", err)
	} else {
		code = m.Run()
	}
	tearDown()
	os.Exit(code)
}

func setUp() error {
	// Interrupted runs still stop the servers and remove their directories
	// (the servers would die with us anyway, via their parent-death signal,
	// but the directories would stay).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		fmt.Fprintf(os.Stderr, "e2e: %v: cleaning up\n", sig)
		tearDown()
		os.Exit(1)
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var err error
	if repoRoot, err = gomod.Root(ctx, "go test ./e2e"); err != nil {
		return err
	}
	binDir, err := os.MkdirTemp("", "walbust-e2e-bin-")
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { os.RemoveAll(binDir) })
	binary = filepath.Join(binDir, "walbust")
	build := exec.CommandContext(ctx, "go", "build", "-o", binary, "./cmd/walbust")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/walbust: %w\n%s", err, out)
	}

	// Each server gets a directory of its own made by MkdirTemp: as root,
	// Postgres runs as the postgres user and must be able to reach it.
	pgDir, err := os.MkdirTemp("", "walbust-e2e-pg-")
	if err != nil {
		return err
	}
	if pg, err = throwaway.StartPostgres(ctx, pgDir); err != nil {
		os.RemoveAll(pgDir)
		return err
	}
	cleanups = append(cleanups, func() { pg.Close() })
	redisDir, err := os.MkdirTemp("", "walbust-e2e-redis-")
	if err != nil {
		return err
	}
	if rds, err = throwaway.StartRedis(ctx, redisDir); err != nil {
		os.RemoveAll(redisDir)
		return err
	}
	cleanups = append(cleanups, func() { rds.Close() })
	return nil
}

// tearDown runs once, whether from TestMain or from the signal handler.
func tearDown() {
	tornDown.Do(func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	})
}
