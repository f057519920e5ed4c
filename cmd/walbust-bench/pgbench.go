package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// pgbenchResult is what pgbench reported.
type pgbenchResult struct {
	Transactions int64   // transactions actually processed
	TPS          float64 // without initial connection time
}

var (
	pgbenchProcessed = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	pgbenchTPS       = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)
	pgbenchFailed    = regexp.MustCompile(`number of failed transactions: (\d+)`)
)

// pgbench runs pgbench against the bench database with the given scripts
// (file name -> body, written to the work directory; a "@weight" suffix in
// the name is passed through) and extra arguments. pgOptions goes to
// PGOPTIONS, e.g. "-c synchronous_commit=off".
func (e *env) pgbench(ctx context.Context, scripts []script, pgOptions string, args ...string) (pgbenchResult, error) {
	var res pgbenchResult
	argv := []string{"-n", "-M", "prepared", "-h", "127.0.0.1", "-p", strconv.Itoa(e.pg.Port()), "-U", "postgres"}
	for _, s := range scripts {
		path := filepath.Join(e.work, s.name+".sql")
		if err := os.WriteFile(path, []byte(s.body), 0o644); err != nil {
			return res, err
		}
		f := path
		if s.weight > 0 {
			f += "@" + strconv.Itoa(s.weight)
		}
		argv = append(argv, "-f", f)
	}
	argv = append(argv, args...)
	argv = append(argv, dbName)
	cmd := exec.CommandContext(ctx, e.pg.Bin("pgbench"), argv...)
	cmd.Env = append(os.Environ(), "PGOPTIONS="+pgOptions)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return res, fmt.Errorf("pgbench %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	m := pgbenchProcessed.FindSubmatch(out)
	t := pgbenchTPS.FindSubmatch(out)
	if m == nil || t == nil {
		return res, fmt.Errorf("cannot read pgbench's output:\n%s", out)
	}
	if f := pgbenchFailed.FindSubmatch(out); f != nil && string(f[1]) != "0" {
		return res, fmt.Errorf("pgbench: %s failed transactions:\n%s", f[1], out)
	}
	res.Transactions, _ = strconv.ParseInt(string(m[1]), 10, 64)
	res.TPS, _ = strconv.ParseFloat(string(t[1]), 64)
	return res, nil
}

type script struct {
	name   string
	body   string
	weight int // 0: no weight
}
