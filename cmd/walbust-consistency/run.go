package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// config is one harness run.
type config struct {
	Duration    time.Duration   // at least this long of writes
	Reads       int64           // and until mode (b) has read this often (0: Duration alone)
	MaxDuration time.Duration   // but never longer than this
	Rows        int             // rows per table (hot keys per key space)
	Writers     int             // writer goroutines
	WriteRate   int             // transactions per second, all writers together
	Readers     int             // reader goroutines per group (four groups)
	ApplyDelay  time.Duration   // the replica's recovery_min_apply_delay
	WaitMax     time.Duration   // replicas.wait_max given to walbust
	Stall       time.Duration   // longest pause between a database read and the cache write (1 in 10)
	KillAt      time.Duration   // kill -9 walbust this long into the writes and restart it (0: never)
	Windows     []time.Duration // stale-read windows reported
	Headline    time.Duration   // the window of the "N nines after M ms" line
	Binary      string          // a built walbust; empty: build one
	Keep        bool            // keep the work directory (config, logs)
}

// run performs one harness run and reports it.
func run(ctx context.Context, cfg config, logf func(string, ...any)) (*report, error) {
	e, err := newEnv(ctx, cfg, logf)
	if err != nil {
		return nil, err
	}
	defer e.close()
	if err := e.startWalbust(ctx); err != nil {
		return nil, err
	}
	w, err := newWorkload(e)
	if err != nil {
		return nil, err
	}
	defer w.close()

	var stopW, stopR atomic.Bool
	var wgW, wgR sync.WaitGroup
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	logf("writing %d tx/s over %d rows; %d readers in each of 4 groups", cfg.WriteRate, cfg.Rows, cfg.Readers)
	start := time.Now()
	w.readers(wctx, &stopR, &wgR)
	w.writers(wctx, &stopW, &wgW)
	stopAll := func() {
		stopW.Store(true)
		stopR.Store(true)
		wgW.Wait()
		wgR.Wait()
	}

	rep := &report{cfg: cfg}
	lastLog := start
	for {
		elapsed := time.Since(start)
		if cfg.KillAt > 0 && rep.kills == 0 && elapsed >= cfg.KillAt {
			logf("kill -9 walbust after %.1fs of writes", elapsed.Seconds())
			killed := time.Now()
			if err := e.killWalbust(); err != nil {
				stopAll()
				return nil, err
			}
			if err := e.startWalbust(ctx); err != nil {
				stopAll()
				return nil, fmt.Errorf("restart after kill -9: %w", err)
			}
			rep.kills++
			rep.downtime = time.Since(killed)
			logf("walbust streaming again after %v", rep.downtime.Round(time.Millisecond))
		}
		if err := e.walbustExited(); err != nil {
			stopAll()
			return nil, err
		}
		reads := w.modeReads('b')
		if elapsed >= cfg.MaxDuration || elapsed >= cfg.Duration && (cfg.Reads == 0 || reads >= cfg.Reads) {
			break
		}
		if time.Since(lastLog) >= 10*time.Second {
			logf("%.0fs: %d writes, %d reads in mode (a), %d in mode (b)", elapsed.Seconds(), w.writes.Load(), w.modeReads('a'), reads)
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			stopAll()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	stopW.Store(true)
	wgW.Wait()
	rep.duration = time.Since(start)
	// Readers go on serving while walbust and the replica catch up: that is
	// when the races leave (or do not leave) their stale entries.
	logf("writers stopped; waiting for walbust and the replica to catch up")
	settle, err := e.settle(ctx, time.Minute+cfg.WaitMax)
	if err != nil {
		stopR.Store(true)
		wgR.Wait()
		return nil, err
	}
	rep.settle = settle
	stopR.Store(true)
	wgR.Wait()

	rep.writes, rep.writeErrors = w.writes.Load(), w.wErrors.Load()
	if s, ok := w.firstWE.Load().(string); ok {
		rep.firstWriteError = s
	}
	for _, g := range w.groups {
		gr := groupReport{name: g.name, mode: g.mode, replica: g.replica, reads: g.reads.Load(), errors: g.errors.Load(),
			invisibleReads: g.invisible.Load()}
		for k := range cfg.Windows {
			gr.stale = append(gr.stale, g.stale[k].Load())
		}
		if gr.cached, gr.staleKeys, gr.invisible, gr.examples, err = w.staleKeys(ctx, g); err != nil {
			return nil, err
		}
		for _, c := range g.clients {
			st := c.Stats()
			gr.fillsLost += st.FillsLost
			gr.loads += st.Loads
		}
		rep.groups = append(rep.groups, gr)
	}
	return rep, nil
}
