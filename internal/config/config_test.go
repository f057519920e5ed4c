package config_test

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/walbust/walbust/internal/config"
	"github.com/walbust/walbust/internal/yamlnode"
)

// env is a fake environment for Loader.Load.
type env map[string]string

func (e env) lookup(k string) (string, bool) {
	v, ok := e[k]
	return v, ok
}

// load runs a Loader over args and the fake environment.
func load(t *testing.T, args []string, e env) (*config.Config, error) {
	t.Helper()
	t.Setenv("WALBUST_CONFIG", "") // NewLoader reads it as --config's default
	fs := flag.NewFlagSet("walbust", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	l := config.NewLoader(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("flags %q: %v", args, err)
	}
	return l.Load(e.lookup)
}

// writeConfig writes a walbust.yaml into a fresh directory.
func writeConfig(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "walbust.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDefaults(t *testing.T) {
	cfg, err := load(t, nil, env{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, config.Defaults()) {
		t.Errorf("config without file, env or flags:\n%+v\nwant the defaults:\n%+v", cfg, config.Defaults())
	}
}

func TestPrecedence(t *testing.T) {
	path := writeConfig(t, `postgres:
  slot: from_file
  publication: pub_file
  status_interval: 3s
redis:
  url: redis://file:6379/1
max_tx_changes: "5000"
log:
  format: console
`)
	tests := []struct {
		name string
		args []string
		env  env
		slot string
		pub  string
	}{
		{"file", []string{"--config", path}, env{}, "from_file", "pub_file"},
		{"env over file", []string{"--config", path}, env{"WALBUST_SLOT": "from_env"}, "from_env", "pub_file"},
		{"flag over env", []string{"--config", path, "--slot", "from_flag"}, env{"WALBUST_SLOT": "from_env"}, "from_flag", "pub_file"},
		{"config from the environment", nil, env{"WALBUST_PUBLICATION": "pub_env"}, "walbust", "pub_env"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := load(t, tt.args, tt.env)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Postgres.Slot != tt.slot || cfg.Postgres.Publication != tt.pub {
				t.Errorf("slot %q publication %q, want %q %q", cfg.Postgres.Slot, cfg.Postgres.Publication, tt.slot, tt.pub)
			}
			if tt.args != nil {
				if cfg.Postgres.StatusInterval != 3*time.Second || cfg.Redis.URL != "redis://file:6379/1" || cfg.MaxTxChanges != 5000 || cfg.Log.Format != "console" {
					t.Errorf("file settings not applied: %+v", cfg)
				}
				// Settings the file does not name keep their defaults.
				if cfg.Postgres.HeartbeatInterval != config.Defaults().Postgres.HeartbeatInterval || cfg.Log.Level != "info" {
					t.Errorf("defaults lost: %+v", cfg)
				}
			}
		})
	}
}

func TestRelativePaths(t *testing.T) {
	path := writeConfig(t, `deps: deps.yaml
checkpoint:
  path: /var/lib/walbust/checkpoint
redis:
  tls_ca_file: certs/ca.pem
`)
	dir := filepath.Dir(path)
	cfg, err := load(t, []string{"--config", path}, env{})
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "deps.yaml"); cfg.Deps != want {
		t.Errorf("deps = %q, want %q (next to the config file)", cfg.Deps, want)
	}
	if cfg.Checkpoint.Path != "/var/lib/walbust/checkpoint" {
		t.Errorf("absolute checkpoint path changed to %q", cfg.Checkpoint.Path)
	}
	if want := filepath.Join(dir, "certs/ca.pem"); cfg.Redis.CAFile != want {
		t.Errorf("tls_ca_file = %q, want %q", cfg.Redis.CAFile, want)
	}

	// Default paths also live next to the config file.
	cfg, err = load(t, []string{"--config", writeConfig(t, "log:\n  level: debug\n")}, env{})
	if err != nil {
		t.Fatal(err)
	}
	if dir := filepath.Dir(cfg.Deps); filepath.Base(cfg.Deps) != "deps.yaml" || !filepath.IsAbs(dir) ||
		cfg.Checkpoint.Path != filepath.Join(dir, "walbust.checkpoint") {
		t.Errorf("default deps %q checkpoint %q, want them next to the config file", cfg.Deps, cfg.Checkpoint.Path)
	}

	// Paths from the environment and flags are the user's, relative to the
	// working directory.
	cfg, err = load(t, []string{"--config", path, "--checkpoint", "cp"}, env{"WALBUST_DEPS": "d.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Deps != "d.yaml" || cfg.Checkpoint.Path != "cp" {
		t.Errorf("deps %q checkpoint %q, want d.yaml cp", cfg.Deps, cfg.Checkpoint.Path)
	}
}

// An empty optional path in the file (as templated configs often write it)
// means "not set", as an empty environment variable does; it must not become
// the config file's directory.
func TestEmptyPathInFile(t *testing.T) {
	path := writeConfig(t, `redis:
  password_file: ""
  tls_ca_file: ""
`)
	cfg, err := load(t, []string{"--config", path}, env{})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if cfg.Redis.PasswordFile != "" || cfg.Redis.CAFile != "" {
		t.Errorf("password_file %q tls_ca_file %q, want both empty", cfg.Redis.PasswordFile, cfg.Redis.CAFile)
	}
}

func TestFileErrors(t *testing.T) {
	tests := []struct {
		name      string
		yaml      string
		line, col int
		want      string
	}{
		{"unknown top-level key", "postgres:\n  slot: a\nredis_url: x\n", 3, 1, `unknown field "redis_url"`},
		{"unknown nested key", "postgres:\n  slot: a\n  slots: b\n", 3, 3, `unknown field "slots"`},
		{"bad duration", "postgres:\n  status_interval: soon\n", 2, 20, `invalid duration "soon"`},
		{"bad integer", "max_tx_changes: many\n", 1, 17, `invalid integer "many"`},
		{"list for a string", "deps: [a, b]\n", 1, 7, "must be a string"},
		{"scalar for a section", "postgres: postgres://x\n", 1, 11, "must be a mapping"},
		{"duplicate key", "deps: a\ndeps: b\n", 2, 1, "duplicate key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.yaml)
			_, err := load(t, []string{"--config", path}, env{})
			want := fmt.Sprintf("%s:%d:%d: ", path, tt.line, tt.col)
			if err == nil {
				t.Fatalf("no error, want one at %s", want)
			}
			var errs yamlnode.Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error %T %v is not yamlnode.Errors", err, err)
			}
			for _, e := range errs {
				if strings.HasPrefix(e.Error(), want) && strings.Contains(e.Error(), tt.want) {
					return
				}
			}
			t.Errorf("no error starting %q containing %q in:\n%v", want, tt.want, err)
		})
	}
}

func TestMissingConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.yaml")
	if _, err := load(t, []string{"--config", path}, env{}); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("Load = %v, want an error naming %s", err, path)
	}
}

func TestValidation(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  env
		want string
	}{
		{"empty slot", []string{"--slot", ""}, nil, "postgres.slot (--slot, WALBUST_SLOT) must not be empty"},
		{"bad slot", []string{"--slot", "My-Slot"}, nil, `postgres.slot "My-Slot"`},
		{"long slot", []string{"--slot", strings.Repeat("s", 64)}, nil, "postgres.slot"},
		{"bad publication", []string{"--publication", "pub lic"}, nil, `postgres.publication "pub lic"`},
		{"empty deps", nil, env{"WALBUST_DEPS": ""}, "deps (--deps, WALBUST_DEPS) must not be empty"},
		{"empty redis url", []string{"--redis-url", ""}, nil, "redis.url"},
		{"negative heartbeat", []string{"--heartbeat-interval", "-1s"}, nil, "heartbeat_interval must not be negative"},
		{"zero status interval", []string{"--status-interval", "0s"}, nil, "status_interval must be positive"},
		{"bad on_slot_loss", []string{"--on-slot-loss", "panic"}, nil, `on_slot_loss "panic"`},
		{"small max_tx_changes", []string{"--max-tx-changes", "999"}, nil, "max_tx_changes 999: must be at least 1000"},
		{"zero shutdown timeout", nil, env{"WALBUST_SHUTDOWN_TIMEOUT": "0s"}, "shutdown_timeout must be positive"},
		{"bad log format", []string{"--log-format", "xml"}, nil, `log.format "xml"`},
		{"bad integer env", nil, env{"WALBUST_MAX_TX_CHANGES": "1e6"}, "environment variable WALBUST_MAX_TX_CHANGES: invalid integer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, tt.args, tt.env)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load = %v, want an error containing %q", err, tt.want)
			}
		})
	}

	// Every validation problem is reported at once.
	_, err := load(t, []string{"--slot", "A", "--on-slot-loss", "x", "--log-format", "y"}, env{})
	for _, want := range []string{"postgres.slot", "on_slot_loss", "log.format"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %s", err, want)
		}
	}
	// Valid edge values.
	if _, err := load(t, []string{"--slot", strings.Repeat("s", 63), "--heartbeat-interval", "0s", "--on-slot-loss", "resync", "--max-tx-changes", "1000"}, env{}); err != nil {
		t.Errorf("valid edge values rejected: %v", err)
	}
}

