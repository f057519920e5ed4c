package scaffold

import (
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/walbust/walbust/internal/config"
)

// Settings are what walbust.yaml is written from: the settings walbust
// init was given (flag, environment or an existing config), or their
// defaults.
type Settings struct {
	PostgresURL          string // may hold a password, which is never written
	PostgresPasswordFile string
	RedisURL             string // may hold a password, which is never written
	RedisMode            string
	RedisPasswordFile    string
	Slot, Publication    string
	Checkpoint           string
	Listen               string
}

// SettingsFrom takes the settings init writes from a loaded config.
// Relative file paths become absolute: the written config may live in
// another directory than the one they were given from.
func SettingsFrom(cfg *config.Config) Settings {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		if a, err := filepath.Abs(p); err == nil {
			return a
		}
		return p
	}
	s := Settings{
		PostgresURL:          cfg.Postgres.URL,
		PostgresPasswordFile: abs(cfg.Postgres.PasswordFile),
		RedisURL:             cfg.Redis.URL,
		RedisMode:            cfg.Redis.Mode,
		RedisPasswordFile:    abs(cfg.Redis.PasswordFile),
		Slot:                 cfg.Postgres.Slot,
		Publication:          cfg.Postgres.Publication,
		Listen:               cfg.Listen,
		Checkpoint:           cfg.Checkpoint.Path,
	}
	if s.Checkpoint != config.Defaults().Checkpoint.Path {
		s.Checkpoint = abs(s.Checkpoint)
	}
	return s
}

// dsnPassword is a password=... (or sslpassword=...) pair of a keyword/value connection string.
var dsnPassword = regexp.MustCompile(`(?i)(^|\s)(ssl)?password\s*=\s*('(?:[^'\\]|\\.)*'|\S*)`)

// RedactURL removes every password from a connection URL (user:password@,
// ?password=) or keyword/value string (password=...); dropped says whether
// there was one.
func RedactURL(raw string) (redacted string, dropped bool) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" || !strings.Contains(raw, "://") {
		out := dsnPassword.ReplaceAllString(raw, "")
		return strings.TrimSpace(out), out != raw
	}
	if u.User != nil {
		if _, set := u.User.Password(); set {
			u.User = url.User(u.User.Username())
			dropped = true
		}
	}
	q := u.Query()
	for k := range q {
		if strings.EqualFold(k, "password") || strings.EqualFold(k, "sslpassword") {
			q.Del(k)
			dropped = true
		}
	}
	if dropped {
		u.RawQuery = q.Encode()
	}
	return u.String(), dropped
}

// Config renders walbust.yaml: the settings a first run needs and no
// secret. notes say what the operator must still do (give a password).
func Config(s Settings, depsFile string) (string, []string) {
	var notes []string
	pgURL, pgDropped := RedactURL(s.PostgresURL)
	redisURL, redisDropped := RedactURL(s.RedisURL)
	var b strings.Builder
	b.WriteString(`# walbust.yaml written by "walbust init": the least walbust needs for this database and Redis.
# Any setting can also be given as a flag or an environment variable (flag > environment > this
# file > default); README.md, "Configuration reference", lists them all. Relative paths in this
# file are resolved against its directory. No password is ever written here.
postgres:
`)
	if pgDropped {
		notes = append(notes, "the Postgres URL held a password, which was not written to walbust.yaml: put it in a file named by postgres.password_file, or give the whole URL in WALBUST_POSTGRES_URL")
		b.WriteString("  # The URL given to walbust init held a password; it was left out here.\n")
	}
	b.WriteString("  # The password: in a file (mode 0600) named by password_file, or give the whole URL in the\n")
	b.WriteString("  # environment variable WALBUST_POSTGRES_URL. Not in a flag: other users can read command lines.\n")
	fmt.Fprintf(&b, "  url: %s\n", yamlQuote(pgURL))
	if s.PostgresPasswordFile != "" {
		fmt.Fprintf(&b, "  password_file: %s\n", yamlQuote(s.PostgresPasswordFile))
	} else {
		b.WriteString("  # password_file: /run/secrets/pg-password\n")
	}
	commented(&b, "  slot: "+yamlQuote(s.Slot), "the logical replication slot walbust setup creates")
	commented(&b, "  publication: "+yamlQuote(s.Publication), "of exactly the tables in deps.yaml; walbust setup keeps it so")
	b.WriteString("redis:\n")
	if s.RedisMode != "" && s.RedisMode != config.ModeStandalone {
		fmt.Fprintf(&b, "  mode: %s\n", yamlQuote(s.RedisMode))
	}
	if redisDropped {
		notes = append(notes, "the Redis URL held a password, which was not written to walbust.yaml: put it in a file named by redis.password_file, or give the whole URL in WALBUST_REDIS_URL")
		b.WriteString("  # The URL given to walbust init held a password; it was left out here.\n")
	}
	b.WriteString("  # An ACL user goes in the URL (redis://user@host:6379/0), its password in password_file or\n")
	b.WriteString("  # WALBUST_REDIS_URL; rediss:// for TLS.\n")
	fmt.Fprintf(&b, "  url: %s\n", yamlQuote(redisURL))
	if s.RedisPasswordFile != "" {
		fmt.Fprintf(&b, "  password_file: %s\n", yamlQuote(s.RedisPasswordFile))
	} else {
		b.WriteString("  # password_file: /run/secrets/redis-password\n")
	}
	commented(&b, "deps: "+yamlQuote(depsFile), "which keys hold each table's rows")
	b.WriteString("checkpoint:\n")
	commented(&b, "  path: "+yamlQuote(s.Checkpoint), "how far Redis is known to be invalidated; keep it on durable storage")
	commented(&b, "listen: "+yamlQuote(s.Listen), `/metrics, /healthz, /readyz and /status ("" disables)`)
	return b.String(), notes
}

// commented writes a line with a comment, aligned with its neighbours'.
func commented(b *strings.Builder, line, comment string) {
	const column = 40
	b.WriteString(line)
	b.WriteString(strings.Repeat(" ", max(1, column-len(line))))
	b.WriteString("# " + comment + "\n")
}
