package metrics

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/walbust/walbust/internal/observe"
)

// The status page's memory: one sample a second for the last ten minutes,
// and the last batches and state changes. Bounded whatever happens: the
// rings never grow, and a sample holds only the tables and actions that
// changed during its second (deps.yaml bounds both).
const (
	historyInterval = time.Second
	historySamples  = 600 // 10 min at 1 s
	historyEvents   = 20  // batch events, and as many state changes
	rateWindow      = 10  // samples averaged for the per-second rates
)

// history is fed by the hooks metrics already has (BatchApplied, Stalled,
// Recovered, Connected, RedisResult, PingResult) and by a sampler that
// reads the lag once a second (sampleEvery, started by Listen).
type history struct {
	mu      sync.Mutex
	samples [historySamples]histSample
	n, next int // samples held; where the next one goes
	pending histSample
	batches ring
	changes ring // state changes: stalls, recoveries, Redis, replication
	tables  map[string]uint64
	actions map[actionKey]uint64
}

type actionKey struct {
	action  string
	pattern bool
}

// histSample is one second. LagMS is the largest commit-to-acknowledgement
// time of the transactions applied during it; nil when none was.
type histSample struct {
	T            int64    `json:"t"` // Unix milliseconds
	Ready        bool     `json:"ready"`
	LagBytes     uint64   `json:"lag_bytes"`
	LagMS        *float64 `json:"lag_ms"`
	Transactions int      `json:"transactions"`
	Keys         int      `json:"keys"`
	Changes      int      `json:"changes"`
	tables       map[string]int
	actions      map[actionKey]int
}

// histEvent is a batch (batches acknowledged within the same second are
// merged into one event) or a change of state.
type histEvent struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // batch, stalled, recovered
	Cause   string    `json:"cause,omitempty"`
	Detail  string    `json:"detail,omitempty"`
	Batches int       `json:"batches,omitempty"`
	Txs     int       `json:"transactions,omitempty"`
	Keys    int       `json:"keys,omitempty"`
	EndLSN  string    `json:"end_lsn,omitempty"`
	LagMS   *float64  `json:"lag_ms,omitempty"`
}

type ring struct {
	ev      [historyEvents]histEvent
	n, next int
}

func (r *ring) add(e histEvent) {
	r.ev[r.next] = e
	r.next = (r.next + 1) % len(r.ev)
	r.n = min(r.n+1, len(r.ev))
}

// last is the newest event, nil when there is none.
func (r *ring) last() *histEvent {
	if r.n == 0 {
		return nil
	}
	return &r.ev[(r.next+len(r.ev)-1)%len(r.ev)]
}

func (r *ring) all() []histEvent {
	out := make([]histEvent, 0, r.n)
	for i := range r.n {
		out = append(out, r.ev[(r.next-r.n+i+2*len(r.ev))%len(r.ev)])
	}
	return out
}

