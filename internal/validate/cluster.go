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
func Cluster(reg *mapping.Registry) Problems {
	var ps Problems
	for _, name := range reg.Names() {
		t := reg.Tables[name]
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
