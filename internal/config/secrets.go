package config

import (
	"fmt"
	"net/url"
	"os"
	"strings"
)

// origin is where a setting's value came from; a higher one wins. The
// defaults and walbust.yaml share the lowest: no default holds a password.
type origin int

const (
	fromFile origin = iota
	fromEnv
	fromFlag
)

func (o origin) String() string {
	switch o {
	case fromEnv:
		return "the environment"
	case fromFlag:
		return "the command line"
	}
	return "walbust.yaml"
}

// Warnings are what Load found risky but not wrong: passwords on the
// command line, and passwords given twice. They name settings, never
// values.
func (l *Loader) Warnings() []string { return l.warnings }

// passwordTarget is a password file and the part of a URL it fills.
type passwordTarget struct {
	file, url string // setting paths
	path      *string
	dest      *string
	query     bool // ?password= rather than user:password@
}

// passwordTargets: a sentinel URL is go-redis's, whose user:password@
// authenticates to the sentinels and ?password= to the master and
// replicas.
func (c *Config) passwordTargets() []passwordTarget {
	return []passwordTarget{
		{"postgres.password_file", "postgres.url", &c.Postgres.PasswordFile, &c.Postgres.URL, false},
		{"redis.password_file", "redis.url", &c.Redis.PasswordFile, &c.Redis.URL, c.Redis.Mode == ModeSentinel},
		{"redis.sentinel_password_file", "redis.url", &c.Redis.SentinelPasswordFile, &c.Redis.URL, false},
	}
}

// urlHasPassword reports whether the part of raw that t fills already
// holds a password.
func (t passwordTarget) urlHasPassword(u *url.URL) bool {
	if t.query {
		return u.Query().Get("password") != ""
	}
	if u.User == nil {
		return false
	}
	_, set := u.User.Password()
	return set
}

// urlWins is the one rule for credentials: of a password in the URL and a
// password file, the one given by the higher source (command line, then
// environment, then walbust.yaml) is used; from the same source, the
// password file.
func urlWins(origins map[string]origin, t passwordTarget) bool {
	return origins[t.url] > origins[t.file]
}

// applyPasswordFiles puts the passwords from files into the URLs, so every
// client gets them the same way. URLs are never logged.
func (c *Config) applyPasswordFiles(origins map[string]origin) error {
	for _, t := range c.passwordTargets() {
		if *t.path == "" {
			continue
		}
		section, _, _ := strings.Cut(t.file, ".")
		u, err := url.Parse(*t.dest)
		if err != nil || u.Scheme == "" {
			return fmt.Errorf("%s needs %s.url in URL form (scheme://user@host/...)", t.file, section)
		}
		if t.urlHasPassword(u) && urlWins(origins, t) {
			continue
		}
		data, err := os.ReadFile(*t.path)
		if err != nil {
			return fmt.Errorf("%s: %w", t.file, err)
		}
		password := strings.TrimRight(string(data), "\r\n")
		if t.query {
			q := u.Query()
			q.Set("password", password)
			u.RawQuery = q.Encode()
		} else {
			user := ""
			if u.User != nil {
				user = u.User.Username()
			}
			u.User = url.UserPassword(user, password)
		}
		*t.dest = u.String()
	}
	return nil
}

// secretConflicts says which password is used when a URL holds one and a
// password file gives another, so an override is never silent.
func (c *Config) secretConflicts(origins map[string]origin) []string {
	var out []string
	for _, t := range c.passwordTargets() {
		if *t.path == "" {
			continue
		}
		u, err := url.Parse(*t.dest)
		if err != nil || !t.urlHasPassword(u) {
			continue
		}
		why := "given more specifically (command line, then environment, then walbust.yaml)"
		used := t.file
		if urlWins(origins, t) {
			used = t.url
		} else if origins[t.url] == origins[t.file] {
			why = "as both come from " + origins[t.url].String()
		}
		out = append(out, fmt.Sprintf("%s (from %s) holds a password and %s (from %s) gives one too: using %s's, %s; remove the other",
			t.url, origins[t.url], t.file, origins[t.file], used, why))
	}
	return out
}

// commandLineSecrets warns of passwords in flags: any user of the machine
// can read a process's command line (ps, /proc/PID/cmdline).
func commandLineSecrets(settings []setting, setOnCLI map[string]bool) []string {
	files := map[string]setting{}
	for _, s := range settings {
		if strings.HasSuffix(s.path, ".password_file") {
			section, _, _ := strings.Cut(s.path, ".")
			files[section] = s
		}
	}
	var out []string
	for _, s := range settings {
		if !setOnCLI[s.flag] {
			continue
		}
		var values []string
		switch {
		case s.str != nil:
			values = []string{*s.str}
		case s.list != nil:
			values = *s.list
		}
		for _, v := range values {
			if !holdsPassword(v) {
				continue
			}
			instead := "the environment variable " + s.env
			section, _, _ := strings.Cut(s.path, ".")
			if f, ok := files[section]; ok {
				instead = fmt.Sprintf("%s (--%s, %s) or %s", f.path, f.flag, f.env, instead)
			}
			out = append(out, fmt.Sprintf("--%s holds a password, which other users of this machine can read in its command line (ps, /proc/PID/cmdline): give it in %s instead",
				s.flag, instead))
			break
		}
	}
	return out
}

// holdsPassword reports whether a URL or keyword/value connection string
// carries a password.
func holdsPassword(v string) bool {
	if strings.Contains(v, "password=") {
		return true // ?password= or a key/value DSN's password=
	}
	u, err := url.Parse(v)
	if err != nil {
		// Unparseable: judge by the shape scheme://user:secret@host.
		_, rest, ok := strings.Cut(v, "://")
		userinfo, _, at := strings.Cut(rest, "@")
		return ok && at && strings.Contains(userinfo, ":")
	}
	if u.User == nil {
		return false
	}
	_, set := u.User.Password()
	return set
}
