// Command bench measures walbust against the physical limit and the usual
// alternative, side by side in one run:
//
//  1. backlog drain: walbust (every invalidation applied to Redis) against
//     pg_recvlogical reading a copy of the same slot to /dev/null;
//  2. live lag: commit acknowledgement to key gone, at fixed rates and flat out;
//  3. cost to writers: pgbench UPDATE rate with no slot, with walbust
//     consuming, and with a pg_notify trigger plus a listener;
//  4. memory: walbust's peak RSS draining and on one huge transaction;
//  5. scale-out: one backlog drained against a Redis Cluster and
//     against one redis-server, and by two shards side by side;
//  6. read your writes: commit to cacheaside WaitApplied returning, idle
//     and at 1k and 5k tx/s.
//  7. patterns: one backlog drained with direct keys, a lookup, an
//     unindexed and an indexed pattern, Redis holding a million other
//     keys, and each one's live lag (-phases patterns: about a minute).
//
// It starts its own throwaway Postgres and redis-server (Debian binaries),
// builds walbust, prints a table, optionally writes JSON, and removes
// everything it started on exit, including on Ctrl-C.
//
//	go run ./cmd/walbust-bench                      # quick: about 3-4 minutes
//	go run ./cmd/walbust-bench -scale full -json bench.json
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// scale is every size and duration the bench uses.
type scale struct {
	Name           string        `json:"name"`
	Accounts       int           `json:"accounts"`
	Orders         int           `json:"orders"`
	SingleTxs      int           `json:"single_row_txs"`
	BigTxs         int           `json:"big_txs"`
	BigTxRows      int           `json:"big_tx_rows"`
	DrainRuns      int           `json:"drain_runs"`
	LagRates       []int         `json:"lag_rates"` // 0: flat out
	LagDuration    time.Duration `json:"lag_duration_ns"`
	LagWriters     int           `json:"lag_writers"`
	WriterDuration time.Duration `json:"writer_duration_ns"`
	WriterRuns     int           `json:"writer_runs"`
	WriterClients  int           `json:"writer_clients"`
	MemRows        int           `json:"mem_rows"`
	MemCollapse    bool          `json:"mem_collapse"`
	ClusterTxs     int           `json:"cluster_txs"`  // part 5's backlog
	ClusterRuns    int           `json:"cluster_runs"` // part 5's drains per configuration
	// Part 6.
	PatternTxs         int           `json:"pattern_txs"`
	PatternRuns        int           `json:"pattern_runs"`
	PatternFiller      int           `json:"pattern_filler_keys"`
	PatternLagRate     int           `json:"pattern_lag_rate"`
	PatternLagDuration time.Duration `json:"pattern_lag_duration_ns"`
}

var scales = map[string]scale{
	"quick": {Name: "quick", Accounts: 20000, SingleTxs: 20000, BigTxs: 5, BigTxRows: 10000, DrainRuns: 1,
		LagRates: []int{1000, 5000, 0}, LagDuration: 8 * time.Second, LagWriters: 8,
		WriterDuration: 8 * time.Second, WriterRuns: 1, WriterClients: 4, MemRows: 200000, MemCollapse: true, ClusterTxs: 150000, ClusterRuns: 3,
		PatternTxs: 20000, PatternRuns: 3, PatternFiller: 1000000, PatternLagRate: 200, PatternLagDuration: 4 * time.Second},
	// The full sizes: 200k single-row transactions, 10 of 100k rows, a
	// million-row transaction.
	"full": {Name: "full", Accounts: 100000, SingleTxs: 200000, BigTxs: 10, BigTxRows: 100000, DrainRuns: 3,
		LagRates: []int{1000, 5000, 0}, LagDuration: 20 * time.Second, LagWriters: 8,
		WriterDuration: 15 * time.Second, WriterRuns: 3, WriterClients: 4, MemRows: 1000000, MemCollapse: true, ClusterTxs: 400000, ClusterRuns: 3,
		PatternTxs: 20000, PatternRuns: 5, PatternFiller: 1000000, PatternLagRate: 500, PatternLagDuration: 10 * time.Second},
}

var allPhases = []string{"drain", "writers", "lag", "memory", "cluster", "ryw", "patterns"}

func main() { os.Exit(run()) }

