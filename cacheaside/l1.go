package cacheaside

import (
	"sync"
	"time"

	"github.com/walbust/walbust/protocol"
)

// recentEvents is how many events the L1 remembers, so that a value read
// from Redis before an event can be kept out of the L1 when the event
// arrives while the read is still on its way in.
const recentEvents = 128

// l1 is the in-process cache. All methods are safe on a nil *l1 (no L1).
type l1 struct {
	mu      sync.Mutex
	entries map[string]l1Entry
	max     int
	ttl     time.Duration
	// ready: subscribed and listening; otherwise the L1 is empty and
	// serves nothing, since events may be missed.
	ready bool
	// seq counts events and resets; recent holds the last ones by seq.
	seq    uint64
	recent [recentEvents]protocol.Event
}

type l1Entry struct {
	payload  []byte
	notFound bool
	expires  time.Time
}

func newL1(max int, ttl time.Duration) *l1 {
	return &l1{entries: map[string]l1Entry{}, max: max, ttl: ttl}
}

func (l *l1) get(key string, now time.Time) (l1Entry, bool) {
	if l == nil {
		return l1Entry{}, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[key]
	if !ok || !l.ready {
		return l1Entry{}, false
	}
	if !now.Before(e.expires) {
		delete(l.entries, key)
		return l1Entry{}, false
	}
	return e, true
}

// mark is taken before reading Redis; put refuses a value if anything that
// could concern its key happened after the mark.
func (l *l1) mark() uint64 {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq
}

func (l *l1) put(mark uint64, key string, env protocol.Envelope) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.ready || l.seq-mark >= recentEvents {
		return
	}
	for s := mark + 1; s <= l.seq; s++ {
		if l.recent[s%recentEvents].Touches(key) {
			return
		}
	}
	now := time.Now()
	expires := now.Add(l.ttl)
	if env.SoftExpiry.Before(expires) {
		expires = env.SoftExpiry
	}
	if !now.Before(expires) {
		return
	}
	if _, ok := l.entries[key]; !ok && len(l.entries) >= l.max {
		for k := range l.entries {
			delete(l.entries, k)
			break
		}
	}
	l.entries[key] = l1Entry{payload: env.Payload, notFound: env.NotFound, expires: expires}
}

// apply drops what ev invalidates.
func (l *l1) apply(ev protocol.Event) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	l.recent[l.seq%recentEvents] = ev
	if ev.Flush {
		clear(l.entries)
		return
	}
	for _, k := range ev.Keys {
		delete(l.entries, k)
	}
	if len(ev.Patterns) > 0 {
		for k := range l.entries {
			for _, p := range ev.Patterns {
				if protocol.Match(p, k) {
					delete(l.entries, k)
					break
				}
			}
		}
	}
}

// reset empties the L1 and refuses every put in flight; ready says
// whether it may serve from now on.
func (l *l1) reset(ready bool) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	clear(l.entries)
	l.seq++
	l.recent[l.seq%recentEvents] = protocol.Event{Flush: true}
	l.ready = ready
}

func (l *l1) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.entries)
}
