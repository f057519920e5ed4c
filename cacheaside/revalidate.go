package cacheaside

import (
	"context"
	"errors"
	"time"

	"github.com/walbust/walbust/protocol"
)

// revalidate reloads a stale value in the background, once across
// processes: it first claims the value by replacing it (compare-and-set on
// what it read) with a copy whose soft expiry lies LoadTimeout ahead, so
// other readers take the copy as fresh; then it loads and sets the new
// value over its claim. A fence replaces the claim, and the fill fails.
func (c *Client) revalidate(ctx context.Context, key, family, observed string, env protocol.Envelope, load LoadFunc) {
	if c.closed.Load() {
		return
	}
	if _, busy := c.reval.LoadOrStore(key, struct{}{}); busy {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer c.reval.Delete(key)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.LoadTimeout)
		defer cancel()
		stop := context.AfterFunc(c.bg, cancel)
		defer stop()

		claimed := protocol.Envelope{SoftExpiry: time.Now().Add(c.opts.LoadTimeout), Nonce: protocol.NewToken(),
			NotFound: env.NotFound, Payload: env.Payload}.Encode()
		if ok, err := c.casFill(rctx, key, observed, claimed, 0); err != nil || !ok {
			return // another reader claimed it, or it was fenced
		}
		c.n.revalidations.Add(1)
		c.n.loads.Add(1)
		v, err := load(rctx, Observation{Revalidation: true})
		notFound := errors.Is(err, ErrNotFound)
		if err != nil && !notFound || notFound && c.opts.NegativeTTL < 0 {
			return // the claim runs out and someone tries again
		}
		next, ttl := c.envelope(v, notFound)
		if ok, err := c.valueFill(rctx, key, family, claimed, next.Encode(), ttl); err == nil {
			if ok {
				c.n.fills.Add(1)
			} else {
				c.n.fillsLost.Add(1)
			}
		}
	}()
}
