package mapping

import (
	"sort"

	"github.com/walbust/walbust/protocol"
)

// Glob is the Redis glob pattern of every key one template can produce:
// each column reference becomes "*" (a row value may hold any byte), a
// key template's literal text is glob-escaped (AppendGlobEscaped, as row
// values are in patterns), and a pattern template's literal text keeps its
// glob characters, as walbust's SCAN MATCH does.
type Glob struct {
	Pattern string
	Table   string // schema.table
	Rule    string // "keys", "derived[1]", "on_truncate"
	Source  string // the template as deps.yaml writes it
	// Companion is "" for the template's own keys, or "version" (bump's
	// version_key) or "stale" (stale's stale_key) for the keys walbust
	// derives from them.
	Companion string
}

// Glob returns the template's glob pattern (see Glob). A template not
// loaded from a registry is taken for a key template.
func (t *Template) Glob() string {
	return string(t.appendGlob(nil, t.pattern))
}

func (t *Template) appendGlob(dst []byte, pattern bool) []byte {
	for _, s := range t.segments {
		switch {
		case s.column != "":
			if len(dst) == 0 || dst[len(dst)-1] != '*' {
				dst = append(dst, '*')
			}
		case pattern:
			dst = append(dst, s.literal...)
		default:
			dst = AppendGlobEscaped(dst, []byte(s.literal))
		}
	}
	return dst
}

// Matcher tells which deps.yaml rule can produce a key.
type Matcher struct {
	globs []Glob // companions first, then direct keys
}

// NewMatcher collects the globs of every template and pattern of every
// rule of r (on_truncate included), then those of the companion keys of
// bump and stale tables.
func NewMatcher(r *Registry) *Matcher {
	m := &Matcher{}
	var companions []Glob
	names := make([]string, 0, len(r.Tables))
	for n := range r.Tables {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		t := r.Tables[n]
		rules := t.Rules
		if t.OnTruncate != nil {
			rules = append(append([]*Rule(nil), rules...), t.OnTruncate)
		}
		for _, rule := range rules {
			for _, tpl := range rule.Templates() {
				g := Glob{Pattern: tpl.Glob(), Table: t.Name, Rule: rule.Name, Source: tpl.Source}
				m.globs = append(m.globs, g)
				var f KeyFormat
				switch t.Action.Action {
				case Bump:
					f, g.Companion = t.Action.VersionKey, "version"
				case Stale:
					f, g.Companion = t.Action.StaleKey, "stale"
				default:
					continue
				}
				g.Pattern = string(AppendGlobEscaped(nil, []byte(f.Prefix))) + g.Pattern + string(AppendGlobEscaped(nil, []byte(f.Suffix)))
				companions = append(companions, g)
			}
		}
	}
	m.globs = append(companions, m.globs...)
	return m
}

// Globs returns every glob, companions first.
func (m *Matcher) Globs() []Glob { return m.globs }

// Match returns the first glob that matches key, companions first: a
// "{key}:version" key also matches "product:*", but it is the version key
// walbust keeps, not a cached value. ok is false when no rule can produce
// key.
func (m *Matcher) Match(key string) (g Glob, ok bool) {
	for _, g := range m.globs {
		if protocol.Match(g.Pattern, key) {
			return g, true
		}
	}
	return Glob{}, false
}
