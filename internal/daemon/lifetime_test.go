package daemon

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// Every background goroutine has returned before the first close runs, and
// closes run last registered first.
func TestLifetimeJoinsGoroutinesBeforeClosing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	l := newLifetime(ctx)
	var running atomic.Int32
	slow := func(ctx context.Context) {
		running.Add(1)
		defer running.Add(-1)
		<-ctx.Done()
		time.Sleep(20 * time.Millisecond) // still working after the stop
	}
	l.run(slow)
	l.every(time.Millisecond, func(ctx context.Context) {
		running.Add(1)
		defer running.Add(-1)
		select {
		case <-ctx.Done():
			time.Sleep(10 * time.Millisecond)
		case <-time.After(time.Millisecond):
		}
	})
	done := make(chan error, 1)
	var served atomic.Bool // like the metrics server, stopped at the end
	go func() {
		<-l.ctx.Done()
		time.Sleep(30 * time.Millisecond)
		served.Store(true)
		done <- nil
	}()
	l.wait(done)
	var order []string
	closed := func(name string) func() {
		return func() {
			if n := running.Load(); n != 0 {
				t.Errorf("%s closed while %d goroutine(s) still ran", name, n)
			}
			if !served.Load() {
				t.Errorf("%s closed before the waited-for goroutine finished", name)
			}
			order = append(order, name)
		}
	}
	l.onEnd(closed("redis"))
	l.onEnd(closed("pool"))
	<-ctx.Done() // the daemon's context ends (a stop), then Run returns
	l.end()
	if len(order) != 2 || order[0] != "pool" || order[1] != "redis" {
		t.Errorf("closed %v, want [pool redis]", order)
	}
}
