package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"strings"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

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

// The configuration groups each command uses: its -h lists their flags and
// no others.
var commandGroups = map[string]config.Group{
	"run":      config.GroupAll,
	"setup":    config.GroupPostgres | config.GroupSlot | config.GroupDeps | config.GroupShard,
	"teardown": config.GroupPostgres | config.GroupSlot | config.GroupDeps | config.GroupShard,
	"validate": config.GroupPostgres | config.GroupSlot | config.GroupRedis | config.GroupRedisExtra | config.GroupDeps | config.GroupCheckpoint | config.GroupShard,
	"explain":  config.GroupPostgres | config.GroupDeps,
	"status":   config.GroupPostgres | config.GroupSlot | config.GroupCheckpoint | config.GroupListen | config.GroupShard,
	"init":     config.GroupPostgres | config.GroupSlot | config.GroupRedis | config.GroupCheckpoint | config.GroupListen,
	"wait":     config.GroupSlot | config.GroupRedis | config.GroupRedisExtra | config.GroupShard,
	"audit":    config.GroupRedis | config.GroupRedisExtra | config.GroupDeps,
	// shadow's --deps is the candidate: the running deps.yaml is the
	// config's (file or WALBUST_DEPS), so it takes no GroupDeps flag.
	"shadow": config.GroupPostgres | config.GroupSlot | config.GroupRedis | config.GroupRedisExtra | config.GroupShard,
}

// flagSet is a command's flag set with its configuration flags on it; the
// usage line goes above the flags in -h.
type flagSet struct {
	*flag.FlagSet
	loader *config.Loader
	groups config.Group
}

// newFlags returns a command's flag set with its configuration flags on it.
// usage is the command's synopsis and description, printed above them.
func newFlags(name, usage string, stderr io.Writer) *flagSet {
	fs := flag.NewFlagSet("walbust "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	groups := commandGroups[name]
	f := &flagSet{FlagSet: fs, loader: config.NewLoaderFor(fs, groups), groups: groups}
	if name != "init" {
		f.loader.Discover()
	}
	fs.Usage = func() {
		fmt.Fprint(stderr, strings.TrimRight(usage, "\n")+"\n\nFlags (a flag wins over its environment variable, which wins over walbust.yaml):\n")
		fs.PrintDefaults()
	}
	return f
}

// load parses a command's flags, the config and the registry. Any problem
// here is the operator's to fix, so it is a usageError (exit 2).
func load(name, usage string, args []string, stderr io.Writer) (*loaded, error) {
	return loadWith(newFlags(name, usage, stderr), args, stderr)
}

// parseFlags parses args, refusing arguments that are not flags.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		if b, ok := boolFlagBefore(fs, args); ok {
			return usageError{fmt.Errorf("unexpected arguments: %s (--%s is a boolean flag: write --%s or --%s=%s)",
				strings.Join(fs.Args(), " "), b, b, b, fs.Arg(0))}
		}
		return usageError{fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))}
	}
	return nil
}

// boolFlagBefore reports the boolean flag that the first leftover argument
// ("true" or "false") was meant for: `--json true` ends the flags at "true".
func boolFlagBefore(fs *flag.FlagSet, args []string) (string, bool) {
	rest := fs.Args()
	if v := rest[0]; v != "true" && v != "false" {
		return "", false
	}
	i := len(args) - len(rest) - 1
	if i < 0 {
		return "", false
	}
	name := strings.TrimLeft(args[i], "-")
	f := fs.Lookup(name)
	if f == nil {
		return "", false
	}
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
		return name, true
	}
	return "", false
}

func loadWith(fs *flagSet, args []string, stderr io.Writer) (*loaded, error) {
	if err := parseFlags(fs.FlagSet, args); err != nil {
		return nil, err
	}
	cfg, err := fs.loader.Load(os.LookupEnv)
	if err != nil {
		return nil, usageError{fmt.Errorf("config: %w", err)}
	}
	log, err := newLogger(cfg.Log, stderr)
	if err != nil {
		return nil, usageError{err}
	}
	for _, w := range fs.loader.Warnings() {
		log.Warn(w)
	}
	l := &loaded{cfg: cfg, log: log}
	if fs.groups&config.GroupDeps == 0 {
		return l, nil // the command reads no deps.yaml
	}
	if l.reg, err = daemon.LoadRegistry(cfg); err != nil {
		if fs.loader.File() == "" && errors.Is(err, iofs.ErrNotExist) {
			return nil, usageError{noConfigError(cfg.Deps)}
		}
		return nil, usageError{err}
	}
	return l, nil
}

// noConfigError is what a command says when it was given no configuration
// at all: no walbust.yaml, and no deps.yaml where the defaults point.
func noConfigError(deps string) error {
	wd, err := os.Getwd()
	if err != nil {
		wd = "the current directory"
	}
	return fmt.Errorf("no configuration found: no --config flag, WALBUST_CONFIG is not set, and there is no %s in %s "+
		"(and no %s for deps.yaml either).\n"+
		"Write both for your database with `walbust init --postgres-url postgres://USER@HOST:5432/DB` (see docs/init.md), "+
		"or name your walbust.yaml with --config PATH or WALBUST_CONFIG=PATH",
		config.DefaultFile, wd, deps)
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
