package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
)

// lagResult is part 2: commit-to-key-gone lag with walbust running.
type lagResult struct {
	Writers int        `json:"writers"`
	Phases  []lagPhase `json:"phases"`
}

type lagPhase struct {
	Name         string  `json:"name"`
	TargetTPS    int     `json:"target_tps"` // 0: flat out
	Seconds      float64 `json:"seconds"`
	Writes       int64   `json:"writes"`
	AchievedTPS  float64 `json:"achieved_tps"`
	Samples      int     `json:"samples"`
	Lost         int     `json:"lost"`       // writes whose key was still there 30 s after the phase
	BeforeAck    int     `json:"before_ack"` // key gone before the writer had its commit ack (counted as 0 ms)
	Unmatched    int     `json:"unmatched_deletions"`
	latencyStats `json:"lag"`
	FirstThird   latencyStats `json:"lag_first_third"`
	LastThird    latencyStats `json:"lag_last_third"`
	// Slot lag (server WAL position minus the slot's confirmed position),
	// sampled from Postgres every 250 ms, and walbust's own gauge.
	SlotLagBytesFirstThird    float64 `json:"slot_lag_bytes_first_third_mean"`
	SlotLagBytesLastThird     float64 `json:"slot_lag_bytes_last_third_mean"`
	SlotLagBytesMax           int64   `json:"slot_lag_bytes_max"`
	MetricLagBytesFirstThird  float64 `json:"walbust_replication_lag_bytes_first_third_mean"`
	MetricLagBytesLastThird   float64 `json:"walbust_replication_lag_bytes_last_third_mean"`
	CatchUpSeconds            float64 `json:"catch_up_seconds"` // writers stopped -> slot confirmed everything
	Bounded                   bool    `json:"bounded"`
	BoundedWhy                string  `json:"bounded_why"`
	WalbustPeakRSSMBAfterThis float64 `json:"walbust_peak_rss_mb_so_far"`
}

type latencyStats struct {
	N      int     `json:"n"`
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
	MaxMs  float64 `json:"max_ms"`
	MeanMs float64 `json:"mean_ms"`
}

func stats(lags []time.Duration) latencyStats {
	s := latencyStats{N: len(lags)}
	if len(lags) == 0 {
		return s
	}
	slices.Sort(lags)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	q := func(p float64) float64 { return ms(lags[min(len(lags)-1, int(p*float64(len(lags))))]) }
	var sum time.Duration
	for _, l := range lags {
		sum += l
	}
	s.P50Ms, s.P90Ms, s.P99Ms, s.MaxMs = q(0.50), q(0.90), q(0.99), ms(lags[len(lags)-1])
	s.MeanMs = ms(sum / time.Duration(len(lags)))
	return s
}

// tracker pairs each write's commit acknowledgement with the keyspace
// notification of its key's deletion.
type tracker struct {
	mu        sync.Mutex
	pending   map[string]*pendingWrite
	samples   []lagSample
	beforeAck int
	unmatched int
}

type pendingWrite struct{ commit, del time.Time }

type lagSample struct {
	commit time.Time
	lag    time.Duration
}

func newTracker() *tracker { return &tracker{pending: map[string]*pendingWrite{}} }

// begin: key was just set in Redis and the row's UPDATE is about to run.
func (t *tracker) begin(key string) {
	t.mu.Lock()
	t.pending[key] = &pendingWrite{}
	t.mu.Unlock()
}

func (t *tracker) committed(key string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.pending[key]; p != nil {
		p.commit = at
		if !p.del.IsZero() {
			t.record(key, p)
		}
	}
}

func (t *tracker) deleted(key string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.pending[key]
	if p == nil || !p.del.IsZero() {
		t.unmatched++
		return
	}
	p.del = at
	if !p.commit.IsZero() {
		t.record(key, p)
	}
}

func (t *tracker) record(key string, p *pendingWrite) {
	lag := p.del.Sub(p.commit)
	if lag < 0 {
		// Postgres can ship the commit to walbust before the writer reads
		// its acknowledgement.
		t.beforeAck++
		lag = 0
	}
	t.samples = append(t.samples, lagSample{p.commit, lag})
	delete(t.pending, key)
}

// take returns and clears what was collected.
func (t *tracker) take() (samples []lagSample, lost, beforeAck, unmatched int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	samples, lost, beforeAck, unmatched = t.samples, len(t.pending), t.beforeAck, t.unmatched
	t.samples, t.pending, t.beforeAck, t.unmatched = nil, map[string]*pendingWrite{}, 0, 0
	return
}

func (t *tracker) outstanding() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pending)
}

const keyspacePrefix = "__keyspace@0__:"

