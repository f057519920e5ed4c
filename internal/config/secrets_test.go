package config_test

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walbust/walbust/internal/config"
)

// loadWarnings is load that also returns the Loader's warnings.
func loadWarnings(t *testing.T, args []string, e env) (*config.Config, []string) {
	t.Helper()
	t.Setenv("WALBUST_CONFIG", "")
	fs := flag.NewFlagSet("walbust", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	l := config.NewLoader(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("flags %q: %v", args, err)
	}
	cfg, err := l.Load(e.lookup)
	if err != nil {
		t.Fatalf("load %q: %v", args, err)
	}
	return cfg, l.Warnings()
}

// The password given by the highest source wins, whichever setting gives
// it: command line over environment over walbust.yaml; from one source, the
// password file over a password in the URL.
func TestPasswordPrecedence(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte("fromfile\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml := func(pgURL, redisURL, mode string, withFiles bool) string {
		s := "postgres:\n  url: " + pgURL + "\n"
		if withFiles {
			s += "  password_file: " + pwFile + "\n"
		}
		s += "redis:\n  url: " + redisURL + "\n"
		if mode != "" {
			s += "  mode: " + mode + "\n  sentinel_master: m\n"
		}
		if withFiles {
			s += "  password_file: " + pwFile + "\n"
		}
		return s
	}
	plain := writeConfig(t, yaml("postgres://walbust@db/app", "redis://cache:6379/0", "", true))
	inline := writeConfig(t, yaml("postgres://walbust:fromyaml@db/app", "redis://:fromyaml@cache:6379/0", "", true))
	inlineNoFiles := writeConfig(t, yaml("postgres://walbust:fromyaml@db/app", "redis://:fromyaml@cache:6379/0", "", false))
	sentinel := writeConfig(t, yaml("postgres://walbust@db/app", "redis://s1:26379", "sentinel", true))
	tests := []struct {
		name          string
		args          []string
		env           env
		pgPW, redisPW string // the password each URL ends up with
		warn          []string
	}{
		{"command-line URL over the file's password_file (README's setup as the owner)",
			[]string{"--config", plain, "--postgres-url", "postgres://owner:fromflag@db/app", "--redis-url", "redis://:fromflag@cache:6379/0"}, env{},
			"fromflag", "fromflag", []string{"--postgres-url holds a password", "--redis-url holds a password", "using postgres.url's", "using redis.url's"}},
		{"environment URL over the file's password_file",
			[]string{"--config", plain}, env{"WALBUST_POSTGRES_URL": "postgres://owner:fromenv@db/app"},
			"fromenv", "fromfile", []string{"postgres.url (from the environment)"}},
		{"password_file from the environment over the file's URL",
			[]string{"--config", inlineNoFiles}, env{"WALBUST_POSTGRES_PASSWORD_FILE": pwFile},
			"fromfile", "fromyaml", []string{"using postgres.password_file's"}},
		{"password_file flag over an environment URL",
			[]string{"--config", plain, "--postgres-password-file", pwFile}, env{"WALBUST_POSTGRES_URL": "postgres://owner:fromenv@db/app"},
			"fromfile", "fromfile", []string{"using postgres.password_file's"}},
		{"both in walbust.yaml: the password file, with a warning",
			[]string{"--config", inline}, env{},
			"fromfile", "fromfile", []string{"as both come from walbust.yaml"}},
		{"a URL without a password takes the file's, silently",
			[]string{"--config", plain}, env{},
			"fromfile", "fromfile", nil},
		{"sentinel: a command-line ?password= over the file's password_file",
			[]string{"--config", sentinel, "--redis-url", "redis://s1:26379?password=fromflag"}, env{},
			"fromfile", "fromflag", []string{"--redis-url holds a password", "using redis.url's"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, warnings := loadWarnings(t, tt.args, tt.env)
			if got := urlPassword(t, cfg.Postgres.URL); got != tt.pgPW {
				t.Errorf("postgres password %q, want %q", got, tt.pgPW)
			}
			if got := urlPassword(t, cfg.Redis.URL); got != tt.redisPW {
				t.Errorf("redis password %q, want %q", got, tt.redisPW)
			}
			all := strings.Join(warnings, "\n")
			for _, w := range tt.warn {
				if !strings.Contains(all, w) {
					t.Errorf("warnings do not say %q:\n%s", w, all)
				}
			}
			if tt.warn == nil && len(warnings) > 0 {
				t.Errorf("unexpected warnings:\n%s", all)
			}
			for _, secret := range []string{"fromflag", "fromenv", "fromyaml", "fromfile"} {
				if strings.Contains(all, secret) {
					t.Errorf("a warning shows the password %q:\n%s", secret, all)
				}
			}
		})
	}
}

// urlPassword is the password a URL carries, in user:password@ or, for
// sentinel URLs, ?password=.
func urlPassword(t *testing.T, raw string) string {
	t.Helper()
	_, rest, _ := strings.Cut(raw, "://")
	if _, q, ok := strings.Cut(rest, "?password="); ok {
		pw, _, _ := strings.Cut(q, "&")
		return pw
	}
	userinfo, _, ok := strings.Cut(rest, "@")
	if !ok {
		return ""
	}
	_, pw, _ := strings.Cut(userinfo, ":")
	return pw
}

func TestCommandLinePasswordWarning(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string // "" for no warning
	}{
		{[]string{"--postgres-url", "postgres://u:hunter2@db/app"}, "postgres.password_file (--postgres-password-file, WALBUST_POSTGRES_PASSWORD_FILE) or the environment variable WALBUST_POSTGRES_URL"},
		{[]string{"--postgres-url", "host=db user=u password=hunter2"}, "--postgres-url holds a password"},
		{[]string{"--redis-url", "redis://u:hunter2@cache:6379/0"}, "redis.password_file"},
		{[]string{"--replica-urls", "postgres://u@r1/app,postgres://u:hunter2@r2/app"}, "--replica-urls holds a password"},
		{[]string{"--postgres-url", "postgres://u@db/app", "--redis-url", "redis://cache:6379/0"}, ""},
	} {
		_, warnings := loadWarnings(t, tt.args, env{})
		all := strings.Join(warnings, "\n")
		if tt.want == "" && all != "" || !strings.Contains(all, tt.want) {
			t.Errorf("%q: warnings %q, want one saying %q", tt.args, all, tt.want)
		}
		if strings.Contains(all, "hunter2") {
			t.Errorf("%q: a warning shows the password: %s", tt.args, all)
		}
	}
	// In the environment, a password is where it should be.
	if _, warnings := loadWarnings(t, nil, env{"WALBUST_POSTGRES_URL": "postgres://u:hunter2@db/app"}); len(warnings) > 0 {
		t.Errorf("a password in WALBUST_POSTGRES_URL warned: %q", warnings)
	}
}

func TestDebugPprof(t *testing.T) {
	if cfg, _ := loadWarnings(t, nil, env{}); cfg.Debug.Pprof {
		t.Error("debug.pprof is on by default")
	}
	path := writeConfig(t, "debug:\n  pprof: true\n")
	if cfg, _ := loadWarnings(t, []string{"--config", path}, env{}); !cfg.Debug.Pprof {
		t.Error("debug.pprof: true in walbust.yaml left it off")
	}
	if cfg, _ := loadWarnings(t, []string{"--config", path}, env{"WALBUST_DEBUG_PPROF": "false"}); cfg.Debug.Pprof {
		t.Error("WALBUST_DEBUG_PPROF=false did not turn it off")
	}
	if cfg, _ := loadWarnings(t, []string{"--debug-pprof", "true"}, env{}); !cfg.Debug.Pprof {
		t.Error("--debug-pprof true left it off")
	}
}
