package metrics

import (
	"errors"
	"sync"
	"time"

	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/replication"
)

// Status is the daemon's own view of itself, served as JSON on /status.
type Status struct {
	Version        string    `json:"version"`
	Slot           string    `json:"slot"`
	Streaming      bool      `json:"streaming"`
	RedisUp        bool      `json:"redis_up"`
	Ready          bool      `json:"ready"`
	NotReadyReason string    `json:"not_ready_reason,omitempty"`
	CheckpointLSN  string    `json:"checkpoint_lsn"`
	ConfirmedLSN   string    `json:"confirmed_lsn"`
	ServerWALEnd   string    `json:"server_wal_end"`
	LagBytes       uint64    `json:"lag_bytes"`
	LastCommitTime time.Time `json:"last_commit_time,omitzero"`
	Transactions   uint64    `json:"transactions"`
	RedisError     string    `json:"redis_error,omitempty"`
}

// state tracks what readiness and /status need.
type state struct {
	mu           sync.Mutex
	streaming    bool
	redisUp      bool
	redisErr     string
	redisBehind  bool // redisErr is a master's replicas falling short of wait_replicas
	checkpoint   replication.LSN
	confirmed    replication.LSN
	serverWALEnd replication.LSN
	lastCommit   time.Time
	transactions uint64
}

// Connected implements the streamer's OnConnected hook.
func (m *Metrics) Connected(up bool) {
	m.state.mu.Lock()
	m.state.streaming = up
	m.state.mu.Unlock()
	m.StreamingConnected.Set(b2f(up))
	m.updateReady()
}

// RedisResult implements the invalidator's OnResult hook.
func (m *Metrics) RedisResult(err error) {
	m.state.mu.Lock()
	m.state.redisUp = err == nil
	m.state.redisBehind = errors.Is(err, invalidator.ErrTooFewReplicas)
	m.state.redisErr = ""
	if err != nil {
		m.state.redisErr = err.Error()
	}
	m.state.mu.Unlock()
	m.RedisAvailable.Set(b2f(err == nil))
	if err != nil {
		m.RedisErrors.Inc()
	}
	m.updateReady()
}

// Reported implements the streamer's OnReport hook.
func (m *Metrics) Reported(serverWALEnd, confirmed replication.LSN) {
	m.state.mu.Lock()
	m.state.serverWALEnd, m.state.confirmed = serverWALEnd, confirmed
	m.state.mu.Unlock()
	lag := 0.0
	if serverWALEnd > confirmed {
		lag = float64(serverWALEnd - confirmed)
	}
	m.ReplicationLag.Set(lag)
}

func (m *Metrics) updateReady() {
	ready, _ := m.ready()
	m.Ready.Set(b2f(ready))
}

func (m *Metrics) ready() (bool, string) {
	m.state.mu.Lock()
	defer m.state.mu.Unlock()
	switch {
	case !m.state.streaming:
		return false, "not streaming from the replication slot"
	case !m.state.redisUp && m.state.redisBehind:
		return false, "redis replicas behind: " + m.state.redisErr
	case !m.state.redisUp:
		return false, "redis unreachable: " + m.state.redisErr
	}
	return true, ""
}

// Snapshot returns the current Status.
func (m *Metrics) Snapshot() Status {
	ready, why := m.ready()
	m.state.mu.Lock()
	defer m.state.mu.Unlock()
	s := &m.state
	st := Status{
		Version: m.version, Slot: m.slot, Streaming: s.streaming, RedisUp: s.redisUp, Ready: ready, NotReadyReason: why,
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
