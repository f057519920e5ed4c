// Package metrics exposes what walbust is doing to Prometheus, and serves
// the health, readiness and status endpoints.
package metrics

import (
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/walbust/walbust/internal/pipeline"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication/wal"
)

// Metrics holds walbust's collectors on a registry of its own.
type Metrics struct {
	Registry *prometheus.Registry
	profiles bool // serve /debug/pprof/ (see EnableProfiles)

	Transactions       prometheus.Counter
	Changes            *prometheus.CounterVec // table, op
	UnmappedChanges    *prometheus.CounterVec // table, op
	Keys               *prometheus.CounterVec // action, kind
	PatternScans       prometheus.Counter
	PatternKeys        prometheus.Counter
	Lookups            prometheus.Counter
	LookupErrors       prometheus.Counter
	RedisErrors        prometheus.Counter
	RedisRetries       prometheus.Counter
	Problems           *prometheus.CounterVec // table, op
	Unrendered         prometheus.Counter
	OverflowedTxs      prometheus.Counter
	SlotResyncs        prometheus.Counter
	Refences           *prometheus.CounterVec // reason
	RefencedKeys       prometheus.Counter
	RefenceWait        prometheus.Histogram
	HeartbeatErrors    prometheus.Counter
	BatchTxs           prometheus.Histogram
	BatchKeys          prometheus.Histogram
	InvalidationLag    prometheus.Histogram
	HeartbeatLag       prometheus.Gauge
	CheckpointLSN      prometheus.Gauge
	LastCommit         prometheus.Gauge
	ReplicationLag     prometheus.Gauge
	SlotWALStatus      *prometheus.GaugeVec // status
	SlotSafeWALSize    prometheus.Gauge
	MissingTables      *prometheus.GaugeVec // table
	Ready              prometheus.Gauge
	RedisAvailable     prometheus.Gauge
	StreamingConnected prometheus.Gauge
	Stalls             *prometheus.GaugeVec // cause
	reloads            reloadMetrics

	version, slot string
	state         state
}

// New creates the collectors and registers them, with the Go runtime and
// process collectors, on a fresh registry.
func New(version, slot string) *Metrics {
	r := prometheus.NewRegistry()
	f := factory{r}
	m := &Metrics{
		Registry:     r,
		Transactions: f.counter("transactions_total", "Committed transactions applied."),
		Changes:      f.counterVec("changes_total", "Row changes of registered tables, by table and operation.", "table", "op"),
		Keys:         f.counterVec("invalidations_total", "Invalidations sent to Redis, by action and kind (key or pattern).", "action", "kind"),
		PatternScans: f.counter("pattern_scans_total", "Pattern rules scanned with SCAN."),
		PatternKeys:  f.counter("pattern_keys_total", "Keys found and acted on by pattern scans."),
		Lookups:      f.counter("lookups_total", "Lookup queries run for derived rules."),
		LookupErrors: f.counter("lookup_errors_total", "Failed lookup query attempts."),
		RedisErrors:  f.counter("redis_errors_total", "Failed attempts to apply a batch to Redis."),
		RedisRetries: f.counter("redis_retries_total", "Batches that needed more than one attempt."),
		Problems:     f.counterVec("incomplete_invalidations_total", "Changes whose keys could not all be derived (see logs).", "table", "op"),
		Unrendered:   f.counter("unrendered_keys_total", "Keys skipped because the replica identity did not send a value they need."),
		OverflowedTxs: f.counter("overflowed_transactions_total",
			"Transactions larger than max_tx_changes that fell back to on_truncate rules."),
		SlotResyncs: f.counter("slot_resyncs_total", "Times the slot was lost and recreated (on_slot_loss: resync)."),
		Refences: f.counterVec("refences_total",
			"Batches whose fenced keys were fenced again, by reason: replayed (every replica caught up) or timeout (replica_wait_max).", "reason"),
		RefencedKeys: f.counter("refenced_keys_total", "Keys and patterns fenced a second time after the replicas caught up."),
		RefenceWait: f.histogram("refence_wait_seconds", "How long a batch's fences waited for the replicas.",
			[]float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}),
		HeartbeatErrors: f.counter("heartbeat_errors_total", "Failed heartbeat emissions."),
		BatchTxs:        f.histogram("batch_transactions", "Transactions per Redis batch.", prometheus.ExponentialBuckets(1, 4, 8)),
		BatchKeys:       f.histogram("batch_invalidations", "Invalidations per Redis batch.", prometheus.ExponentialBuckets(1, 4, 10)),
		InvalidationLag: f.histogram("invalidation_lag_seconds", "Commit time to Redis acknowledgement.",
			[]float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}),
		HeartbeatLag:       f.gauge("heartbeat_lag_seconds", "Round trip of the last heartbeat through the WAL."),
		CheckpointLSN:      f.gauge("checkpoint_lsn", "Checkpoint position (bytes into the WAL)."),
		LastCommit:         f.gauge("last_commit_timestamp_seconds", "Commit time of the last applied transaction."),
		ReplicationLag:     f.gauge("replication_lag_bytes", "Server WAL end minus the position confirmed to Postgres."),
		SlotWALStatus:      f.gaugeVec("slot_wal_status", "1 for the slot's current wal_status.", "status"),
		SlotSafeWALSize:    f.gauge("slot_safe_wal_size_bytes", "WAL that can still be written before the slot is lost (NaN: unlimited)."),
		Ready:              f.gauge("ready", "1 when streaming, Redis applies batches and nothing stalls the pipeline."),
		RedisAvailable:     f.gauge("redis_up", "1 when the last batch sent to Redis was applied (and the last health check answered)."),
		StreamingConnected: f.gauge("streaming", "1 while connected to the replication slot."),
		Stalls: f.gaugeVec("stalled", "1 while the pipeline cannot acknowledge anything new, by cause "+
			"(lookup, visibility, checkpoint, publication); see /status for the error.", "cause"),
		version: version,
		slot:    slot,
	}
	m.reloads = newReloadMetrics(f)
	m.UnmappedChanges = f.counterVec("unmapped_changes_total",
		"Row changes of published tables that no deps.yaml rule maps (they invalidate nothing), by table and operation.", "table", "op")
	m.MissingTables = f.gaugeVec("table_missing",
		"1 for a deps.yaml table that does not exist (dropped): its on_truncate rules were applied; remove it from deps.yaml.", "table")
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	info := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "walbust", Name: "build_info", Help: "Build information.",
		ConstLabels: prometheus.Labels{"version": version}})
	info.Set(1)
	r.MustRegister(info)
	return m
}

