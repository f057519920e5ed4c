package e2e

import (
	"context"
	"testing"
	"time"
)

// reconnectTimeout allows for walbust's reconnect backoff.
const reconnectTimeout = 60 * time.Second

// A Postgres crash must not stop walbust: it reconnects to the slot and
// carries on invalidating.
func TestSurvivesPostgresCrash(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	e.fence()

	e.db.Close(e.ctx)
	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	if err := pg.Restart(ctx); err != nil {
		t.Fatalf("restart postgres: %v", err)
	}
	var err error
	if e.db, err = pg.Connect(e.ctx, e.name); err != nil {
		t.Fatal(err)
	}
	e.assertRunning()

	e.cache("product:1", "category:1:products")
	e.exec("UPDATE products SET price_cents = 3 WHERE id = 1")
	eventually(t, reconnectTimeout, func() bool { return !e.exists("product:1") && !e.exists("category:1:products") },
		func() string { return "keys of a write made after the Postgres restart are still cached" })
	e.assertRunning()
}

// A Redis outage must not stop walbust either, and invalidation resumes
// once Redis is back.
func TestSurvivesRedisRestart(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	e.fence()

	if err := rds.Kill(); err != nil {
		t.Fatal(err)
	}
	// A write while Redis is down: walbust must hold it, not crash.
	e.exec("UPDATE products SET price_cents = 4 WHERE id = 2")
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	if err := rds.Restart(ctx); err != nil {
		t.Fatalf("restart redis: %v", err)
	}
	e.assertRunning()

	e.cache("product:1", "category:1:products")
	e.exec("UPDATE products SET price_cents = 5 WHERE id = 1")
	eventually(t, reconnectTimeout, func() bool { return !e.exists("product:1") && !e.exists("category:1:products") },
		func() string { return "keys of a write made after the Redis restart are still cached" })
	e.assertRunning()
}

// assertRunning fails the test if `walbust run` has exited.
func (e *env) assertRunning() {
	e.t.Helper()
	select {
	case <-e.procDone:
		code := e.proc.ProcessState.ExitCode()
		e.proc = nil
		e.t.Fatalf("walbust run exited with code %d", code)
	default:
	}
}
