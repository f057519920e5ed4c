package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/walbust/walbust/internal/audit"
	"github.com/walbust/walbust/internal/daemon"
	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/mapping"
)

// auditCommand scans Redis for keys no deps.yaml rule can produce (they
// live on their TTL alone) and reports them by family, apart from
// walbust's own keys. Point --redis-url at a replica to keep the scan off
// the master: the given URL is the one scanned.
func auditCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("audit", `Usage: walbust audit [--rate 1000] [--json] [--max-uncovered N]

Scans Redis (at most --rate keys per second) for key families no deps.yaml rule can produce:
walbust never invalidates them, they live on their TTL alone. Point --redis-url at a replica to
keep the scan off the master. Exit 1 when an uncovered family has more than --max-uncovered keys.`, stderr)
	rate := fs.Int("rate", 1000, "keys scanned per second at most (0: no limit)")
	asJSON := fs.Bool("json", false, "print JSON")
	maxUncovered := fs.Int64("max-uncovered", -1, "exit 1 when an uncovered family has more than this many keys (-1: never)")
	sample := fs.Int("sample", 50, "keys per uncovered family whose TTL is read (PTTL)")
	examples := fs.Int("examples", 3, "example keys shown per family")
	l, err := loadWith(fs, args, stderr)
	if err != nil {
		return err
	}
	if *rate < 0 || *sample < 1 || *examples < 1 {
		return usageError{errors.New("audit: --rate must not be negative, --sample and --examples must be positive")}
	}
	probe, err := invalidator.NewProbe(daemon.RedisOptions(l.cfg.Redis))
	if err != nil {
		return usageError{err}
	}
	defer probe.Close()
	rep, err := audit.Run(ctx, audit.Options{Client: probe.Client, Matcher: mapping.NewMatcher(l.reg), Rate: *rate, SampleTTL: *sample, Examples: *examples})
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		rep.Print(stdout)
	}
	if *maxUncovered >= 0 {
		if over := rep.Over(*maxUncovered); len(over) > 0 {
			return fmt.Errorf("audit: %d uncovered key famil(ies) over --max-uncovered %d, the largest %s with %d keys: add a rule to deps.yaml or give them a TTL",
				len(over), *maxUncovered, over[0].Shape, over[0].Count)
		}
	}
	return nil
}
