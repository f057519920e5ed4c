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
// mode (b) must leave none, on the primary and on the lagging replica, for
// the fenced readers of each language: Go, Python and Node, reading the
// same keys at the same time. Without python3-redis, or when the Node
// client cannot be built (node, npm), the test fails saying so.
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
	cfg.Langs = []string{"go", "python", "node"}
	cfg.Procs = 1
	cfg.LangReads = 0
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
	for _, l := range cfg.Langs {
		if reads, _, _, _, _ := rep.lang(l); reads == 0 {
			t.Errorf("the %s fenced readers served no reads", l)
		}
	}
	if _, _, _, n := rep.mode('a'); n == 0 {
		t.Error("mode (a) left no stale keys: the harness did not reproduce the race it exists to show")
	}
}
