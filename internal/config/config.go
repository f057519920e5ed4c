// Package config loads walbust.yaml and overlays environment variables and
// flags, in that order of increasing precedence.
package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/walbust/walbust/internal/yamlnode"
)

// Config is everything walbust needs to run.
type Config struct {
	Postgres   Postgres
	Redis      Redis
	Deps       string // path to deps.yaml
	Checkpoint Checkpoint
	Log        Log
	// OnSlotLoss is what to do when the slot is missing or invalidated:
	// "fail" (exit non-zero) or "resync" (recreate it and apply every
	// table's on_truncate rules).
	OnSlotLoss string
	// MaxTxChanges caps the row changes kept per transaction; larger
	// transactions fall back to on_truncate rules for tables that have them.
	MaxTxChanges int
	// ShutdownTimeout bounds how long a stop waits for the batch in flight.
	ShutdownTimeout time.Duration
	// Listen is the address of /metrics, /healthz, /readyz and /status
	// ("" disables).
	Listen string
	// Shards split deps.yaml's tables between walbust instances, each with
	// a slot and publication of its own (file only; see shards.go).
	Shards []Shard
	// Shard is the shard this process is ("" none). Once Load has applied
	// it, the slot, publication, checkpoint and listen address are the
	// shard's and Tables lists its tables.
	Shard string
	// Tables restricts walbust to these deps.yaml tables; nil means all.
	Tables []string
	// Replicas and Events serve the fence action and in-process caches
	// (see replicas.go).
	Replicas Replicas
	Events   Events
	// Debug holds what helps diagnose walbust and is off by default.
	Debug Debug
}

// Postgres says where to stream from.
type Postgres struct {
	URL            string
	Slot           string
	Publication    string
	StatusInterval time.Duration // how often the flush position is reported
	// HeartbeatInterval: how often a heartbeat message is written to the
	// WAL to measure lag end to end and keep the slot advancing (0: off).
	HeartbeatInterval time.Duration
	// PasswordFile holds the password, so it need not sit in the URL.
	PasswordFile string
}

// Redis says where the cache lives.
type Redis struct {
	// Mode is standalone (one server, or a proxy), cluster (Redis Cluster;
	// URL names seed nodes) or sentinel (URL names the sentinels).
	Mode         string
	URL          string
	PasswordFile string // the password (ACL or requirepass) kept out of the URL
	CAFile       string // PEM roots to verify a rediss:// server with
	// CertFile and KeyFile are the client certificate and its key, which a
	// server with tls-auth-clients (Redis's default) requires.
	CertFile string
	KeyFile  string
	// SentinelMaster is the name the sentinels monitor the master by.
	SentinelMaster string
	// SentinelPasswordFile holds the sentinels' own password, when they
	// have one (it may differ from the data nodes').
	SentinelPasswordFile string
	// WaitReplicas: after every batch, wait until this many replicas of
	// each master written to have acknowledged it (WAIT) before confirming
	// it, so a failover cannot lose an acknowledged invalidation. Unless
	// set, 1 in sentinel and cluster modes and 0 standalone (see
	// applyModeDefaults).
	WaitReplicas int
}

// Redis modes.
const (
	ModeStandalone = "standalone"
	ModeCluster    = "cluster"
	ModeSentinel   = "sentinel"
)

// Checkpoint says where the durable LSN is kept.
type Checkpoint struct {
	Path string
	// RetryTimeout bounds how long failing saves are retried (not ready
	// meanwhile) before walbust exits non-zero for its supervisor.
	RetryTimeout time.Duration
}

// Log configures logging.
type Log struct {
	Format string // json | console
	Level  string // debug | info | warn | error
}

// setting binds one field to its YAML path, flag and environment variable.
type setting struct {
	path  string // dotted YAML path
	flag  string
	env   string
	usage string
	str   *string
	dur   *time.Duration
	num   *int
	// boolean and list (comma-separated in flags and the environment, a
	// YAML sequence in the file).
	boolean *bool
	list    *[]string
	file    bool // a path, resolved against the config file's directory
}

