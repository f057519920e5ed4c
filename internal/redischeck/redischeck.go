// Package redischeck checks, before walbust streams, that the Redis it is
// configured for is the kind redis.mode says, new enough, lets walbust's
// user run every command walbust will send, and will not evict what
// walbust writes. `walbust validate` prints the report; `walbust run`
// refuses to start on its problems and waits, saying so, while Redis is
// down.
package redischeck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/mapping"
)

// Options say what to check.
type Options struct {
	// Redis is how walbust connects (Mode, URL, SentinelMaster, CAFile)
	// and what it sends besides the actions (EventsChannel, WaitReplicas).
	Redis    invalidator.Options
	Registry *mapping.Registry
}

// Report is what Check found.
type Report struct {
	// Unreachable is why walbust could not talk to Redis at all: no
	// answer, or the connection refused (password, TLS). Nothing else was
	// checked. It may change without walbust (Redis restarts, a password
	// is rotated on the server first), so run waits rather than exits.
	Unreachable error
	// Problems make walbust fail batches or lose invalidations; each says
	// its fix.
	Problems []string
	// Warnings are risks walbust runs with.
	Warnings []string
	// Summary describes what answered, for the "ok" line.
	Summary string
}

// OK reports whether Redis answered and nothing is wrong.
func (r Report) OK() bool { return r.Unreachable == nil && len(r.Problems) == 0 }

// Check connects as walbust does and checks the server(s).
func Check(ctx context.Context, o Options) Report {
	var rep Report
	p, err := invalidator.NewProbe(o.Redis)
	if err != nil {
		rep.Problems = append(rep.Problems, err.Error())
		return rep
	}
	defer p.Close()
	mode := o.Redis.Mode
	if mode == "" {
		mode = invalidator.Standalone
	}
	seedInfo, err := p.Seed.Info(ctx, "server").Result()
	if err != nil {
		if rep.connectionFailed(err, p.SeedAddr) {
			return rep
		}
		if !isNoPerm(err) {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("redis at %s did not answer INFO (%v): redis.mode not checked", p.SeedAddr, err))
		}
	} else if !rep.checkMode(mode, p.SeedAddr, field(seedInfo, "redis_mode")) {
		return rep
	}
	masters, err := p.Masters(ctx)
	if err != nil {
		rep.connectionFailed(err, p.SeedAddr)
		return rep
	}
	addrs := make([]string, 0, len(masters))
	for a := range masters {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	cmds := commands(o.Registry, o.Redis)
	var versions []string
	for _, addr := range addrs {
		v, stop := rep.checkNode(ctx, masters[addr], addr, p.User, cmds, o)
		if stop {
			return rep
		}
		if v != "" {
			versions = append(versions, v)
		}
	}
	rep.Problems, rep.Warnings = unique(rep.Problems), unique(rep.Warnings)
	rep.Summary = fmt.Sprintf("%s, %d master(s), Redis %s, user %s", mode, len(addrs), strings.Join(unique(versions), "/"), p.User)
	return rep
}

// checkMode compares redis.mode with what the first address of redis.url
// says it is.
func (rep *Report) checkMode(mode, addr, server string) bool {
	if server == "" {
		return true // a proxy, or an old server: nothing to compare
	}
	want := mode
	if mode == invalidator.Sentinel {
		want = "sentinel" // redis.url names the sentinels
	}
	if server == want {
		return true
	}
	var fix string
	switch server {
	case "cluster":
		fix = "it is a Redis Cluster node: set redis.mode: cluster (redis.url then names seed nodes)"
	case "sentinel":
		fix = "it is a Sentinel: set redis.mode: sentinel and redis.sentinel_master to the master's name"
	default:
		fix = "it is a standalone server: set redis.mode: standalone"
		if mode == invalidator.Sentinel {
			fix += ", or point redis.url at the sentinels"
		}
	}
	rep.Problems = append(rep.Problems, fmt.Sprintf("redis.mode is %s but redis at %s reports redis_mode:%s: %s", mode, addr, server, fix))
	return false
}

