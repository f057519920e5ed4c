package cacheaside

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walbust/walbust/protocol"
)

// loader counts calls and returns what next says.
type loader struct {
	calls atomic.Int64
	obs   atomic.Value // last Observation
	next  func(n int64) ([]byte, error)
}

func (l *loader) load(_ context.Context, o Observation) ([]byte, error) {
	n := l.calls.Add(1)
	l.obs.Store(o)
	return l.next(n)
}

func constant(v string) *loader {
	return &loader{next: func(int64) ([]byte, error) { return []byte(v), nil }}
}

func TestGetMissFillHit(t *testing.T) {
	rdb := redisClient(t)
	flush(t, rdb)
	c := newClient(t, rdb, Options{TTL: time.Hour, Jitter: 0.1})
	ctx := context.Background()
	l := constant("v1")
	v, err := c.Get(ctx, "product:1", l.load)
	if err != nil || string(v) != "v1" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if o := l.obs.Load().(Observation); o.FenceLSN != 0 {
		t.Errorf("observation of an absent key: FenceLSN %d, want 0", o.FenceLSN)
	}
	content, ttl := stored(t, rdb, "product:1")
	if content.Kind != protocol.KindValue || string(content.Envelope.Payload) != "v1" {
		t.Fatalf("Redis holds %v %q", content.Kind, content.Envelope.Payload)
	}
	if ttl < 54*time.Minute || ttl > 66*time.Minute {
		t.Errorf("TTL %v, want 1h ± 10%%", ttl)
	}
	if soft := time.Until(content.Envelope.SoftExpiry); soft < 53*time.Minute || soft > 66*time.Minute {
		t.Errorf("soft expiry in %v, want about the TTL", soft)
	}
	v[0] = 'X' // the caller's copy
	for range 3 {
		if v, err := c.Get(ctx, "product:1", l.load); err != nil || string(v) != "v1" {
			t.Fatalf("second Get = %q, %v", v, err)
		}
	}
	if n := l.calls.Load(); n != 1 {
		t.Errorf("loader called %d times, want 1", n)
	}
	if st := c.Stats(); st.Hits != 3 || st.Misses != 1 || st.Fills != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestGetAfterFenceSeesLSN(t *testing.T) {
	rdb := redisClient(t)
	flush(t, rdb)
	c := newClient(t, rdb, Options{})
	walbustFence(t, rdb, "product:1", 987654321, time.Minute)
	l := constant("fresh")
	if v, err := c.Get(context.Background(), "product:1", l.load); err != nil || string(v) != "fresh" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	o := l.obs.Load().(Observation)
	if o.FenceLSN != 987654321 {
		t.Errorf("FenceLSN %d, want the tombstone's 987654321", o.FenceLSN)
	}
	if o.ReplicaCaughtUp(987654321) || !o.ReplicaCaughtUp(987654322) {
		t.Error("ReplicaCaughtUp: a replica has the commit once it replayed past its start")
	}
}

// The populate race: walbust fences the key while a reader loads the old
// row. The reader's fill must fail; it loads again under the new fence.
func TestFenceDuringLoadFailsTheFill(t *testing.T) {
	rdb := redisClient(t)
	flush(t, rdb)
	c := newClient(t, rdb, Options{})
	l := &loader{}
	l.next = func(n int64) ([]byte, error) {
		if n == 1 {
			// The write commits after this read; walbust fences.
			walbustFence(t, rdb, "product:1", 500, time.Minute)
			return []byte("old"), nil
		}
		return []byte("new"), nil
	}
	v, err := c.Get(context.Background(), "product:1", l.load)
	if err != nil || string(v) != "new" {
		t.Fatalf("Get = %q, %v; want the value loaded under the new fence", v, err)
	}
	content, _ := stored(t, rdb, "product:1")
	if content.Kind != protocol.KindValue || string(content.Envelope.Payload) != "new" {
		t.Fatalf("Redis holds %v %q, want the new value", content.Kind, content.Envelope.Payload)
	}
	if st := c.Stats(); st.Loads != 2 || st.FillsLost != 1 || st.Fills != 1 {
		t.Errorf("stats %+v, want 2 loads, 1 lost fill, 1 fill", st)
	}
	if o := l.obs.Load().(Observation); o.FenceLSN != 500 {
		t.Errorf("second load saw FenceLSN %d, want 500", o.FenceLSN)
	}
}

// A fence that keeps landing: after maxFillAttempts the caller gets the
// last value, and nothing stale is written.
func TestFenceStorm(t *testing.T) {
	rdb := redisClient(t)
	flush(t, rdb)
	c := newClient(t, rdb, Options{})
	l := &loader{}
	l.next = func(n int64) ([]byte, error) {
		walbustFence(t, rdb, "k", uint64(n), time.Minute)
		return []byte("v"), nil
	}
	if v, err := c.Get(context.Background(), "k", l.load); err != nil || string(v) != "v" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if n := l.calls.Load(); n != maxFillAttempts {
		t.Errorf("%d loads, want %d", n, maxFillAttempts)
	}
	if content, _ := stored(t, rdb, "k"); content.Kind != protocol.KindTombstone || content.Fence.LSN != maxFillAttempts {
		t.Errorf("Redis holds %v lsn %d, want the last tombstone", content.Kind, content.Fence.LSN)
	}
}

// A load that outlasts the lease (here: the tombstone's remaining TTL) is
// not written back.
func TestFillSkippedWhenLoadOutlastsLease(t *testing.T) {
	rdb := redisClient(t)
	flush(t, rdb)
	c := newClient(t, rdb, Options{FillMargin: 250 * time.Millisecond})
	walbustFence(t, rdb, "k", 9, 200*time.Millisecond) // less than the margin left
	l := constant("v")
	if v, err := c.Get(context.Background(), "k", l.load); err != nil || string(v) != "v" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if st := c.Stats(); st.FillsSkipped != 1 || st.Fills != 0 {
		t.Errorf("stats %+v, want the fill skipped", st)
	}
	if content, _ := stored(t, rdb, "k"); content.Kind == protocol.KindValue {
		t.Error("the value was written back")
	}
}

func TestNegativeCaching(t *testing.T) {
	rdb := redisClient(t)
	flush(t, rdb)
	c := newClient(t, rdb, Options{NegativeTTL: 20 * time.Second, Jitter: -1})
	ctx := context.Background()
	l := &loader{next: func(int64) ([]byte, error) { return nil, ErrNotFound }}
	for range 2 {
		if _, err := c.Get(ctx, "user-by-email:x", l.load); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get: %v, want ErrNotFound", err)
		}
	}
	if n := l.calls.Load(); n != 1 {
		t.Errorf("loader called %d times, want 1 (the not-found is cached)", n)
	}
	content, ttl := stored(t, rdb, "user-by-email:x")
	if content.Kind != protocol.KindValue || !content.Envelope.NotFound {
		t.Fatalf("Redis holds %v, want a not-found entry", content.Kind)
	}
	if ttl > 20*time.Second || ttl < 19*time.Second {
		t.Errorf("TTL %v, want NegativeTTL 20s", ttl)
	}
	// The row is inserted: walbust renders the key from the new row and
	// fences it, and the next Get finds the row.
	walbustFence(t, rdb, "user-by-email:x", 10, time.Minute)
	l.next = func(int64) ([]byte, error) { return []byte("user 1"), nil }
	if v, err := c.Get(ctx, "user-by-email:x", l.load); err != nil || string(v) != "user 1" {
		t.Errorf("after the insert: %q, %v", v, err)
	}

	// NegativeTTL < 0: not-found is not cached.
	c2 := newClient(t, rdb, Options{NegativeTTL: -1})
	l2 := &loader{next: func(int64) ([]byte, error) { return nil, ErrNotFound }}
	for range 2 {
		if _, err := c2.Get(ctx, "nothing", l2.load); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get: %v", err)
		}
	}
	if n := l2.calls.Load(); n != 2 {
		t.Errorf("loader called %d times, want 2 (nothing cached)", n)
	}
	if content, _ := stored(t, rdb, "nothing"); content.Kind != protocol.KindTombstone {
		t.Errorf("after an uncached not-found the key holds %v, want the released lease (a tombstone)", content.Kind)
	}
}