func (c *Config) settings() []setting {
	return append([]setting{
		{path: "postgres.url", flag: "postgres-url", env: "WALBUST_POSTGRES_URL", str: &c.Postgres.URL, usage: "Postgres connection URL"},
		{path: "postgres.slot", flag: "slot", env: "WALBUST_SLOT", str: &c.Postgres.Slot, usage: "logical replication slot name"},
		{path: "postgres.publication", flag: "publication", env: "WALBUST_PUBLICATION", str: &c.Postgres.Publication, usage: "publication name"},
		{path: "postgres.status_interval", flag: "status-interval", env: "WALBUST_STATUS_INTERVAL", dur: &c.Postgres.StatusInterval, usage: "how often to report the flushed position to Postgres"},
		{path: "postgres.heartbeat_interval", flag: "heartbeat-interval", env: "WALBUST_HEARTBEAT_INTERVAL", dur: &c.Postgres.HeartbeatInterval, usage: "how often to write a heartbeat through the WAL (0 disables)"},
		{path: "postgres.password_file", flag: "postgres-password-file", env: "WALBUST_POSTGRES_PASSWORD_FILE", str: &c.Postgres.PasswordFile, file: true, usage: "file holding the Postgres password"},
		{path: "redis.password_file", flag: "redis-password-file", env: "WALBUST_REDIS_PASSWORD_FILE", str: &c.Redis.PasswordFile, file: true, usage: "file holding the Redis password"},
		{path: "redis.tls_ca_file", flag: "redis-tls-ca-file", env: "WALBUST_REDIS_TLS_CA_FILE", str: &c.Redis.CAFile, file: true, usage: "PEM CA bundle for rediss:// URLs"},
		{path: "redis.tls_cert_file", flag: "redis-tls-cert-file", env: "WALBUST_REDIS_TLS_CERT_FILE", str: &c.Redis.CertFile, file: true, usage: "PEM client certificate for rediss:// servers that require one (tls-auth-clients)"},
		{path: "redis.tls_key_file", flag: "redis-tls-key-file", env: "WALBUST_REDIS_TLS_KEY_FILE", str: &c.Redis.KeyFile, file: true, usage: "PEM private key of redis.tls_cert_file"},
		{path: "redis.url", flag: "redis-url", env: "WALBUST_REDIS_URL", str: &c.Redis.URL, usage: "Redis URL (redis:// or rediss://); cluster: seed nodes, sentinel: the sentinels (more with ?addr=host:port)"},
		{path: "redis.mode", flag: "redis-mode", env: "WALBUST_REDIS_MODE", str: &c.Redis.Mode, usage: "standalone, cluster or sentinel"},
		{path: "redis.sentinel_master", flag: "redis-sentinel-master", env: "WALBUST_REDIS_SENTINEL_MASTER", str: &c.Redis.SentinelMaster, usage: "sentinel mode: the master's name"},
		{path: "redis.sentinel_password_file", flag: "redis-sentinel-password-file", env: "WALBUST_REDIS_SENTINEL_PASSWORD_FILE", str: &c.Redis.SentinelPasswordFile, file: true, usage: "sentinel mode: file holding the sentinels' password"},
		{path: "redis.wait_replicas", flag: "redis-wait-replicas", env: "WALBUST_REDIS_WAIT_REPLICAS", num: &c.Redis.WaitReplicas, usage: "replicas of each master that must acknowledge a batch before it is confirmed (0: do not wait; default 1 in sentinel and cluster modes, 0 standalone)"},
		{path: "deps", flag: "deps", env: "WALBUST_DEPS", str: &c.Deps, file: true, usage: "dependency registry (deps.yaml)"},
		{path: "checkpoint.path", flag: "checkpoint", env: "WALBUST_CHECKPOINT", str: &c.Checkpoint.Path, file: true, usage: "checkpoint file"},
		{path: "checkpoint.retry_timeout", flag: "checkpoint-retry-timeout", env: "WALBUST_CHECKPOINT_RETRY_TIMEOUT", dur: &c.Checkpoint.RetryTimeout, usage: "how long failing checkpoint saves are retried before walbust exits non-zero"},
		{path: "on_slot_loss", flag: "on-slot-loss", env: "WALBUST_ON_SLOT_LOSS", str: &c.OnSlotLoss, usage: "when the slot is missing or lost: fail or resync"},
		{path: "max_tx_changes", flag: "max-tx-changes", env: "WALBUST_MAX_TX_CHANGES", num: &c.MaxTxChanges, usage: "row changes kept per transaction before falling back to on_truncate rules"},
		{path: "shutdown_timeout", flag: "shutdown-timeout", env: "WALBUST_SHUTDOWN_TIMEOUT", dur: &c.ShutdownTimeout, usage: "how long a stop waits for the batch in flight"},
		{path: "listen", flag: "listen", env: "WALBUST_LISTEN", str: &c.Listen, usage: "address for /metrics, /healthz, /readyz, /status (empty disables)"},
		{path: "shard", flag: "shard", env: "WALBUST_SHARD", str: &c.Shard, usage: "the shard (of shards in walbust.yaml) this walbust serves"},
		{path: "log.format", flag: "log-format", env: "WALBUST_LOG_FORMAT", str: &c.Log.Format, usage: "log format: json or console"},
		{path: "log.level", flag: "log-level", env: "WALBUST_LOG_LEVEL", str: &c.Log.Level, usage: "log level: debug, info, warn, error"},
	}, append(c.replicaSettings(), c.debugSettings()...)...)
}

