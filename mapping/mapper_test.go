package mapping_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

func txt(s string) wal.Value {
	return wal.Value{Kind: wal.Text, Data: []byte(s)}
}

var (
	null      = wal.Value{Kind: wal.Null}
	missing   = wal.Value{Kind: wal.Missing}
	unchanged = wal.Value{Kind: wal.Unchanged}
)

func row(vs ...wal.Value) []wal.Value { return vs }

// relation builds a Relation; a column name ending in "*" is a key column.
func relation(id uint32, qualified string, identity byte, cols ...string) *wal.Relation {
	ns, name, _ := strings.Cut(qualified, ".")
	rel := &wal.Relation{ID: id, Namespace: ns, Name: name, ReplicaIdentity: identity}
	for _, c := range cols {
		key := strings.HasSuffix(c, "*")
		rel.Columns = append(rel.Columns, wal.Column{Name: strings.TrimSuffix(c, "*"), TypeOID: 25, Key: key})
	}
	return rel
}

func mustParse(t testing.TB, deps string) *mapping.Registry {
	t.Helper()
	reg, err := mapping.Parse("deps.yaml", []byte(deps))
	if err != nil {
		t.Fatalf("Parse:\n%v", err)
	}
	return reg
}

// describe prints an invalidation the way the tables below expect it.
func describe(inv mapping.Invalidation) string {
	var b strings.Builder
	b.WriteString(inv.Action.String())
	if inv.Pattern {
		b.WriteString(" pattern")
	}
	b.WriteString(" " + inv.Key)
	switch inv.Action {
	case mapping.Bump:
		fmt.Fprintf(&b, " v=%d aux=%s", inv.Version, inv.Aux.For(inv.Key))
	case mapping.Stale:
		fmt.Fprintf(&b, " ttl=%s aux=%s", inv.TTL, inv.Aux.For(inv.Key))
	case mapping.Fence:
		fmt.Fprintf(&b, " v=%d ttl=%s", inv.Version, inv.TTL)
	}
	return b.String()
}

func describeAll(p *mapping.Plan) []string {
	out := []string{}
	for _, inv := range p.Invalidations() {
		out = append(out, describe(inv))
	}
	return out
}

// fakeQuerier answers lookups from a table keyed by fmt.Sprint(args).
type fakeQuerier struct {
	cols    []string
	results map[string][][][]byte
	err     error
	calls   []string // "sql args" of every call
}

func (q *fakeQuerier) Lookup(_ context.Context, sql string, args []any) ([]string, [][][]byte, error) {
	q.calls = append(q.calls, sql+" "+fmt.Sprint(args))
	if q.err != nil {
		return nil, nil, q.err
	}
	return q.cols, q.results[fmt.Sprint(args)], nil
}

// oneChange is a transaction of c committed at commitLSN.
func oneChange(c wal.Change, commitLSN wal.LSN) *replication.Transaction {
	return &replication.Transaction{CommitLSN: commitLSN, EndLSN: commitLSN + 1, Changes: []wal.Change{c}}
}

func vals(vs ...string) [][]byte {
	out := make([][]byte, len(vs))
	for i, v := range vs {
		if v != "NULL" {
			out[i] = []byte(v)
		}
	}
	return out
}

const productsDeps = `version: 1
tables:
  public.products:
    keys: ["product:{id}", "category:{category_id}:products"]
`

const usersDeps = `version: 1
tables:
  public.users:
    derived:
      - keys: ["team:{team_id}:members"]
        when_changed: [name, team_id]
      - patterns: ["search:users:{name}:*"]
        on: [insert]
`

var (
	productsRel = relation(1, "public.products", 'd', "id*", "category_id", "name")
	usersRel    = relation(2, "public.users", 'd', "id*", "email", "name", "team_id")
)

type mapCase struct {
	name       string
	changes    []wal.Change
	want       []string
	unrendered int
	skipped    int
}

