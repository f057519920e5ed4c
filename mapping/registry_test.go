package mapping_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/walbust/walbust/internal/yamlnode"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication/wal"
)

// exampleDeps is the deps.yaml of the original design, verbatim: it must load as
// written. The e2e tests read the same file.
var exampleDeps = mustRead("testdata/example.deps.yaml")

func mustRead(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		panic(err) // a missing test fixture is a broken checkout
	}
	return string(data)
}

func sources(ts []*mapping.Template) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.Source)
	}
	return out
}

func refNames(rs []mapping.Ref) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Name)
	}
	return out
}

func TestParseExampleDeps(t *testing.T) {
	reg, err := mapping.Parse("deps.yaml", []byte(exampleDeps))
	if err != nil {
		t.Fatalf("the example deps.yaml does not load:\n%v", err)
	}
	if reg.File != "deps.yaml" {
		t.Errorf("File = %q", reg.File)
	}
	if got, want := reg.Names(), []string{"public.products", "public.settings", "public.users"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Names() = %q, want %q", got, want)
	}

	users := reg.Tables["public.users"]
	if users.Name != "public.users" || users.Line != 5 || users.Column != 3 {
		t.Errorf("users at %s %d:%d, want public.users 5:3", users.Name, users.Line, users.Column)
	}
	if users.Action.Action != mapping.Delete {
		t.Errorf("users action %v, want delete", users.Action.Action)
	}
	all := []wal.Op{wal.Insert, wal.Update, wal.Delete}
	type ruleWant struct {
		name        string
		line, col   int
		keys        []string
		patterns    []string
		whenChanged []string
		sql         string
		args        []string
	}
	wantRules := []ruleWant{
		{name: "keys", line: 6, col: 5, keys: []string{"user:{id}", "user:{id}:profile", "user-by-email:{email}"}},
		{name: "derived[0]", line: 11, col: 9, keys: []string{"team:{team_id}:members", "leaderboard:global"}, whenChanged: []string{"name", "team_id"}},
		{name: "derived[1]", line: 13, col: 9, patterns: []string{"search:users:{name}:*"}},
		{name: "derived[2]", line: 15, col: 9, keys: []string{"team:{team_id}:members"},
			sql: "SELECT team_id FROM team_members WHERE user_id = $1", args: []string{"id"}},
	}
	if len(users.Rules) != len(wantRules) {
		t.Fatalf("users has %d rules, want %d", len(users.Rules), len(wantRules))
	}
	for i, w := range wantRules {
		r := users.Rules[i]
		if r.Name != w.name || r.Line != w.line || r.Column != w.col {
			t.Errorf("rule %d is %s at %d:%d, want %s at %d:%d", i, r.Name, r.Line, r.Column, w.name, w.line, w.col)
		}
		if got := sources(r.Keys); !reflect.DeepEqual(got, w.keys) {
			t.Errorf("%s keys %q, want %q", w.name, got, w.keys)
		}
		if got := sources(r.Patterns); !reflect.DeepEqual(got, w.patterns) {
			t.Errorf("%s patterns %q, want %q", w.name, got, w.patterns)
		}
		if got := refNames(r.WhenChanged); !reflect.DeepEqual(got, w.whenChanged) {
			t.Errorf("%s when_changed %q, want %q", w.name, got, w.whenChanged)
		}
		for _, op := range all {
			if !r.On.Has(op) {
				t.Errorf("%s does not serve %v", w.name, op)
			}
		}
		if r.On.Has(wal.Truncate) {
			t.Errorf("%s serves truncate", w.name)
		}
		switch {
		case w.sql == "" && r.Query != nil:
			t.Errorf("%s has query %q", w.name, r.Query.SQL)
		case w.sql != "" && r.Query == nil:
			t.Errorf("%s has no query", w.name)
		case w.sql != "":
			if r.Query.SQL != w.sql || !reflect.DeepEqual(refNames(r.Query.Args), w.args) {
				t.Errorf("%s query %q args %q, want %q %q", w.name, r.Query.SQL, refNames(r.Query.Args), w.sql, w.args)
			}
			if r.Query.Line != 15 || r.Query.Column != 16 {
				t.Errorf("query at %d:%d, want 15:16", r.Query.Line, r.Query.Column)
			}
		}
	}
	if k := users.Rules[0].Keys[2]; k.Line != 9 || k.Column != 9 {
		t.Errorf("template %q at %d:%d, want 9:9", k.Source, k.Line, k.Column)
	}
	if k := users.Rules[1].Keys[1]; k.Line != 11 || k.Column != 42 {
		t.Errorf("template %q at %d:%d, want 11:42", k.Source, k.Line, k.Column)
	}
	if wc := users.Rules[1].WhenChanged[1]; wc.Line != 12 || wc.Column != 30 {
		t.Errorf("when_changed %q at %d:%d, want 12:30", wc.Name, wc.Line, wc.Column)
	}
	if got, want := users.Columns(), []string{"email", "id", "name", "team_id"}; !reflect.DeepEqual(got, want) {
		t.Errorf("users.Columns() = %q, want %q", got, want)
	}
	if tr := users.OnTruncate; tr == nil {
		t.Error("users has no on_truncate")
	} else if got, want := sources(tr.Patterns), []string{"user:*", "user-by-email:*", "search:users:*"}; !reflect.DeepEqual(got, want) || len(tr.Keys) != 0 {
		t.Errorf("on_truncate patterns %q keys %q, want %q and none", got, sources(tr.Keys), want)
	}

	products := reg.Tables["public.products"]
	if products.Action.Action != mapping.Bump || products.Action.VersionKey.For("product:1") != "product:1:version" {
		t.Errorf("products action %v version key %v", products.Action.Action, products.Action.VersionKey)
	}
	if products.OnTruncate != nil {
		t.Error("products has on_truncate")
	}

	settings := reg.Tables["public.settings"]
	if settings.Action.Action != mapping.Stale || settings.Action.StaleTTL != 10*time.Minute ||
		settings.Action.StaleKey.For("master-data") != "master-data:stale" {
		t.Errorf("settings action %+v", settings.Action)
	}
	if got := sources(settings.Rules[0].Keys); !reflect.DeepEqual(got, []string{"master-data"}) {
		t.Errorf("settings keys %q", got)
	}

	// The two tables without on_truncate are warned about, with positions.
	wantWarn := []string{"deps.yaml:20:3: public.products has no on_truncate", "deps.yaml:23:3: public.settings has no on_truncate"}
	if len(reg.Warnings) != len(wantWarn) {
		t.Fatalf("warnings %q, want %d", reg.Warnings, len(wantWarn))
	}
	for _, w := range wantWarn {
		found := false
		for _, got := range reg.Warnings {
			found = found || strings.HasPrefix(got, w)
		}
		if !found {
			t.Errorf("no warning starting %q in %q", w, reg.Warnings)
		}
	}
}

