// Command consistency measures what cache-aside readers see while walbust
// invalidates: a PostgreSQL primary and a lagging streaming replica, Redis,
// and the walbust binary; writers update rows with plain SQL; readers,
// half of them on the replica, run side by side in two modes:
//
//	(a) the textbook reader (GET; on a miss read the database and SET), walbust deleting;
//	(b) the cacheaside client, walbust fencing.
//
// The readers of mode (b) are fleets in Go (cacheaside), Python
// (clients/python, walbust_cache) and Node (clients/node, walbust-cache),
// reading the same keys at the same time; the Python and Node readers are
// processes reporting their reads as JSON lines (fleet.go). -langs picks
// the languages.
//
// walbust is killed with SIGKILL mid-run and restarted. After the writers
// stop and walbust and the replica have caught up, every cached key is
// compared with the database. See `make consistency`; a short run is part
// of `go test ./cmd/walbust-consistency`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	cfg := defaultConfig()
	flag.DurationVar(&cfg.Duration, "duration", cfg.Duration, "write for at least this long")
	flag.Int64Var(&cfg.Reads, "reads", cfg.Reads, "and until mode (b) has served this many reads, all languages together (0: -duration alone)")
	flag.Int64Var(&cfg.LangReads, "lang-reads", cfg.LangReads, "and until each language's fenced readers have served this many reads (0: no such bound)")
	langList := flag.String("langs", strings.Join(cfg.Langs, ","), "the fenced readers' languages, comma-separated: go, python, node")
	flag.IntVar(&cfg.Procs, "procs", cfg.Procs, "Python and Node: reader processes per group (the group's -readers split among them)")
	flag.StringVar(&cfg.Python, "python", cfg.Python, "the Python readers' interpreter (needs redis-py: Debian's python3-redis)")
	flag.StringVar(&cfg.Node, "node", cfg.Node, "node, for the Node readers (clients/node is built with npm when its dist/ is missing or old)")
	flag.DurationVar(&cfg.MaxDuration, "max-duration", cfg.MaxDuration, "stop writing after this long whatever the reads")
	flag.IntVar(&cfg.Rows, "rows", cfg.Rows, "rows per table (keys per key space)")
	flag.IntVar(&cfg.Writers, "writers", cfg.Writers, "writer goroutines")
	flag.IntVar(&cfg.WriteRate, "write-rate", cfg.WriteRate, "transactions per second, all writers together")
	flag.IntVar(&cfg.Readers, "readers", cfg.Readers, "readers in each group (two groups of mode (a), two per language of mode (b))")
	flag.DurationVar(&cfg.ApplyDelay, "apply-delay", cfg.ApplyDelay, "the replica's recovery_min_apply_delay (its lag)")
	flag.DurationVar(&cfg.WaitMax, "wait-max", cfg.WaitMax, "replicas.wait_max in walbust.yaml")
	flag.DurationVar(&cfg.Stall, "stall", cfg.Stall, "longest pause of a reader between database read and cache write (1 read in 10)")
	flag.DurationVar(&cfg.KillAt, "kill-at", cfg.KillAt, "kill -9 walbust this long into the run and restart it (0: never)")
	flag.DurationVar(&cfg.Headline, "window", cfg.Headline, "the M of \"N nines consistent after M ms\" (one of 0,10ms,100ms,1s,5s)")
	flag.StringVar(&cfg.Binary, "binary", "", "walbust binary to test (default: build ./cmd/walbust)")
	flag.BoolVar(&cfg.Keep, "keep", false, "keep the work directory (config, deps.yaml, walbust.log)")
	flag.Parse()
	var err error
	if cfg.Langs, err = parseLangs(*langList); err != nil {
		fmt.Fprintln(os.Stderr, "consistency: -langs:", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	rep, err := run(ctx, cfg, logf)
	if err != nil {
		fmt.Fprintln(os.Stderr, "consistency:", err)
		os.Exit(1)
	}
	rep.print(os.Stdout)
	failures, notes := rep.verdict()
	for _, n := range notes {
		fmt.Println("note:", n)
	}
	for _, f := range failures {
		fmt.Println("FAIL:", f)
	}
	if len(failures) > 0 {
		os.Exit(1)
	}
}

func defaultConfig() config {
	return config{
		Duration:    60 * time.Second,
		Reads:       1_000_000,
		MaxDuration: 10 * time.Minute,
		Rows:        100,
		Writers:     4,
		WriteRate:   400,
		Readers:     8,
		Langs:       append([]string(nil), langs...),
		Procs:       2,
		Python:      pythonDefault(),
		Node:        "node",
		LangReads:   300_000,
		ApplyDelay:  500 * time.Millisecond,
		WaitMax:     5 * time.Second,
		Stall:       20 * time.Millisecond,
		KillAt:      20 * time.Second,
		Windows:     []time.Duration{0, 10 * time.Millisecond, 100 * time.Millisecond, time.Second, 5 * time.Second},
		Headline:    time.Second,
	}
}

// pythonDefault is $PYTHON, as the Makefile passes it, else Debian's interpreter.
func pythonDefault() string {
	if p := os.Getenv("PYTHON"); p != "" {
		return p
	}
	return "/usr/bin/python3"
}
