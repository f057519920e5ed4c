package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var commands = []string{"init", "setup", "validate", "explain", "run", "status", "wait", "audit", "shadow", "teardown"}

// help returns a command's -h output and the flags it lists.
func help(t *testing.T, command string) (string, []string) {
	t.Helper()
	var stdout, stderr strings.Builder
	err := run(context.Background(), []string{command, "-h"}, &stdout, &stderr)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("walbust %s -h: %v, want flag.ErrHelp (exit 2)", command, err)
	}
	var flags []string
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(stderr.String(), -1) {
		flags = append(flags, m[1])
	}
	return stderr.String(), flags
}

// Each command's -h lists its own flags only, typed and with defaults.
func TestHelpListsOnlyTheCommandsFlags(t *testing.T) {
	t.Setenv("WALBUST_CONFIG", "")
	tests := map[string]struct{ want, not []string }{
		"explain":  {want: []string{"config", "deps", "postgres-url", "table", "op", "old", "new"}, not: []string{"redis-sentinel-master", "slot", "log-level", "listen", "status-interval"}},
		"validate": {want: []string{"config", "postgres-url", "slot", "publication", "redis-url", "redis-sentinel-master", "deps", "checkpoint", "shard"}, not: []string{"log-level", "status-interval", "on-slot-loss"}},
		"status":   {want: []string{"config", "postgres-url", "slot", "checkpoint", "listen", "shard", "json"}, not: []string{"redis-url", "deps"}},
		"setup":    {want: []string{"config", "postgres-url", "slot", "publication", "deps", "shard", "print-sql"}, not: []string{"redis-url", "listen"}},
		"run":      {want: []string{"config", "postgres-url", "status-interval", "redis-sentinel-master", "log-level", "debug-pprof", "on-slot-loss"}},
		"shadow":   {want: []string{"config", "postgres-url", "publication", "redis-url", "shard", "deps", "duration", "json", "examples"}, not: []string{"checkpoint", "listen", "log-level"}},
		"init":     {want: []string{"config", "postgres-url", "slot", "redis-url", "listen", "tables", "dir", "force"}, not: []string{"deps", "redis-sentinel-master"}},
	}
	for cmd, tt := range tests {
		out, flags := help(t, cmd)
		has := map[string]bool{}
		for _, f := range flags {
			has[f] = true
		}
		for _, f := range tt.want {
			if !has[f] {
				t.Errorf("walbust %s -h lacks --%s:\n%s", cmd, f, out)
			}
		}
		for _, f := range tt.not {
			if has[f] {
				t.Errorf("walbust %s -h lists --%s, which it does not use:\n%s", cmd, f, out)
			}
		}
		if !strings.HasPrefix(out, "Usage: walbust "+cmd) {
			t.Errorf("walbust %s -h does not start with its usage line:\n%s", cmd, out)
		}
	}
	out, _ := help(t, "run")
	for _, want := range []string{"-status-interval duration", "(default 10s)", "-max-tx-changes int", "(default 100000)", `-slot string`, `(default "walbust")`} {
		if !strings.Contains(out, want) {
			t.Errorf("walbust run -h lacks %q:\n%s", want, out)
		}
	}
}

// Every flag of every command is in docs/*.md.
func TestDocsNameEveryFlag(t *testing.T) {
	t.Setenv("WALBUST_CONFIG", "")
	pages, err := filepath.Glob(filepath.Join("..", "..", "docs", "*.md"))
	if err != nil || len(pages) == 0 {
		t.Fatalf("docs/*.md: %v", err)
	}
	var docs strings.Builder
	for _, p := range pages {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		docs.Write(b)
	}
	for _, cmd := range commands {
		_, flags := help(t, cmd)
		for _, f := range flags {
			if !regexp.MustCompile(`--` + regexp.QuoteMeta(f) + `\b`).MatchString(docs.String()) {
				t.Errorf("walbust %s --%s is not in docs/*.md", cmd, f)
			}
		}
	}
}

// With no configuration at all, a command says so, where it looked and
// what to do, not that deps.yaml is missing.
func TestNoConfigurationFound(t *testing.T) {
	t.Setenv("WALBUST_CONFIG", "")
	t.Setenv("WALBUST_DEPS", "")
	os.Unsetenv("WALBUST_DEPS")
	dir := t.TempDir()
	t.Chdir(dir)
	for _, cmd := range []string{"run", "validate"} {
		var stdout, stderr strings.Builder
		err := run(context.Background(), []string{cmd}, &stdout, &stderr)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Fatalf("walbust %s without configuration: %v, want a usage error (exit 2)", cmd, err)
		}
		msg := err.Error()
		for _, want := range []string{"no configuration found", dir, "walbust.yaml", "walbust init", "--config", "WALBUST_CONFIG"} {
			if !strings.Contains(msg, want) {
				t.Errorf("walbust %s: %q lacks %q", cmd, msg, want)
			}
		}
		if strings.Contains(msg, "no such file") {
			t.Errorf("walbust %s: %q still reports a missing file", cmd, msg)
		}
	}
}
