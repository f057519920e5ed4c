package cacheaside

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

// WaitOptions configure Client.WaitApplied.
type WaitOptions struct {
	// Slot is walbust's replication slot (postgres.slot; default
	// "walbust"): the position waited for is protocol.SettledKey(Slot).
	Slot string
	// Channel is walbust's events channel (default: L1's channel, else
	// "walbust:events"); each event wakes the waiters at once. "-": do not
	// subscribe, only poll.
	Channel string
	// MaxPoll caps the interval between two reads of the position while
	// someone waits (default 100ms). Polls start at 1ms and double: they
	// end a wait no event announces (a write to a table walbust does not
	// map, an idle position, a lost event).
	MaxPoll time.Duration
	// WALBlockSize and WALSegmentSize are the server's wal_block_size and
	// wal_segment_size (defaults 8192 and 16 MiB, Postgres's own). See
	// pastPageHeader.
	WALBlockSize, WALSegmentSize uint64
}

// pastPageHeader maps an LSN just past a WAL page header to the page's
// start. pg_current_wal_insert_lsn() points past the header of the next
// page when the last record ended exactly at a page boundary, while that
// record's end (what walbust records) is the boundary itself: no change
// can end inside a header, so both mean the same, and without this a wait
// would last until the next WAL is written.
func pastPageHeader(lsn wal.LSN, block, segment uint64) wal.LSN {
	const short, long = 24, 40 // SizeOfXLogShortPHD, SizeOfXLogLongPHD
	switch v := uint64(lsn); {
	case segment > 0 && v%segment == long:
		return lsn - long
	case block > 0 && v%block == short && (segment == 0 || v%segment != short):
		return lsn - short
	}
	return lsn
}

func (o WaitOptions) withDefaults(l1 *L1Options) WaitOptions {
	if o.Slot == "" {
		o.Slot = "walbust"
	}
	if o.Channel == "" {
		o.Channel = protocol.DefaultEventsChannel
		if l1 != nil {
			o.Channel = l1.Channel
		}
	}
	if o.MaxPoll <= 0 {
		o.MaxPoll = 100 * time.Millisecond
	}
	if o.WALBlockSize == 0 {
		o.WALBlockSize = 8192
	}
	if o.WALSegmentSize == 0 {
		o.WALSegmentSize = 16 << 20
	}
	return o
}

// ErrBadPosition: the settled position key holds something that is not an
// LSN.
var ErrBadPosition = errors.New("cacheaside: walbust's settled position is not an LSN")

// waiters is the shared state of every WaitApplied of one Client: one
// poller and one subscription however many wait.
type waiters struct {
	mu      sync.Mutex
	known   wal.LSN // highest settled position read
	pending map[chan struct{}]wal.LSN
	running bool // the poller runs
	subbed  bool // the subscription runs
	wake    chan struct{}
	err     error // the last read's error, for waiters that give up
}

// WaitApplied returns nil once walbust has applied every change up to lsn
// to Redis: its settled position (protocol.SettledKey) is at lsn or past
// it. Then a read through the cache sees every write committed at or
// before lsn. Take lsn after COMMIT, from the same session:
//
//	SELECT pg_current_wal_insert_lsn()
//
// With replicas: configured in walbust, the settled position moves only
// after the keys were fenced again once every replica replayed the
// change, so a fill from a replica cannot cache an older row either.
//
// It returns ctx's error when ctx ends first (wrapping the last Redis
// error, if reading the position failed), and ErrBadPosition when the key
// holds no LSN. Waiters share one subscription to walbust's events and one
// poll of the key (1ms doubling to WaitOptions.MaxPoll), so a lost event,
// a write no rule maps (no event at all: walbust records its position
// within its status interval when idle) or no events channel still end
// the wait.
func (c *Client) WaitApplied(ctx context.Context, lsn wal.LSN) error {
	lsn = pastPageHeader(lsn, c.opts.Wait.WALBlockSize, c.opts.Wait.WALSegmentSize)
	w := &c.wait
	w.mu.Lock()
	if lsn <= w.known {
		w.mu.Unlock()
		return nil
	}
	if c.closed.Load() {
		w.mu.Unlock()
		return errors.New("cacheaside: client closed")
	}
	if w.pending == nil {
		w.pending = map[chan struct{}]wal.LSN{}
		w.wake = make(chan struct{}, 1)
	}
	done := make(chan struct{})
	w.pending[done] = lsn
	if !w.running {
		w.running = true
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.pollPosition()
		}()
	}
	if !w.subbed && c.opts.Wait.Channel != "-" {
		w.subbed = true
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.watchEvents(c.bg)
		}()
	}
	w.mu.Unlock()
	w.kick()
	select {
	case <-done:
		return nil
	case <-c.bg.Done():
		return errors.New("cacheaside: client closed")
	case <-ctx.Done():
		w.mu.Lock()
		delete(w.pending, done)
		err := w.err
		w.mu.Unlock()
		select {
		case <-done: // released meanwhile
			return nil
		default:
		}
		if errors.Is(err, ErrBadPosition) {
			return err
		}
		if err != nil {
			return errors.Join(ctx.Err(), err)
		}
		return ctx.Err()
	}
}

// Applied reads walbust's settled position now; found is false when
// walbust never wrote it.
func (c *Client) Applied(ctx context.Context) (lsn wal.LSN, found bool, err error) {
	s, err := c.rdb.Get(ctx, protocol.SettledKey(c.opts.Wait.Slot)).Result()
	if errors.Is(err, redis.Nil) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	v, err := wal.ParseLSN(s)
	if err != nil {
		return 0, false, ErrBadPosition
	}
	return v, true, nil
}

func (w *waiters) kick() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// pollPosition reads the position while anyone waits, at once when woken
// (a new waiter, an event), else with backoff; it ends when nobody waits.
func (c *Client) pollPosition() {
	w := &c.wait
	interval := time.Millisecond
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		ctx, cancel := context.WithTimeout(c.bg, time.Second)
		lsn, _, err := c.Applied(ctx)
		cancel()
		w.mu.Lock()
		w.err = err
		if err == nil && lsn > w.known {
			w.known = lsn
			interval = time.Millisecond
		}
		for ch, want := range w.pending {
			if want <= w.known {
				close(ch)
				delete(w.pending, ch)
			}
		}
		if len(w.pending) == 0 || c.bg.Err() != nil {
			w.running = false
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
		timer.Reset(interval)
		select {
		case <-c.bg.Done():
		case <-timer.C:
			interval = min(2*interval, c.opts.Wait.MaxPoll)
		case <-w.wake:
			if !timer.Stop() {
				<-timer.C
			}
		}
	}
}

// watchEvents wakes the poller on every event past the known position,
// until the client closes (go-redis resubscribes after a failure).
func (c *Client) watchEvents(ctx context.Context) {
	w := &c.wait
	ps := c.rdb.Subscribe(ctx, c.opts.Wait.Channel)
	defer ps.Close()
	ch := ps.Channel()
	for {
		select {
		case <-ctx.Done():
			return
		case msg, ok := <-ch:
			if !ok {
				return
			}
			ev, err := protocol.UnmarshalEvent([]byte(msg.Payload))
			w.mu.Lock()
			stale := err == nil && ev.LSN <= w.known
			w.mu.Unlock()
			if !stale {
				w.kick()
			}
		}
	}
}
