package main

import (
	"context"
	"fmt"
	"io"

	"github.com/walbust/walbust/internal/daemon"
)

// validateRedis prints the Redis checks for `walbust validate` and returns
// how many problems they found.
func validateRedis(ctx context.Context, w io.Writer, l *loaded) int {
	rep := daemon.RedisCheck(ctx, l.cfg, l.reg)
	for _, warn := range rep.Warnings {
		fmt.Fprintln(w, "warning: redis:", warn)
	}
	if rep.Unreachable != nil {
		fmt.Fprintln(w, "redis:", rep.Unreachable)
		return 1
	}
	for _, p := range rep.Problems {
		fmt.Fprintln(w, "redis:", p)
	}
	if len(rep.Problems) == 0 {
		fmt.Fprintf(w, "redis: ok (%s; may run every command walbust sends)\n", rep.Summary)
	}
	return len(rep.Problems)
}