func TestParseActions(t *testing.T) {
	tests := []struct {
		name       string
		yaml       string
		action     mapping.Action
		ttl        time.Duration
		versionKey string // For("k")
		staleKey   string // For("k")
		fenceTTL   time.Duration
	}{
		{"default is delete", `
version: 1
tables:
  public.t:
    keys: ["k"]
`, mapping.Delete, 10 * time.Minute, "k:version", "k:stale", time.Minute},
		{"defaults apply to tables", `
version: 1
defaults:
  action: bump
  version_key: "v:{key}"
tables:
  public.t:
    keys: ["k"]
`, mapping.Bump, 10 * time.Minute, "v:k", "k:stale", time.Minute},
		{"defaults after tables still apply", `
version: 1
tables:
  public.t:
    keys: ["k"]
defaults:
  action: stale
  stale_ttl: 30s
  stale_key: "old:{key}:x"
`, mapping.Stale, 30 * time.Second, "k:version", "old:k:x", time.Minute},
		{"table overrides defaults", `
version: 1
defaults:
  action: stale
  stale_ttl: 1h
tables:
  public.t:
    action: bump
    version_key: "{key}:ver"
    keys: ["k"]
`, mapping.Bump, time.Hour, "k:ver", "k:stale", time.Minute},
		{"stale with ttl", `
version: 1
tables:
  public.t:
    action: stale
    stale_ttl: 1m30s
    stale_key: "{key}:last-good"
    keys: ["k"]
`, mapping.Stale, 90 * time.Second, "k:version", "k:last-good", time.Minute},
		{"fence with the default fence_ttl", `
version: 1
tables:
  public.t:
    action: fence
    keys: ["k"]
`, mapping.Fence, 10 * time.Minute, "k:version", "k:stale", 60 * time.Second},
		{"fence_ttl in defaults", `
version: 1
defaults:
  action: fence
  fence_ttl: 2m
tables:
  public.t:
    keys: ["k"]
`, mapping.Fence, 10 * time.Minute, "k:version", "k:stale", 2 * time.Minute},
		{"table fence_ttl overrides defaults", `
version: 1
defaults:
  fence_ttl: 2m
tables:
  public.t:
    action: fence
    fence_ttl: 1500ms
    keys: ["k"]
`, mapping.Fence, 10 * time.Minute, "k:version", "k:stale", 1500 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg, err := mapping.Parse("deps.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			a := reg.Tables["public.t"].Action
			if a.Action != tt.action || a.StaleTTL != tt.ttl || a.VersionKey.For("k") != tt.versionKey || a.StaleKey.For("k") != tt.staleKey || a.FenceTTL != tt.fenceTTL {
				t.Errorf("got %v ttl %v version %q stale %q fence_ttl %v; want %v %v %q %q %v", a.Action, a.StaleTTL,
					a.VersionKey.For("k"), a.StaleKey.For("k"), a.FenceTTL, tt.action, tt.ttl, tt.versionKey, tt.staleKey, tt.fenceTTL)
			}
		})
	}
}