func TestPasswordFiles(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pg.pw")
	if err := os.WriteFile(pw, []byte("s3cr:t@/\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := load(t, []string{"--postgres-password-file", pw, "--redis-password-file", pw,
		"--postgres-url", "postgres://walbust@db:5432/app?sslmode=require", "--redis-url", "redis://cache:6379/2"}, env{})
	if err != nil {
		t.Fatal(err)
	}
	if want := "postgres://walbust:s3cr%3At%40%2F@db:5432/app?sslmode=require"; cfg.Postgres.URL != want {
		t.Errorf("postgres url %q, want %q", cfg.Postgres.URL, want)
	}
	if want := "redis://:s3cr%3At%40%2F@cache:6379/2"; cfg.Redis.URL != want {
		t.Errorf("redis url %q, want %q", cfg.Redis.URL, want)
	}

	if _, err := load(t, []string{"--postgres-password-file", filepath.Join(dir, "missing")}, env{}); err == nil || !strings.Contains(err.Error(), "postgres.password_file") {
		t.Errorf("missing password file: %v", err)
	}
	if _, err := load(t, []string{"--postgres-password-file", pw, "--postgres-url", "host=db user=walbust"}, env{}); err == nil || !strings.Contains(err.Error(), "URL form") {
		t.Errorf("keyword/value connection string with a password file: %v", err)
	}
}

func FuzzConfigFile(f *testing.F) {
	for _, s := range []string{
		"",
		"postgres:\n  url: postgres://x@y/z\n  slot: s\n  status_interval: 5s\nredis:\n  url: redis://r\ndeps: d.yaml\n",
		"postgres:\n  slot: a\n  slots: b\n",
		"max_tx_changes: many\n",
		"deps: [a, b]\n",
		"postgres: x\n",
		"log: {format: console, level: debug}\non_slot_loss: resync\nshutdown_timeout: 1m\nlisten: ''\n",
		"- a\n",
		"checkpoint:\n  path: ../cp\n",
		"\tdeps: x",
		"redis:\n  mode: sentinel\n  sentinel_master: m\nshards:\n  a:\n    tables: [public.x]\n    checkpoint: cp\nshard: a\n",
		"shards:\n  a: {tables: [public.x, public.x]}\n  b: []\n",
	} {
		f.Add([]byte(s))
	}
	path := filepath.Join(f.TempDir(), "walbust.yaml")
	// Password files are never read: a fuzzed path could name a device.
	noPasswordFiles := env{"WALBUST_POSTGRES_PASSWORD_FILE": "", "WALBUST_REDIS_PASSWORD_FILE": "", "WALBUST_REDIS_SENTINEL_PASSWORD_FILE": ""}
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		fs := flag.NewFlagSet("walbust", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		l := config.NewLoader(fs)
		if err := fs.Parse([]string{"--config", path}); err != nil {
			t.Fatal(err)
		}
		cfg, err := l.Load(noPasswordFiles.lookup)
		if err == nil {
			if cfg == nil {
				t.Fatal("nil config without error")
			}
			return
		}
		var errs yamlnode.Errors
		var one *yamlnode.Error
		switch {
		case errors.As(err, &errs):
		case errors.As(err, &one):
			errs = yamlnode.Errors{one}
		default:
			return // a validation error: not about a place in the file
		}
		for _, e := range errs {
			s := e.Error()
			if !strings.HasPrefix(s, path) {
				t.Errorf("error %q does not start with the file name", s)
			}
			if e.Line > 0 && !strings.HasPrefix(s, fmt.Sprintf("%s:%d:%d: ", path, e.Line, e.Column)) {
				t.Errorf("error %q does not start with its position", s)
			}
		}
	})
}
