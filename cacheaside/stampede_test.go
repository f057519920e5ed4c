package cacheaside

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walbust/walbust/protocol"
)

// The stampede: a hot key has just been fenced, and 1,000 readers in four
// processes (four clients, each with its own connection pool) miss on it
// at once. In each process the readers share one load; across processes
// the lease decides. Without waiting for leases each process loads at
// most once; with the lease, exactly one load in total.
func TestStampede(t *testing.T) {
	const processes, readers = 4, 1000
	for _, tt := range []struct {
		name      string
		leaseWait time.Duration
	}{
		{"without the lease", -1},
		{"with the fence lease", 10 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rdb := redisClient(t)
			flush(t, rdb)
			ctx := context.Background()
			const key = "product:hot"
			if err := rdb.Set(ctx, key, protocol.Envelope{SoftExpiry: time.Now().Add(time.Hour), Nonce: protocol.NewToken(), Payload: []byte("old")}.Encode(), time.Hour).Err(); err != nil {
				t.Fatal(err)
			}
			walbustFence(t, rdb, key, 4242, time.Minute)

			clients := make([]*Client, processes)
			loads := make([]atomic.Int64, processes)
			for p := range clients {
				clients[p] = newClient(t, redisClient(t), Options{LeaseWait: tt.leaseWait})
			}
			start := make(chan struct{})
			var wg sync.WaitGroup
			var wrong, failed atomic.Int64
			for i := range readers {
				p := i % processes
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					v, err := clients[p].Get(ctx, key, func(ctx context.Context, o Observation) ([]byte, error) {
						loads[p].Add(1)
						time.Sleep(50 * time.Millisecond) // the database query
						return []byte("new"), nil
					})
					if err != nil {
						failed.Add(1)
					} else if string(v) != "new" {
						wrong.Add(1)
					}
				}()
			}
			close(start)
			wg.Wait()
			if n := failed.Load(); n > 0 {
				t.Errorf("%d readers failed", n)
			}
			if n := wrong.Load(); n > 0 {
				t.Errorf("%d readers got the old value or another one", n)
			}
			var total int64
			for p := range loads {
				n := loads[p].Load()
				total += n
				if n > 1 {
					t.Errorf("process %d called the loader %d times, want at most once", p, n)
				}
			}
			if tt.leaseWait > 0 && total != 1 {
				t.Errorf("%d loads in total, want exactly 1 with the lease", total)
			}
			if total < 1 {
				t.Error("nobody loaded")
			}
			t.Logf("%d readers in %d processes: %d loads", readers, processes, total)
			if c, _ := stored(t, rdb, key); c.Kind != protocol.KindValue || string(c.Envelope.Payload) != "new" {
				t.Errorf("Redis holds %v %q, want the new value", c.Kind, c.Envelope.Payload)
			}
		})
	}
}