// checkNode checks one master: version, eviction policy and ACL. stop is
// set when it did not answer.
func (rep *Report) checkNode(ctx context.Context, c *redis.Client, addr, user string, cmds []command, o Options) (version string, stop bool) {
	info, err := c.Info(ctx, "server", "memory").Result()
	switch {
	case err == nil:
		version = field(info, "redis_version")
		rep.checkVersion(addr, version, cmds)
		if policy := field(info, "maxmemory_policy"); strings.HasPrefix(policy, "allkeys-") {
			rep.Warnings = append(rep.Warnings, evictionWarning(addr, policy, o.Registry))
		}
	case isNoPerm(err) && initRefused(err) != "":
		// Every connection fails, whatever it is for: nothing else can be
		// learnt from this node.
		name := initRefused(err)
		rep.Problems = append(rep.Problems, fmt.Sprintf("redis user %s may not run %s at %s, which walbust's client sends on every new connection, so none works (%v): fix: ACL SETUSER %s +%s",
			user, strings.ToUpper(name), addr, err, user, name))
		return "", false
	case isNoPerm(err):
		// Reported with the other denied commands below.
	default:
		if rep.connectionFailed(err, addr) {
			return "", true
		}
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("redis at %s did not answer INFO (%v): version and maxmemory-policy not checked", addr, err))
	}
	rep.checkACL(ctx, c, addr, user, cmds, o)
	return version, false
}

func (rep *Report) checkVersion(addr, version string, cmds []command) {
	if version == "" {
		return
	}
	for _, c := range cmds {
		need, ok := minVersion[c.args[0]]
		if ok && olderThan(version, need) {
			rep.Problems = append(rep.Problems, fmt.Sprintf("redis at %s is version %s, older than %s, which %s needs for %s: upgrade Redis",
				addr, version, need, strings.ToUpper(c.args[0]), c.why))
		}
	}
}

// evictionWarning: under allkeys-*, Redis evicts walbust's own keys too.
func evictionWarning(addr, policy string, reg *mapping.Registry) string {
	return fmt.Sprintf("redis at %s has maxmemory-policy %s: when memory runs short it may evict walbust's tombstones (fence), "+
		"version keys (bump) and stale copies as readily as cache entries, and then a fill that read the database before a change "+
		"can write the old value back: the race walbust closes reopens. Use noeviction, or volatile-lru/volatile-lfu with a TTL on cache entries "+
		"(tombstones and stale copies have TTLs too, so size maxmemory to keep them)", addr, policy)
}

// connectionFailed records a failure to talk to Redis at all: unreachable
// (it may come back) or refused (credentials, TLS: it will not fix
// itself). It reports whether err was one.
func (rep *Report) connectionFailed(err error, addr string) bool {
	msg := err.Error()
	var why string
	switch {
	case strings.Contains(msg, "WRONGPASS") || strings.Contains(msg, "invalid username-password"):
		why = fmt.Sprintf("redis at %s refused walbust's user and password (%v): check redis.password_file or the URL's user:password "+
			"(of the two, the one given on the command line wins, then the environment, then walbust.yaml)", addr, err)
	case strings.Contains(msg, "NOAUTH"):
		why = fmt.Sprintf("redis at %s requires a password and walbust gave none (%v): set redis.password_file, or the URL's user", addr, err)
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		why = fmt.Sprintf("redis at %s does not speak TLS on that port (%v): use redis://, or the server's tls-port", addr, err)
	case strings.Contains(msg, "x509") || strings.Contains(msg, "tls:"):
		why = fmt.Sprintf("TLS with redis at %s failed (%v): check redis.tls_ca_file and that the server's certificate names the host in redis.url", addr, err)
	case isNetwork(err):
		hint := "check redis.url's host and port, and that Redis is running"
		if errors.Is(err, io.EOF) || strings.Contains(msg, "connection reset") {
			hint += "; if the server speaks TLS there, use rediss://"
		}
		why = fmt.Sprintf("redis at %s is not reachable (%v): %s", addr, err, hint)
	default:
		return false
	}
	rep.Unreachable = errors.New(why)
	return true
}

func isNetwork(err error) bool {
	var ne net.Error
	var oe *net.OpError
	return errors.As(err, &ne) || errors.As(err, &oe) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "connection reset") ||
		strings.Contains(err.Error(), "all sentinels") || strings.Contains(err.Error(), "i/o timeout")
}

// initRefused names the command of a connection's set-up (go-redis's
// CLIENT SETNAME, SELECT for a database other than 0) that err refuses.
func initRefused(err error) string {
	for _, name := range []string{"client|setname", "select"} {
		if strings.Contains(err.Error(), "'"+name+"'") {
			return name
		}
	}
	return ""
}

func isNoPerm(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOPERM") }

// field reads "name:value" from an INFO reply.
func field(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

// olderThan compares dotted versions numerically.
func olderThan(have, want string) bool {
	h, w := strings.Split(have, "."), strings.Split(want, ".")
	for i := 0; i < len(w); i++ {
		var hn int
		if i < len(h) {
			hn, _ = strconv.Atoi(h[i])
		}
		wn, _ := strconv.Atoi(w[i])
		if hn != wn {
			return hn < wn
		}
	}
	return false
}

func unique(ss []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
