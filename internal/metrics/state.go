package metrics

import (
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/walbust/walbust/replication/wal"
)

// Status is the daemon's own view of itself, served as JSON on /status.
type Status struct {
	Version        string    `json:"version"`
	Slot           string    `json:"slot"`
	Streaming      bool      `json:"streaming"`
	RedisUp        bool      `json:"redis_up"`
	Ready          bool      `json:"ready"`
	NotReadyReason string    `json:"not_ready_reason,omitempty"`
	NotReadySince  time.Time `json:"not_ready_since,omitzero"`
	Stalls         []Stall   `json:"stalls,omitempty"`
	CheckpointLSN  string    `json:"checkpoint_lsn"`
	ConfirmedLSN   string    `json:"confirmed_lsn"`
	ServerWALEnd   string    `json:"server_wal_end"`
	LagBytes       uint64    `json:"lag_bytes"`
	LastCommitTime time.Time `json:"last_commit_time,omitzero"`
	Transactions   uint64    `json:"transactions"`
	RedisError     string    `json:"redis_error,omitempty"`
}

// Stall is one reason the pipeline cannot acknowledge anything new.
type Stall struct {
	Cause string    `json:"cause"`
	Error string    `json:"error"`
	Since time.Time `json:"since"`
}

// state tracks what readiness and /status need.
type state struct {
	mu             sync.Mutex
	streaming      bool
	streamingSince time.Time // when streaming last changed
	redisUp        bool
	redisErr       string
	redisSince     time.Time // when redisUp last changed
	// redisDownByBatch: the last batch attempt failed. Only a batch that
	// succeeds clears it: a PING answers while Redis refuses commands
	// (NOPERM, OOM, READONLY), so a ping must not make walbust look ready.
	redisDownByBatch bool
	redisBehind      bool // redisErr is a master's replicas falling short of wait_replicas
	stalls           map[string]Stall
	checkpoint       wal.LSN
	confirmed        wal.LSN
	serverWALEnd     wal.LSN
	lastCommit       time.Time
	transactions     uint64
	hist             history // what the status page shows (history.go)
}

// Connected implements the streamer's OnConnected hook.
func (m *Metrics) Connected(up bool) {
	m.state.mu.Lock()
	if m.state.streaming != up || m.state.streamingSince.IsZero() {
		m.state.hist.connected(up, m.state.streamingSince.IsZero())
		m.state.streamingSince = time.Now()
	}
	m.state.streaming = up
	m.state.mu.Unlock()
	m.streamingConnected.Set(b2f(up))
	m.updateReady()
}

// RedisResult records the outcome of every attempt to apply a batch (the
// invalidator's OnResult hook). replicasBehind: err is a master's replicas
// falling short of wait_replicas.
func (m *Metrics) RedisResult(err error, replicasBehind bool) {
	m.state.mu.Lock()
	m.setRedis(err)
	m.state.redisDownByBatch = err != nil
	m.state.redisBehind = err != nil && replicasBehind
	m.state.mu.Unlock()
	if err != nil {
		m.redisErrors.Inc()
	}
	m.updateReady()
}

// PingResult records a health-check PING. A failed ping marks Redis down;
// a ping that answers marks it up only if no batch is failing.
func (m *Metrics) PingResult(err error) {
	m.state.mu.Lock()
	if err != nil || !m.state.redisDownByBatch {
		m.setRedis(err)
	}
	m.state.mu.Unlock()
	m.updateReady()
}

// setRedis is called with state.mu held.
func (m *Metrics) setRedis(err error) {
	up := err == nil
	if m.state.redisUp != up || m.state.redisSince.IsZero() {
		m.state.hist.redis(err, m.state.redisSince.IsZero())
		m.state.redisSince = time.Now()
	}
	m.state.redisUp = up
	m.state.redisErr = ""
	if err != nil {
		m.state.redisErr = err.Error()
	}
	m.redisAvailable.Set(b2f(up))
}

// Stalled implements pipeline.Health: cause keeps the pipeline from
// acknowledging anything new until Recovered(cause).
func (m *Metrics) Stalled(cause string, err error) {
	m.state.mu.Lock()
	if m.state.stalls == nil {
		m.state.stalls = map[string]Stall{}
	}
	s, ok := m.state.stalls[cause]
	if !ok {
		s = Stall{Cause: cause, Since: time.Now()}
		m.state.hist.event("stalled", cause, err.Error())
	}
	s.Error = err.Error()
	m.state.stalls[cause] = s
	m.state.mu.Unlock()
	m.stalls.WithLabelValues(cause).Set(1)
	m.updateReady()
}

// Recovered implements pipeline.Health.
func (m *Metrics) Recovered(cause string) {
	m.state.mu.Lock()
	if _, ok := m.state.stalls[cause]; ok {
		m.state.hist.event("recovered", cause, "")
	}
	delete(m.state.stalls, cause)
	m.state.mu.Unlock()
	m.stalls.WithLabelValues(cause).Set(0)
	m.updateReady()
}

// Reported implements the streamer's OnReport hook.
func (m *Metrics) Reported(serverWALEnd, confirmed wal.LSN) {
	m.state.mu.Lock()
	m.state.serverWALEnd, m.state.confirmed = serverWALEnd, confirmed
	m.state.mu.Unlock()
	lag := 0.0
	if serverWALEnd > confirmed {
		lag = float64(serverWALEnd - confirmed)
	}
	m.replicationLag.Set(lag)
}

func (m *Metrics) updateReady() {
	ready, _, _ := m.ready()
	m.readyGauge.Set(b2f(ready))
}

// ready says whether walbust is applying what it receives and, if not,
// why and since when.
func (m *Metrics) ready() (bool, string, time.Time) {
	m.state.mu.Lock()
	defer m.state.mu.Unlock()
	s := &m.state
	var why []string
	var since time.Time
	add := func(reason string, t time.Time) {
		why = append(why, reason)
		if since.IsZero() || t.Before(since) {
			since = t
		}
	}
	if !s.streaming {
		add("not streaming from the replication slot", s.streamingSince)
	}
	switch {
	case !s.redisUp && s.redisBehind:
		add("redis replicas behind: "+s.redisErr, s.redisSince)
	case !s.redisUp:
		add("redis: "+s.redisErr, s.redisSince)
	}
	for _, st := range s.sortedStalls() {
		add(st.Cause+": "+st.Error, st.Since)
	}
	if len(why) == 0 {
		return true, "", time.Time{}
	}
	return false, strings.Join(why, "; "), since
}

// sortedStalls is called with state.mu held.
func (s *state) sortedStalls() []Stall {
	out := make([]Stall, 0, len(s.stalls))
	for _, st := range s.stalls {
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Cause < out[j].Cause })
	return out
}

// Snapshot returns the current Status.
func (m *Metrics) Snapshot() Status {
	ready, why, since := m.ready()
	m.state.mu.Lock()
	defer m.state.mu.Unlock()
	s := &m.state
	st := Status{
		Version: m.version, Slot: m.slot, Streaming: s.streaming, RedisUp: s.redisUp, Ready: ready, NotReadyReason: why,
		NotReadySince: since, Stalls: s.sortedStalls(),
		CheckpointLSN: s.checkpoint.String(), ConfirmedLSN: s.confirmed.String(), ServerWALEnd: s.serverWALEnd.String(),
		LastCommitTime: s.lastCommit, Transactions: s.transactions, RedisError: s.redisErr,
	}
	if s.serverWALEnd > s.confirmed {
		st.LagBytes = uint64(s.serverWALEnd - s.confirmed)
	}
	return st
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