func TestParseOn(t *testing.T) {
	reg, err := mapping.Parse("deps.yaml", []byte(`version: 1
tables:
  public.t:
    derived:
      - keys: ["a:{id}"]
        on: [insert]
      - keys: ["b:{id}"]
        on: [update, delete]
`))
	if err != nil {
		t.Fatal(err)
	}
	rules := reg.Tables["public.t"].Rules
	if got := rules[0].On.String(); got != "insert" {
		t.Errorf("on = %q, want insert", got)
	}
	if got := rules[1].On.String(); got != "update,delete" {
		t.Errorf("on = %q, want update,delete", got)
	}
}

// parseErrors parses src, which must fail, and returns its errors.
func parseErrors(t *testing.T, src string) yamlnode.Errors {
	t.Helper()
	reg, err := mapping.Parse("deps.yaml", []byte(src))
	if err == nil {
		t.Fatalf("Parse succeeded with %d tables, want an error", len(reg.Tables))
	}
	if reg != nil {
		t.Errorf("Parse returned a registry with its error")
	}
	var errs yamlnode.Errors
	var one *yamlnode.Error
	switch {
	case errors.As(err, &errs):
	case errors.As(err, &one):
		errs = yamlnode.Errors{one}
	default:
		t.Fatalf("error is a %T, not yamlnode.Errors: %v", err, err)
	}
	for _, e := range errs {
		if !strings.HasPrefix(e.Error(), "deps.yaml") {
			t.Errorf("error %q does not start with the file name", e)
		}
	}
	return errs
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name      string
		yaml      string
		line, col int
		want      string // substring of the message
	}{
		// Unknown fields at every level.
		{"unknown top-level field", `version: 1
tabels: {}
tables:
  public.a:
    keys: ["a"]
`, 2, 1, `unknown field "tabels"`},
		{"unknown field in defaults", `version: 1
defaults:
  acton: delete
tables:
  public.a:
    keys: ["a"]
`, 3, 3, `unknown field "acton"`},
		{"unknown field in table", `version: 1
tables:
  public.a:
    keys: ["a"]
    kyes: ["b"]
`, 5, 5, `unknown field "kyes"`},
		{"unknown field in derived rule", `version: 1
tables:
  public.a:
    derived:
      - keys: ["a"]
        when_changd: [x]
`, 6, 9, `unknown field "when_changd"`},
		{"unknown field in on_truncate", `version: 1
tables:
  public.a:
    keys: ["a"]
    on_truncate:
      pattern: ["a*"]
`, 6, 7, `unknown field "pattern"`},
		{"duplicate table", `version: 1
tables:
  public.a:
    keys: ["a"]
  public.a:
    keys: ["b"]
`, 5, 3, "duplicate key"},
		{"duplicate field", `version: 1
tables:
  public.a:
    keys: ["a"]
    keys: ["b"]
`, 5, 5, "duplicate key"},

		// Actions.
		{"bad action", `version: 1
tables:
  public.a:
    keys: ["a"]
    action: purge
`, 5, 13, `unknown action "purge"`},
		{"bad default action", `version: 1
defaults:
  action: purge
tables:
  public.a:
    keys: ["a"]
`, 3, 11, `unknown action "purge"`},
		{"action not a string", `version: 1
tables:
  public.a:
    keys: ["a"]
    action: [delete]
`, 5, 13, "must be a string"},
		{"bad stale_ttl", `version: 1
tables:
  public.a:
    keys: ["a"]
    stale_ttl: soon
`, 5, 16, `got "soon"`},
		{"zero stale_ttl", `version: 1
tables:
  public.a:
    keys: ["a"]
    stale_ttl: 0s
`, 5, 16, "at least 1ms"},
		{"stale_ttl without unit", `version: 1
tables:
  public.a:
    keys: ["a"]
    stale_ttl: 10
`, 5, 16, `got "10"`},
		{"bad fence_ttl", `version: 1
tables:
  public.a:
    action: fence
    keys: ["a"]
    fence_ttl: 1 minute
`, 6, 16, `such as 60s, got "1 minute"`},
		{"zero fence_ttl", `version: 1
tables:
  public.a:
    keys: ["a"]
    fence_ttl: 0s
`, 5, 16, "at least 1ms"},
		{"negative default fence_ttl", `version: 1
defaults:
  fence_ttl: -5s
tables:
  public.a:
    keys: ["a"]
`, 3, 14, `got "-5s"`},
		{"negative default stale_ttl", `version: 1
defaults:
  stale_ttl: -1m
tables:
  public.a:
    keys: ["a"]
`, 3, 14, `got "-1m"`},
		{"version_key without {key}", `version: 1
tables:
  public.a:
    keys: ["a"]
    version_key: "v"
`, 5, 18, "must contain {key} exactly once"},
		{"version_key with {key} twice", `version: 1
tables:
  public.a:
    keys: ["a"]
    version_key: "{key}{key}"
`, 5, 18, "must contain {key} exactly once"},
		{"stale_key that is the key", `version: 1
tables:
  public.a:
    keys: ["a"]
    stale_key: "{key}"
`, 5, 16, "would be the key itself"},
		{"stale_key with a column", `version: 1
defaults:
  stale_key: "{key}:{id}"
tables:
  public.a:
    keys: ["a"]
`, 3, 14, "only {key} may be used"},

		// Version and tables.
		{"version 2", `version: 2
tables:
  public.a:
    keys: ["a"]
`, 1, 10, "unsupported version 2"},
		{"version not an integer", `version: one
tables:
  public.a:
    keys: ["a"]
`, 1, 10, "must be an integer"},
		// yaml.v3 decodes 1.5 into an int as 1; it must not pass as version 1.
		{"version 1.5", `version: 1.5
tables:
  public.a:
    keys: ["a"]
`, 1, 10, "must be an integer"},
		{"missing version", `tables:
  public.a:
    keys: ["a"]
`, 1, 1, "version: missing"},
		{"missing version after a comment", `# my deps
tables:
  public.a:
    keys: ["a"]
`, 2, 1, "version: missing"},
		{"missing tables", `version: 1
`, 1, 1, "tables: missing"},
		{"no tables", `version: 1
tables: {}
`, 2, 9, "no tables"},
		{"tables a list", `version: 1
tables: [public.a]
`, 2, 9, "must be a mapping"},
		{"root a list", `- version: 1
`, 1, 1, "must be a mapping"},
		{"table without rules", `version: 1
tables:
  public.a:
    action: delete
`, 3, 3, "no keys or derived rules"},

		// Table names.
		{"unqualified table", `version: 1
tables:
  users:
    keys: ["a"]
`, 3, 3, `table name "users" must be schema-qualified`},
		{"empty relation name", `version: 1
tables:
  public.:
    keys: ["a"]
`, 3, 3, "must be schema-qualified"},
		{"empty schema", `version: 1
tables:
  .users:
    keys: ["a"]
`, 3, 3, "must be schema-qualified"},
		{"three-part name", `version: 1
tables:
  db.public.users:
    keys: ["a"]
`, 3, 3, "must be schema-qualified"},
		{"unclosed quote in a table name", `version: 1
tables:
  public."a.b:
    keys: ["a"]
`, 3, 3, "unclosed quote"},
		{"one table under two spellings", `version: 1
tables:
  public.users:
    keys: ["a"]
  '"public"."users"':
    keys: ["b"]
`, 5, 3, "names table public.users again (first at line 3)"},

		// Templates.
		{"unclosed brace", `version: 1
tables:
  public.a:
    keys: ["a:{id"]
`, 4, 12, "unclosed '{'"},
		{"unmatched brace", `version: 1
tables:
  public.a:
    keys:
      - "a"
      - "a:id}"
`, 6, 9, "unmatched '}'"},
		{"empty column reference", `version: 1
tables:
  public.a:
    derived:
      - patterns: ["a:{}:*"]
`, 5, 20, "empty column reference"},
		{"empty template", `version: 1
tables:
  public.a:
    keys: [""]
`, 4, 12, "empty template"},
		{"whitespace-only template", `version: 1
tables:
  public.a:
    keys: ["a:{id}", "   "]
`, 4, 22, "only whitespace"},
		{"keys not a list", `version: 1
tables:
  public.a:
    keys: "a:{id}"
`, 4, 11, "must be a list of strings"},
		{"key not a string", `version: 1
tables:
  public.a:
    keys: ["a", {b: c}]
`, 4, 17, "must be a string, got a mapping"},
		{"null key", `version: 1
tables:
  public.a:
    keys: ["a", ~]
`, 4, 17, "must be a string, got null"},
		{"on_truncate key with a column", `version: 1
tables:
  public.a:
    keys: ["a:{id}"]
    on_truncate:
      keys: ["user:{id}"]
`, 6, 14, "uses column {id}, but a TRUNCATE has no rows"},
		{"on_truncate pattern with a column", `version: 1
tables:
  public.a:
    keys: ["a:{id}"]
    on_truncate:
      patterns: ["x:*", "user:{id}:*"]
`, 6, 25, "uses column {id}"},
		{"on_truncate without keys or patterns", `version: 1
tables:
  public.a:
    keys: ["a"]
    on_truncate: {}
`, 5, 5, "needs keys or patterns"},
		{"on_truncate a list", `version: 1
tables:
  public.a:
    keys: ["a"]
    on_truncate: ["a*"]
`, 5, 18, "must be a mapping"},

		// Derived rules and queries.
		{"derived not a list", `version: 1
tables:
  public.a:
    derived: {keys: ["a"]}
`, 4, 14, "must be a list of rules"},
		{"derived rule not a mapping", `version: 1
tables:
  public.a:
    derived:
      - "a:{id}"
`, 5, 9, "must be a mapping"},
		{"derived rule with nothing to render", `version: 1
tables:
  public.a:
    derived:
      - when_changed: [a]
`, 5, 9, "needs keys, patterns or a query"},
		{"args without query", `version: 1
tables:
  public.a:
    derived:
      - keys: ["a"]
        args: [id]
`, 6, 9, "args only make sense with a query"},
		{"query without args", `version: 1
tables:
  public.a:
    derived:
      - query: "SELECT team_id FROM m WHERE user_id = $1"
        keys: ["team:{team_id}"]
`, 5, 9, "a query needs args"},
		{"query without keys", `version: 1
tables:
  public.a:
    derived:
      - query: "SELECT team_id FROM m WHERE user_id = $1"
        args: [id]
`, 5, 9, "needs keys or patterns to render over its result rows"},
		{"empty query", `version: 1
tables:
  public.a:
    keys: ["a"]
    derived:
      - query: "  "
        keys: ["b"]
`, 6, 16, "empty query"},
		{"query not a string", `version: 1
tables:
  public.a:
    derived:
      - query: [SELECT 1]
        args: [id]
        keys: ["b"]
`, 5, 16, "must be a string"},
		{"unknown operation", `version: 1
tables:
  public.a:
    derived:
      - keys: ["a"]
        on: [insert, truncate]
`, 6, 22, `unknown operation "truncate"`},
		{"empty when_changed name", `version: 1
tables:
  public.a:
    derived:
      - keys: ["a"]
        when_changed: [""]
`, 6, 24, "empty column name"},

		// Empty lists.
		{"empty keys", `version: 1
tables:
  public.a:
    keys: []
`, 4, 11, "empty list"},
		{"empty derived keys", `version: 1
tables:
  public.a:
    derived:
      - keys: []
`, 5, 15, "empty list"},
		{"empty patterns", `version: 1
tables:
  public.a:
    derived:
      - patterns: []
`, 5, 19, "empty list"},
		{"empty when_changed", `version: 1
tables:
  public.a:
    derived:
      - keys: ["a"]
        when_changed: []
`, 6, 23, "empty list"},
		{"empty on", `version: 1
tables:
  public.a:
    derived:
      - keys: ["a"]
        on: []
`, 6, 13, "must serve at least one operation"},
		{"empty on_truncate keys", `version: 1
tables:
  public.a:
    keys: ["a"]
    on_truncate:
      keys: []
`, 6, 13, "empty list"},
		{"empty on_truncate patterns", `version: 1
tables:
  public.a:
    keys: ["a"]
    on_truncate:
      patterns: []
`, 6, 17, "empty list"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := parseErrors(t, tt.yaml)
			pos := fmt.Sprintf("deps.yaml:%d:%d: ", tt.line, tt.col)
			for _, e := range errs {
				if s := e.Error(); strings.HasPrefix(s, pos) && strings.Contains(s, tt.want) {
					return
				}
			}
			t.Errorf("no error starting %q and containing %q; got:\n%v", pos, tt.want, errs)
		})
	}
}

