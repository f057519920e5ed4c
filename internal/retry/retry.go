// Package retry holds the backoff arithmetic and the cancellable sleep that
// walbust's retry loops share. The loops themselves stay with their
// callers: each decides what to log, which health callbacks fire and what
// resets its backoff, so only the delays live here.
package retry

import (
	"context"
	"math"
	"math/rand/v2"
	"time"
)

// Jitter says how a delay is spread, so that clients failing together do
// not retry together.
type Jitter int

const (
	// NoJitter waits exactly the backoff.
	NoJitter Jitter = iota
	// Equal waits between half the backoff and all of it: never much
	// sooner than planned, still spread.
	Equal
	// Full waits anything from 0 to the backoff.
	Full
)

// Backoff is a capped exponential backoff. The zero state starts at
// Initial; each Next grows it by Factor up to Max.
type Backoff struct {
	Initial time.Duration
	Max     time.Duration // cap; 0: none
	Factor  float64       // growth per Next, at least 1; 0: 2
	Jitter  Jitter

	cur time.Duration // next un-jittered delay; 0: Initial
}

// Next returns the delay before the next attempt and grows the backoff.
func (b *Backoff) Next() time.Duration {
	d := b.cur
	if d == 0 {
		d = b.Initial
	}
	f := b.Factor
	if f == 0 {
		f = 2
	}
	next := d
	// Converting an out-of-range float is undefined: saturate instead.
	if g := float64(d) * f; g >= math.MaxInt64 {
		next = math.MaxInt64
	} else if g > float64(d) {
		next = time.Duration(g)
	}
	if b.Max > 0 {
		next = min(next, b.Max)
	}
	b.cur = next
	return b.Jitter.apply(d)
}

// Reset makes the next delay Initial again.
func (b *Backoff) Reset() { b.cur = 0 }

func (j Jitter) apply(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	switch j {
	case Equal:
		return d/2 + rand.N(d/2+1)
	case Full:
		return rand.N(d + 1)
	}
	return d
}

// Sleep waits d, or less if ctx ends first; it then returns ctx.Err().
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
