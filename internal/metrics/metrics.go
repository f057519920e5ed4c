// Package metrics exposes what walbust is doing to Prometheus, and serves
// the health, readiness and status endpoints.
package metrics

import (
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/walbust/walbust/internal/observe"
	"github.com/walbust/walbust/replication/wal"
)

// Metrics holds walbust's collectors on a registry of its own.
type Metrics struct {
	registry *prometheus.Registry
	profiles bool // serve /debug/pprof/ (see EnableProfiles)

	transactions       prometheus.Counter
	changes            *prometheus.CounterVec // table, op
	unmappedChanges    *prometheus.CounterVec // table, op
	keys               *prometheus.CounterVec // action, kind
	patternScans       prometheus.Counter
	patternKeys        prometheus.Counter
	lookups            prometheus.Counter
	lookupErrors       prometheus.Counter
	refreshFailures    *prometheus.CounterVec
	redisErrors        prometheus.Counter
	redisRetries       prometheus.Counter
	problems           *prometheus.CounterVec // table, op
	unrendered         prometheus.Counter
	overflowedTxs      prometheus.Counter
	slotResyncs        prometheus.Counter
	refences           *prometheus.CounterVec // reason
	refencedKeys       prometheus.Counter
	refenceWait        prometheus.Histogram
	heartbeatErrors    prometheus.Counter
	batchTxs           prometheus.Histogram
	batchKeys          prometheus.Histogram
	invalidationLag    prometheus.Histogram
	heartbeatLag       prometheus.Gauge
	checkpointLSN      prometheus.Gauge
	lastCommit         prometheus.Gauge
	replicationLag     prometheus.Gauge
	slotWALStatus      *prometheus.GaugeVec // status
	slotSafeWALSize    prometheus.Gauge
	missingTables      *prometheus.GaugeVec // table
	readyGauge         prometheus.Gauge
	redisAvailable     prometheus.Gauge
	streamingConnected prometheus.Gauge
	stalls             *prometheus.GaugeVec // cause
	reloads            reloadMetrics
	passes             passMetrics

	version, slot string
	state         state
	names         []string // see Names
}