func runMapCases(t *testing.T, deps string, cases []mapCase) {
	t.Helper()
	reg := mustParse(t, deps)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := mapping.NewMapper(reg, nil)
			var plan mapping.Plan
			tx := &replication.Transaction{Xid: 9, CommitLSN: 100, EndLSN: 120, Changes: tc.changes}
			if err := m.Map(context.Background(), tx, &plan); err != nil {
				t.Fatal(err)
			}
			if got := describeAll(&plan); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("invalidations:\n got %q\nwant %q", got, tc.want)
			}
			if plan.Unrendered != tc.unrendered || plan.Skipped != tc.skipped {
				t.Errorf("Unrendered %d Skipped %d, want %d %d", plan.Unrendered, plan.Skipped, tc.unrendered, tc.skipped)
			}
			if len(plan.Problems) != 0 {
				t.Errorf("problems: %v", plan.Problems)
			}
			if plan.Changes != len(tc.changes) {
				t.Errorf("Changes = %d, want %d", plan.Changes, len(tc.changes))
			}
		})
	}
}

func TestMapImages(t *testing.T) {
	p := productsRel
	ins := func(n []wal.Value) wal.Change {
		return wal.Change{Op: wal.Insert, Relation: p, New: n}
	}
	del := func(o []wal.Value) wal.Change {
		return wal.Change{Op: wal.Delete, Relation: p, Old: o}
	}
	upd := func(o, n []wal.Value) wal.Change {
		return wal.Change{Op: wal.Update, Relation: p, Old: o, New: n}
	}
	runMapCases(t, productsDeps, []mapCase{
		{name: "insert renders the new image",
			changes: []wal.Change{ins(row(txt("1"), txt("3"), txt("w")))},
			want:    []string{"delete product:1", "delete category:3:products"}},
		{name: "insert with a NULL column renders no key from it",
			changes: []wal.Change{ins(row(txt("1"), null, txt("w")))},
			want:    []string{"delete product:1"}},
		{name: "delete renders the old image",
			changes: []wal.Change{del(row(txt("1"), txt("3"), txt("w")))},
			want:    []string{"delete product:1", "delete category:3:products"}},
		{name: "delete with a key-only old image counts the unrendered key",
			changes:    []wal.Change{del(row(txt("1"), missing, missing))},
			want:       []string{"delete product:1"},
			unrendered: 1},
		{name: "delete without old image renders nothing",
			changes:    []wal.Change{del(nil)},
			want:       []string{},
			unrendered: 2},
		{name: "update renders old and new, deduplicated",
			changes: []wal.Change{upd(row(txt("1"), txt("1"), txt("w")), row(txt("1"), txt("7"), txt("w")))},
			want:    []string{"delete product:1", "delete category:1:products", "delete category:7:products"}},
		{name: "update within a category renders each key once",
			changes: []wal.Change{upd(row(txt("1"), txt("3"), txt("a")), row(txt("1"), txt("3"), txt("b")))},
			want:    []string{"delete product:1", "delete category:3:products"}},
		{name: "update with key-only old image",
			changes:    []wal.Change{upd(row(txt("1"), missing, missing), row(txt("1"), txt("7"), txt("w")))},
			want:       []string{"delete product:1", "delete category:7:products"},
			unrendered: 1},
		{name: "update without old image takes the old key columns from the new row",
			changes:    []wal.Change{upd(nil, row(txt("1"), txt("7"), txt("w")))},
			want:       []string{"delete product:1", "delete category:7:products"},
			unrendered: 1},
		{name: "update changing the key",
			changes:    []wal.Change{upd(row(txt("1"), missing, missing), row(txt("2"), txt("7"), txt("w")))},
			want:       []string{"delete product:1", "delete product:2", "delete category:7:products"},
			unrendered: 1},
		{name: "update from NULL renders only the new group",
			changes: []wal.Change{upd(row(txt("1"), null, txt("w")), row(txt("1"), txt("7"), txt("w")))},
			want:    []string{"delete product:1", "delete category:7:products"}},
		{name: "update with an unchanged TOAST value and no old value",
			changes:    []wal.Change{upd(row(txt("1"), missing, missing), row(txt("1"), unchanged, txt("w")))},
			want:       []string{"delete product:1"},
			unrendered: 2},
		{name: "changes of one transaction are deduplicated",
			changes: []wal.Change{
				ins(row(txt("1"), txt("3"), txt("w"))),
				ins(row(txt("2"), txt("3"), txt("w"))),
				del(row(txt("1"), txt("3"), txt("w"))),
			},
			want: []string{"delete product:1", "delete category:3:products", "delete product:2"}},
		{name: "values are copied exactly",
			changes: []wal.Change{ins(row(txt("a b:ü*?"), txt("[x]\\"), txt("w")))},
			want:    []string{"delete product:a b:ü*?", `delete category:[x]\:products`}},
	})
}