// Defaults returns the configuration used where nothing else is said.
func Defaults() *Config {
	return &Config{
		Postgres: Postgres{
			URL:               "postgres://walbust@localhost:5432/postgres",
			Slot:              "walbust",
			Publication:       "walbust",
			StatusInterval:    10 * time.Second,
			HeartbeatInterval: 10 * time.Second,
		},
		Redis:           Redis{Mode: ModeStandalone, URL: "redis://localhost:6379/0"},
		Deps:            "deps.yaml",
		Checkpoint:      Checkpoint{Path: "walbust.checkpoint", RetryTimeout: time.Minute},
		Log:             Log{Format: "json", Level: "info"},
		OnSlotLoss:      "fail",
		MaxTxChanges:    100000,
		ShutdownTimeout: 30 * time.Second,
		Listen:          "127.0.0.1:9187",
		Replicas:        Replicas{WaitMax: 5 * time.Second},
		Events:          Events{Channel: "walbust:events"},
	}
}

// Group is a set of settings one command uses: a command offers the flags
// of its groups only. Settings outside them still come from the file and
// the environment.
type Group uint

// The groups of settings.
const (
	GroupPostgres   Group = 1 << iota // postgres.url, postgres.password_file
	GroupSlot                         // postgres.slot, postgres.publication
	GroupRedis                        // redis.url, redis.mode, redis.password_file
	GroupRedisExtra                   // redis TLS, sentinel and WAIT settings
	GroupDeps                         // deps
	GroupCheckpoint                   // checkpoint.path
	GroupListen                       // listen
	GroupShard                        // shard
	GroupRun                          // what only `walbust run` uses: intervals, timeouts, log, replicas, events, debug
	GroupAll        = GroupPostgres | GroupSlot | GroupRedis | GroupRedisExtra | GroupDeps | GroupCheckpoint | GroupListen | GroupShard | GroupRun
)

// group is the Group a setting belongs to.
func (s setting) group() Group {
	switch s.path {
	case "postgres.url", "postgres.password_file":
		return GroupPostgres
	case "postgres.slot", "postgres.publication":
		return GroupSlot
	case "redis.url", "redis.mode", "redis.password_file":
		return GroupRedis
	case "deps":
		return GroupDeps
	case "checkpoint.path":
		return GroupCheckpoint
	case "listen":
		return GroupListen
	case "shard":
		return GroupShard
	}
	if strings.HasPrefix(s.path, "redis.") {
		return GroupRedisExtra
	}
	return GroupRun
}

// DefaultFile is the config file read, from the working directory, when
// neither --config nor WALBUST_CONFIG names one.
const DefaultFile = "walbust.yaml"

// Loader registers the configuration flags on a FlagSet and builds the
// Config once the flags are parsed.
type Loader struct {
	cfg        *Config
	configPath string
	flags      *flag.FlagSet
	registered map[string]bool // flag names of the settings on flags
	// discover: with no --config or WALBUST_CONFIG, read ./walbust.yaml
	// when there is one.
	discover bool
	used     string // the config file read ("" none)
	warnings []string
}

// NewLoader registers --config and the flags of every setting on fs.
func NewLoader(fs *flag.FlagSet) *Loader { return NewLoaderFor(fs, GroupAll) }

