package cacheaside

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/walbust/walbust/internal/throwaway"
	"github.com/walbust/walbust/protocol"
)

func env(payload string, soft time.Duration) protocol.Envelope {
	return protocol.Envelope{SoftExpiry: time.Now().Add(soft), Payload: []byte(payload)}
}

// Unit: the L1's bookkeeping, no Redis.
func TestL1Bookkeeping(t *testing.T) {
	l := newL1(3, time.Minute)
	now := time.Now()
	l.put(l.mark(), "a", env("1", time.Hour))
	if _, ok := l.get("a", now); ok {
		t.Fatal("an L1 that is not subscribed served an entry")
	}
	l.reset(true)
	m := l.mark()
	l.put(m, "a", env("1", time.Hour))
	if e, ok := l.get("a", now); !ok || string(e.payload) != "1" {
		t.Fatalf("get a = %q, %v", e.payload, ok)
	}
	// An event between the mark (taken before reading Redis) and the put
	// keeps the value out: it may predate the invalidation.
	m = l.mark()
	l.apply(protocol.Event{Keys: []string{"b"}})
	l.put(m, "b", env("old", time.Hour))
	if _, ok := l.get("b", now); ok {
		t.Error("a value read before its invalidation event got into the L1")
	}
	l.put(m, "c", env("3", time.Hour)) // another key: unaffected
	if _, ok := l.get("c", now); !ok {
		t.Error("an event about b kept c out")
	}
	m = l.mark()
	l.apply(protocol.Event{Patterns: []string{"user:*"}})
	l.put(m, "user:1", env("old", time.Hour))
	if _, ok := l.get("user:1", now); ok {
		t.Error("a value read before a matching pattern event got into the L1")
	}
	// Too many events since the mark: unknowable, refused.
	m = l.mark()
	for range recentEvents {
		l.apply(protocol.Event{Keys: []string{"x"}})
	}
	l.put(m, "d", env("4", time.Hour))
	if _, ok := l.get("d", now); ok {
		t.Error("put accepted a mark older than the remembered events")
	}
	// Events drop keys and pattern matches.
	l.put(l.mark(), "user:2", env("u", time.Hour))
	l.apply(protocol.Event{Keys: []string{"a"}, Patterns: []string{"user:[0-9]"}})
	for _, k := range []string{"a", "user:2"} {
		if _, ok := l.get(k, now); ok {
			t.Errorf("%s survived its event", k)
		}
	}
	if _, ok := l.get("c", now); !ok {
		t.Error("c was dropped by an event about other keys")
	}
	// Entries expire at the soft expiry or the L1 TTL, whichever is first.
	l.put(l.mark(), "soon", env("s", 10*time.Millisecond))
	if _, ok := l.get("soon", now.Add(20*time.Millisecond)); ok {
		t.Error("an entry outlived its soft expiry")
	}
	if _, ok := l.get("c", now.Add(2*time.Minute)); ok {
		t.Error("an entry outlived the L1 TTL")
	}
	// Bounded.
	for _, k := range []string{"p", "q", "r", "s"} {
		l.put(l.mark(), k, env(k, time.Hour))
	}
	if n := l.len(); n > 3 {
		t.Errorf("%d entries, max 3", n)
	}
	// A reset empties it and refuses puts in flight.
	m = l.mark()
	l.reset(true)
	l.put(m, "late", env("l", time.Hour))
	if n := l.len(); n != 0 {
		t.Errorf("%d entries after a reset", n)
	}
	// nil is no L1.
	var none *l1
	none.put(none.mark(), "k", env("v", time.Hour))
	none.apply(protocol.Event{Flush: true})
	if _, ok := none.get("k", now); ok {
		t.Error("nil L1 served")
	}
}

func waitReady(t *testing.T, c *Client) {
	t.Helper()
	eventually(t, 10*time.Second, func() bool {
		c.l1.mu.Lock()
		defer c.l1.mu.Unlock()
		return c.l1.ready
	}, "the L1 subscribed")
}

func TestL1WithEvents(t *testing.T) {
	needRedis(t)
	// A server of its own: the test kills it.
	dir, err := os.MkdirTemp("", "walbust-cacheaside-l1-")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	own, err := throwaway.StartRedis(ctx, dir)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("the L1 test needs redis-server: %v", err)
	}
	t.Cleanup(func() { own.Close() })
	rdb := own.Client()
	defer rdb.Close()
	c := newClient(t, rdb, Options{L1: &L1Options{TTL: time.Hour, PingInterval: 100 * time.Millisecond}})
	waitReady(t, c)

	l := constant("v1")
	for range 3 {
		if v, err := c.Get(ctx, "product:1", l.load); err != nil || string(v) != "v1" {
			t.Fatalf("Get = %q, %v", v, err)
		}
	}
	if st := c.Stats(); st.L1Hits != 2 || l.calls.Load() != 1 {
		t.Fatalf("stats %+v, loads %d: want 2 L1 hits after one load", st, l.calls.Load())
	}
	// walbust fences the key, then publishes the batch.
	walbustFence(t, rdb, "product:1", 10, time.Minute)
	publish := func(ev protocol.Event) {
		t.Helper()
		b, _ := ev.Marshal()
		if err := rdb.Publish(ctx, protocol.DefaultEventsChannel, b).Err(); err != nil {
			t.Fatal(err)
		}
	}
	publish(protocol.Event{LSN: 10, Keys: []string{"product:1"}})
	eventually(t, 5*time.Second, func() bool { _, ok := c.l1.get("product:1", time.Now()); return !ok }, "product:1 dropped from the L1")
	l.next = func(int64) ([]byte, error) { return []byte("v2"), nil }
	if v, _ := c.Get(ctx, "product:1", l.load); string(v) != "v2" {
		t.Errorf("after the event: %q", v)
	}

	// Patterns.
	c.Get(ctx, "search:users:bob:1", constant("page").load)
	c.Get(ctx, "search:users:ann:1", constant("page").load)
	publish(protocol.Event{LSN: 11, Patterns: []string{"search:users:bob:*"}})
	eventually(t, 5*time.Second, func() bool { _, ok := c.l1.get("search:users:bob:1", time.Now()); return !ok }, "pattern match dropped")
	if _, ok := c.l1.get("search:users:ann:1", time.Now()); !ok {
		t.Error("a key the pattern does not match was dropped")
	}
	// An unreadable event empties the L1.
	rdb.Publish(ctx, protocol.DefaultEventsChannel, "not json")
	eventually(t, 5*time.Second, func() bool { return c.l1.len() == 0 }, "L1 emptied by a bad event")

	// The subscription dies with Redis: the L1 empties itself and serves
	// nothing until it has subscribed again.
	c.Get(ctx, "product:1", l.load)
	if c.l1.len() == 0 {
		t.Fatal("nothing in the L1 before the outage")
	}
	if err := own.Kill(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() bool {
		c.l1.mu.Lock()
		defer c.l1.mu.Unlock()
		return !c.l1.ready && len(c.l1.entries) == 0
	}, "L1 emptied and off after the subscription dropped")
	if err := own.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitReady(t, c)
	if n := c.l1.len(); n != 0 {
		t.Errorf("%d entries after resubscribing, want an empty L1", n)
	}
	if v, err := c.Get(ctx, "product:1", l.load); err != nil || string(v) != "v2" {
		t.Errorf("after the outage: %q, %v", v, err)
	}
}