// New creates the collectors and registers them, with the Go runtime and
// process collectors, on a fresh registry.
func New(version, slot string) *Metrics {
	r := prometheus.NewRegistry()
	f := factory{r, new([]string)}
	m := &Metrics{
		registry:     r,
		transactions: f.counter("transactions_total", "Committed transactions applied."),
		changes:      f.counterVec("changes_total", "Row changes of registered tables, by table and operation.", "table", "op"),
		keys:         f.counterVec("invalidations_total", "Invalidations sent to Redis, by action and kind (key or pattern).", "action", "kind"),
		patternScans: f.counter("pattern_scans_total", "Pattern rules scanned with SCAN."),
		patternKeys:  f.counter("pattern_keys_total", "Keys found and acted on by pattern scans."),
		lookups:      f.counter("lookups_total", "Lookup queries run for derived rules."),
		lookupErrors: f.counter("lookup_errors_total", "Failed lookup query attempts."),
		refreshFailures: f.counterVec("refresh_failures_total",
			"Keys of action: refresh rules whose value query failed: they kept their value, flagged stale.", "table"),
		redisErrors:  f.counter("redis_errors_total", "Failed attempts to apply a batch to Redis."),
		redisRetries: f.counter("redis_retries_total", "Batches that needed more than one attempt."),
		problems:     f.counterVec("incomplete_invalidations_total", "Changes whose keys could not all be derived (see logs).", "table", "op"),
		unrendered:   f.counter("unrendered_keys_total", "Keys skipped because the replica identity did not send a value they need."),
		overflowedTxs: f.counter("overflowed_transactions_total",
			"Transactions larger than max_tx_changes that fell back to on_truncate rules."),
		slotResyncs: f.counter("slot_resyncs_total", "Times the slot was lost and recreated (on_slot_loss: resync)."),
		refences: f.counterVec("refences_total",
			"Batches whose fenced keys were fenced again, by reason: replayed (every replica caught up) or timeout (replica_wait_max).", "reason"),
		refencedKeys: f.counter("refenced_keys_total", "Keys and patterns fenced a second time after the replicas caught up."),
		refenceWait: f.histogram("refence_wait_seconds", "How long a batch's fences waited for the replicas.",
			[]float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}),
		heartbeatErrors: f.counter("heartbeat_errors_total", "Failed heartbeat emissions."),
		batchTxs:        f.histogram("batch_transactions", "Transactions per Redis batch.", prometheus.ExponentialBuckets(1, 4, 8)),
		batchKeys:       f.histogram("batch_invalidations", "Invalidations per Redis batch.", prometheus.ExponentialBuckets(1, 4, 10)),
		invalidationLag: f.histogram("invalidation_lag_seconds", "Commit time to Redis acknowledgement.",
			[]float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}),
		heartbeatLag:       f.gauge("heartbeat_lag_seconds", "Round trip of the last heartbeat through the WAL."),
		checkpointLSN:      f.gauge("checkpoint_lsn", "Checkpoint position (bytes into the WAL)."),
		lastCommit:         f.gauge("last_commit_timestamp_seconds", "Commit time of the last applied transaction."),
		replicationLag:     f.gauge("replication_lag_bytes", "Server WAL end minus the position confirmed to Postgres."),
		slotWALStatus:      f.gaugeVec("slot_wal_status", "1 for the slot's current wal_status.", "status"),
		slotSafeWALSize:    f.gauge("slot_safe_wal_size_bytes", "WAL that can still be written before the slot is lost (NaN: unlimited)."),
		readyGauge:         f.gauge("ready", "1 when streaming, Redis applies batches and nothing stalls the pipeline."),
		redisAvailable:     f.gauge("redis_up", "1 when the last batch sent to Redis was applied (and the last health check answered)."),
		streamingConnected: f.gauge("streaming", "1 while connected to the replication slot."),
		stalls: f.gaugeVec("stalled", "1 while the pipeline cannot acknowledge anything new, by cause "+
			"(lookup, visibility, checkpoint, publication); see /status for the error.", "cause"),
		version: version,
		slot:    slot,
	}
	m.reloads = newReloadMetrics(f)
	m.passes = newPassMetrics(f)
	m.unmappedChanges = f.counterVec("unmapped_changes_total",
		"Row changes of published tables that no deps.yaml rule maps (they invalidate nothing), by table and operation.", "table", "op")
	m.missingTables = f.gaugeVec("table_missing",
		"1 for a deps.yaml table that does not exist (dropped): its on_truncate rules were applied; remove it from deps.yaml.", "table")
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	info := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "walbust", Name: "build_info", Help: "Build information.",
		ConstLabels: prometheus.Labels{"version": version}})
	info.Set(1)
	r.MustRegister(info)
	m.names = append(*f.names, "walbust_build_info")
	return m
}

// Names are the names of walbust's own metrics (walbust_*), as registered.
func (m *Metrics) Names() []string { return m.names }

// factory registers collectors and records their names.
type factory struct {
	r     *prometheus.Registry
	names *[]string
}

func (f factory) name(name string) string {
	*f.names = append(*f.names, "walbust_"+name)
	return name
}

func (f factory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "walbust", Name: f.name(name), Help: help})
	f.r.MustRegister(c)
	return c
}

func (f factory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "walbust", Name: f.name(name), Help: help}, labels)
	f.r.MustRegister(c)
	return c
}

func (f factory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "walbust", Name: f.name(name), Help: help})
	f.r.MustRegister(g)
	return g
}

func (f factory) gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "walbust", Name: f.name(name), Help: help}, labels)
	f.r.MustRegister(g)
	return g
}

func (f factory) histogram(name, help string, buckets []float64) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "walbust", Name: f.name(name), Help: help, Buckets: buckets})
	f.r.MustRegister(h)
	return h
}

// Refenced implements pipeline.Observer.
func (m *Metrics) Refenced(keys int, waited time.Duration, timedOut bool) {
	reason := "replayed"
	if timedOut {
		reason = "timeout"
	}
	m.refences.WithLabelValues(reason).Inc()
	m.refencedKeys.Add(float64(keys))
	m.refenceWait.Observe(waited.Seconds())
}