func TestMapWhenChangedAndOn(t *testing.T) {
	u := usersRel
	upd := func(o, n []wal.Value) wal.Change {
		return wal.Change{Op: wal.Update, Relation: u, Old: o, New: n}
	}
	full := func(id, email, name, team string) []wal.Value {
		v := func(s string) wal.Value {
			if s == "NULL" {
				return null
			}
			return txt(s)
		}
		return row(v(id), v(email), v(name), v(team))
	}
	runMapCases(t, usersDeps, []mapCase{
		// when_changed: [name, team_id]; the pattern rule serves inserts only,
		// so every update and delete skips it.
		{name: "unchanged columns skip the rule",
			changes: []wal.Change{upd(full("1", "a@x", "ann", "3"), full("1", "b@x", "ann", "3"))},
			want:    []string{},
			skipped: 2},
		{name: "a changed name fires the rule",
			changes: []wal.Change{upd(full("1", "a@x", "ann", "3"), full("1", "a@x", "anne", "3"))},
			want:    []string{"delete team:3:members"},
			skipped: 1},
		{name: "a changed team fires the rule for both teams",
			changes: []wal.Change{upd(full("1", "a@x", "ann", "3"), full("1", "a@x", "ann", "4"))},
			want:    []string{"delete team:3:members", "delete team:4:members"},
			skipped: 1},
		{name: "an unknown old value (key-only old image) fires the rule",
			changes:    []wal.Change{upd(row(txt("1"), missing, missing, missing), full("1", "a@x", "ann", "4"))},
			want:       []string{"delete team:4:members"},
			unrendered: 1,
			skipped:    1},
		{name: "an unknown old value (no old image) fires the rule",
			changes:    []wal.Change{upd(nil, full("1", "a@x", "ann", "4"))},
			want:       []string{"delete team:4:members"},
			unrendered: 1,
			skipped:    1},
		{name: "an unchanged TOAST value did not change",
			changes: []wal.Change{upd(full("1", "a@x", "ann", "3"), row(txt("1"), txt("b@x"), unchanged, txt("3")))},
			want:    []string{},
			skipped: 2},
		{name: "NULL to NULL is no change",
			changes: []wal.Change{upd(full("1", "a@x", "ann", "NULL"), full("1", "b@x", "ann", "NULL"))},
			want:    []string{},
			skipped: 2},
		{name: "NULL to a value is a change",
			changes: []wal.Change{upd(full("1", "a@x", "ann", "NULL"), full("1", "a@x", "ann", "3"))},
			want:    []string{"delete team:3:members"},
			skipped: 1},
		{name: "empty string to NULL is a change",
			changes: []wal.Change{upd(full("1", "a@x", "", "3"), full("1", "a@x", "NULL", "3"))},
			want:    []string{"delete team:3:members"},
			skipped: 1},
		{name: "insert ignores when_changed and serves on: [insert]",
			changes: []wal.Change{{Op: wal.Insert, Relation: u, New: full("1", "a@x", "*", "3")}},
			want:    []string{"delete team:3:members", `delete pattern search:users:\*:*`}},
		{name: "delete ignores when_changed and skips on: [insert]",
			changes: []wal.Change{{Op: wal.Delete, Relation: u, Old: full("1", "a@x", "ann", "3")}},
			want:    []string{"delete team:3:members"},
			skipped: 1},
	})
}

