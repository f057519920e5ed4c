package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/walbust/walbust/internal/retry"
	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

// maxFillAttempts bounds how often one fill starts over because a fence
// landed while it loaded: the value it loaded may predate that write, so
// the callers waiting for it get a new load rather than that value.
const maxFillAttempts = 3

// fill is the miss path, run once per key per process at a time:
// observe (as a lease), load, compare-and-set.
func (c *Client) fill(ctx context.Context, key, family string, load LoadFunc) (result, error) {
	deadline := time.Now().Add(c.opts.LeaseWait)
	backoff := retry.Backoff{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond, Factor: 1.5, Jitter: retry.Equal}
	waited := false
	for attempt := 0; ; {
		token := protocol.NewToken()
		res, err := c.lease.Run(ctx, c.rdb, []string{key}, token, strconv.FormatInt(c.opts.LeaseTTL.Milliseconds(), 10)).Slice()
		if err != nil {
			return result{}, fmt.Errorf("cacheaside: lease %q: %w", key, err)
		}
		acquired, content, pttl, err := leaseReply(res)
		if err != nil {
			return result{}, fmt.Errorf("cacheaside: lease %q: %w", key, err)
		}
		dec := protocol.Decode(content)
		var mine bool
		switch {
		case acquired:
			mine = true
		case dec.Kind == protocol.KindValue:
			// Filled by someone else since our GET.
			env := dec.Envelope
			return result{payload: env.Payload, notFound: env.NotFound, softExp: env.SoftExpiry, cacheL1: !env.Stale(time.Now())}, nil
		case dec.Kind == protocol.KindLease && c.opts.LeaseWait >= 0 && time.Now().Before(deadline):
			// Another reader is loading: wait for its value.
			if !waited {
				waited = true
				c.n.leaseWaits.Add(1)
			}
			if err := retry.Sleep(ctx, min(backoff.Next(), time.Until(deadline)+time.Millisecond)); err != nil {
				return result{}, fmt.Errorf("cacheaside: waiting for the lease on %q: %w", key, err)
			}
			continue
		case dec.Kind == protocol.KindLease:
			// Waited long enough (or told not to): load too, and fill
			// only if that lease is still there, as its owner would.
		default:
			// A string the script took for a value that is not one:
			// replace it with a lease like any foreign value.
			lease := protocol.Lease(0, token)
			ok, err := c.casFill(ctx, key, content, lease, c.opts.LeaseTTL)
			if err != nil {
				return result{}, err
			}
			if !ok {
				continue
			}
			content, pttl, mine = lease, c.opts.LeaseTTL.Milliseconds(), true
		}
		r, fenced, err := c.loadAndFill(ctx, key, family, load, content, dec.Fence.LSN, time.Duration(pttl)*time.Millisecond, mine)
		if err != nil {
			return result{}, err
		}
		attempt++
		if !fenced || attempt >= maxFillAttempts {
			return r, nil
		}
	}
}

// leaseReply decodes LeaseScript's {acquired, content, ttl}.
func leaseReply(res []any) (bool, string, int64, error) {
	if len(res) != 3 {
		return false, "", 0, fmt.Errorf("unexpected reply %v", res)
	}
	flag, ok1 := res[0].(int64)
	content, ok2 := res[1].(string)
	ttl, ok3 := res[2].(int64)
	if !ok1 || !ok2 || !ok3 {
		return false, "", 0, fmt.Errorf("unexpected reply %v", res)
	}
	return flag == 1, content, ttl, nil
}

// loadAndFill loads and writes the value back over expected, the lease
// observed (ours when mine). fenced reports that the key was fenced again
// meanwhile, so the value may be older than that write.
func (c *Client) loadAndFill(ctx context.Context, key, family string, load LoadFunc, expected string, lsn wal.LSN, leaseTTL time.Duration, mine bool) (result, bool, error) {
	start := time.Now()
	c.n.loads.Add(1)
	v, err := load(ctx, Observation{FenceLSN: lsn})
	notFound := errors.Is(err, ErrNotFound)
	if err != nil && !notFound || notFound && c.opts.NegativeTTL < 0 {
		if mine {
			c.release(key, expected, lsn)
		}
		if notFound {
			return result{notFound: true}, false, nil
		}
		return result{}, false, fmt.Errorf("cacheaside: load %q: %w", key, err)
	}
	r := result{payload: v, notFound: notFound}
	if time.Since(start)+c.opts.FillMargin >= leaseTTL {
		// The lease may be gone and, with it, the fence it replaced; a
		// fill now could outlive a write we never saw. The script would
		// refuse it anyway; not sending it says why.
		c.n.fillsSkipped.Add(1)
		return r, false, nil
	}
	env, ttl := c.envelope(v, notFound)
	ok, err := c.valueFill(ctx, key, family, expected, env.Encode(), ttl)
	if errors.Is(err, errIndexFull) {
		// Served, not cached: a key outside its index would escape
		// walbust's invalidation of the family.
		c.n.fillsSkipped.Add(1)
		if mine {
			c.release(key, expected, lsn)
		}
		return r, false, nil
	}
	if err != nil {
		return result{}, false, err
	}
	if !ok {
		c.n.fillsLost.Add(1)
		now, err := c.rdb.Get(ctx, key).Result()
		fenced := err == nil && protocol.Decode(now).Kind == protocol.KindTombstone
		return r, fenced, nil
	}
	c.n.fills.Add(1)
	r.softExp, r.cacheL1 = env.SoftExpiry, true
	return r, false, nil
}

// release turns our lease back into a tombstone after a failed load, so
// the next reader need not wait for it; the LSN and the TTL stay.
func (c *Client) release(key, lease string, lsn wal.LSN) {
	ctx, cancel := context.WithTimeout(c.bg, 2*time.Second)
	defer cancel()
	_, _ = c.casFill(ctx, key, lease, protocol.Tombstone(lsn, protocol.NewToken()), 0)
}
