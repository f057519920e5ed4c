package cacheaside

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"

	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

// LoadFunc reads a key's value from the database. It returns ErrNotFound
// (possibly wrapped) when there is no such row, which is cached as such.
type LoadFunc func(ctx context.Context, obs Observation) ([]byte, error)

// Observation is what the reader saw in Redis before deciding to load.
type Observation struct {
	// FenceLSN is the commit LSN of the newest fence the key carried (0
	// if none was seen: the key was simply absent). A loader reading a
	// replica can check ReplicaCaughtUp and read the primary instead.
	FenceLSN wal.LSN
	// Revalidation marks a background stale-while-revalidate reload.
	Revalidation bool
}

// ReplicaCaughtUp reports whether a replica whose pg_last_wal_replay_lsn()
// is replay has applied the commit the observed fence stands for.
// FenceLSN is the start of the commit record, so replay must be past it.
func (o Observation) ReplicaCaughtUp(replay wal.LSN) bool { return replay > o.FenceLSN }

// Stats are a Client's counters since New.
type Stats struct {
	Hits          int64 // Gets answered from Redis
	L1Hits        int64 // Gets answered in process
	Misses        int64 // Gets that found no value in Redis
	Loads         int64 // loader calls, revalidations included
	Fills         int64 // values written back
	FillsLost     int64 // write-backs refused because the key changed: a fence landed, or another reader filled
	FillsSkipped  int64 // write-backs not attempted: the load outlasted the lease
	LeaseWaits    int64 // misses that waited for another reader's lease
	StaleServed   int64 // stale values served while revalidating
	Revalidations int64 // background reloads started
	L1Resets      int64 // times the L1 was emptied because its subscription (re)started or died
}

type counters struct {
	hits, l1Hits, misses, loads, fills, fillsLost, fillsSkipped, leaseWaits, staleServed, revalidations, l1Resets atomic.Int64
}

// Client is a cache-aside reader over one Redis. It is safe for
// concurrent use. Close stops its background work.
type Client struct {
	rdb     redis.UniversalClient
	opts    Options
	lease   *redis.Script
	cas     *redis.Script
	fence   *redis.Script
	casIdx  *redis.Script // protocol.IndexedCASScript
	idxAdd  *redis.Script // protocol.IndexAddScript
	flights singleflight.Group
	reval   sync.Map // keys being revalidated by this process
	l1      *l1      // nil without L1
	n       counters
	wait    waiters // WaitApplied's shared poller and subscription

	bg     context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool
}

// New returns a Client reading through rdb, which the caller keeps
// owning (Close does not close it). With Options.L1 it subscribes to
// walbust's events at once; the L1 serves nothing until the subscription
// is confirmed.
func New(rdb redis.UniversalClient, opts Options) (*Client, error) {
	if rdb == nil {
		return nil, errors.New("cacheaside: nil redis client")
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Client{
		rdb:    rdb,
		opts:   opts,
		lease:  redis.NewScript(protocol.LeaseScript),
		cas:    redis.NewScript(protocol.CASScript),
		fence:  redis.NewScript(protocol.FenceScript),
		casIdx: redis.NewScript(protocol.IndexedCASScript),
		idxAdd: redis.NewScript(protocol.IndexAddScript),
	}
	c.bg, c.stop = context.WithCancel(context.Background())
	if opts.L1 != nil {
		c.l1 = newL1(opts.L1.MaxEntries, opts.L1.TTL)
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.subscribe(c.bg)
		}()
	}
	return c, nil
}

// Close stops the L1 subscription and background revalidations and waits
// for them.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.stop()
	c.wg.Wait()
	return nil
}

// Stats returns the counters.
func (c *Client) Stats() Stats {
	return Stats{
		Hits: c.n.hits.Load(), L1Hits: c.n.l1Hits.Load(), Misses: c.n.misses.Load(), Loads: c.n.loads.Load(),
		Fills: c.n.fills.Load(), FillsLost: c.n.fillsLost.Load(), FillsSkipped: c.n.fillsSkipped.Load(),
		LeaseWaits: c.n.leaseWaits.Load(), StaleServed: c.n.staleServed.Load(), Revalidations: c.n.revalidations.Load(),
		L1Resets: c.n.l1Resets.Load(),
	}
}

// result is what one Get learned: a value or a not-found.
type result struct {
	payload  []byte
	notFound bool
	softExp  time.Time // of the envelope in Redis, when filled or read
	cacheL1  bool      // came from Redis or from our own fill: fit for the L1
}

func (r result) answer(key string) ([]byte, error) {
	if r.notFound {
		return nil, fmt.Errorf("cacheaside: %q: %w", key, ErrNotFound)
	}
	return bytes.Clone(r.payload), nil
}

// Get returns key's value: from the L1, from Redis, or from load, which
// then fills Redis under the fence protocol. A cached not-found is
// returned as an error matching ErrNotFound. The returned slice is the
// caller's.
func (c *Client) Get(ctx context.Context, key string, load LoadFunc) ([]byte, error) {
	return c.get(ctx, key, "", load)
}

// GetIndexed is Get for a key of an indexed pattern family: deps.yaml has
// a pattern with index: true ("search:{owner_id}:*") whose family, the
// pattern before its final '*' rendered with the row's values
// ("search:42:"), is family, and key starts with it. A fill also adds key
// to the family's index set (protocol.IndexKey), atomically where the two
// share a server, so walbust invalidates the family from the set rather
// than by scanning the keyspace. A family whose set holds
// Options.MaxIndexMembers keys already gets no further key cached: the
// loaded value is returned, not stored.
func (c *Client) GetIndexed(ctx context.Context, family, key string, load LoadFunc) ([]byte, error) {
	if !strings.HasPrefix(key, family) {
		return nil, fmt.Errorf("cacheaside: key %q is not in the family %q (it must start with it)", key, family)
	}
	return c.get(ctx, key, family, load)
}

