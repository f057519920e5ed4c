package validate

import (
	"fmt"
	"sort"

	"github.com/walbust/walbust/mapping"
)

// PatternPaths describes, one line per pattern of reg, how walbust finds
// the keys it matches and what that costs, for validate to print.
func PatternPaths(reg *mapping.Registry) []string {
	names := make([]string, 0, len(reg.Tables))
	for n := range reg.Tables {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []string
	for _, n := range names {
		t := reg.Tables[n]
		rules := append([]*mapping.Rule(nil), t.Rules...)
		if t.OnTruncate != nil {
			rules = append(rules, t.OnTruncate)
		}
		for _, r := range rules {
			for _, p := range r.Patterns {
				// Not in the file:line:column: form of problems: it is not one.
				out = append(out, fmt.Sprintf("pattern %q (%s:%d:%d, %s %s): path %s", p.Source, reg.File, p.Line, p.Column, t.Name, r.Name, PatternPath(p)))
			}
		}
	}
	return out
}

// PatternPath says in words how walbust finds a pattern's keys, and at
// what cost.
func PatternPath(p *mapping.Template) string {
	switch p.Path() {
	case "index":
		return "index: the family's index set (keys filled through cacheaside), cost O(matches), applied with the batch's direct keys for a delete rule outside a cluster, else by a pass; keys written by other means are not found"
	case "index+scan":
		return "index+scan: the family's index set, then SCAN for keys written by other means, cost O(matches) + one keyspace walk, shared by every pass under way"
	}
	return "scan: SCAN, one keyspace walk shared by every pass under way, cost O(keys in Redis)"
}
