package redischeck

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// verdict is what an ACL probe learnt of one command.
type verdict int

const (
	allowed verdict = iota
	denied
	unknown // the probe cannot tell
)

// prober answers for one command; ok is false when the probe itself is
// not available (not permitted, or too old a Redis).
type prober func(ctx context.Context, c command) (v verdict, reason string, ok bool)

// aclProbeScript asks Redis, inside a script run as walbust's user,
// whether that user may run a command (Redis 7).
const aclProbeScript = `return redis.acl_check_cmd(unpack(ARGV))`

// checkACL finds the commands walbust's user may not run, by the best
// probe available: ACL DRYRUN (Redis 7, needs +acl|dryrun), else
// redis.acl_check_cmd in a script (Redis 7, needs +script|load +evalsha,
// which the script actions need anyway), else running the harmless ones
// (on keys nobody caches). None of them changes data.
func (rep *Report) checkACL(ctx context.Context, c *redis.Client, addr, user string, cmds []command, _ Options) {
	probes := []prober{dryRun(c, user), scriptProbe(c), directProbe(c)}
	var unchecked, order []string
	type refusal struct {
		cmd    command
		reason string
		whys   []string
	}
	refused := map[string]*refusal{}
	for _, cmd := range cmds {
		v, reason := unknown, ""
		for len(probes) > 0 {
			var ok bool
			if v, reason, ok = probes[0](ctx, cmd); ok {
				break
			}
			probes = probes[1:] // not available: no use asking it again
		}
		switch v {
		case denied:
			key := cmd.aclName() + "\x00" + reason
			if refused[key] == nil {
				refused[key] = &refusal{cmd: cmd, reason: reason}
				order = append(order, key)
			}
			refused[key].whys = append(refused[key].whys, cmd.why)
		case unknown:
			unchecked = append(unchecked, strings.ToUpper(cmd.aclName()))
		}
	}
	for _, k := range order {
		r := refused[k]
		r.cmd.why = strings.Join(unique(r.whys), ", ")
		rep.Problems = append(rep.Problems, deniedProblem(addr, user, r.cmd, r.reason))
	}
	if len(unchecked) > 0 {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("redis at %s: could not check whether user %s may run %s: that needs Redis 7 and +acl|dryrun, or +script|load +evalsha; "+
			"check by hand with ACL DRYRUN %s <command> <args> as an admin", addr, user, strings.Join(unique(unchecked), ", "), user))
	}
}

func deniedProblem(addr, user string, cmd command, reason string) string {
	fix := "+" + cmd.aclName()
	switch {
	case strings.Contains(reason, "' key"):
		fix = "~* (or a key pattern matching " + cmd.args[1] + ")"
	case strings.Contains(reason, "' channel"):
		fix = "&" + cmd.args[1]
	}
	return fmt.Sprintf("redis user %s may not run %s at %s, which walbust sends for %s (%s): fix: ACL SETUSER %s %s (README \"Security\" has the minimal line per set of actions)",
		user, strings.ToUpper(cmd.aclName()), addr, cmd.why, strings.TrimSpace(reason), user, fix)
}

func dryRun(c *redis.Client, user string) prober {
	return func(ctx context.Context, cmd command) (verdict, string, bool) {
		args := []any{"acl", "dryrun", user}
		for _, a := range cmd.args {
			args = append(args, a)
		}
		reply, err := c.Do(ctx, args...).Text()
		switch {
		case err == nil && reply == "OK":
			return allowed, "", true
		case err == nil:
			return denied, reply, true
		case isNoPerm(err) && strings.Contains(err.Error(), "acl|dryrun"),
			strings.Contains(strings.ToLower(err.Error()), "unknown subcommand"), strings.Contains(err.Error(), "unknown command"):
			return unknown, "", false
		case strings.Contains(err.Error(), "not found"):
			return denied, err.Error(), true // the command does not exist in this Redis
		}
		return unknown, "", false
	}
}

func scriptProbe(c *redis.Client) prober {
	var sha string
	var loadErr error
	return func(ctx context.Context, cmd command) (verdict, string, bool) {
		if sha == "" && loadErr == nil {
			sha, loadErr = c.ScriptLoad(ctx, aclProbeScript).Result()
		}
		if loadErr != nil {
			return unknown, "", false
		}
		args := make([]any, len(cmd.args))
		for i, a := range cmd.args {
			args[i] = a
		}
		n, err := c.EvalSha(ctx, sha, nil, args...).Int()
		switch {
		case err == nil && n == 1:
			return allowed, "", true
		case errors.Is(err, redis.Nil):
			return denied, "the user's ACL does not allow it on these keys or channels", true
		case err != nil && strings.Contains(err.Error(), "Invalid command"):
			return denied, "this Redis has no such command", true
		}
		return unknown, "", false // Redis 6 has no acl_check_cmd; or no +evalsha
	}
}

// directProbe runs the commands that change nothing when their key is
// not there (and EVALSHA of a script that does not exist); the others it
// cannot tell.
func directProbe(c *redis.Client) prober {
	return func(ctx context.Context, cmd command) (verdict, string, bool) {
		args := make([]any, len(cmd.args))
		for i, a := range cmd.args {
			args[i] = a
		}
		switch cmd.args[0] {
		case "unlink", "scan", "exists", "type", "get", "dump", "wait", "ping", "info", "client", "cluster", "command":
		case "evalsha":
			args[1] = strings.Repeat("0", 40) // NOSCRIPT if allowed
		case "script":
			args = []any{"script", "load", "return 1"}
		default:
			return unknown, "", true
		}
		err := c.Do(ctx, args...).Err()
		switch {
		case isNoPerm(err):
			return denied, err.Error(), true
		case err == nil, errors.Is(err, redis.Nil), strings.HasPrefix(fmt.Sprint(err), "NOSCRIPT"):
			return allowed, "", true
		}
		return unknown, "", true
	}
}