// A failed load gives its lease back as a tombstone with the same LSN,
// so the next reader does not wait for a lease nobody will fill.
func TestLoadErrorReleasesLease(t *testing.T) {
	rdb := redisClient(t)
	flush(t, rdb)
	c := newClient(t, rdb, Options{LeaseWait: 5 * time.Second})
	walbustFence(t, rdb, "k", 77, time.Minute)
	boom := errors.New("database down")
	l := &loader{next: func(int64) ([]byte, error) { return nil, boom }}
	_, err := c.Get(context.Background(), "k", l.load)
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), `"k"`) {
		t.Fatalf("Get: %v, want the load error, wrapped with the key", err)
	}
	content, ttl := stored(t, rdb, "k")
	if content.Kind != protocol.KindTombstone || content.Fence.LSN != 77 || ttl < 55*time.Second {
		t.Fatalf("Redis holds %v lsn %d ttl %v, want a tombstone of LSN 77 with the fence's TTL", content.Kind, content.Fence.LSN, ttl)
	}
	start := time.Now()
	l.next = func(int64) ([]byte, error) { return []byte("ok"), nil }
	if v, err := c.Get(context.Background(), "k", l.load); err != nil || string(v) != "ok" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if c.Stats().LeaseWaits != 0 || time.Since(start) > 2*time.Second {
		t.Errorf("the next reader waited for a released lease (%v)", time.Since(start))
	}
}