// batch records what BatchApplied saw.
func (h *history) batch(b observe.Batch) {
	lag := 0.0
	for _, tx := range b.Txs {
		lag = max(lag, float64(b.Acked.Sub(tx.CommitTime))/float64(time.Millisecond))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	p := &h.pending
	if p.LagMS == nil || lag > *p.LagMS {
		p.LagMS = &lag
	}
	p.Transactions += len(b.Txs)
	p.Keys += b.Keys
	for _, c := range b.Changes {
		p.Changes += c.N
		if p.tables == nil {
			p.tables = map[string]int{}
		}
		p.tables[c.Table] += c.N
		if h.tables == nil {
			h.tables = map[string]uint64{}
		}
		h.tables[c.Table] += uint64(c.N)
	}
	for _, c := range b.Invalidations {
		k := actionKey{c.Action, c.Pattern}
		if p.actions == nil {
			p.actions = map[actionKey]int{}
		}
		p.actions[k] += c.N
		if h.actions == nil {
			h.actions = map[actionKey]uint64{}
		}
		h.actions[k] += uint64(c.N)
	}
	end := b.EndLSN.String()
	if l := h.batches.last(); l != nil && l.Time.Truncate(time.Second).Equal(b.Acked.Truncate(time.Second)) {
		l.Time, l.Batches, l.Txs, l.Keys, l.EndLSN = b.Acked, l.Batches+1, l.Txs+len(b.Txs), l.Keys+b.Keys, end
		if lag > *l.LagMS {
			l.LagMS = &lag
		}
		return
	}
	h.batches.add(histEvent{Time: b.Acked, Kind: "batch", Batches: 1, Txs: len(b.Txs), Keys: b.Keys, EndLSN: end, LagMS: &lag})
}

// knownTables lists the registered tables at zero, so the page shows them
// before their first change.
func (h *history) knownTables(tables []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.tables == nil {
		h.tables = map[string]uint64{}
	}
	for _, t := range tables {
		h.tables[t] += 0
	}
}

// event records a change of state: kind is stalled or recovered.
func (h *history) event(kind, cause, detail string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.changes.add(histEvent{Time: time.Now(), Kind: kind, Cause: cause, Detail: detail})
}

// sample closes the second that ends at now.
func (h *history) sample(now time.Time, ready bool, lagBytes uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.pending
	h.pending = histSample{}
	s.T, s.Ready, s.LagBytes = now.UnixMilli(), ready, lagBytes
	h.samples[h.next] = s
	h.next = (h.next + 1) % len(h.samples)
	h.n = min(h.n+1, len(h.samples))
}

// sampleEvery samples until ctx ends.
func (m *Metrics) sampleEvery(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			m.sampleNow(now)
		}
	}
}

func (m *Metrics) sampleNow(now time.Time) {
	st := m.Snapshot()
	m.state.hist.sample(now, st.Ready, st.LagBytes)
}

// History is what /status/history serves: the current Status, the state
// the page shows in big letters, the samples (oldest first), per-table and
// per-action rates, and the recent events (newest first).
type History struct {
	State          string       `json:"state"` // streaming or stalled
	Causes         []Cause      `json:"causes"`
	Status         Status       `json:"status"`
	IntervalMS     int64        `json:"interval_ms"`
	Capacity       int          `json:"capacity"`
	Samples        []histSample `json:"samples"`
	RateWindowS    int          `json:"rate_window_seconds"`
	TxPerSec       float64      `json:"transactions_per_sec"`
	KeysPerSec     float64      `json:"keys_per_sec"`
	Tables         []TableRate  `json:"tables"`
	Invalidations  []ActionRate `json:"invalidations"`
	Events         []histEvent  `json:"events"`
	EventsPerKind  int          `json:"events_per_kind"`
	LastSampleTime time.Time    `json:"last_sample_time,omitzero"`
}

// Cause is one reason walbust is not streaming: replication (not
// connected to the slot), redis (down, or its replicas behind), or a
// pipeline stall (lookup, visibility, checkpoint, publication).
type Cause struct {
	Cause string    `json:"cause"`
	Error string    `json:"error"`
	Since time.Time `json:"since,omitzero"`
}

// TableRate is one table's row changes: per second over the rate window,
// and since walbust started.
type TableRate struct {
	Table         string  `json:"table"`
	ChangesPerSec float64 `json:"changes_per_sec"`
	ChangesTotal  uint64  `json:"changes_total"`
}

// ActionRate is the invalidations of one action and kind (key or pattern).
type ActionRate struct {
	Action  string  `json:"action"`
	Kind    string  `json:"kind"`
	PerSec  float64 `json:"per_sec"`
	Total   uint64  `json:"total"`
	Pattern bool    `json:"-"`
}

