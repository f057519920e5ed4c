package validate

import (
	"fmt"

	"github.com/walbust/walbust/mapping"
)

// Cluster lists the templates whose action cannot be atomic on a Redis
// Cluster, and why. A Lua script may only touch keys of one hash slot, and
// the stale action's script touches the key and its stale copy: they share
// a slot only when the key carries a hash tag (see
// mapping.Template.HasHashTag). delete (one UNLINK per slot) and bump (one
// key, the version key) need none.
//
// walbust still applies the others, without a script: these are warnings.
//
// A refresh rule's script touches the key and its LSN key ({key}:lsn),
// which share a slot only when the key has a hash tag too; without one,
// walbust removes the key instead of refreshing it (invalidator's
// batch.refresh), so readers miss and reload on every change, the very
// stampede refresh is for. Those are warned about as well.
func Cluster(reg *mapping.Registry) Problems {
	var ps Problems
	for _, name := range reg.Names() {
		t := reg.Tables[name]
		ps = append(ps, refreshCluster(reg, name, t)...)
		if t.Action.Action != mapping.Stale {
			continue
		}
		rules := t.Rules
		if t.OnTruncate != nil {
			rules = append(append([]*mapping.Rule(nil), rules...), t.OnTruncate)
		}
		for _, r := range rules {
			check := func(tmpl *mapping.Template, pattern bool) {
				if tmpl.HasHashTag(pattern) {
					return
				}
				what := "its keys"
				if pattern {
					what = "the keys it matches"
				}
				ps = append(ps, Problem{File: reg.File, Line: tmpl.Line, Column: tmpl.Column, Msg: fmt.Sprintf(
					"%s %s: in cluster mode the stale action on %q cannot be atomic: %s have no hash tag, so a key and its stale copy (%s) "+
						"can hash to different slots, which one script cannot touch; walbust moves the value with DUMP, RESTORE and UNLINK instead, "+
						"and a value cached in between goes without a stale copy. For one atomic script, give the key a hash tag, e.g. %q",
					name, r.Name, tmpl.Source, what, t.Action.StaleKey, "{{"+tmpl.Source+"}}")})
			}
			for _, k := range r.Keys {
				check(k, false)
			}
			for _, p := range r.Patterns {
				check(p, true)
			}
		}
	}
	return ps
}

// refreshCluster warns about the keys of t's refresh rules that have no
// hash tag: a key and its LSN key could hash to different slots.
func refreshCluster(reg *mapping.Registry, name string, t *mapping.Table) Problems {
	var ps Problems
	for _, r := range t.Rules {
		if r.Refresh == nil {
			continue
		}
		for _, k := range r.Keys {
			if k.HasHashTag(false) {
				continue
			}
			ps = append(ps, Problem{File: reg.File, Line: k.Line, Column: k.Column, Msg: fmt.Sprintf(
				"%s %s: in cluster mode %q cannot be refreshed: it has no hash tag, so a key and its LSN key (%s) can hash to different slots, "+
					"which the refresh script cannot touch together; walbust removes the key instead of refreshing it (readers miss and reload it on every change). "+
					"Give the key a hash tag, e.g. %q, and read it with MGET key key:lsn",
				name, r.Name, k.Source, mapping.LSNKey, "{{"+k.Source+"}}")})
		}
	}
	return ps
}