// A reader that finds another process's lease waits LeaseWait, then loads
// itself and fills over that lease (its owner may have died).
func TestLeaseOfDeadReaderIsTakenOver(t *testing.T) {
	rdb := redisClient(t)
	flush(t, rdb)
	if err := rdb.Set(context.Background(), "k", protocol.Lease(5, protocol.NewToken()), 30*time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, rdb, Options{LeaseWait: 200 * time.Millisecond})
	l := constant("v")
	start := time.Now()
	if v, err := c.Get(context.Background(), "k", l.load); err != nil || string(v) != "v" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("returned after %v, before LeaseWait", d)
	}
	if st := c.Stats(); st.LeaseWaits != 1 || st.Fills != 1 {
		t.Errorf("stats %+v, want one wait and one fill", st)
	}
	if o := l.obs.Load().(Observation); o.FenceLSN != 5 {
		t.Errorf("FenceLSN %d, want the lease's 5", o.FenceLSN)
	}
	if content, _ := stored(t, rdb, "k"); content.Kind != protocol.KindValue {
		t.Errorf("Redis holds %v", content.Kind)
	}
}

// A reader waiting on a lease gets the owner's value without loading.
func TestLeaseWaiterGetsOwnersValue(t *testing.T) {
	rdb := redisClient(t)
	flush(t, rdb)
	owner := newClient(t, redisClient(t), Options{})
	waiter := newClient(t, redisClient(t), Options{LeaseWait: 10 * time.Second})
	release := make(chan struct{})
	ownerLoad := &loader{next: func(int64) ([]byte, error) { <-release; return []byte("owned"), nil }}
	done := make(chan error, 1)
	go func() { _, err := owner.Get(context.Background(), "k", ownerLoad.load); done <- err }()
	eventually(t, 5*time.Second, func() bool {
		c, _ := stored(t, rdb, "k")
		return c.Kind == protocol.KindLease
	}, "the owner's lease")
	waiterLoad := constant("waiter")
	got := make(chan string, 1)
	go func() { v, _ := waiter.Get(context.Background(), "k", waiterLoad.load); got <- string(v) }()
	eventually(t, 5*time.Second, func() bool { return waiter.Stats().LeaseWaits == 1 }, "the waiter waiting")
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if v := <-got; v != "owned" {
		t.Errorf("waiter got %q, want the owner's value", v)
	}
	if n := waiterLoad.calls.Load(); n != 0 {
		t.Errorf("waiter loaded %d times", n)
	}
}

