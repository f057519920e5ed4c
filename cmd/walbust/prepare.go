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

	"github.com/walbust/walbust/config"
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
	reg, err := mapping.Load(cfg.Deps)
	if err != nil {
		return nil, usageError{fmt.Errorf("deps registry:\n%w", err)}
	}
	return &loaded{cfg: cfg, reg: reg, log: log}, nil
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

func closeQuietly(ctx context.Context, c interface{ Close(context.Context) error }) {
	_ = c.Close(context.WithoutCancel(ctx))
}
