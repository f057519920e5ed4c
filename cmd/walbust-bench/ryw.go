package main

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/walbust/walbust/cacheaside"
	"github.com/walbust/walbust/replication/wal"
)

// rywResult is part 6: read your writes. A probe connection commits an
// UPDATE, reads pg_current_wal_insert_lsn() and calls
// cacheaside.Client.WaitApplied; the latency is commit acknowledgement to
// WaitApplied returning, at idle and under a background write rate.
type rywResult struct {
	Phases []rywPhase `json:"phases"`
}

type rywPhase struct {
	Name         string  `json:"name"`
	TargetTPS    int     `json:"target_tps"` // background rate; 0: idle
	AchievedTPS  float64 `json:"achieved_tps"`
	Timeouts     int     `json:"timeouts"` // waits that did not end within 5 s
	latencyStats `json:"commit_to_wait_applied"`
}

// rywTargets: p99 under 100 ms idle, under 10 ms at 5000 tx/s.
var rywTargets = map[int]float64{0: 100, 5000: 10}

func runRYW(ctx context.Context, e *env) (*rywResult, error) {
	sc := e.sc
	res := &rywResult{}
	if err := e.flushRedis(ctx); err != nil {
		return nil, err
	}
	if err := e.dropSlot(ctx, liveSlot); err != nil {
		return nil, err
	}
	if err := e.setup(ctx, liveSlot); err != nil {
		return nil, err
	}
	w, err := e.startWalbust(ctx, "ryw", liveSlot, e.deps)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	if err := w.waitStreaming(ctx); err != nil {
		return nil, err
	}
	client, err := cacheaside.New(e.rdb, cacheaside.Options{Wait: cacheaside.WaitOptions{Slot: liveSlot}})
	if err != nil {
		return nil, err
	}
	defer client.Close()
	for _, rate := range []int{0, 1000, 5000} {
		ph := rywPhase{Name: "idle", TargetTPS: rate}
		if rate > 0 {
			ph.Name = strconv.Itoa(rate) + " tx/s"
		}
		e.logf("part 6: read your writes, %s for %v", ph.Name, sc.LagDuration)
		if err := rywPhaseRun(ctx, e, client, &ph); err != nil {
			return res, fmt.Errorf("part 6 %s: %w", ph.Name, err)
		}
		e.logf("part 6: %s: commit -> WaitApplied p50 %.2f ms, p99 %.2f ms, max %.2f ms (%d samples, %d timeouts; background %.0f tx/s)",
			ph.Name, ph.P50Ms, ph.P99Ms, ph.MaxMs, ph.N, ph.Timeouts, ph.AchievedTPS)
		res.Phases = append(res.Phases, ph)
	}
	return res, w.stop()
}

func rywPhaseRun(ctx context.Context, e *env, client *cacheaside.Client, ph *rywPhase) error {
	sc := e.sc
	dur := sc.LagDuration
	writers := 0
	if ph.TargetTPS > 0 {
		writers = sc.LagWriters
	}
	conns := make([]*pgx.Conn, writers+1) // the last one is the probe's
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
	probe := conns[writers]
	start := time.Now()
	deadline := start.Add(dur)
	total := int64(float64(ph.TargetTPS) * dur.Seconds())
	var seq, writes atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for _, conn := range conns[:writers] {
		g.Go(func() error {
			for {
				i := seq.Add(1) - 1
				if i >= total {
					return nil
				}
				due := start.Add(time.Duration(float64(i) / float64(ph.TargetTPS) * float64(time.Second)))
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				}
				id := i%int64(sc.Accounts) + 1
				if _, err := conn.Exec(gctx, "UPDATE accounts SET balance = balance + 1 WHERE id = $1", id); err != nil {
					return err
				}
				writes.Add(1)
			}
		})
	}
	var lags []time.Duration
	g.Go(func() error {
		for i := int64(0); time.Now().Before(deadline); i++ {
			// A distinct row from the writers' most of the time; the probe
			// is one more writer whose own commit it waits for.
			id := int64(sc.Accounts) - i%100
			if _, err := probe.Exec(gctx, "UPDATE accounts SET balance = balance + 1 WHERE id = $1", id); err != nil {
				return err
			}
			committed := time.Now()
			var text string
			if err := probe.QueryRow(gctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&text); err != nil {
				return err
			}
			lsn, err := wal.ParseLSN(text)
			if err != nil {
				return err
			}
			wctx, cancel := context.WithTimeout(gctx, 5*time.Second)
			err = client.WaitApplied(wctx, lsn)
			cancel()
			if err != nil {
				if gctx.Err() != nil {
					return gctx.Err()
				}
				ph.Timeouts++
				continue
			}
			lags = append(lags, time.Since(committed))
			time.Sleep(20 * time.Millisecond)
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return err
	}
	ph.AchievedTPS = float64(writes.Load()) / time.Since(start).Seconds()
	ph.latencyStats = stats(lags)
	return nil
}

// rywRows are part 6's lines of the table.
func rywRows(r *rywResult) [][]string {
	var rows [][]string
	for i, ph := range r.Phases {
		part := ""
		if i == 0 {
			part = "6 ryw"
		}
		rows = append(rows, []string{part, fmt.Sprintf("commit -> WaitApplied, %s (bg %.0f tx/s), p50 / p99 / max ms", ph.Name, ph.AchievedTPS),
			fmt.Sprintf("%.2f / %.2f / %.2f", ph.P50Ms, ph.P99Ms, ph.MaxMs), fmt.Sprintf("%d samples", ph.N), fmt.Sprintf("%d timeouts", ph.Timeouts)})
	}
	return rows
}

// rywEvaluate adds part 6's targets.
func rywEvaluate(r *results, ts []target) []target {
	for _, rate := range []int{0, 5000} {
		name := "read-your-writes p99, idle"
		if rate > 0 {
			name = fmt.Sprintf("read-your-writes p99 at %d tx/s", rate)
		}
		limit := rywTargets[rate]
		var ph *rywPhase
		if r.RYW != nil {
			for i := range r.RYW.Phases {
				if r.RYW.Phases[i].TargetTPS == rate {
					ph = &r.RYW.Phases[i]
				}
			}
		}
		if ph == nil {
			ts = append(ts, target{name, fmt.Sprintf("< %.0f ms", limit), "-", "not run"})
			continue
		}
		measured := fmt.Sprintf("p99 %.1f ms (p50 %.1f, max %.1f; %d samples, %d timeouts; bg %.0f tx/s)", ph.P99Ms, ph.P50Ms, ph.MaxMs, ph.N, ph.Timeouts, ph.AchievedTPS)
		ts = append(ts, target{name, fmt.Sprintf("< %.0f ms", limit), measured, verdict(ph.N > 0 && ph.Timeouts == 0 && ph.P99Ms < limit)})
	}
	return ts
}
