package config_test

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walbust/walbust/internal/config"
)

func TestBadTypedFlagFailsAtParse(t *testing.T) {
	fs := flag.NewFlagSet("walbust", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	config.NewLoader(fs)
	err := fs.Parse([]string{"--status-interval", "10"})
	if err == nil || !strings.Contains(err.Error(), `invalid value "10" for flag -status-interval`) {
		t.Errorf("Parse = %v, want the flag package's invalid value error", err)
	}
}

// A command offers the flags of its groups only; the settings of the others
// still come from the environment and the file.
func TestGroupsLimitFlags(t *testing.T) {
	t.Setenv("WALBUST_CONFIG", "")
	fs := flag.NewFlagSet("walbust explain", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	l := config.NewLoaderFor(fs, config.GroupPostgres|config.GroupDeps)
	for _, name := range []string{"config", "postgres-url", "postgres-password-file", "deps"} {
		if fs.Lookup(name) == nil {
			t.Errorf("flag --%s missing", name)
		}
	}
	for _, name := range []string{"redis-sentinel-master", "slot", "log-level", "status-interval", "listen"} {
		if fs.Lookup(name) != nil {
			t.Errorf("flag --%s offered by a loader without its group", name)
		}
	}
	if err := fs.Parse([]string{"--redis-sentinel-master", "m"}); err == nil {
		t.Error("an unoffered flag parsed")
	}
	fs.Parse(nil)
	cfg, err := l.Load(env{"WALBUST_SLOT": "from_env"}.lookup)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Postgres.Slot != "from_env" {
		t.Errorf("slot = %q, want from_env: the environment still applies without the flag", cfg.Postgres.Slot)
	}
}

// -h documents each flag's type and default.
func TestHelpShowsTypesAndDefaults(t *testing.T) {
	t.Setenv("WALBUST_CONFIG", "")
	fs := flag.NewFlagSet("walbust run", flag.ContinueOnError)
	var out strings.Builder
	fs.SetOutput(&out)
	config.NewLoader(fs)
	fs.PrintDefaults()
	for _, want := range []string{
		"-status-interval duration", "(default 10s)",
		"-max-tx-changes int", "(default 100000)",
		"-debug-pprof\n", "-slot string", `(default "walbust")`,
		"-listen string", `(default "127.0.0.1:9187")`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("PrintDefaults lacks %q:\n%s", want, out.String())
		}
	}
}

// Typed flags keep flag > env > file: a flag given wins even when its value
// is the default, and one not given overrides nothing.
func TestTypedFlagPrecedence(t *testing.T) {
	path := writeConfig(t, "postgres:\n  status_interval: 3s\nmax_tx_changes: 2000\ndebug:\n  pprof: true\n")
	e := env{"WALBUST_STATUS_INTERVAL": "5s"}
	cfg, err := load(t, []string{"--config", path}, e)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Postgres.StatusInterval != 5*time.Second || cfg.MaxTxChanges != 2000 || !cfg.Debug.Pprof {
		t.Errorf("without flags: status_interval %v, max_tx_changes %d, pprof %v; want 5s (env), 2000 (file), true (file)",
			cfg.Postgres.StatusInterval, cfg.MaxTxChanges, cfg.Debug.Pprof)
	}
	cfg, err = load(t, []string{"--config", path, "--status-interval", "10s", "--max-tx-changes", "100000", "--debug-pprof=false"}, e)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Postgres.StatusInterval != 10*time.Second || cfg.MaxTxChanges != 100000 || cfg.Debug.Pprof {
		t.Errorf("with flags set to the defaults: status_interval %v, max_tx_changes %d, pprof %v; want the flags' 10s, 100000, false",
			cfg.Postgres.StatusInterval, cfg.MaxTxChanges, cfg.Debug.Pprof)
	}
}

func TestDiscoverReadsWalbustYAMLInWorkingDirectory(t *testing.T) {
	t.Setenv("WALBUST_CONFIG", "")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "walbust.yaml"), []byte("postgres:\n  slot: found\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	for _, discover := range []bool{false, true} {
		fs := flag.NewFlagSet("walbust", flag.ContinueOnError)
		l := config.NewLoader(fs)
		if discover {
			l.Discover()
		}
		fs.Parse(nil)
		cfg, err := l.Load(env{}.lookup)
		if err != nil {
			t.Fatal(err)
		}
		want, file := "walbust", ""
		if discover {
			want, file = "found", "walbust.yaml"
		}
		if cfg.Postgres.Slot != want || l.File() != file {
			t.Errorf("discover %v: slot %q, file %q; want %q, %q", discover, cfg.Postgres.Slot, l.File(), want, file)
		}
	}
}
