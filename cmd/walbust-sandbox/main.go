// Command walbust-sandbox starts a throwaway PostgreSQL (a database with
// your schema applied), a throwaway Redis (standalone or a 3-master Redis
// Cluster) and walbust streaming between them, waits until walbust is ready,
// and prints how to reach them as KEY=VALUE lines on stdout. It is meant for
// the test suites of cache clients in other languages: start it, read the
// lines (or wait for --env-file), test against real servers, stop it.
//
//	go run ./cmd/walbust-sandbox --schema schema.sql --deps deps.yaml [--redis standalone|cluster] [--env-file PATH] [--replica]
//
// It runs until SIGINT or SIGTERM, until its stdin (when a pipe or socket)
// reaches end of file, or until its parent process exits; then it stops
// walbust with SIGTERM, stops the servers and removes every file it made.
// See docs/sandbox.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/walbust/walbust/internal/gomod"
)

// options are the command line.
type options struct {
	schema       string
	deps         string
	redisMode    string
	envFile      string
	replica      bool
	replicaDelay time.Duration
	database     string
	walbust      string // a prebuilt walbust binary; "" builds ./cmd/walbust
}

const usage = `usage: walbust-sandbox [flags]

Starts a throwaway PostgreSQL and Redis with walbust streaming between them,
prints their connection details as KEY=VALUE lines on stdout once walbust is
ready, and runs until SIGINT/SIGTERM, until stdin (a pipe or socket) is
closed, or until its parent exits. Progress goes to stderr. See docs/sandbox.md.

flags:
`

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("walbust-sandbox", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.schema, "schema", "", "SQL file applied to the new database (default: schema.sql at the repository root)")
	fs.StringVar(&o.deps, "deps", "", "deps.yaml walbust runs with (default: deps.yaml at the repository root)")
	fs.StringVar(&o.redisMode, "redis", "standalone", "standalone (one redis-server) or cluster (a Redis Cluster of 3 masters, no replicas)")
	fs.StringVar(&o.envFile, "env-file", "", "also write the KEY=VALUE lines to this file (atomically, once ready; removed on exit)")
	fs.BoolVar(&o.replica, "replica", false, "also start a streaming replica of PostgreSQL and have walbust re-fence after it (replicas.urls)")
	fs.DurationVar(&o.replicaDelay, "replica-delay", 0, "with --replica: the replica's recovery_min_apply_delay, to make it lag (e.g. 500ms)")
	fs.StringVar(&o.database, "database", "sandbox", "name of the database created for the schema")
	fs.StringVar(&o.walbust, "walbust", "", "a walbust binary to run instead of building ./cmd/walbust")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q (everything is a flag: see --help)", fs.Args())
	}
	if o.redisMode != "standalone" && o.redisMode != "cluster" {
		return nil, fmt.Errorf("--redis %q: want standalone or cluster", o.redisMode)
	}
	if o.replicaDelay < 0 {
		return nil, fmt.Errorf("--replica-delay must not be negative")
	}
	if o.replicaDelay > 0 && !o.replica {
		return nil, fmt.Errorf("--replica-delay needs --replica")
	}
	if !validDatabase(o.database) {
		return nil, fmt.Errorf("--database %q: use lower-case letters, digits and underscores, starting with a letter", o.database)
	}
	return o, nil
}

func validDatabase(s string) bool {
	if s == "" || len(s) > 63 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}

// resolve fills in the defaults that need the repository root and makes
// every path absolute (relative paths are relative to the working
// directory), checking that the files can be read before anything starts.
func (o *options) resolve(ctx context.Context) (root string, err error) {
	if o.schema == "" || o.deps == "" || o.walbust == "" {
		if root, err = gomod.Root(ctx, "go run ./cmd/walbust-sandbox (or pass --schema, --deps and --walbust)"); err != nil {
			return "", err
		}
	}
	if o.schema == "" {
		o.schema = filepath.Join(root, "schema.sql")
	}
	if o.deps == "" {
		o.deps = filepath.Join(root, "deps.yaml")
	}
	for _, p := range []*string{&o.schema, &o.deps, &o.walbust, &o.envFile} {
		if *p == "" {
			continue
		}
		if *p, err = filepath.Abs(*p); err != nil {
			return "", err
		}
	}
	for flagName, p := range map[string]string{"--schema": o.schema, "--deps": o.deps, "--walbust": o.walbust} {
		if p == "" {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			return "", fmt.Errorf("%s: %w", flagName, err)
		}
		f.Close()
	}
	if o.envFile != "" {
		if fi, err := os.Stat(filepath.Dir(o.envFile)); err != nil || !fi.IsDir() {
			return "", fmt.Errorf("--env-file %s: its directory does not exist", o.envFile)
		}
	}
	return root, nil
}

func main() {
	os.Exit(mainCode(os.Args[1:]))
}

func mainCode(args []string) int {
	o, err := parseFlags(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "walbust-sandbox:", err)
		return 2
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	stopOnSignals(ctx, cancel)
	watchStdin(cancel)
	watchParent(ctx, cancel)

	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "walbust-sandbox:", err)
		return 1
	}
	return 0
}

// errStop is the cause of a requested stop: not a failure.
var errStop = errors.New("stop requested")

// stopOnSignals ends ctx on SIGINT, SIGTERM or SIGHUP.
func stopOnSignals(ctx context.Context, cancel context.CancelCauseFunc) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		select {
		case s := <-sigs:
			progress("received %v: stopping", s)
			cancel(errStop)
		case <-ctx.Done():
		}
	}()
}

// watchStdin ends ctx when stdin, if it is a pipe or a socket, reaches end
// of file: the process on the other end (a test runner) closed it or died.
// A terminal, /dev/null or a regular file is left alone: a background job
// in a shell script gets /dev/null, and reading a terminal from the
// background would stop the process (SIGTTIN).
func watchStdin(cancel context.CancelCauseFunc) {
	fi, err := os.Stdin.Stat()
	if err != nil || fi.Mode()&(os.ModeNamedPipe|os.ModeSocket) == 0 {
		return
	}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		progress("stdin closed: stopping")
		cancel(errStop)
	}()
}

// watchParent ends ctx when the parent process exits (this process is
// re-parented), e.g. `go run` killed with SIGTERM, which does not pass the
// signal on.
func watchParent(ctx context.Context, cancel context.CancelCauseFunc) {
	parent := os.Getppid()
	go func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if os.Getppid() != parent {
					progress("parent process %d exited: stopping", parent)
					cancel(errStop)
					return
				}
			}
		}
	}()
}

// progress writes a human-readable line to stderr.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "walbust-sandbox: "+format+"\n", args...)
}