// NewLoaderFor registers --config and the flags of the settings in groups,
// typed (duration, int, bool, string) and with their defaults, so that
// fs.PrintDefaults documents them. A flag given on the command line wins
// over the environment and the file; one not given overrides neither.
func NewLoaderFor(fs *flag.FlagSet, groups Group) *Loader {
	l := &Loader{cfg: Defaults(), flags: fs, registered: map[string]bool{}}
	fs.StringVar(&l.configPath, "config", os.Getenv("WALBUST_CONFIG"), "path to walbust.yaml (env WALBUST_CONFIG)")
	for _, s := range l.cfg.settings() {
		if s.group()&groups == 0 {
			continue
		}
		l.registered[s.flag] = true
		usage := fmt.Sprintf("%s (env %s, yaml %s)", s.usage, s.env, s.path)
		// The defaults registered are Defaults()' values: l.cfg holds
		// them until Load.
		switch {
		case s.dur != nil:
			fs.Duration(s.flag, *s.dur, usage)
		case s.num != nil:
			fs.Int(s.flag, *s.num, usage)
		case s.boolean != nil:
			fs.Bool(s.flag, *s.boolean, usage)
		case s.list != nil:
			fs.String(s.flag, strings.Join(*s.list, ","), usage)
		default:
			fs.String(s.flag, *s.str, usage)
		}
	}
	return l
}

// Discover makes Load read ./walbust.yaml when neither --config nor
// WALBUST_CONFIG names a file.
func (l *Loader) Discover() {
	l.discover = true
	if f := l.flags.Lookup("config"); f != nil {
		f.Usage = "path to walbust.yaml (env WALBUST_CONFIG; neither given: ./" + DefaultFile + " when there is one)"
	}
}

// File is the config file Load read, "" when none.
func (l *Loader) File() string { return l.used }

// Load reads the file (if any), then the environment, then the flags set on
// the command line. lookupEnv is os.LookupEnv outside tests.
func (l *Loader) Load(lookupEnv func(string) (string, bool)) (*Config, error) {
	cfg := l.cfg
	base := "."
	explicit := map[string]bool{} // settings given in the file, env or flags
	path := l.configPath
	if path == "" && l.discover {
		if _, err := os.Stat(DefaultFile); err == nil {
			path = DefaultFile
		}
	}
	if path != "" {
		if err := cfg.readFile(path, explicit); err != nil {
			return nil, err
		}
		base = filepath.Dir(path)
		l.used = path
	}
	setOnCLI := map[string]bool{}
	l.flags.Visit(func(f *flag.Flag) {
		if l.registered[f.Name] {
			setOnCLI[f.Name] = true
		}
	})
	origins := map[string]origin{}
	for _, s := range cfg.settings() {
		raw, source, ok := "", "", false
		if setOnCLI[s.flag] {
			// The flag's value as text: durations, ints and booleans print
			// in the form set parses.
			raw, source, ok = l.flags.Lookup(s.flag).Value.String(), "flag --"+s.flag, true
			origins[s.path] = fromFlag
		} else if v, found := lookupEnv(s.env); found {
			raw, source, ok = v, "environment variable "+s.env, true
			origins[s.path] = fromEnv
		}
		if ok {
			if err := s.set(raw); err != nil {
				return nil, fmt.Errorf("%s: %w", source, err)
			}
			explicit[s.path] = true
			continue
		}
		if s.file && *s.str != "" && !filepath.IsAbs(*s.str) {
			// Relative paths from the file, and defaults, mean "next to the
			// config file", so a config works from any working directory.
			// Flags and environment variables stay relative to the shell's.
			*s.str = filepath.Join(base, *s.str)
		}
	}
	cfg.Redis.applyModeDefaults(explicit)
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	l.warnings = append(commandLineSecrets(cfg.settings(), setOnCLI), cfg.secretConflicts(origins)...)
	if err := cfg.applyPasswordFiles(origins); err != nil {
		return nil, err
	}
	if cfg.Shard != "" {
		return cfg.ForShard(cfg.Shard)
	}
	return cfg, nil
}

func (s setting) set(raw string) error {
	if s.dur != nil {
		d, err := time.ParseDuration(raw)
		if err != nil {
			return fmt.Errorf("invalid duration %q: %w", raw, err)
		}
		*s.dur = d
		return nil
	}
	if s.boolean != nil {
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return fmt.Errorf("invalid boolean %q (true or false)", raw)
		}
		*s.boolean = b
		return nil
	}
	if s.list != nil {
		*s.list = nil
		for _, v := range strings.Split(raw, ",") {
			if v = strings.TrimSpace(v); v != "" {
				*s.list = append(*s.list, v)
			}
		}
		return nil
	}
	if s.num != nil {
		n, err := strconv.Atoi(raw)
		if err != nil {
			return fmt.Errorf("invalid integer %q", raw)
		}
		*s.num = n
		return nil
	}
	*s.str = raw
	return nil
}

