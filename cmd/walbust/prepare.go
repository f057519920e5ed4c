package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"go.uber.org/zap"

	"github.com/jackc/pgx/v5"
	"github.com/walbust/walbust/internal/config"
	"github.com/walbust/walbust/internal/daemon"
	"github.com/walbust/walbust/mapping"
)

// loaded is what every command starts from.
type loaded struct {
	cfg *config.Config
	reg *mapping.Registry
	log *zap.Logger
}

// newFlags returns a command's flag set with the configuration flags on it.
func newFlags(name string, stderr io.Writer) (*flag.FlagSet, *config.Loader) {
	fs := flag.NewFlagSet("walbust "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs, config.NewLoader(fs)
}

// load parses a command's flags, the config and the registry. Any problem
// here is the operator's to fix, so it is a usageError (exit 2).
func load(name string, args []string, stderr io.Writer) (*loaded, error) {
	fs, loader := newFlags(name, stderr)
	return loadWith(fs, loader, args, stderr)
}

func loadWith(fs *flag.FlagSet, loader *config.Loader, args []string, stderr io.Writer) (*loaded, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err}
	}
	if fs.NArg() > 0 {
		return nil, usageError{fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))}
	}
	cfg, err := loader.Load(os.LookupEnv)
	if err != nil {
		return nil, usageError{fmt.Errorf("config: %w", err)}
	}
	log, err := newLogger(cfg.Log, stderr)
	if err != nil {
		return nil, usageError{err}
	}
	for _, w := range loader.Warnings() {
		log.Warn(w)
	}
	reg, err := daemon.LoadRegistry(cfg)
	if err != nil {
		return nil, usageError{err}
	}
	return &loaded{cfg: cfg, reg: reg, log: log}, nil
}

// targets is what setup, validate and teardown act on: every shard when
// walbust.yaml defines shards and none was chosen, else l itself.
func (l *loaded) targets() ([]*loaded, error) {
	if len(l.cfg.Shards) == 0 || l.cfg.Shard != "" {
		return []*loaded{l}, nil
	}
	var out []*loaded
	for _, name := range l.cfg.ShardNames() {
		cfg, err := l.cfg.ForShard(name)
		if err != nil {
			return nil, usageError{err}
		}
		reg, err := l.reg.Only(cfg.Tables)
		if err != nil {
			return nil, usageError{fmt.Errorf("shard %s: %w", name, err)}
		}
		out = append(out, &loaded{cfg: cfg, reg: reg, log: l.log})
	}
	return out, nil
}

// requireShard: a process streams one slot, so with shards defined it must
// be told which shard it is.
func (l *loaded) requireShard(command string) error {
	if len(l.cfg.Shards) > 0 && l.cfg.Shard == "" {
		return usageError{fmt.Errorf("walbust.yaml defines shards (%s): `walbust %s` serves one of them; choose it with --shard NAME (or WALBUST_SHARD)",
			strings.Join(l.cfg.ShardNames(), ", "), command)}
	}
	return nil
}

// shardPrefix names the shard in output lines, when there is one.
func (l *loaded) shardPrefix() string {
	if l.cfg.Shard == "" {
		return ""
	}
	return "shard " + l.cfg.Shard + ": "
}

// hasQueries reports whether any rule needs the lookup pool.
func hasQueries(reg *mapping.Registry) bool {
	for _, t := range reg.Tables {
		for _, r := range t.Rules {
			if r.Query != nil {
				return true
			}
		}
	}
	return false
}

func connectSQL(ctx context.Context, url string) (*pgx.Conn, error) {
	return daemon.ConnectSQL(ctx, url)
}

func closeQuietly(ctx context.Context, c interface{ Close(context.Context) error }) {
	daemon.CloseQuietly(ctx, c)
}