func runLag(ctx context.Context, e *env) (*lagResult, error) {
	sc := e.sc
	res := &lagResult{Writers: sc.LagWriters}
	if err := e.flushRedis(ctx); err != nil {
		return nil, err
	}
	// K: keyspace events, g: generic commands (DEL and UNLINK send "del").
	if err := e.rdb.ConfigSet(ctx, "notify-keyspace-events", "Kg").Err(); err != nil {
		return nil, err
	}
	defer e.rdb.ConfigSet(context.WithoutCancel(ctx), "notify-keyspace-events", "")
	if err := e.dropSlot(ctx, liveSlot); err != nil {
		return nil, err
	}
	if err := e.setup(ctx, liveSlot); err != nil {
		return nil, err
	}
	w, err := e.startWalbust(ctx, "lag", liveSlot, e.deps)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	if err := w.waitStreaming(ctx); err != nil {
		return nil, err
	}
	metricsURL, err := w.metricsURL(ctx)
	if err != nil {
		return nil, err
	}

	tr := newTracker()
	sub := redis.NewClient(&redis.Options{Addr: e.rds.Addr()})
	defer sub.Close()
	ps := sub.PSubscribe(ctx, keyspacePrefix+"account:*")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		return nil, fmt.Errorf("psubscribe: %w", err)
	}
	msgs := ps.Channel(redis.WithChannelSize(1 << 17))
	go func() {
		for m := range msgs {
			if m.Payload == "del" {
				tr.deleted(strings.TrimPrefix(m.Channel, keyspacePrefix), time.Now())
			}
		}
	}()

	var nextID atomic.Int64
	for _, rate := range sc.LagRates {
		ph := lagPhase{Name: "flat out", TargetTPS: rate}
		if rate > 0 {
			ph.Name = strconv.Itoa(rate) + " tx/s"
		}
		e.logf("part 2: %s for %v with %d writers", ph.Name, sc.LagDuration, sc.LagWriters)
		if err := lagPhaseRun(ctx, e, w, metricsURL, tr, &nextID, &ph); err != nil {
			return res, fmt.Errorf("part 2 %s: %w", ph.Name, err)
		}
		e.logf("part 2: %s: %.0f tx/s achieved, lag p50 %.2f ms, p99 %.2f ms, max %.2f ms, lost %d, catch-up %.2fs",
			ph.Name, ph.AchievedTPS, ph.P50Ms, ph.P99Ms, ph.MaxMs, ph.Lost, ph.CatchUpSeconds)
		res.Phases = append(res.Phases, ph)
	}
	return res, w.stop()
}