func TestMapPatterns(t *testing.T) {
	reg := mustParse(t, `version: 1
tables:
  public.users:
    keys: ["search:users:{name}:*"]
    derived:
      - patterns: ["search:users:{name}:*", "search:[{team_id}]:?"]
`)
	tests := []struct {
		name, team string
		want       []string
	}{
		{"*", "3", []string{`delete search:users:*:*`, `delete pattern search:users:\*:*`, `delete pattern search:[3]:?`}},
		{"alice", `\`, []string{`delete search:users:alice:*`, `delete pattern search:users:alice:*`, `delete pattern search:[\\]:?`}},
		{"a?[b]", "]", []string{`delete search:users:a?[b]:*`, `delete pattern search:users:a\?\[b\]:*`, `delete pattern search:[\]]:?`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var plan mapping.Plan
			c := wal.Change{Op: wal.Insert, Relation: usersRel, New: row(txt("1"), txt("e"), txt(tt.name), txt(tt.team))}
			if err := mapping.NewMapper(reg, nil).Map(context.Background(), oneChange(c, 1), &plan); err != nil {
				t.Fatal(err)
			}
			if got := describeAll(&plan); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %q\nwant %q", got, tt.want)
			}
			for _, inv := range plan.Invalidations() {
				if inv.Table != "public.users" || inv.Rule == nil || inv.Template == nil {
					t.Errorf("%s: table %q rule %v template %v", describe(inv), inv.Table, inv.Rule, inv.Template)
				}
				if inv.Pattern != (inv.Rule.Name == "derived[0]") {
					t.Errorf("%s: from rule %s", describe(inv), inv.Rule.Name)
				}
			}
		})
	}
}

const actionsDeps = `version: 1
tables:
  public.products:
    action: bump
    keys: ["product:{id}"]
  public.prices:
    action: bump
    version_key: "v:{key}:n"
    keys: ["price:{id}"]
  public.settings:
    action: stale
    stale_ttl: 90s
    keys: ["master-data", "setting:{id}"]
  public.flags:
    action: stale
    stale_key: "last-good:{key}"
    keys: ["flag:{id}"]
  public.orders:
    action: fence
    keys: ["order:{id}", "shared:{id}"]
    derived:
      - patterns: ["order-search:{id}:*"]
  public.lines:
    action: fence
    fence_ttl: 5m
    keys: ["shared:{id}"]
`

func TestMapActions(t *testing.T) {
	reg := mustParse(t, actionsDeps)
	ins := func(rel *wal.Relation, id string) wal.Change {
		return wal.Change{Op: wal.Insert, Relation: rel, New: row(txt(id))}
	}
	rel := func(id uint32, name string) *wal.Relation { return relation(id, name, 'd', "id*") }
	products, prices, settings, flags := rel(1, "public.products"), rel(2, "public.prices"), rel(3, "public.settings"), rel(4, "public.flags")
	orders, lines := rel(5, "public.orders"), rel(6, "public.lines")
	tx := func(commit wal.LSN, cs ...wal.Change) *replication.Transaction {
		return &replication.Transaction{CommitLSN: commit, EndLSN: commit + 0x28, Changes: cs}
	}
	tests := []struct {
		name string
		txs  []*replication.Transaction
		want []string
	}{
		{"bump records the commit LSN and the default version key",
			[]*replication.Transaction{tx(0x16B3748, ins(products, "1"))},
			[]string{"bump product:1 v=23803720 aux=product:1:version"}},
		{"bump with a custom version key",
			[]*replication.Transaction{tx(500, ins(prices, "9"))},
			[]string{"bump price:9 v=500 aux=v:price:9:n"}},
		{"dedupe keeps the larger version of two transactions",
			[]*replication.Transaction{tx(100, ins(products, "1")), tx(200, ins(products, "1"), ins(products, "2"))},
			[]string{"bump product:1 v=200 aux=product:1:version", "bump product:2 v=200 aux=product:2:version"}},
		{"dedupe never lowers a version",
			[]*replication.Transaction{tx(200, ins(products, "1")), tx(100, ins(products, "1"))},
			[]string{"bump product:1 v=200 aux=product:1:version"}},
		{"stale with its TTL and stale key",
			[]*replication.Transaction{tx(1, ins(settings, "5"))},
			[]string{"stale master-data ttl=1m30s aux=master-data:stale", "stale setting:5 ttl=1m30s aux=setting:5:stale"}},
		{"stale with the default TTL and a custom stale key",
			[]*replication.Transaction{tx(1, ins(flags, "x"))},
			[]string{"stale flag:x ttl=10m0s aux=last-good:flag:x"}},
		{"fence carries the commit LSN and the default fence_ttl, for keys and patterns",
			[]*replication.Transaction{tx(0x16B3748, ins(orders, "7"))},
			[]string{"fence order:7 v=23803720 ttl=1m0s", "fence shared:7 v=23803720 ttl=1m0s", "fence pattern order-search:7:* v=23803720 ttl=1m0s"}},
		{"fence dedupe keeps the larger LSN and the longer fence_ttl",
			[]*replication.Transaction{tx(300, ins(orders, "7")), tx(200, ins(lines, "7"))},
			[]string{"fence order:7 v=300 ttl=1m0s", "fence shared:7 v=300 ttl=5m0s", "fence pattern order-search:7:* v=300 ttl=1m0s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mapping.NewMapper(reg, nil)
			var plan mapping.Plan
			for _, tx := range tt.txs {
				if err := m.Map(context.Background(), tx, &plan); err != nil {
					t.Fatal(err)
				}
			}
			if got := describeAll(&plan); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestMapTruncate(t *testing.T) {
	reg := mustParse(t, exampleDeps)
	users := relation(1, "public.users", 'd', "id*", "email", "name", "team_id")
	products := relation(2, "public.products", 'd', "id*")

	m := mapping.NewMapper(reg, nil)
	var plan mapping.Plan
	tx := &replication.Transaction{CommitLSN: 7, Changes: []wal.Change{
		{Op: wal.Truncate, Relation: users},
		{Op: wal.Truncate, Relation: products},
	}}
	if err := m.Map(context.Background(), tx, &plan); err != nil {
		t.Fatal(err)
	}
	want := []string{"delete pattern user:*", "delete pattern user-by-email:*", "delete pattern search:users:*"}
	if got := describeAll(&plan); !reflect.DeepEqual(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
	if len(plan.Problems) != 1 {
		t.Fatalf("problems %v, want one for public.products", plan.Problems)
	}
	p := plan.Problems[0]
	if p.Table != "public.products" || p.Op != wal.Truncate || !strings.Contains(p.Msg, `"product:{id}"`) || !strings.Contains(p.Msg, "deps.yaml") {
		t.Errorf("problem %+v", p)
	}
	if s := p.String(); !strings.HasPrefix(s, "truncate on public.products: ") {
		t.Errorf("Problem.String() = %q", s)
	}
	wantCounts := []mapping.ChangeCount{{Table: "public.users", Op: wal.Truncate, N: 1}, {Table: "public.products", Op: wal.Truncate, N: 1}}
	if !reflect.DeepEqual(plan.ChangeCounts, wantCounts) {
		t.Errorf("ChangeCounts %+v, want %+v", plan.ChangeCounts, wantCounts)
	}
}

func TestMapTruncateLiteralKeys(t *testing.T) {
	reg := mustParse(t, `version: 1
tables:
  public.t:
    action: bump
    keys: ["t:{id}"]
    on_truncate:
      keys: ["t:all", "{{literal}}"]
      patterns: ["t:[0-9]*", "t:?"]
`)
	var plan mapping.Plan
	c := wal.Change{Op: wal.Truncate, Relation: relation(1, "public.t", 'd', "id*")}
	if err := mapping.NewMapper(reg, nil).Map(context.Background(), oneChange(c, 42), &plan); err != nil {
		t.Fatal(err)
	}
	want := []string{"bump t:all v=42 aux=t:all:version", "bump {literal} v=42 aux={literal}:version",
		"bump pattern t:[0-9]* v=42 aux=t:[0-9]*:version", "bump pattern t:? v=42 aux=t:?:version"}
	if got := describeAll(&plan); !reflect.DeepEqual(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

func TestMapEverything(t *testing.T) {
	reg := mustParse(t, exampleDeps)
	var plan mapping.Plan
	mapping.NewMapper(reg, nil).MapEverything(99, &plan)
	want := []string{"delete pattern user:*", "delete pattern user-by-email:*", "delete pattern search:users:*"}
	if got := describeAll(&plan); !reflect.DeepEqual(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
	var tables []string
	for _, p := range plan.Problems {
		tables = append(tables, p.Table)
	}
	if want := []string{"public.products", "public.settings"}; !reflect.DeepEqual(tables, want) {
		t.Errorf("problems for %q, want %q", tables, want)
	}
}

const queryDeps = `version: 1
tables:
  public.users:
    derived:
      - query: "SELECT team_id FROM team_members WHERE user_id = $1"
        args: [id]
        keys: ["team:{team_id}:members"]
  public.memberships:
    derived:
      - query: "SELECT user_id, role FROM team_members WHERE team_id = $1 AND role = $2"
        args: [team_id, role]
        keys: ["user:{user_id}:teams"]
        patterns: ["perm:{role}:{user_id}:*"]
`

func TestMapQuery(t *testing.T) {
	const usersSQL = "SELECT team_id FROM team_members WHERE user_id = $1"
	const memSQL = "SELECT user_id, role FROM team_members WHERE team_id = $1 AND role = $2"
	users := relation(1, "public.users", 'd', "id*", "name")
	mem := relation(2, "public.memberships", 'd', "id*", "team_id", "role")
	usersQ := func() *fakeQuerier {
		return &fakeQuerier{cols: []string{"team_id"}, results: map[string][][][]byte{
			"[1]": {vals("3"), vals("4")},
			"[2]": {vals("5"), vals("NULL")},
		}}
	}
	memQ := func() *fakeQuerier {
		return &fakeQuerier{cols: []string{"user_id", "role"}, results: map[string][][][]byte{
			"[3 admin]": {vals("10", "admin"), vals("11", "admin")},
			"[4 admin]": {vals("12", "*")},
		}}
	}
	tests := []struct {
		name       string
		q          *fakeQuerier
		change     wal.Change
		calls      []string
		want       []string
		unrendered int
	}{
		{name: "insert binds args from the new row and renders each result row",
			q:      usersQ(),
			change: wal.Change{Op: wal.Insert, Relation: users, New: row(txt("1"), txt("ann"))},
			calls:  []string{usersSQL + " [1]"},
			want:   []string{"delete team:3:members", "delete team:4:members"}},
		{name: "a NULL result value renders no key",
			q:      usersQ(),
			change: wal.Change{Op: wal.Delete, Relation: users, Old: row(txt("2"), missing)},
			calls:  []string{usersSQL + " [2]"},
			want:   []string{"delete team:5:members"}},
		{name: "equal old and new args: one lookup",
			q:      usersQ(),
			change: wal.Change{Op: wal.Update, Relation: users, Old: row(txt("1"), txt("ann")), New: row(txt("1"), txt("bob"))},
			calls:  []string{usersSQL + " [1]"},
			want:   []string{"delete team:3:members", "delete team:4:members"}},
		{name: "no old image: key args come from the new row, one lookup",
			q:      usersQ(),
			change: wal.Change{Op: wal.Update, Relation: users, New: row(txt("1"), txt("bob"))},
			calls:  []string{usersSQL + " [1]"},
			want:   []string{"delete team:3:members", "delete team:4:members"}},
		{name: "different old and new args: two lookups",
			q: memQ(),
			change: wal.Change{Op: wal.Update, Relation: mem,
				Old: row(txt("1"), txt("3"), txt("admin")), New: row(txt("1"), txt("4"), txt("admin"))},
			calls: []string{memSQL + " [3 admin]", memSQL + " [4 admin]"},
			want: []string{"delete user:10:teams", "delete pattern perm:admin:10:*", "delete user:11:teams",
				"delete pattern perm:admin:11:*", "delete user:12:teams", `delete pattern perm:\*:12:*`}},
		{name: "an arg missing from the old image is counted, the new one looked up",
			q: memQ(),
			change: wal.Change{Op: wal.Update, Relation: mem,
				Old: row(txt("1"), missing, missing), New: row(txt("1"), txt("4"), txt("admin"))},
			calls:      []string{memSQL + " [4 admin]"},
			want:       []string{"delete user:12:teams", `delete pattern perm:\*:12:*`},
			unrendered: 1},
		{name: "a NULL arg is bound as nil",
			q:      memQ(),
			change: wal.Change{Op: wal.Insert, Relation: mem, New: row(txt("1"), txt("3"), null)},
			calls:  []string{memSQL + " [3 <nil>]"},
			want:   []string{}},
	}
	reg := mustParse(t, queryDeps)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var plan mapping.Plan
			tx := &replication.Transaction{CommitLSN: 1, Changes: []wal.Change{tt.change}}
			if err := mapping.NewMapper(reg, tt.q).Map(context.Background(), tx, &plan); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(tt.q.calls, tt.calls) {
				t.Errorf("lookups:\n got %q\nwant %q", tt.q.calls, tt.calls)
			}
			if plan.Lookups != len(tt.calls) {
				t.Errorf("Lookups = %d, want %d", plan.Lookups, len(tt.calls))
			}
			if got := describeAll(&plan); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("invalidations:\n got %q\nwant %q", got, tt.want)
			}
			if plan.Unrendered != tt.unrendered {
				t.Errorf("Unrendered = %d, want %d", plan.Unrendered, tt.unrendered)
			}
		})
	}
}

func TestMapQueryError(t *testing.T) {
	reg := mustParse(t, queryDeps)
	users := relation(1, "public.users", 'd', "id*", "name")
	tx := &replication.Transaction{CommitLSN: 1, Changes: []wal.Change{
		{Op: wal.Insert, Relation: users, New: row(txt("1"), txt("ann"))},
	}}
	errDown := errors.New("connection refused")
	q := &fakeQuerier{err: errDown}
	var plan mapping.Plan
	err := mapping.NewMapper(reg, q).Map(context.Background(), tx, &plan)
	if !errors.Is(err, errDown) {
		t.Fatalf("Map error %v, want it to wrap %v", err, errDown)
	}
	if !strings.Contains(err.Error(), "deps.yaml:5:16") || !strings.Contains(err.Error(), "public.users") {
		t.Errorf("error %q does not name the query's position and table", err)
	}
	if plan.Len() != 0 {
		t.Errorf("invalidations despite the error: %q", describeAll(&plan))
	}

	// Without a querier, a query rule is an error, not a silent skip.
	err = mapping.NewMapper(reg, nil).Map(context.Background(), tx, &plan)
	if err == nil || !strings.Contains(err.Error(), "no database connection") {
		t.Errorf("Map without querier: %v", err)
	}
}

func TestMapQuerySkippedByWhenChanged(t *testing.T) {
	reg := mustParse(t, `version: 1
tables:
  public.users:
    derived:
      - query: "SELECT team_id FROM team_members WHERE user_id = $1"
        args: [id]
        keys: ["team:{team_id}:members"]
        when_changed: [name]
`)
	users := relation(1, "public.users", 'f', "id*", "name", "email")
	q := &fakeQuerier{cols: []string{"team_id"}}
	var plan mapping.Plan
	c := wal.Change{Op: wal.Update, Relation: users,
		Old: row(txt("1"), txt("ann"), txt("a@x")), New: row(txt("1"), txt("ann"), txt("b@x"))}
	if err := mapping.NewMapper(reg, q).Map(context.Background(), oneChange(c, 1), &plan); err != nil {
		t.Fatal(err)
	}
	if len(q.calls) != 0 || plan.Lookups != 0 || plan.Skipped != 1 {
		t.Errorf("calls %q, Lookups %d, Skipped %d; want none, 0, 1", q.calls, plan.Lookups, plan.Skipped)
	}
}

func TestMapUnregisteredAndMissingColumns(t *testing.T) {
	reg := mustParse(t, productsDeps)
	m := mapping.NewMapper(reg, nil)
	var plan mapping.Plan
	other := relation(5, "public.orders", 'd', "id*")
	noCategory := relation(6, "public.products", 'd', "id*", "name")
	tx := &replication.Transaction{CommitLSN: 1, Changes: []wal.Change{
		{Op: wal.Insert, Relation: other, New: row(txt("1"))},
		{Op: wal.Insert, Relation: noCategory, New: row(txt("1"), txt("w"))},
	}}
	if err := m.Map(context.Background(), tx, &plan); err != nil {
		t.Fatal(err)
	}
	if plan.Changes != 1 {
		t.Errorf("Changes = %d, want 1 (orders is not registered)", plan.Changes)
	}
	if got, want := describeAll(&plan), []string{"delete product:1"}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if len(plan.Problems) != 1 || !strings.Contains(plan.Problems[0].Msg, "category_id") {
		t.Errorf("problems %v, want one naming category_id", plan.Problems)
	}
}

func TestPlanReset(t *testing.T) {
	reg := mustParse(t, productsDeps)
	m := mapping.NewMapper(reg, nil)
	var plan mapping.Plan
	c := wal.Change{Op: wal.Insert, Relation: productsRel, New: row(txt("1"), txt("3"), txt("w"))}
	for i := 0; i < 2; i++ {
		if err := m.Map(context.Background(), oneChange(c, 1), &plan); err != nil {
			t.Fatal(err)
		}
		want := []string{"delete product:1", "delete category:3:products"}
		if got := describeAll(&plan); !reflect.DeepEqual(got, want) {
			t.Errorf("round %d: got %q, want %q", i, got, want)
		}
		if plan.Changes != 1 || len(plan.ChangeCounts) != 1 || plan.ChangeCounts[0].N != 1 {
			t.Errorf("round %d: Changes %d ChangeCounts %+v", i, plan.Changes, plan.ChangeCounts)
		}
		plan.Reset()
		if plan.Len() != 0 || plan.Changes != 0 || len(plan.ChangeCounts) != 0 {
			t.Errorf("Reset left %+v", plan)
		}
	}
}

func TestIdentityGaps(t *testing.T) {
	reg := mustParse(t, `version: 1
tables:
  public.users:
    keys: ["user:{id}", "user-by-email:{email}"]
    derived:
      - patterns: ["search:{name}:*"]
        on: [insert]
      - keys: ["team:{team_id}"]
        when_changed: [name]
`)
	tests := []struct {
		identity byte
		want     []string
	}{
		{'d', []string{"email", "team_id", "name"}},
		{'i', []string{"email", "team_id", "name"}},
		{'f', nil},
	}
	for _, tt := range tests {
		rel := relation(1, "public.users", tt.identity, "id*", "email", "name", "team_id")
		var got []string
		for _, g := range reg.IdentityGaps(rel) {
			got = append(got, g.Name)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("identity %c: gaps %q, want %q", tt.identity, got, tt.want)
		}
	}
	if gaps := reg.IdentityGaps(relation(2, "public.other", 'd', "id*")); gaps != nil {
		t.Errorf("unregistered table has gaps %v", gaps)
	}
}

// Two tables may bump the same cache key under different version keys
// (readers of each put their own version key in their cache key). Deduping
// by action and key alone keeps only the first table's version key, so the
// second one is never bumped: an under-invalidation.
func TestMapDedupeKeepsEachVersionKey(t *testing.T) {
	reg := mustParse(t, `version: 1
tables:
  public.a:
    action: bump
    keys: ["shared"]
  public.b:
    action: bump
    version_key: "v:{key}"
    keys: ["shared"]
`)
	a, b := relation(1, "public.a", 'd', "id*"), relation(2, "public.b", 'd', "id*")
	tx := &replication.Transaction{CommitLSN: 5, Changes: []wal.Change{
		{Op: wal.Insert, Relation: a, New: row(txt("1"))},
		{Op: wal.Insert, Relation: b, New: row(txt("1"))},
	}}
	var plan mapping.Plan
	if err := mapping.NewMapper(reg, nil).Map(context.Background(), tx, &plan); err != nil {
		t.Fatal(err)
	}
	bumped := map[string]bool{}
	for _, inv := range plan.Invalidations() {
		bumped[inv.Aux.For(inv.Key)] = true
	}
	for _, want := range []string{"shared:version", "v:shared"} {
		if !bumped[want] {
			t.Errorf("version key %s not bumped; plan: %q", want, describeAll(&plan))
		}
	}
}

// With Explain, the plan names each unrendered template, its row image and
// the columns it lacked.
func TestExplainNamesUnrenderedKeys(t *testing.T) {
	reg := mustParse(t, `version: 1
tables:
  public.users:
    keys:
      - "user:{id}"
      - "team:{team_id}:user:{email}"
`)
	for _, explain := range []bool{false, true} {
		plan := mapping.Plan{Explain: explain}
		change := wal.Change{Op: wal.Delete, Relation: usersRel, Old: row(txt("1"), missing, missing, missing)}
		mapping.NewMapper(reg, nil).MapChange(&change, &plan)
		if plan.Unrendered != 1 {
			t.Fatalf("Unrendered = %d, want 1", plan.Unrendered)
		}
		if !explain {
			if len(plan.UnrenderedKeys) != 0 {
				t.Errorf("UnrenderedKeys recorded without Explain: %v", plan.UnrenderedKeys)
			}
			continue
		}
		if len(plan.UnrenderedKeys) != 1 {
			t.Fatalf("UnrenderedKeys = %v, want one", plan.UnrenderedKeys)
		}
		u := plan.UnrenderedKeys[0]
		if u.Template.Source != "team:{team_id}:user:{email}" || u.Image != "old" || !reflect.DeepEqual(u.Missing, []string{"team_id", "email"}) {
			t.Errorf("UnrenderedKeys[0] = %s, %s row, missing %v; want team:{team_id}:user:{email}, old, [team_id email]", u.Template.Source, u.Image, u.Missing)
		}
	}
}