// Every problem in a file is reported at once, each with its own position.
func TestParseReportsAllErrors(t *testing.T) {
	errs := parseErrors(t, `version: 3
tables:
  users:
    keys: ["a"]
  public.b:
    action: purge
    keys: ["b:{id"]
  public.c:
    keys: ["c"]
    derived:
      - keys: ["x"]
        args: [id]
`)
	want := []string{
		"deps.yaml:1:10: version: unsupported version 3",
		"deps.yaml:3:3: tables.users: table name",
		"deps.yaml:6:13: tables.public.b.action: unknown action",
		"deps.yaml:7:12: tables.public.b.keys[0]: template",
		"deps.yaml:12:9: tables.public.c.derived[0].args: args only make sense with a query",
	}
	if len(errs) != len(want) {
		t.Errorf("%d errors, want %d:\n%v", len(errs), len(want), errs)
	}
	for _, w := range want {
		found := false
		for _, e := range errs {
			found = found || strings.HasPrefix(e.Error(), w)
		}
		if !found {
			t.Errorf("no error starting %q in:\n%v", w, errs)
		}
	}
}

func TestParseSyntaxErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		line int // 0: yaml.v3 gives no line; -1: any line
	}{
		{"unclosed flow sequence", "version: 1\ntables:\n  public.a: [\n", 3},
		// yaml.v3 names the line of the enclosing block here (2), not of
		// the bad indentation (5): only require some line.
		{"bad indentation", "version: 1\ntables:\n  public.a:\n    keys: [a]\n   derived: []\n", -1},
		{"tab on the first line", "\tversion: 1\n", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := parseErrors(t, tt.yaml)
			if len(errs) != 1 {
				t.Fatalf("%d errors, want 1: %v", len(errs), errs)
			}
			e := errs[0]
			if tt.line == -1 && e.Line > 0 {
				tt.line = e.Line
			}
			if e.Line != tt.line || !strings.Contains(e.Msg, "invalid YAML") {
				t.Errorf("got %q (line %d), want an invalid YAML error at line %d", e, e.Line, tt.line)
			}
			if tt.line > 0 && !strings.HasPrefix(e.Error(), fmt.Sprintf("deps.yaml:%d:", tt.line)) {
				t.Errorf("error %q does not name line %d", e, tt.line)
			}
		})
	}
}

