package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

// The short run of `make test`: a few seconds of writes with a kill -9 of
// walbust in the middle (short as runs of the harness go; go test -short
// skips it, since it starts servers). Mode (a) must show the race (stale keys left);
// mode (b) must leave none, on the primary and on the lagging replica.
func TestConsistencyShort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts postgres (primary and replica), redis-server and walbust; run without -short")
	}
	cfg := defaultConfig()
	cfg.Duration = 8 * time.Second
	cfg.Reads = 0
	cfg.Rows = 20
	cfg.Writers = 2
	cfg.WriteRate = 100
	cfg.Readers = 3
	cfg.ApplyDelay = 300 * time.Millisecond
	cfg.KillAt = 3 * time.Second
	cfg.Stall = 10 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := run(ctx, cfg, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	rep.print(&out)
	t.Log(out.String())
	failures, notes := rep.verdict()
	for _, n := range notes {
		t.Log("note:", n)
	}
	for _, f := range failures {
		t.Error(f)
	}
	if rep.kills != 1 {
		t.Errorf("walbust was killed %d times, want 1", rep.kills)
	}
	if _, _, _, n := rep.mode('a'); n == 0 {
		t.Error("mode (a) left no stale keys: the harness did not reproduce the race it exists to show")
	}
}
