package cacheaside

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/walbust/walbust/protocol"
)

// Options configure a Client. The zero value of each field means its
// default; negative values switch a feature off where that is documented.
type Options struct {
	// TTL is how long a filled value is fresh (default 10m), give or take
	// Jitter.
	TTL time.Duration
	// Jitter spreads TTLs by ±Jitter×TTL so keys filled together do not
	// expire together (default 0.1; negative: none).
	Jitter float64
	// StaleWhileRevalidate keeps a value in Redis this long after it went
	// stale: readers get it at once while one of them reloads it in the
	// background (default 0: off).
	StaleWhileRevalidate time.Duration
	// NegativeTTL is how long a not-found result (the loader returned
	// ErrNotFound) is cached (default 30s; negative: not cached).
	NegativeTTL time.Duration
	// LeaseTTL bounds a lease taken over an absent key (default 10s). A
	// lease over a tombstone keeps the tombstone's remaining TTL.
	LeaseTTL time.Duration
	// LeaseWait is how long a reader that finds another reader's lease
	// waits for its value before loading itself (default 2s; negative: do
	// not wait, load at once).
	LeaseWait time.Duration
	// LoadTimeout bounds one load (default 10s). Loads run detached from
	// the caller's cancellation, since other callers may share them.
	LoadTimeout time.Duration
	// FillMargin: a load that took longer than the lease's TTL minus this
	// is not written back, because the lease, and the fence it replaced,
	// may have expired by the time the write reaches Redis (default 250ms).
	FillMargin time.Duration
	// FenceTTL is the TTL of tombstones written by Client.Fence (default
	// 60s, walbust's fence_ttl default).
	FenceTTL time.Duration
	// MaxIndexMembers bounds the index set of an indexed pattern family
	// (see Client.GetIndexed; default protocol.MaxIndexMembers): a further
	// key of a full family is served but not cached.
	MaxIndexMembers int
	// L1, when set, keeps values in process too (see L1Options).
	L1 *L1Options
	// Wait configures WaitApplied (see WaitOptions).
	Wait WaitOptions
}

// L1Options configure the in-process cache. It holds an entry only while
// subscribed to walbust's events channel; every event drops the keys it
// lists and the keys its patterns match, and the whole L1 is emptied when
// the subscription is (re)established or found dead.
type L1Options struct {
	// Channel is walbust's events channel (default "walbust:events",
	// walbust's events.channel default).
	Channel string
	// TTL caps an entry's life in process (default 5s), whatever the
	// events say: the bound on staleness if an event is lost in a way the
	// subscription cannot see.
	TTL time.Duration
	// MaxEntries bounds the L1 (default 10000); when full, an arbitrary
	// entry is evicted.
	MaxEntries int
	// PingInterval: a subscription silent this long is pinged, and one
	// silent for twice as long is considered dead (default 1s).
	PingInterval time.Duration
}

// ErrNotFound is returned by a loader when the row does not exist, and by
// Get when that result is cached. Match it with errors.Is.
var ErrNotFound = errors.New("not found")

func (o Options) withDefaults() (Options, error) {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.TTL, 10*time.Minute)
	def(&o.NegativeTTL, 30*time.Second)
	def(&o.LeaseTTL, 10*time.Second)
	def(&o.LeaseWait, 2*time.Second)
	def(&o.LoadTimeout, 10*time.Second)
	def(&o.FillMargin, 250*time.Millisecond)
	def(&o.FenceTTL, 60*time.Second)
	if o.MaxIndexMembers == 0 {
		o.MaxIndexMembers = protocol.MaxIndexMembers
	}
	if o.MaxIndexMembers < 0 {
		return o, fmt.Errorf("cacheaside: MaxIndexMembers %d: must not be negative", o.MaxIndexMembers)
	}
	if o.Jitter == 0 {
		o.Jitter = 0.1
	}
	switch {
	case o.TTL < time.Millisecond:
		return o, fmt.Errorf("cacheaside: TTL %v: must be at least 1ms", o.TTL)
	case o.Jitter >= 1:
		return o, fmt.Errorf("cacheaside: Jitter %v: must be below 1", o.Jitter)
	case o.StaleWhileRevalidate < 0:
		return o, fmt.Errorf("cacheaside: StaleWhileRevalidate %v: must not be negative", o.StaleWhileRevalidate)
	case o.LeaseTTL < time.Millisecond || o.LoadTimeout < time.Millisecond || o.FenceTTL < time.Millisecond:
		return o, errors.New("cacheaside: LeaseTTL, LoadTimeout and FenceTTL must be at least 1ms")
	case o.FillMargin < 0:
		return o, fmt.Errorf("cacheaside: FillMargin %v: must not be negative", o.FillMargin)
	}
	if o.L1 != nil {
		l1 := *o.L1
		if l1.Channel == "" {
			l1.Channel = protocol.DefaultEventsChannel
		}
		def(&l1.TTL, 5*time.Second)
		def(&l1.PingInterval, time.Second)
		if l1.MaxEntries == 0 {
			l1.MaxEntries = 10000
		}
		if l1.TTL < 0 || l1.PingInterval < 0 || l1.MaxEntries < 0 {
			return o, errors.New("cacheaside: L1 TTL, PingInterval and MaxEntries must not be negative")
		}
		o.L1 = &l1
	}
	o.Wait = o.Wait.withDefaults(o.L1)
	return o, nil
}

// jitter returns d spread by ±j×d, at least 1ms.
func jitter(d time.Duration, j float64) time.Duration {
	if j > 0 {
		d += time.Duration(float64(d) * j * (2*rand.Float64() - 1))
	}
	return max(d, time.Millisecond)
}