func TestForeignValueIsAMiss(t *testing.T) {
	rdb := redisClient(t)
	flush(t, rdb)
	ctx := context.Background()
	c := newClient(t, rdb, Options{})
	for _, legacy := range []string{"legacy-json", "wbval:1:garbage"} {
		rdb.Set(ctx, "k", legacy, time.Hour)
		if v, err := c.Get(ctx, "k", constant("v").load); err != nil || string(v) != "v" {
			t.Fatalf("%q: Get = %q, %v", legacy, v, err)
		}
		if content, _ := stored(t, rdb, "k"); content.Kind != protocol.KindValue {
			t.Errorf("%q: Redis holds %v, want the value that replaced it", legacy, content.Kind)
		}
	}
	rdb.Del(ctx, "h")
	rdb.HSet(ctx, "h", "f", "v")
	if _, err := c.Get(ctx, "h", constant("v").load); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Errorf("Get on a hash: %v, want WRONGTYPE", err)
	}
}

func TestStaleWhileRevalidate(t *testing.T) {
	rdb := redisClient(t)
	flush(t, rdb)
	ctx := context.Background()
	opts := Options{TTL: time.Hour, StaleWhileRevalidate: time.Hour}
	a, b := newClient(t, redisClient(t), opts), newClient(t, redisClient(t), opts)
	// A value past its soft expiry, still in Redis.
	stale := protocol.Envelope{SoftExpiry: time.Now().Add(-time.Second), Nonce: protocol.NewToken(), Payload: []byte("v1")}.Encode()
	rdb.Set(ctx, "k", stale, time.Hour)

	release := make(chan struct{})
	l := &loader{next: func(int64) ([]byte, error) { <-release; return []byte("v2"), nil }}
	for _, c := range []*Client{a, b, a, b} {
		v, err := c.Get(ctx, "k", l.load)
		if err != nil || string(v) != "v1" {
			t.Fatalf("Get = %q, %v; want the stale value at once", v, err)
		}
	}
	close(release)
	eventually(t, 5*time.Second, func() bool {
		c, _ := stored(t, rdb, "k")
		return c.Kind == protocol.KindValue && string(c.Envelope.Payload) == "v2"
	}, "the revalidated value in Redis")
	if n := l.calls.Load(); n != 1 {
		t.Errorf("%d reloads across two processes, want 1", n)
	}
	if v, err := b.Get(ctx, "k", l.load); err != nil || string(v) != "v2" {
		t.Errorf("after revalidation: %q, %v", v, err)
	}
	content, ttl := stored(t, rdb, "k")
	if content.Envelope.Stale(time.Now().Add(50*time.Minute)) || ttl < 100*time.Minute {
		t.Errorf("soft expiry %v, TTL %v: want about 1h fresh and 2h in Redis", content.Envelope.SoftExpiry, ttl)
	}

	// A fence during a revalidation wins.
	rdb.Set(ctx, "k2", stale, time.Hour)
	l2 := &loader{}
	l2.next = func(int64) ([]byte, error) {
		walbustFence(t, rdb, "k2", 3, time.Minute)
		return []byte("old"), nil
	}
	if _, err := a.Get(ctx, "k2", l2.load); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() bool { return l2.calls.Load() == 1 }, "revalidation")
	a.Close() // waits for the revalidation
	if content, _ := stored(t, rdb, "k2"); content.Kind != protocol.KindTombstone {
		t.Errorf("after a fence during revalidation Redis holds %v, want the tombstone", content.Kind)
	}
}

func TestContextCancelledWhileWaiting(t *testing.T) {
	rdb := redisClient(t)
	flush(t, rdb)
	rdb.Set(context.Background(), "k", protocol.Lease(0, protocol.NewToken()), time.Minute)
	c := newClient(t, rdb, Options{LeaseWait: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Get(ctx, "k", constant("v").load)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get: %v, want the caller's deadline", err)
	}
}
