package daemon

import (
	"context"
	"sync"
	"time"
)

// lifetime runs the daemon's background goroutines and owns what they use
// (pools, Redis clients, the checkpoint store's users): end cancels them,
// waits until every one returned, and only then closes those, so no
// goroutine ever works with a closed client.
type lifetime struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closes []func()
}

func newLifetime(ctx context.Context) *lifetime {
	ctx, cancel := context.WithCancel(ctx)
	return &lifetime{ctx: ctx, cancel: cancel}
}

// run runs fn in a goroutine; fn returns once its ctx ends.
func (l *lifetime) run(fn func(ctx context.Context)) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		fn(l.ctx)
	}()
}

// every runs fn every interval until the lifetime ends.
func (l *lifetime) every(interval time.Duration, fn func(context.Context)) {
	l.run(func(ctx context.Context) { every(ctx, interval, fn) })
}

// wait makes end wait for done too: a goroutine started elsewhere that
// sends on done (or closes it) once it returned.
func (l *lifetime) wait(done <-chan error) {
	l.run(func(context.Context) { <-done })
}

// onEnd registers close to be called at end, after every goroutine
// returned; in reverse order of registration, as defers run.
func (l *lifetime) onEnd(close func()) { l.closes = append(l.closes, close) }

// end stops the goroutines, waits for them, then closes what they used.
func (l *lifetime) end() {
	l.cancel()
	l.wg.Wait()
	for i := len(l.closes) - 1; i >= 0; i-- {
		l.closes[i]()
	}
}