func lagPhaseRun(ctx context.Context, e *env, w *walbust, metricsURL string, tr *tracker, nextID *atomic.Int64, ph *lagPhase) error {
	sc := e.sc
	dur := sc.LagDuration
	total := int64(0)
	if ph.TargetTPS > 0 {
		total = int64(float64(ph.TargetTPS) * dur.Seconds())
	}
	tr.take()

	// Set the keys of the rows the phase will write, in bulk, so that each
	// writer only has to SET again after the id sequence wraps around.
	base := nextID.Load()
	expected := int64(sc.Accounts)
	if total > 0 {
		expected = min(total, expected)
	}
	preset := make([]string, expected)
	for j := range preset {
		preset[j] = "account:" + strconv.FormatInt((base+int64(j)+1)%int64(sc.Accounts)+1, 10)
	}
	if err := e.setKeys(ctx, preset); err != nil {
		return err
	}

	// Connect the writers before the clock starts.
	conns := make([]*pgx.Conn, sc.LagWriters)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.WithoutCancel(ctx))
			}
		}
	}()
	for i := range conns {
		var err error
		if conns[i], err = e.pg.Connect(ctx, dbName); err != nil {
			return err
		}
	}

	// Sample the slot's lag from Postgres and walbust's own gauge.
	type lagPoint struct {
		at          time.Time
		slot, gauge int64
	}
	var points []lagPoint
	sctx, stopSampler := context.WithCancel(ctx)
	defer stopSampler()
	samplerDone := make(chan error, 1)
	go func() {
		conn, err := e.pg.Connect(sctx, dbName)
		if err != nil {
			samplerDone <- err
			return
		}
		defer conn.Close(context.WithoutCancel(sctx))
		client := &http.Client{Timeout: 2 * time.Second}
		for {
			select {
			case <-sctx.Done():
				samplerDone <- nil
				return
			case <-time.After(250 * time.Millisecond):
			}
			p := lagPoint{at: time.Now(), gauge: -1}
			if err := conn.QueryRow(sctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
				FROM pg_replication_slots WHERE slot_name = $1`, liveSlot).Scan(&p.slot); err != nil {
				if sctx.Err() != nil {
					samplerDone <- nil
				} else {
					samplerDone <- err
				}
				return
			}
			if v, err := scrapeGauge(sctx, client, metricsURL, "walbust_replication_lag_bytes"); err == nil {
				p.gauge = int64(v)
			}
			points = append(points, p)
		}
	}()

	start := time.Now()
	deadline := start.Add(dur)
	var seq, writes atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for _, conn := range conns {
		g.Go(func() error {
			for {
				if total > 0 {
					i := seq.Add(1) - 1
					if i >= total {
						return nil
					}
					due := start.Add(time.Duration(float64(i) / float64(ph.TargetTPS) * float64(time.Second)))
					if d := time.Until(due); d > 0 {
						time.Sleep(d)
					}
				} else if time.Now().After(deadline) {
					return nil
				}
				k := nextID.Add(1)
				id := k%int64(sc.Accounts) + 1
				key := "account:" + strconv.FormatInt(id, 10)
				if k-base > expected {
					if err := e.rdb.Set(gctx, key, "cached", 0).Err(); err != nil {
						return err
					}
				}
				tr.begin(key)
				if _, err := conn.Exec(gctx, "UPDATE accounts SET balance = balance + 1 WHERE id = $1", id); err != nil {
					return err
				}
				tr.committed(key, time.Now())
				writes.Add(1)
			}
		})
	}
	if err := g.Wait(); err != nil {
		stopSampler()
		<-samplerDone
		return err
	}
	stopped := time.Now()
	ph.Seconds = stopped.Sub(start).Seconds()
	ph.Writes = writes.Load()
	ph.AchievedTPS = float64(ph.Writes) / ph.Seconds

	target, err := e.fence(ctx)
	if err != nil {
		return err
	}
	caught, err := e.waitConfirmed(ctx, liveSlot, target, 10*time.Minute, 10*time.Millisecond, w)
	if err != nil {
		return err
	}
	ph.CatchUpSeconds = caught.Sub(stopped).Seconds()
	stopSampler()
	if err := <-samplerDone; err != nil {
		return err
	}
	// Deletions still on their way.
	for wait := time.Now().Add(30 * time.Second); tr.outstanding() > 0 && time.Now().Before(wait); {
		time.Sleep(20 * time.Millisecond)
	}
	samples, lost, beforeAck, unmatched := tr.take()
	ph.Samples, ph.Lost, ph.BeforeAck, ph.Unmatched = len(samples), lost, beforeAck, unmatched
	third := time.Duration(float64(stopped.Sub(start)) / 3)
	var all, first, last []time.Duration
	for _, s := range samples {
		all = append(all, s.lag)
		switch {
		case s.commit.Before(start.Add(third)):
			first = append(first, s.lag)
		case s.commit.After(stopped.Add(-third)):
			last = append(last, s.lag)
		}
	}
	ph.latencyStats, ph.FirstThird, ph.LastThird = stats(all), stats(first), stats(last)
	var sf, sl, gf, gl []float64
	for _, p := range points {
		ph.SlotLagBytesMax = max(ph.SlotLagBytesMax, p.slot)
		switch {
		case p.at.Before(start.Add(third)):
			sf = append(sf, float64(p.slot))
			if p.gauge >= 0 {
				gf = append(gf, float64(p.gauge))
			}
		case p.at.After(stopped.Add(-third)) && p.at.Before(stopped):
			sl = append(sl, float64(p.slot))
			if p.gauge >= 0 {
				gl = append(gl, float64(p.gauge))
			}
		}
	}
	ph.SlotLagBytesFirstThird, ph.SlotLagBytesLastThird = mean(sf), mean(sl)
	ph.MetricLagBytesFirstThird, ph.MetricLagBytesLastThird = mean(gf), mean(gl)
	// Bounded: walbust has no backlog to speak of when the writers stop
	// (a consumer slower than the writers would end the phase seconds
	// behind), and the typical lag at the end of the phase has not grown
	// away from the start's. p50 rather than p99: on a shared 2-core
	// machine a third's p99 is one scheduling hiccup.
	catchUpLimit := max(1.0, 0.05*ph.Seconds)
	growthLimit := 2*ph.FirstThird.P50Ms + 10
	ph.Bounded = ph.Lost == 0 && ph.CatchUpSeconds <= catchUpLimit && ph.LastThird.P50Ms <= growthLimit
	ph.BoundedWhy = fmt.Sprintf("catch-up %.2fs (limit %.1fs); p50 last third %.1f ms vs first third %.1f ms (limit %.1f ms); lost %d",
		ph.CatchUpSeconds, catchUpLimit, ph.LastThird.P50Ms, ph.FirstThird.P50Ms, growthLimit, ph.Lost)
	if peak, err := w.peakRSS(); err == nil {
		ph.WalbustPeakRSSMBAfterThis = float64(peak) / 1024
	}
	return nil
}

// scrapeGauge reads one unlabelled sample from a Prometheus text page.
func scrapeGauge(ctx context.Context, c *http.Client, url, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("no %s in %s", name, url)
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