func TestParseEmpty(t *testing.T) {
	for _, src := range []string{"", "\n", "# only a comment\n"} {
		errs := parseErrors(t, src)
		if len(errs) != 1 || !strings.HasPrefix(errs[0].Error(), "deps.yaml: ") || !strings.Contains(errs[0].Msg, "empty registry") {
			t.Errorf("Parse(%q) = %v, want one empty registry error", src, errs)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "deps.yaml")
	if err := os.WriteFile(good, []byte(exampleDeps), 0o600); err != nil {
		t.Fatal(err)
	}
	reg, err := mapping.Load(good)
	if err != nil {
		t.Fatal(err)
	}
	if reg.File != good || len(reg.Tables) != 3 {
		t.Errorf("Load: file %q, %d tables", reg.File, len(reg.Tables))
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("version: 1\ntables:\n  users:\n    keys: [a]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := mapping.Load(bad); err == nil || !strings.HasPrefix(err.Error(), bad+":3:3: ") {
		t.Errorf("Load(bad) error %v, want it to start with %s:3:3", err, bad)
	}

	missing := filepath.Join(dir, "missing.yaml")
	if _, err := mapping.Load(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("Load(missing) error %v, want one naming the file", err)
	}
}

func TestParseAction(t *testing.T) {
	for _, a := range []mapping.Action{mapping.Delete, mapping.Bump, mapping.Stale} {
		got, err := mapping.ParseAction(a.String())
		if err != nil || got != a {
			t.Errorf("ParseAction(%q) = %v, %v", a.String(), got, err)
		}
	}
	for _, s := range []string{"", "Delete", "unlink", "bump "} {
		if _, err := mapping.ParseAction(s); err == nil {
			t.Errorf("ParseAction(%q) succeeded", s)
		}
	}
	if s := mapping.Action(0).String(); s != "unknown" {
		t.Errorf("Action(0).String() = %q", s)
	}
}

func TestRegistryOnly(t *testing.T) {
	reg, err := mapping.Parse("deps.yaml", []byte(`version: 1
tables:
  public.a:
    keys: ["a:{id}"]
  public.b:
    keys: ["b:{id}"]
    on_truncate:
      keys: ["b-all"]
  public.c:
    keys: ["c:{id}"]
`))
	if err != nil {
		t.Fatal(err)
	}
	sub, err := reg.Only([]string{"public.b", "public.c"})
	if err != nil {
		t.Fatal(err)
	}
	if got := sub.Names(); len(got) != 2 || got[0] != "public.b" || got[1] != "public.c" {
		t.Errorf("tables %v, want public.b public.c", got)
	}
	if len(sub.Warnings) != 1 || !strings.Contains(sub.Warnings[0], "public.c has no on_truncate") {
		t.Errorf("warnings %q, want only public.c's", sub.Warnings)
	}
	if len(reg.Tables) != 3 {
		t.Error("Only changed the registry it was called on")
	}
	if _, err := reg.Only([]string{"public.a", "public.x", "public.y"}); err == nil || !strings.Contains(err.Error(), "no table public.x, public.y") {
		t.Errorf("unknown tables: %v", err)
	}
}

// A table name with a dot in it is written quoted; the registry keys it by
// the one spelling wal.QualifiedName gives the relation.
func TestParseQuotedTableNames(t *testing.T) {
	reg := mustParse(t, `version: 1
tables:
  public."a.b":
    keys: ["ab:{id}"]
  '"my.schema".plain': # YAML needs the quotes of a key that starts with one
    keys: ["p:{id}"]
  '"public"."Users"':
    keys: ["u:{id}"]
`)
	want := map[string][2]string{
		`public."a.b"`:      {"public", "a.b"},
		`"my.schema".plain`: {"my.schema", "plain"},
		"public.Users":      {"public", "Users"},
	}
	if got := reg.Names(); len(got) != len(want) {
		t.Fatalf("tables %q, want %d", got, len(want))
	}
	for name, parts := range want {
		tb := reg.Tables[name]
		if tb == nil {
			t.Errorf("no table %s among %q", name, reg.Names())
			continue
		}
		if tb.Schema != parts[0] || tb.Relname != parts[1] || tb.Name != name {
			t.Errorf("%s: Name %q Schema %q Relname %q, want %q %q", name, tb.Name, tb.Schema, tb.Relname, parts[0], parts[1])
		}
		rel := &wal.Relation{Namespace: parts[0], Name: parts[1]}
		if rel.QualifiedName() != name {
			t.Errorf("relation (%q, %q) is called %q, not %q", parts[0], parts[1], rel.QualifiedName(), name)
		}
	}
}
