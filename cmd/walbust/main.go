// Command walbust keeps Redis caches honest by tailing PostgreSQL logical
// replication and invalidating the keys that hold each changed row.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/walbust/walbust/internal/daemon"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `walbust keeps Redis caches honest by tailing PostgreSQL logical replication.

Usage:
  walbust init     --postgres-url URL      write a starting walbust.yaml and deps.yaml from the live schema
  walbust setup    --config walbust.yaml   create the publication and the replication slot
  walbust run      --config walbust.yaml   stream changes and invalidate cache keys
  walbust validate --config walbust.yaml   check deps.yaml against the live database
  walbust explain  --config walbust.yaml --table public.users --op update --old '{"id":1}' --new '{"id":1}'
                                           print what a row change would invalidate
  walbust status   --config walbust.yaml [--json]
                                           slot, lag, checkpoint and daemon health; exit 1 if the slot is missing or lost
                                           or the checkpoint is unusable
  walbust wait     --lsn LSN [--timeout D] wait until walbust applied every change up to LSN (read your writes)
  walbust audit    --config walbust.yaml   report Redis key families no deps.yaml rule covers
  walbust shadow   --deps candidate.yaml --duration 60s [--json]
                                           try a deps.yaml change on live traffic (a temporary slot; Redis untouched):
                                           its keys, patterns and lookups per second, and the diff against the running one
  walbust teardown --config walbust.yaml   drop the slot and the publication
  walbust version                          print the version

With shards in walbust.yaml, run one walbust per shard (--shard NAME); setup,
validate and teardown without --shard act on every shard.

Run "walbust <command> -h" for a command's flags.
`

// usageError is a mistake in how walbust was invoked or configured (exit 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal, a second one kills at once: the default
	// action, restored by stop.
	context.AfterFunc(ctx, stop)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err == nil {
		return
	}
	if !errors.Is(err, flag.ErrHelp) && !errors.Is(err, errUnhealthy) {
		fmt.Fprintln(os.Stderr, "walbust:", err)
	}
	var ue usageError
	var due daemon.UsageError
	if errors.As(err, &ue) || errors.As(err, &due) || errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	os.Exit(1)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError{errors.New("no command given")}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "init":
		return initCommand(ctx, rest, stdout, stderr)
	case "run":
		return runCommand(ctx, rest, stderr)
	case "setup":
		return setupCommand(ctx, rest, stdout, stderr)
	case "validate":
		return validateCommand(ctx, rest, stdout, stderr)
	case "explain":
		return explainCommand(ctx, rest, stdout, stderr)
	case "status":
		return statusCommand(ctx, rest, stdout, stderr)
	case "wait":
		return waitCommand(ctx, rest, stdout, stderr)
	case "audit":
		return auditCommand(ctx, rest, stdout, stderr)
	case "shadow":
		return shadowCommand(ctx, rest, stdout, stderr)
	case "teardown":
		return teardownCommand(ctx, rest, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, versionString())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return usageError{fmt.Errorf("unknown command %q", cmd)}
}