// InitSeries creates the labelled series of every registered table, of
// every action (as deps.yaml names them) and kind at zero, so rate() and
// alerts see them from the first scrape rather than from the first change
// that happens to touch them.
func (m *Metrics) InitSeries(tables, actions []string) {
	m.state.hist.knownTables(tables)
	for _, t := range tables {
		for _, op := range []wal.Op{wal.Insert, wal.Update, wal.Delete, wal.Truncate} {
			m.changes.WithLabelValues(t, op.String())
			m.problems.WithLabelValues(t, op.String())
		}
		m.refreshFailures.WithLabelValues(t)
	}
	for _, a := range actions {
		for _, kind := range [2]string{"key", "pattern"} {
			m.keys.WithLabelValues(a, kind)
		}
	}
	for _, cause := range []string{"lookup", "visibility", "checkpoint", "publication"} {
		m.stalls.WithLabelValues(cause)
	}
	m.refences.WithLabelValues("replayed")
	m.refences.WithLabelValues("timeout")
}

// SlotObserved records the slot's health as pg_replication_slots shows it.
func (m *Metrics) SlotObserved(walStatus string, safeWALSize *int64) {
	m.slotWALStatus.Reset()
	m.slotWALStatus.WithLabelValues(walStatus).Set(1)
	if safeWALSize == nil {
		m.slotSafeWALSize.Set(math.NaN())
	} else {
		m.slotSafeWALSize.Set(float64(*safeWALSize))
	}
}

// BatchApplied implements pipeline.Observer.
func (m *Metrics) BatchApplied(b observe.Batch) {
	m.transactions.Add(float64(len(b.Txs)))
	for _, tx := range b.Txs {
		m.invalidationLag.Observe(b.Acked.Sub(tx.CommitTime).Seconds())
	}
	m.overflowedTxs.Add(float64(b.Overflowed))
	last := b.Txs[len(b.Txs)-1]
	m.checkpointLSN.Set(float64(b.EndLSN))
	m.lastCommit.Set(float64(last.CommitTime.UnixNano()) / 1e9)
	for _, c := range b.Changes {
		m.changes.WithLabelValues(c.Table, c.Op).Add(float64(c.N))
	}
	for _, c := range b.Unmapped {
		m.unmappedChanges.WithLabelValues(c.Table, c.Op).Add(float64(c.N))
	}
	// Counted per (action, kind) by the pipeline: a label lookup per key
	// would cost more than rendering it.
	for _, c := range b.Invalidations {
		m.keys.WithLabelValues(c.Action, map[bool]string{false: "key", true: "pattern"}[c.Pattern]).Add(float64(c.N))
	}
	for _, p := range b.Problems {
		m.problems.WithLabelValues(p.Table, p.Op).Add(float64(p.N))
	}
	m.unrendered.Add(float64(b.Unrendered))
	m.lookups.Add(float64(b.Lookups))
	m.patternScans.Add(float64(b.Patterns))
	m.patternKeys.Add(float64(b.PatternMatches))
	if b.Attempts > 1 {
		m.redisRetries.Inc() // the failed attempts were counted by RedisResult
	}
	m.state.mu.Lock()
	m.state.checkpoint, m.state.lastCommit = b.EndLSN, last.CommitTime
	m.state.transactions += uint64(len(b.Txs))
	m.state.mu.Unlock()
	for _, tx := range b.Txs {
		if !tx.Heartbeat.IsZero() {
			m.heartbeatLag.Set(b.Acked.Sub(tx.Heartbeat).Seconds())
		}
	}
	m.batchTxs.Observe(float64(len(b.Txs)))
	m.batchKeys.Observe(float64(b.Keys))
	m.state.hist.batch(b)
}

// LookupFailed counts a failed lookup query attempt (the lookup pool's
// OnError hook).
func (m *Metrics) LookupFailed(error) { m.lookupErrors.Inc() }

// RefreshFailed implements pipeline.RefreshObserver.
func (m *Metrics) RefreshFailed(table string, keys int) {
	m.refreshFailures.WithLabelValues(table).Add(float64(keys))
}

// HeartbeatFailed counts a heartbeat that could not be emitted.
func (m *Metrics) HeartbeatFailed() { m.heartbeatErrors.Inc() }

// SlotResynced counts a lost slot re-created (on_slot_loss: resync).
func (m *Metrics) SlotResynced() { m.slotResyncs.Inc() }

// TableMissing records that a deps.yaml table does not exist (dropped):
// its on_truncate rules were applied.
func (m *Metrics) TableMissing(table string) { m.missingTables.WithLabelValues(table).Set(1) }

// TableBack records that a table reported missing exists again.
func (m *Metrics) TableBack(table string) { m.missingTables.WithLabelValues(table).Set(0) }
