package redischeck

import (
	"fmt"
	"sort"
	"strings"

	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
)

// command is one command walbust sends, with sample arguments whose keys
// look like the ones it will really touch, so that an ACL's key patterns
// (~...) and channels (&...) are checked too.
type command struct {
	args []string
	why  string // the feature that sends it
}

// aclName is the command's name as ACL rules spell it: "unlink",
// "script|load".
func (c command) aclName() string {
	switch c.args[0] {
	case "script", "client", "cluster":
		return c.args[0] + "|" + c.args[1]
	}
	return c.args[0]
}

// minVersion is the Redis release that introduced each command (or the
// form of it walbust sends); the rest are older than any Redis go-redis
// speaks to.
var minVersion = map[string]string{
	"unlink":  "4.0.0",
	"wait":    "3.0.0",
	"restore": "3.0.0", // REPLACE
	"scan":    "2.8.0",
}

// probeValue stands for every column in sample keys; a probe that
// touches a key (UNLINK of a key nobody caches) touches nothing.
const probeValue = "walbust-acl-probe"

type probeRow struct{}

func (probeRow) Text(string) ([]byte, bool) { return []byte(probeValue), true }

// commands lists what walbust sends for reg's actions, in the given mode,
// with the events channel ("" none) and replica waits.
func commands(reg *mapping.Registry, opts invalidator.Options) []command {
	sha := invalidator.ScriptSHA()
	var out []command
	add := func(why string, args ...string) { out = append(out, command{args: args, why: why}) }
	// action: refresh (refresh.lua), on the key and its LSN key.
	refresh := func(name, key string) {
		lkey := mapping.LSNKey.For(key)
		why := "refresh action (" + name + ")"
		add(why, "evalsha", sha, "2", key, lkey, "del", "0/1", "1", "x")
		add(why+", in its script", "get", lkey)
		add(why+", in its script", "set", key, "x", "px", "1")
		add(why+", in its script", "set", lkey, "0/1", "px", "1")
		add(why+", in its script", "del", key)
		add(why+", in its script", "pttl", key)
	}
	add("readiness", "ping")
	add("walbust's own checks", "info", "server")
	// go-redis names each connection (CLIENT SETNAME walbust) and refuses
	// to use it when that fails.
	add("naming its connections", "client", "setname", "walbust")
	if opts.Mode == invalidator.Cluster {
		add("learning the cluster's slots", "cluster", "slots")
		add("learning the cluster's slots", "command")
	}
	scripts := false
	for _, name := range reg.Names() {
		t := reg.Tables[name]
		rules := t.Rules
		if t.OnTruncate != nil {
			rules = append(append([]*mapping.Rule(nil), rules...), t.OnTruncate)
		}
		why := fmt.Sprintf("%s action (%s)", t.Action.Action, name)
		for _, r := range rules {
			if len(r.Patterns) > 0 {
				add("patterns ("+name+")", "scan", "0", "match", "*", "count", "1")
			}
			for _, p := range r.Patterns {
				if !p.Indexed {
					continue
				}
				// The family's index, drained by a script (see protocol.IndexDrainScript).
				scripts = true
				fam := probeValue + ":"
				idx, drain := protocol.IndexKey(fam), protocol.DrainingKey(fam)
				iwhy := "indexed patterns (" + name + ")"
				add(iwhy, "evalsha", invalidator.IndexDrainSHA(), "2", idx, drain, "1")
				for _, c := range [][]string{{"exists", idx}, {"sunionstore", drain, drain, idx}, {"del", idx}, {"pexpire", drain, "1"}, {"smembers", drain}} {
					add(iwhy+", in its script", c...)
				}
				add(iwhy, "unlink", drain)
				if t.Action.Action == mapping.Delete && !p.AlsoScan {
					// Outside a cluster, one script deletes the members
					// and the sets (invalidator.Inline).
					add(iwhy, "evalsha", invalidator.IndexUnlinkSHA(), "2", idx, drain)
					for _, c := range [][]string{{"sunion", idx, drain}, {"unlink", probeValue + ":x"}} {
						add(iwhy+", in its script", c...)
					}
				}
			}
			tmpls := append(append([]*mapping.Template(nil), r.Keys...), r.Patterns...)
			for _, tmpl := range tmpls {
				rendered, _ := tmpl.AppendRender(nil, probeRow{})
				key := string(rendered)
				if r.Refresh != nil {
					scripts = true
					refresh(name, key)
					continue
				}
				switch t.Action.Action {
				case mapping.Bump:
					scripts = true
					vkey := t.Action.VersionKey.For(key)
					add(why, "evalsha", sha, "1", vkey, "1")
					add(why+", in its script", "get", vkey)
					add(why+", in its script", "set", vkey, "1")
				case mapping.Stale:
					scripts = true
					skey := t.Action.StaleKey.For(key)
					add(why, "evalsha", sha, "2", key, skey, "1")
					add(why+", in its script", "exists", key)
					add(why+", in its script", "rename", key, skey)
					add(why+", in its script", "pexpire", skey, "1")
					if opts.Mode == invalidator.Cluster {
						add(why+", for keys whose stale copy is in another slot", "dump", key)
						add(why+", for keys whose stale copy is in another slot", "restore", skey, "1", "x", "replace")
						add(why+", for keys whose stale copy is in another slot", "unlink", key)
					}
				case mapping.Fence:
					scripts = true
					add(why, "evalsha", sha, "1", key, "1", "t", "1")
					add(why+", in its script", "type", key)
					add(why+", in its script", "get", key)
					add(why+", in its script", "set", key, "1", "px", "1")
				default:
					add(why, "unlink", key)
				}
			}
		}
	}
	if scripts {
		add("scripts, after a Redis restart or failover", "script", "load", "return 1")
	}
	if opts.Watermark != "" {
		add("the applied position, written with every batch", "set", opts.Watermark, "0/0")
		add("the applied position, read at start", "get", opts.Watermark)
	}
	if opts.EventsChannel != "" {
		add("events.channel", "publish", opts.EventsChannel, "x")
	}
	if opts.WaitReplicas > 0 {
		add("redis.wait_replicas", "wait", "0", "0")
	}
	return dedupe(out)
}

// dedupe keeps the first of each command with the same arguments.
func dedupe(cmds []command) []command {
	seen := map[string]bool{}
	var out []command
	for _, c := range cmds {
		k := strings.Join(c.args, "\x00")
		if !seen[k] {
			seen[k] = true
			out = append(out, c)
		}
	}
	return out
}

// MinimalACL is the ACL SETUSER line for the commands walbust sends for
// reg's actions, as README documents per set of actions. Keys and
// channels are left open (~* &channel): patterns scan every key.
func MinimalACL(user string, reg *mapping.Registry, opts invalidator.Options) string {
	names := map[string]bool{}
	for _, c := range commands(reg, opts) {
		names[c.aclName()] = true
	}
	var list []string
	for n := range names {
		list = append(list, "+"+n)
	}
	sort.Strings(list)
	channels := "resetchannels"
	if opts.EventsChannel != "" {
		channels += " &" + opts.EventsChannel
	}
	return fmt.Sprintf("ACL SETUSER %s on >PASSWORD resetkeys ~* %s -@all %s", user, channels, strings.Join(list, " "))
}