// History returns what /status/history serves.
func (m *Metrics) History() History {
	out := History{Status: m.Snapshot(), IntervalMS: historyInterval.Milliseconds(), Capacity: historySamples,
		RateWindowS: rateWindow, EventsPerKind: historyEvents, Causes: m.causes()}
	out.State = "streaming"
	if !out.Status.Ready {
		out.State = "stalled"
	}
	h := &m.state.hist
	h.mu.Lock()
	defer h.mu.Unlock()
	out.Samples = make([]histSample, 0, h.n)
	for i := range h.n {
		out.Samples = append(out.Samples, h.samples[(h.next-h.n+i+2*len(h.samples))%len(h.samples)])
	}
	if h.n > 0 {
		out.LastSampleTime = time.UnixMilli(out.Samples[h.n-1].T).UTC()
	}
	recent := out.Samples[max(0, len(out.Samples)-rateWindow):]
	secs := float64(max(1, len(recent))) * historyInterval.Seconds()
	tables := map[string]int{}
	actions := map[actionKey]int{}
	txs, keys := 0, 0
	for _, s := range recent {
		txs += s.Transactions
		keys += s.Keys
		for t, n := range s.tables {
			tables[t] += n
		}
		for a, n := range s.actions {
			actions[a] += n
		}
	}
	out.TxPerSec, out.KeysPerSec = float64(txs)/secs, float64(keys)/secs
	out.Tables = make([]TableRate, 0, len(h.tables))
	for t, total := range h.tables {
		out.Tables = append(out.Tables, TableRate{Table: t, ChangesPerSec: float64(tables[t]) / secs, ChangesTotal: total})
	}
	sort.Slice(out.Tables, func(i, j int) bool { return out.Tables[i].Table < out.Tables[j].Table })
	out.Invalidations = make([]ActionRate, 0, len(h.actions))
	for a, total := range h.actions {
		kind := "key"
		if a.pattern {
			kind = "pattern"
		}
		out.Invalidations = append(out.Invalidations, ActionRate{Action: a.action, Kind: kind, Pattern: a.pattern,
			PerSec: float64(actions[a]) / secs, Total: total})
	}
	sort.Slice(out.Invalidations, func(i, j int) bool {
		a, b := out.Invalidations[i], out.Invalidations[j]
		return a.Action < b.Action || a.Action == b.Action && !a.Pattern && b.Pattern
	})
	out.Events = append(h.batches.all(), h.changes.all()...)
	sort.SliceStable(out.Events, func(i, j int) bool { return out.Events[i].Time.After(out.Events[j].Time) })
	return out
}

// causes lists why walbust is not streaming, oldest first; empty when it is.
func (m *Metrics) causes() []Cause {
	m.state.mu.Lock()
	defer m.state.mu.Unlock()
	s := &m.state
	out := []Cause{}
	if !s.streaming {
		out = append(out, Cause{Cause: "replication", Error: "not streaming from the replication slot", Since: s.streamingSince})
	}
	if !s.redisUp {
		c := Cause{Cause: "redis", Error: s.redisErr, Since: s.redisSince}
		if s.redisBehind {
			c.Error = "replicas behind: " + s.redisErr
		}
		if c.Error == "" {
			c.Error = "no answer from Redis yet"
		}
		out = append(out, c)
	}
	for _, st := range s.sortedStalls() {
		out = append(out, Cause(st))
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Since.Before(out[j].Since) })
	return out
}

// connected records the replication connection going up or down; first:
// the first report since start.
func (h *history) connected(up, first bool) {
	switch {
	case up && first:
		h.event("started", "replication", "streaming from the replication slot")
	case up:
		h.event("recovered", "replication", "streaming from the replication slot again")
	default:
		h.event("stalled", "replication", "not streaming from the replication slot")
	}
}

// redis records Redis going down or coming back (err nil); first: the
// first outcome since start, which is only news when it is a failure.
func (h *history) redis(err error, first bool) {
	switch {
	case err != nil:
		h.event("stalled", "redis", err.Error())
	case !first:
		h.event("recovered", "redis", "")
	}
}
