package cacheaside

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/internal/retry"
	"github.com/walbust/walbust/protocol"
)

// subscribe keeps the L1's subscription to walbust's events up until ctx
// ends. The L1 serves only between a confirmed SUBSCRIBE and the first
// sign of trouble; every (re)subscription starts it empty, because events
// published while it was not listening are lost.
func (c *Client) subscribe(ctx context.Context) {
	backoff := retry.Backoff{Initial: 100 * time.Millisecond, Max: 5 * time.Second}
	for ctx.Err() == nil {
		ps := c.rdb.Subscribe(ctx, c.opts.L1.Channel)
		if c.listen(ctx, ps) {
			// It worked: this failure is a new one.
			backoff.Reset()
		}
		_ = ps.Close()
		c.l1.reset(false)
		c.n.l1Resets.Add(1)
		_ = retry.Sleep(ctx, backoff.Next()) // the loop checks ctx
	}
}

// listen reads events until the subscription fails; it reports whether
// it was ever confirmed.
func (c *Client) listen(ctx context.Context, ps *redis.PubSub) bool {
	interval := c.opts.L1.PingInterval
	confirmed, pinged := false, false
	for {
		msg, err := ps.ReceiveTimeout(ctx, interval)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !pinged && ctx.Err() == nil {
				// Silent for an interval: ask. Silent for another: dead.
				if ps.Ping(ctx) != nil {
					return confirmed
				}
				pinged = true
				continue
			}
			return confirmed
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Channel != c.opts.L1.Channel {
				continue
			}
			if m.Kind != "subscribe" {
				return confirmed
			}
			confirmed = true
			c.l1.reset(true)
			c.n.l1Resets.Add(1)
		case *redis.Message:
			ev, err := protocol.UnmarshalEvent([]byte(m.Payload))
			if err != nil {
				ev = protocol.Event{Flush: true} // unreadable: assume the worst
			}
			c.l1.apply(ev)
		case *redis.Pong:
		}
	}
}
