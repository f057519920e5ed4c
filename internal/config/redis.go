package config

import (
	"fmt"
	"net/url"
	"strings"
)

// applyModeDefaults gives the settings whose default depends on the mode
// theirs, where explicit (dotted paths given in the file, environment or
// flags) does not say otherwise.
//
// wait_replicas: Redis replicates asynchronously, so with Sentinel or a
// cluster an invalidation the master acknowledged just before it died can
// be missing on the replica promoted in its place, and the stale value it
// removed is back. Waiting for one replica closes that window; the price
// is that a master with no replica in sync holds the stream (visibly:
// /readyz says why) until one is.
func (r *Redis) applyModeDefaults(explicit map[string]bool) {
	if !explicit["redis.wait_replicas"] && (r.Mode == ModeSentinel || r.Mode == ModeCluster) {
		r.WaitReplicas = 1
	}
}

// checkRedisScheme: without a scheme, "host:6379" parses as scheme "host"
// and fails later with a puzzling message, or not at all. The URL is not
// shown: it may hold a password.
func checkRedisScheme(raw string) error {
	if raw == "" {
		return nil // reported as required
	}
	scheme, _, ok := strings.Cut(raw, "://")
	if !ok {
		return fmt.Errorf("redis.url has no scheme: write it as redis://HOST:PORT/DB (rediss:// for TLS; user and password as redis://USER:PASSWORD@HOST:PORT/DB, or in redis.password_file)")
	}
	switch strings.ToLower(scheme) {
	case "redis", "rediss", "unix":
		return nil
	}
	if strings.ContainsAny(scheme, "@:/") {
		scheme = "(not shown)"
	}
	return fmt.Errorf("redis.url scheme %s: want redis:// (or rediss:// for TLS)", scheme)
}

// validate checks the Redis settings that depend on the mode.
func (r Redis) validate() []error {
	var errs []error
	switch r.Mode {
	case ModeStandalone, ModeCluster, ModeSentinel:
	default:
		errs = append(errs, fmt.Errorf("redis.mode %q: must be standalone, cluster or sentinel", r.Mode))
	}
	if r.WaitReplicas < 0 {
		errs = append(errs, fmt.Errorf("redis.wait_replicas %d: must not be negative", r.WaitReplicas))
	}
	if (r.CertFile == "") != (r.KeyFile == "") {
		errs = append(errs, fmt.Errorf("redis.tls_cert_file and redis.tls_key_file go together: set both (--redis-tls-cert-file, --redis-tls-key-file) or neither"))
	}
	if r.Mode != ModeSentinel {
		if r.SentinelMaster != "" {
			errs = append(errs, fmt.Errorf("redis.sentinel_master is set but redis.mode is %s (set redis.mode: sentinel)", r.Mode))
		}
		if r.SentinelPasswordFile != "" {
			errs = append(errs, fmt.Errorf("redis.sentinel_password_file is set but redis.mode is %s (set redis.mode: sentinel)", r.Mode))
		}
	}
	if err := checkRedisScheme(r.URL); err != nil {
		return append(errs, err)
	}
	// A malformed URL is reported by the Redis client, which knows how to
	// say so without echoing a password; only the mode's rules are checked
	// here.
	u, err := url.Parse(r.URL)
	if err != nil {
		return errs
	}
	switch r.Mode {
	case ModeCluster:
		if p := u.Path; p != "" && p != "/" && p != "/0" {
			errs = append(errs, fmt.Errorf("redis.url: a Redis Cluster has only database 0, but the URL's path is %q", p))
		}
	case ModeSentinel:
		inURL := u.Query().Get("master_name")
		switch {
		case r.SentinelMaster == "" && inURL == "":
			errs = append(errs, fmt.Errorf("redis.mode sentinel needs the master's name: set redis.sentinel_master (--redis-sentinel-master, WALBUST_REDIS_SENTINEL_MASTER)"))
		case r.SentinelMaster != "" && inURL != "" && inURL != r.SentinelMaster:
			errs = append(errs, fmt.Errorf("redis.sentinel_master %q and the URL's master_name %q differ", r.SentinelMaster, inURL))
		}
	}
	return errs
}
