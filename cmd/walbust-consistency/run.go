package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/walbust/walbust/internal/gomod"
)

// config is one harness run.
type config struct {
	Duration    time.Duration   // at least this long of writes
	Reads       int64           // and until mode (b) has read this often, all languages together (0: Duration alone)
	LangReads   int64           // and until each language's fenced readers have read this often (0: no such bound)
	MaxDuration time.Duration   // but never longer than this
	Rows        int             // rows per table (hot keys per key space)
	Writers     int             // writer goroutines
	WriteRate   int             // transactions per second, all writers together
	Readers     int             // readers per group (two groups of mode (a), two per language of mode (b))
	Langs       []string        // the fenced readers' languages: go, python, node
	Procs       int             // Python and Node: processes per group (the group's readers split among them)
	Python      string          // the interpreter of the Python readers (with redis-py)
	Node        string          // node, for the Node readers
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
	if len(cfg.Langs) == 0 {
		return nil, errors.New("no reader language chosen")
	}
	cfg.Procs = max(cfg.Procs, 1)
	root, err := gomod.Root(ctx, "go run ./cmd/walbust-consistency")
	if err != nil {
		return nil, err
	}
	// Before any server starts: a missing python3-redis or Node build fails at once.
	if err := preflight(ctx, cfg, root, logf); err != nil {
		return nil, err
	}
	e, err := newEnv(ctx, cfg, root, logf)
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
	if err := w.startProcs(ctx); err != nil {
		return nil, err
	}

	var stopW, stopR atomic.Bool
	var wgW, wgR sync.WaitGroup
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	logf("writing %d tx/s over %d rows; %d readers in each of %d groups (fenced readers in %s, over the same keys)",
		cfg.WriteRate, cfg.Rows, cfg.Readers, len(w.groups), strings.Join(cfg.Langs, ", "))
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
		if err := w.procsExited(); err != nil {
			stopAll()
			return nil, err
		}
		reads := w.modeReads('b')
		if elapsed >= cfg.MaxDuration || elapsed >= cfg.Duration && (cfg.Reads == 0 || reads >= cfg.Reads) &&
			(cfg.LangReads == 0 || w.langReads() >= cfg.LangReads) {
			break
		}
		if time.Since(lastLog) >= 10*time.Second {
			logf("%.0fs: %d writes, %d reads in mode (a), %d in mode (b) (%s)", elapsed.Seconds(), w.writes.Load(), w.modeReads('a'), reads, w.perLang())
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
	if err := w.stopProcs(); err != nil {
		return nil, err
	}

	rep.writes, rep.writeErrors = w.writes.Load(), w.wErrors.Load()
	if s, ok := w.firstWE.Load().(string); ok {
		rep.firstWriteError = s
	}
	type space struct {
		mode    byte
		replica bool
		prefix  string
	}
	counts := map[space]map[string]*keyCount{}
	for _, g := range w.groups {
		sp := space{g.mode, g.replica, g.prefix}
		if counts[sp] == nil {
			if counts[sp], err = w.staleKeys(ctx, g.mode, g.replica, g.prefix, g.table); err != nil {
				return nil, err
			}
		}
	}
	for _, g := range w.groups {
		gr := groupReport{name: g.name, mode: g.mode, lang: g.lang, replica: g.replica, reads: g.reads.Load(), errors: g.errors.Load(),
			invisibleReads: g.invisible.Load()}
		for k := range cfg.Windows {
			gr.stale = append(gr.stale, g.stale[k].Load())
		}
		if kc := counts[space{g.mode, g.replica, g.prefix}][g.lang]; kc != nil {
			gr.cached, gr.staleKeys, gr.invisible, gr.examples = kc.cached, kc.stale, kc.invisible, kc.examples
		}
		for _, c := range g.clients {
			st := c.Stats()
			gr.fillsLost += st.FillsLost
			gr.loads += st.Loads
		}
		for _, p := range w.stopped {
			if p.g != g {
				continue
			}
			if p.stats != nil {
				gr.fillsLost += p.stats.FillsLost
				gr.loads += p.stats.Loads
			}
			if gr.firstError == "" {
				gr.firstError = p.firstErr
			}
		}
		rep.groups = append(rep.groups, gr)
	}
	// Keys filled by no reader of this run, or with a payload of no language.
	for sp, m := range counts {
		for by, kc := range m {
			known := sp.mode == 'a' && by == ""
			for _, l := range cfg.Langs {
				known = known || sp.mode == 'b' && by == l
			}
			if !known {
				rep.unattributed = append(rep.unattributed, fmt.Sprintf("%d keys under %s filled by %q (%d stale) %v", kc.cached, sp.prefix, by, kc.stale, kc.examples))
			}
		}
	}
	return rep, nil
}