func (c *Client) get(ctx context.Context, key, family string, load LoadFunc) ([]byte, error) {
	if c.l1 != nil {
		if e, ok := c.l1.get(key, time.Now()); ok {
			c.n.l1Hits.Add(1)
			return result{payload: e.payload, notFound: e.notFound}.answer(key)
		}
	}
	mark := c.l1.mark()
	raw, err := c.rdb.Get(ctx, key).Result()
	switch {
	case err == nil:
		if content := protocol.Decode(raw); content.Kind == protocol.KindValue {
			c.n.hits.Add(1)
			env := content.Envelope
			if env.Stale(time.Now()) {
				c.n.staleServed.Add(1)
				c.revalidate(ctx, key, family, raw, env, load)
			} else {
				c.l1.put(mark, key, env)
			}
			return result{payload: env.Payload, notFound: env.NotFound}.answer(key)
		}
	case !errors.Is(err, redis.Nil):
		return nil, fmt.Errorf("cacheaside: get %q: %w", key, err)
	}
	c.n.misses.Add(1)
	// One fill per key in this process; callers wait for it, each within
	// its own context.
	ch := c.flights.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.LoadTimeout+c.leaseWaitBound())
		defer cancel()
		stop := context.AfterFunc(c.bg, cancel) // Close ends it
		defer stop()
		return c.fill(fctx, key, family, load)
	})
	select {
	case <-ctx.Done():
		return nil, fmt.Errorf("cacheaside: get %q: %w", key, ctx.Err())
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		res := r.Val.(result)
		if res.cacheL1 {
			c.l1.put(mark, key, protocol.Envelope{SoftExpiry: res.softExp, NotFound: res.notFound, Payload: res.payload})
		}
		return res.answer(key)
	}
}

func (c *Client) leaseWaitBound() time.Duration { return max(c.opts.LeaseWait, 0) }

// Fence writes a tombstone (LSN 0) into each key, as walbust's fence
// action would: for write paths of the application itself that want a
// key refreshed at once without opening the populate race.
func (c *Client) Fence(ctx context.Context, keys ...string) error {
	token := protocol.NewToken()
	ttl := c.opts.FenceTTL.Milliseconds()
	for _, k := range keys {
		if err := c.fence.Run(ctx, c.rdb, []string{k}, "0", token, ttl).Err(); err != nil {
			return fmt.Errorf("cacheaside: fence %q: %w", k, err)
		}
	}
	if c.l1 != nil {
		c.l1.apply(protocol.Event{Keys: keys})
	}
	return nil
}

// casFill sets key to next if it still holds expected; ttl 0 keeps the TTL.
func (c *Client) casFill(ctx context.Context, key, expected, next string, ttl time.Duration) (bool, error) {
	n, err := c.cas.Run(ctx, c.rdb, []string{key}, expected, next, strconv.FormatInt(ttl.Milliseconds(), 10)).Int()
	if err != nil {
		return false, fmt.Errorf("cacheaside: fill %q: %w", key, err)
	}
	return n == 1, nil
}

// errIndexFull: the family's index set is at its bound; the value is not
// cached.
var errIndexFull = errors.New("index full")

// valueFill is casFill for a loaded value: with a family, the key goes
// into the family's index too, before or with the value (never after: a
// key cached outside its index would escape the family's invalidation).
func (c *Client) valueFill(ctx context.Context, key, family, expected, next string, ttl time.Duration) (bool, error) {
	if family == "" {
		return c.casFill(ctx, key, expected, next, ttl)
	}
	idx := protocol.IndexKey(family)
	bound := strconv.Itoa(c.opts.MaxIndexMembers)
	if _, cluster := c.rdb.(*redis.ClusterClient); !cluster {
		n, err := c.casIdx.Run(ctx, c.rdb, []string{key, idx}, expected, next, strconv.FormatInt(ttl.Milliseconds(), 10), bound).Int()
		switch {
		case err != nil:
			return false, fmt.Errorf("cacheaside: fill %q: %w", key, err)
		case n < 0:
			return false, errIndexFull
		}
		return n == 1, nil
	}
	// Cluster: the key and its index are in different slots, so one
	// script cannot do both. The index first: if walbust drains it before
	// the fill, it removes our lease too, and the fill fails.
	keep := ttl.Milliseconds()
	if keep == 0 {
		keep = max(c.rdb.PTTL(ctx, key).Val().Milliseconds(), 0)
	}
	n, err := c.idxAdd.Run(ctx, c.rdb, []string{idx}, key, strconv.FormatInt(keep, 10), bound).Int()
	switch {
	case err != nil:
		return false, fmt.Errorf("cacheaside: index %q: %w", key, err)
	case n == 0:
		return false, errIndexFull
	}
	return c.casFill(ctx, key, expected, next, ttl)
}

// envelope wraps a loaded value with fresh TTLs: the soft expiry and the
// TTL Redis keeps it for.
func (c *Client) envelope(payload []byte, notFound bool) (protocol.Envelope, time.Duration) {
	if notFound {
		ttl := jitter(c.opts.NegativeTTL, c.opts.Jitter)
		return protocol.Envelope{SoftExpiry: time.Now().Add(ttl), Nonce: protocol.NewToken(), NotFound: true}, ttl
	}
	ttl := jitter(c.opts.TTL, c.opts.Jitter)
	return protocol.Envelope{SoftExpiry: time.Now().Add(ttl), Nonce: protocol.NewToken(), Payload: payload}, ttl + c.opts.StaleWhileRevalidate
}