type factory struct{ r *prometheus.Registry }

func (f factory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "walbust", Name: name, Help: help})
	f.r.MustRegister(c)
	return c
}

func (f factory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "walbust", Name: name, Help: help}, labels)
	f.r.MustRegister(c)
	return c
}

func (f factory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "walbust", Name: name, Help: help})
	f.r.MustRegister(g)
	return g
}

func (f factory) gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "walbust", Name: name, Help: help}, labels)
	f.r.MustRegister(g)
	return g
}

func (f factory) histogram(name, help string, buckets []float64) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "walbust", Name: name, Help: help, Buckets: buckets})
	f.r.MustRegister(h)
	return h
}

// Refenced implements pipeline.Observer.
func (m *Metrics) Refenced(keys int, waited time.Duration, timedOut bool) {
	reason := "replayed"
	if timedOut {
		reason = "timeout"
	}
	m.Refences.WithLabelValues(reason).Inc()
	m.RefencedKeys.Add(float64(keys))
	m.RefenceWait.Observe(waited.Seconds())
}

// InitSeries creates the labelled series of every registered table, action
// and kind at zero, so rate() and alerts see them from the first scrape
// rather than from the first change that happens to touch them.
func (m *Metrics) InitSeries(tables []string) {
	for _, t := range tables {
		for _, op := range []wal.Op{wal.Insert, wal.Update, wal.Delete, wal.Truncate} {
			m.Changes.WithLabelValues(t, op.String())
			m.Problems.WithLabelValues(t, op.String())
		}
	}
	for a := mapping.Delete; a <= mapping.Fence; a++ {
		for _, kind := range [2]string{"key", "pattern"} {
			m.Keys.WithLabelValues(a.String(), kind)
		}
	}
	for _, cause := range []string{"lookup", "visibility", "checkpoint", "publication"} {
		m.Stalls.WithLabelValues(cause)
	}
	m.Refences.WithLabelValues("replayed")
	m.Refences.WithLabelValues("timeout")
}

// SlotObserved records the slot's health as pg_replication_slots shows it.
func (m *Metrics) SlotObserved(walStatus string, safeWALSize *int64) {
	m.SlotWALStatus.Reset()
	m.SlotWALStatus.WithLabelValues(walStatus).Set(1)
	if safeWALSize == nil {
		m.SlotSafeWALSize.Set(math.NaN())
	} else {
		m.SlotSafeWALSize.Set(float64(*safeWALSize))
	}
}

// BatchApplied implements pipeline.Observer.
func (m *Metrics) BatchApplied(b *pipeline.Batch) {
	batch, plan, st, acked := b.Txs, b.Plan, b.Stats, b.Acked
	m.Transactions.Add(float64(len(batch)))
	for _, tx := range batch {
		m.InvalidationLag.Observe(acked.Sub(tx.CommitTime).Seconds())
	}
	m.OverflowedTxs.Add(float64(b.Overflowed))
	last := batch[len(batch)-1]
	m.CheckpointLSN.Set(float64(last.EndLSN))
	m.LastCommit.Set(float64(last.CommitTime.UnixNano()) / 1e9)
	for _, c := range plan.ChangeCounts {
		m.Changes.WithLabelValues(c.Table, c.Op.String()).Add(float64(c.N))
	}
	for _, c := range plan.Unmapped {
		m.UnmappedChanges.WithLabelValues(c.Table, c.Op.String()).Add(float64(c.N))
	}
	// Count per (action, kind) first: a label lookup per key would cost
	// more than rendering it.
	plan.Tally(func(a mapping.Action, pattern bool, n int) {
		m.Keys.WithLabelValues(a.String(), map[bool]string{false: "key", true: "pattern"}[pattern]).Add(float64(n))
	})
	for _, p := range plan.Problems {
		m.Problems.WithLabelValues(p.Table, p.Op.String()).Add(float64(p.Count))
	}
	m.Unrendered.Add(float64(plan.Unrendered))
	m.Lookups.Add(float64(plan.Lookups))
	m.PatternScans.Add(float64(st.Patterns))
	m.PatternKeys.Add(float64(st.PatternMatches))
	if st.Attempts > 1 {
		m.RedisRetries.Inc() // the failed attempts were counted by RedisResult
	}
	m.state.mu.Lock()
	m.state.checkpoint, m.state.lastCommit = last.EndLSN, last.CommitTime
	m.state.transactions += uint64(len(batch))
	m.state.mu.Unlock()
	for _, tx := range batch {
		if !tx.Heartbeat.IsZero() {
			m.HeartbeatLag.Set(acked.Sub(tx.Heartbeat).Seconds())
		}
	}
	m.BatchTxs.Observe(float64(len(batch)))
	m.BatchKeys.Observe(float64(plan.Len()))
}