// readFile applies the YAML file, recording in seen the paths it sets.
func (c *Config) readFile(path string, seen map[string]bool) error {
	doc, err := yamlnode.ReadFile(path)
	if err != nil {
		return err
	}
	byPath := map[string]setting{}
	sections := map[string][]string{}
	for _, s := range c.settings() {
		byPath[s.path] = s
		section, key, nested := strings.Cut(s.path, ".")
		if nested {
			sections[section] = append(sections[section], key)
		} else {
			sections[s.path] = nil
		}
	}
	top := make([]string, 0, len(sections)+1)
	for k := range sections {
		top = append(top, k)
	}
	top = append(top, "shards")
	apply := func(f yamlnode.Field) {
		s := byPath[f.Path]
		if s.list != nil && f.Value.Kind == yaml.SequenceNode {
			vals, _ := doc.Strings(f)
			*s.list = vals
			seen[f.Path] = true
			return
		}
		v, ok := doc.String(f)
		if !ok {
			return
		}
		if err := s.set(v); err != nil {
			doc.Errorf(f.Value, f.Path, "%v", err)
		}
		seen[f.Path] = true
	}
	for _, f := range doc.Mapping(doc.Root, "", top...) {
		if f.Path == "shards" {
			c.Shards = readShards(doc, f, filepath.Dir(path))
			continue
		}
		keys := sections[f.Path]
		if keys == nil {
			apply(f)
			continue
		}
		for _, sub := range doc.Mapping(f.Value, f.Path, keys...) {
			apply(sub)
		}
	}
	return doc.Errs.Err()
}

func (c *Config) validate() error {
	var errs []error
	required := map[string]string{
		"postgres.url": c.Postgres.URL, "postgres.slot": c.Postgres.Slot,
		"postgres.publication": c.Postgres.Publication, "redis.url": c.Redis.URL,
		"deps": c.Deps, "checkpoint.path": c.Checkpoint.Path,
	}
	for _, s := range c.settings() {
		if v, ok := required[s.path]; ok && v == "" {
			errs = append(errs, fmt.Errorf("%s (--%s, %s) must not be empty", s.path, s.flag, s.env))
		}
	}
	if !validIdentifier(c.Postgres.Slot) {
		errs = append(errs, fmt.Errorf("postgres.slot %q: use lower-case letters, digits and underscores", c.Postgres.Slot))
	}
	if c.Postgres.HeartbeatInterval < 0 {
		errs = append(errs, fmt.Errorf("postgres.heartbeat_interval must not be negative"))
	}
	if c.Postgres.StatusInterval <= 0 {
		errs = append(errs, fmt.Errorf("postgres.status_interval must be positive"))
	}
	if c.OnSlotLoss != "fail" && c.OnSlotLoss != "resync" {
		errs = append(errs, fmt.Errorf("on_slot_loss %q: must be fail or resync", c.OnSlotLoss))
	}
	if c.MaxTxChanges < 1000 {
		errs = append(errs, fmt.Errorf("max_tx_changes %d: must be at least 1000", c.MaxTxChanges))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("shutdown_timeout must be positive"))
	}
	if c.Checkpoint.RetryTimeout <= 0 {
		errs = append(errs, fmt.Errorf("checkpoint.retry_timeout must be positive"))
	}
	if !validIdentifier(c.Postgres.Publication) {
		errs = append(errs, fmt.Errorf("postgres.publication %q: use lower-case letters, digits and underscores", c.Postgres.Publication))
	}
	if c.Log.Format != "json" && c.Log.Format != "console" {
		errs = append(errs, fmt.Errorf("log.format %q: must be json or console", c.Log.Format))
	}
	errs = append(errs, c.Redis.validate()...)
	errs = append(errs, c.Replicas.validate()...)
	errs = append(errs, c.validateShards()...)
	return errors.Join(errs...)
}

// validIdentifier is Postgres's rule for replication slot names.
func validIdentifier(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}

// Key describes one setting: its walbust.yaml path, flag and environment
// variable.
type Key struct {
	Path, Flag, Env string
}

// Keys lists every setting, then the per-shard fields of shards (with the
// path "shards.NAME.field"; they have no flag or environment variable).
func Keys() []Key {
	var out []Key
	for _, s := range Defaults().settings() {
		out = append(out, Key{Path: s.path, Flag: s.flag, Env: s.env})
	}
	for _, f := range shardFields {
		out = append(out, Key{Path: "shards.NAME." + f})
	}
	return out
}