func run() int {
	scaleName := flag.String("scale", "quick", "quick (about 3-4 minutes) or full (the design sizes)")
	jsonPath := flag.String("json", "", "also write the results as JSON to this file")
	binary := flag.String("walbust", "", "walbust binary to test (default: go build ./cmd/walbust into the work directory)")
	phases := flag.String("phases", strings.Join(allPhases, ","), "parts to run: drain (1 and 4a), writers (3), lag (2), memory (4b), cluster (5), ryw (6), patterns (7)")
	accounts := flag.Int("accounts", 0, "rows in accounts (0: the scale's)")
	singleTxs := flag.Int("single-txs", 0, "single-row transactions in the backlog (0: the scale's)")
	bigTxs := flag.Int("big-txs", 0, "big transactions in the backlog (0: the scale's)")
	bigTxRows := flag.Int("big-tx-rows", 0, "rows per big transaction (0: the scale's)")
	drainRuns := flag.Int("drain-runs", 0, "backlog drains per side, alternating which goes first (0: the scale's)")
	lagRates := flag.String("lag-rates", "", `comma-separated writer rates in tx/s for part 2, "max" for flat out (default: 1000,5000,max)`)
	lagDuration := flag.Duration("lag-duration", 0, "duration of each part 2 rate (0: the scale's)")
	lagWriters := flag.Int("lag-writers", 0, "writer connections in part 2 (0: the scale's)")
	writerDuration := flag.Duration("writer-duration", 0, "pgbench -T of each part 3 run (0: the scale's)")
	writerRuns := flag.Int("writer-runs", 0, "part 3 runs of each configuration (0: the scale's)")
	writerClients := flag.Int("writer-clients", 0, "pgbench clients in part 3 (0: the scale's)")
	memRows := flag.Int("mem-rows", 0, "rows in part 4's single transaction (0: the scale's)")
	noCollapse := flag.Bool("no-collapse", false, "part 4: skip the on_truncate (collapsed) variant")
	clusterTxs := flag.Int("cluster-txs", 0, "single-row transactions in part 5's backlog (0: the scale's)")
	clusterRuns := flag.Int("cluster-runs", 0, "part 5 drains of each configuration, rotating which goes first (0: the scale's)")
	patternRuns := flag.Int("pattern-runs", 0, "part 6 drains of each variant, rotating which goes first (0: the scale's)")
	keep := flag.Bool("keep", false, "keep the work directory (walbust logs, configs) instead of removing it")
	flag.Parse()

	sc, ok := scales[*scaleName]
	if !ok {
		fmt.Fprintf(os.Stderr, "bench: unknown -scale %q (quick or full)\n", *scaleName)
		return 2
	}
	set := func(dst *int, v int) {
		if v > 0 {
			*dst = v
		}
	}
	set(&sc.Accounts, *accounts)
	set(&sc.SingleTxs, *singleTxs)
	set(&sc.BigTxs, *bigTxs)
	set(&sc.BigTxRows, *bigTxRows)
	set(&sc.DrainRuns, *drainRuns)
	set(&sc.LagWriters, *lagWriters)
	set(&sc.WriterRuns, *writerRuns)
	set(&sc.WriterClients, *writerClients)
	set(&sc.MemRows, *memRows)
	set(&sc.ClusterTxs, *clusterTxs)
	set(&sc.ClusterRuns, *clusterRuns)
	set(&sc.PatternRuns, *patternRuns)
	if *lagDuration > 0 {
		sc.LagDuration = *lagDuration
	}
	if *writerDuration > 0 {
		sc.WriterDuration = *writerDuration
	}
	if *noCollapse {
		sc.MemCollapse = false
	}
	if *lagRates != "" {
		sc.LagRates = nil
		for _, f := range strings.Split(*lagRates, ",") {
			f = strings.TrimSpace(f)
			if f == "max" {
				sc.LagRates = append(sc.LagRates, 0)
				continue
			}
			n, err := strconv.Atoi(f)
			if err != nil || n <= 0 {
				fmt.Fprintf(os.Stderr, "bench: -lag-rates: %q is not a positive rate or max\n", f)
				return 2
			}
			sc.LagRates = append(sc.LagRates, n)
		}
	}
	if sc.WriterDuration < time.Second {
		fmt.Fprintln(os.Stderr, "bench: -writer-duration must be at least 1s")
		return 2
	}
	sc.Orders = max(sc.BigTxs*sc.BigTxRows, sc.MemRows, 1)
	selected := map[string]bool{}
	for _, p := range strings.Split(*phases, ",") {
		p = strings.TrimSpace(p)
		if !slices.Contains(allPhases, p) {
			fmt.Fprintf(os.Stderr, "bench: -phases: unknown part %q (%s)\n", p, strings.Join(allPhases, ", "))
			return 2
		}
		selected[p] = true
	}

	// The first Ctrl-C cancels ctx: every part stops, and the deferred
	// cleanup stops walbust, Postgres and Redis and removes their files.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	began := time.Now()
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(began).Seconds(), fmt.Sprintf(format, args...))
	}
	res := &results{Command: shellJoin(os.Args), Started: began.UTC(), Scale: sc}
	res.Machine.LoadAvgStart = loadAvg()
	e, err := newEnv(ctx, sc, *binary, *keep, logf)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer func() {
		logf("cleaning up")
		e.close()
	}()
	res.Machine.fill(ctx, e)

	type part struct {
		name string
		run  func() error
	}
	parts := []part{
		{"drain", func() (err error) { res.Drain, err = runDrain(ctx, e); return }},
		{"writers", func() (err error) { res.Writers, err = runWritersCost(ctx, e); return }},
		{"lag", func() (err error) { res.Lag, err = runLag(ctx, e); return }},
		{"memory", func() (err error) { res.Memory, err = runMemory(ctx, e); return }},
		{"cluster", func() (err error) { res.Cluster, err = runCluster(ctx, e); return }},
		{"ryw", func() (err error) { res.RYW, err = runRYW(ctx, e); return }},
		{"patterns", func() (err error) { res.Patterns, err = runPatterns(ctx, e); return }},
	}
	for _, p := range parts {
		if !selected[p.name] {
			continue
		}
		if err := p.run(); err != nil {
			if ctx.Err() != nil {
				logf("interrupted")
				return 1
			}
			logf("%s failed: %v", p.name, err)
			res.Errors = append(res.Errors, fmt.Sprintf("%s: %v", p.name, err))
		}
	}
	res.Seconds = time.Since(began).Seconds()
	res.Machine.LoadAvgEnd = loadAvg()
	res.Targets = evaluate(res)
	printTable(os.Stdout, res)
	if *jsonPath != "" {
		b, err := json.MarshalIndent(res, "", "  ")
		if err == nil {
			err = os.WriteFile(*jsonPath, append(b, '\n'), 0o644)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: write JSON:", err)
			return 1
		}
		logf("wrote %s", *jsonPath)
	}
	if len(res.Errors) > 0 {
		return 1
	}
	return 0
}

func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'$\\*?") {
			a = strconv.Quote(a)
		}
		out[i] = a
	}
	if len(out) > 0 && strings.Contains(out[0], "go-build") {
		out[0] = "go run ./cmd/walbust-bench"
	}
	return strings.Join(out, " ")
}
