package mapping_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

func TestParseRefreshErrors(t *testing.T) {
	tests := []struct {
		name      string
		yaml      string
		line, col int
		want      string
	}{
		{"refresh without ttl", `version: 1
tables:
  public.p:
    derived:
      - keys: ["p:{id}"]
        action: refresh
        value: row
`, 6, 9, "needs a ttl"},
		{"bad ttl", `version: 1
tables:
  public.p:
    derived:
      - keys: ["p:{id}"]
        action: refresh
        value: row
        ttl: soon
`, 8, 14, "must be a duration"},
		{"value and query both", `version: 1
tables:
  public.p:
    derived:
      - keys: ["c:{category_id}"]
        action: refresh
        ttl: 10m
        value: row
        query: SELECT 1
        args: [category_id]
`, 8, 9, "value and query both"},
		{"neither value nor query", `version: 1
tables:
  public.p:
    derived:
      - keys: ["p:{id}"]
        action: refresh
        ttl: 10m
`, 6, 9, "needs value"},
		{"refresh on a table", `version: 1
tables:
  public.p:
    action: refresh
    keys: ["p:{id}"]
`, 4, 13, "action of derived rules"},
		{"refresh in defaults", `version: 1
defaults:
  action: refresh
tables:
  public.p:
    keys: ["p:{id}"]
`, 3, 11, "action of derived rules"},
		{"refresh with patterns", `version: 1
tables:
  public.p:
    derived:
      - patterns: ["p:{id}:*"]
        action: refresh
        ttl: 10m
        value: row
`, 6, 9, "cannot take patterns"},
		{"value without refresh", `version: 1
tables:
  public.p:
    derived:
      - keys: ["p:{id}"]
        value: row
`, 6, 9, "only makes sense with action: refresh"},
		{"other action in a rule", `version: 1
tables:
  public.p:
    derived:
      - keys: ["p:{id}"]
        action: delete
`, 6, 17, "can only be refresh"},
		{"value: row with when_changed", `version: 1
tables:
  public.p:
    derived:
      - keys: ["p:{id}"]
        action: refresh
        ttl: 10m
        value: row
        when_changed: [name]
`, 8, 9, "remove when_changed"},
		{"value template column not in when_changed", `version: 1
tables:
  public.p:
    derived:
      - keys: ["p:{id}"]
        action: refresh
        ttl: 10m
        value: "{name}:{price}"
        when_changed: [name]
`, 8, 16, "{price}"},
		{"value rule without delete", `version: 1
tables:
  public.p:
    derived:
      - keys: ["p:{id}"]
        action: refresh
        ttl: 10m
        value: row
        on: [insert, update]
`, 8, 9, "must serve delete"},
		{"bad value template", `version: 1
tables:
  public.p:
    derived:
      - keys: ["p:{id}"]
        action: refresh
        ttl: 10m
        value: "{name"
`, 8, 16, "unclosed"},
		{"negative without value", `version: 1
tables:
  public.p:
    derived:
      - keys: ["p:{id}"]
        action: refresh
        ttl: 10m
        value: row
        negative: {ttl: 1m}
`, 9, 19, "marker"},
		{"refresh without keys", `version: 1
tables:
  public.p:
    derived:
      - action: refresh
        ttl: 10m
        value: row
`, 5, 9, "needs keys"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errs := parseErrors(t, tc.yaml)
			for _, e := range errs {
				if strings.Contains(e.Msg, tc.want) {
					if e.Line != tc.line || e.Column != tc.col {
						t.Errorf("%q at %d:%d, want %d:%d", e.Msg, e.Line, e.Column, tc.line, tc.col)
					}
					if !strings.HasPrefix(e.Error(), fmt.Sprintf("deps.yaml:%d:%d", tc.line, tc.col)) {
						t.Errorf("error %q does not start with deps.yaml:%d:%d", e.Error(), tc.line, tc.col)
					}
					return
				}
			}
			t.Errorf("no error contains %q: %v", tc.want, errs)
		})
	}
}

const refreshDeps = `version: 1
tables:
  public.products:
    keys: ["products:all"]
    derived:
      - keys: ["product:{id}"]
        action: refresh
        value: row
        ttl: 10m
        negative: {value: "null", ttl: 30s}
      - keys: ["product:{id}:name"]
        action: refresh
        value: "{name} ({id})"
        ttl: 1h
      - keys: ["category:{category_id}:products"]
        action: refresh
        ttl: 5m
        query: SELECT json_agg(id ORDER BY id) AS value FROM products WHERE category_id = $1
        args: [category_id]
`

func TestParseRefresh(t *testing.T) {
	reg := mustParse(t, refreshDeps)
	rules := reg.Tables["public.products"].Rules
	row, tmpl, query := rules[1].Refresh, rules[2].Refresh, rules[3].Refresh
	if row == nil || !row.Row || row.TTL != 10*time.Minute || row.Negative == nil || *row.Negative != (mapping.Negative{Value: "null", TTL: 30 * time.Second}) {
		t.Errorf("value: row rule: %+v", row)
	}
	if tmpl == nil || tmpl.Value == nil || tmpl.Value.Source != "{name} ({id})" || tmpl.TTL != time.Hour || tmpl.Negative != nil {
		t.Errorf("template rule: %+v", tmpl)
	}
	if query == nil || query.Row || query.Value != nil || rules[3].Query == nil {
		t.Errorf("query rule: %+v", query)
	}
	if rules[0].Refresh != nil {
		t.Errorf("the table's keys are not refreshed")
	}
	if got, want := reg.Tables["public.products"].Columns(), []string{"category_id", "id", "name"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Columns() = %q, want %q", got, want)
	}
}

// describeRefreshes prints a plan's refreshes.
func describeRefreshes(p *mapping.Plan) []string {
	out := []string{}
	for _, inv := range p.AppendRefreshes(nil) {
		w := inv.Refresh
		s := fmt.Sprintf("%s %s %s v=%d ttl=%s aux=%s", inv.Action, w.Op, inv.Key, inv.Version, inv.TTL, inv.Aux.For(inv.Key))
		if w.Op == mapping.RefreshSet || w.Negative {
			s += " value=" + string(w.Value)
		}
		if w.Err != nil {
			s += " err"
		}
		out = append(out, s)
	}
	return out
}

var refreshRel = relation(1, "public.products", 'f', "id*", "category_id", "name")

func TestMapRefresh(t *testing.T) {
	reg := mustParse(t, refreshDeps)
	ins := func(n []wal.Value) wal.Change { return wal.Change{Op: wal.Insert, Relation: refreshRel, New: n} }
	upd := func(o, n []wal.Value) wal.Change {
		return wal.Change{Op: wal.Update, Relation: refreshRel, Old: o, New: n}
	}
	del := func(o []wal.Value) wal.Change { return wal.Change{Op: wal.Delete, Relation: refreshRel, Old: o} }
	q := &fakeQuerier{cols: []string{"value"}, results: map[string][][][]byte{
		"[1]": {vals("[1,2]")},
		"[3]": {vals("[5]")},
		"[4]": {vals("NULL")}, // json_agg of no rows
	}}
	cases := []struct {
		name     string
		changes  []wal.Change
		want     []string
		problems int
	}{
		{"insert writes the row, its template and the query's value", []wal.Change{ins(row(txt("1"), txt("1"), txt(`Dune "2"`)))}, []string{
			`refresh set product:1 v=100 ttl=10m0s aux=product:1:lsn value={"id":"1","category_id":"1","name":"Dune \"2\""}`,
			`refresh set product:1:name v=100 ttl=1h0m0s aux=product:1:name:lsn value=Dune "2" (1)`,
			`refresh set category:1:products v=100 ttl=5m0s aux=category:1:products:lsn value=[1,2]`,
		}, 0},
		{"NULL is null", []wal.Change{ins(row(txt("2"), null, txt("x")))}, []string{
			`refresh set product:2 v=100 ttl=10m0s aux=product:2:lsn value={"id":"2","category_id":null,"name":"x"}`,
			`refresh set product:2:name v=100 ttl=1h0m0s aux=product:2:name:lsn value=x (2)`,
		}, 0},
		{"delete removes or writes the negative marker; the query decides", []wal.Change{del(row(txt("1"), txt("4"), txt("Dune")))}, []string{
			`refresh del product:1 v=100 ttl=30s aux=product:1:lsn value=null`,
			`refresh del product:1:name v=100 ttl=1h0m0s aux=product:1:name:lsn`,
			`refresh del category:4:products v=100 ttl=5m0s aux=category:4:products:lsn`,
		}, 0},
		{"update that moves the row between categories refreshes both", []wal.Change{upd(row(txt("1"), txt("1"), txt("a")), row(txt("1"), txt("3"), txt("b")))}, []string{
			`refresh set product:1 v=100 ttl=10m0s aux=product:1:lsn value={"id":"1","category_id":"3","name":"b"}`,
			`refresh set product:1:name v=100 ttl=1h0m0s aux=product:1:name:lsn value=b (1)`,
			`refresh set category:1:products v=100 ttl=5m0s aux=category:1:products:lsn value=[1,2]`,
			`refresh set category:3:products v=100 ttl=5m0s aux=category:3:products:lsn value=[5]`,
		}, 0},
		{"update of the key removes the old key", []wal.Change{upd(row(txt("1"), txt("3"), txt("a")), row(txt("9"), txt("3"), txt("a")))}, []string{
			`refresh del product:1 v=100 ttl=30s aux=product:1:lsn value=null`,
			`refresh set product:9 v=100 ttl=10m0s aux=product:9:lsn value={"id":"9","category_id":"3","name":"a"}`,
			`refresh del product:1:name v=100 ttl=1h0m0s aux=product:1:name:lsn`,
			`refresh set product:9:name v=100 ttl=1h0m0s aux=product:9:name:lsn value=a (9)`,
			`refresh set category:3:products v=100 ttl=5m0s aux=category:3:products:lsn value=[5]`,
		}, 0},
		{"an unchanged TOASTed value is taken from the old row", []wal.Change{upd(row(txt("1"), txt("3"), txt("long")), row(txt("1"), txt("3"), unchanged))}, []string{
			`refresh set product:1 v=100 ttl=10m0s aux=product:1:lsn value={"id":"1","category_id":"3","name":"long"}`,
			`refresh set product:1:name v=100 ttl=1h0m0s aux=product:1:name:lsn value=long (1)`,
			`refresh set category:3:products v=100 ttl=5m0s aux=category:3:products:lsn value=[5]`,
		}, 0},
		{"a value that cannot be built removes the key", []wal.Change{upd(nil, row(txt("1"), txt("3"), unchanged))}, []string{
			`refresh del product:1 v=100 ttl=30s aux=product:1:lsn value=null`,
			`refresh del product:1:name v=100 ttl=1h0m0s aux=product:1:name:lsn`,
			`refresh set category:3:products v=100 ttl=5m0s aux=category:3:products:lsn value=[5]`,
		}, 2},
		{"the last change of a key wins", []wal.Change{
			ins(row(txt("5"), txt("3"), txt("a"))), upd(row(txt("5"), txt("3"), txt("a")), row(txt("5"), txt("3"), txt("b"))),
		}, []string{
			`refresh set product:5 v=100 ttl=10m0s aux=product:5:lsn value={"id":"5","category_id":"3","name":"b"}`,
			`refresh set product:5:name v=100 ttl=1h0m0s aux=product:5:name:lsn value=b (5)`,
			`refresh set category:3:products v=100 ttl=5m0s aux=category:3:products:lsn value=[5]`,
		}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := mapping.NewMapper(reg, q)
			var plan mapping.Plan
			tx := &replication.Transaction{Xid: 9, CommitLSN: 100, EndLSN: 120, Changes: tc.changes}
			if err := m.Map(context.Background(), tx, &plan); err != nil {
				t.Fatal(err)
			}
			if _, err := m.RunRefreshQueries(context.Background(), &plan, 1); err != nil {
				t.Fatal(err)
			}
			got := describeRefreshes(&plan)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("refreshes:\n got %q\nwant %q", got, tc.want)
			}
			if len(plan.Problems) != tc.problems {
				t.Errorf("problems: %v", plan.Problems)
			}
			if got := describeAll(&plan); !reflect.DeepEqual(got, []string{"delete products:all"}) {
				t.Errorf("other invalidations: %q", got)
			}
		})
	}
}

func TestRefreshQueryFailures(t *testing.T) {
	reg := mustParse(t, refreshDeps)
	var changes []wal.Change
	for i := range 20 {
		id := fmt.Sprint(i)
		changes = append(changes, wal.Change{Op: wal.Insert, Relation: refreshRel, New: row(txt(id), txt(id), txt("n"))})
	}
	q := &fakeQuerier{err: errors.New("permission denied for table products")}
	m := mapping.NewMapper(reg, q)
	var plan mapping.Plan
	if err := m.Map(context.Background(), &replication.Transaction{CommitLSN: 100, EndLSN: 120, Changes: changes}, &plan); err != nil {
		t.Fatal(err)
	}
	failures, err := m.RunRefreshQueries(context.Background(), &plan, 1)
	if err != nil {
		t.Fatal(err)
	}
	keys := 0
	for _, f := range failures {
		keys += f.Keys
		if f.Table != "public.products" || f.Err == nil {
			t.Errorf("failure %+v", f)
		}
	}
	if keys != 20 {
		t.Errorf("%d keys failed, want 20", keys)
	}
	// With one query at a time, the rule's first failures stop the rest.
	if len(q.calls) != 8 {
		t.Errorf("%d queries ran, want 8 (then the rule's keys are flagged without running)", len(q.calls))
	}
	stale := 0
	for _, inv := range plan.AppendRefreshes(nil) {
		if strings.HasPrefix(inv.Key, "category:") {
			if inv.Refresh.Op != mapping.RefreshStale || inv.Refresh.Err == nil {
				t.Errorf("%s: %v %v, want stale with its error", inv.Key, inv.Refresh.Op, inv.Refresh.Err)
			}
			stale++
		} else if inv.Refresh.Op != mapping.RefreshSet {
			t.Errorf("%s: %v: value rules do not depend on the query", inv.Key, inv.Refresh.Op)
		}
	}
	if stale != 20 {
		t.Errorf("%d stale keys, want 20", stale)
	}

	// Two rows, or no value column: the query is wrong, the key stale.
	for name, q := range map[string]*fakeQuerier{
		"two rows":        {cols: []string{"value"}, results: map[string][][][]byte{"[1]": {vals("a"), vals("b")}}},
		"no value column": {cols: []string{"a", "b"}, results: map[string][][][]byte{"[1]": {vals("a", "b")}}},
	} {
		m := mapping.NewMapper(reg, q)
		var plan mapping.Plan
		if err := m.Map(context.Background(), oneChange(wal.Change{Op: wal.Insert, Relation: refreshRel, New: row(txt("1"), txt("1"), txt("n"))}, 100), &plan); err != nil {
			t.Fatal(err)
		}
		if f, err := m.RunRefreshQueries(context.Background(), &plan, 8); err != nil || len(f) != 1 {
			t.Errorf("%s: failures %v, %v", name, f, err)
		}
	}

	// A cancelled context decides nothing.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	m = mapping.NewMapper(reg, &fakeQuerier{err: context.Canceled})
	plan = mapping.Plan{}
	if err := m.Map(context.Background(), oneChange(changes[0], 100), &plan); err != nil {
		t.Fatal(err)
	}
	if _, err := m.RunRefreshQueries(ctx, &plan, 8); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

func TestRefreshMergeKeepsTheLatest(t *testing.T) {
	reg := mustParse(t, refreshDeps)
	m := mapping.NewMapper(reg, nil)
	var a, b, batch mapping.Plan
	m.MapChange(&wal.Change{Op: wal.Insert, Relation: refreshRel, New: row(txt("1"), null, txt("old"))}, &a)
	m.MapChange(&wal.Change{Op: wal.Update, Relation: refreshRel, Old: row(txt("1"), null, txt("old")), New: row(txt("1"), null, txt("new"))}, &b)
	batch.Merge(&b, 200)
	batch.Merge(&a, 100) // an older transaction merged later does not win
	var got []string
	for _, inv := range batch.AppendRefreshes(nil) {
		got = append(got, fmt.Sprintf("%s v=%d %s", inv.Key, inv.Version, inv.Refresh.Value))
	}
	want := []string{`product:1 v=200 {"id":"1","category_id":null,"name":"new"}`, "product:1:name v=200 new (1)"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
	if batch.Refreshes() != 2 {
		t.Errorf("Refreshes() = %d, want 2 (a NULL category renders no list key)", batch.Refreshes())
	}
	batch.Reset()
	if batch.Refreshes() != 0 {
		t.Errorf("Reset kept refreshes")
	}
}

func TestAppendRowJSON(t *testing.T) {
	rel := relation(1, "public.t", 'd', "a", "b", "c")
	vs := row(txt("x\"\\\n\t\x01<>&é\u2028"), null, txt(""))
	got, ok := mapping.AppendRowJSON(nil, rel, func(i int) (wal.Value, bool) { return vs[i], true })
	want := `{"a":"x\"\\\n\t\u0001<>&é\u2028","b":null,"c":""}`
	if !ok || string(got) != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if _, ok := mapping.AppendRowJSON(nil, rel, func(i int) (wal.Value, bool) { return vs[i], i != 1 }); ok {
		t.Errorf("an unknown value rendered")
	}
}

func TestRefreshIdentityGaps(t *testing.T) {
	reg := mustParse(t, refreshDeps)
	gaps := reg.IdentityGaps(relation(1, "public.products", 'd', "id*", "category_id", "name"))
	var names []string
	for _, g := range gaps {
		names = append(names, g.Name)
	}
	// The value template's {name} is read from the new row; the query's
	// arg and its key's column need the old row.
	if want := []string{"category_id", "category_id"}; !reflect.DeepEqual(names, want) {
		t.Errorf("gaps %q, want %q", names, want)
	}
}

// ExplainRefreshes lists every refreshed key, a query rule's with the
// arguments its query will run with (it has not run), and an explaining
// plan notes the query arguments a row did not send.
func TestExplainRefreshes(t *testing.T) {
	reg := mustParse(t, refreshDeps)
	m := mapping.NewMapper(reg, nil)
	plan := mapping.Plan{Explain: true}
	m.MapChange(&wal.Change{Op: wal.Update, Relation: refreshRel,
		Old: row(txt("1"), txt("1"), txt("a")), New: row(txt("1"), null, txt("b"))}, &plan)
	var got []string
	for _, inv := range plan.ExplainRefreshes() {
		got = append(got, fmt.Sprintf("%s %s %s ttl=%s value=%s args=%v", inv.Refresh.Op, inv.Key, inv.Rule.Name, inv.TTL, inv.Refresh.Value, inv.Refresh.Args))
	}
	want := []string{
		`set product:1 derived[0] ttl=10m0s value={"id":"1","category_id":null,"name":"b"} args=[]`,
		`set product:1:name derived[1] ttl=1h0m0s value=b (1) args=[]`,
		`query category:1:products derived[2] ttl=5m0s value= args=[1]`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ExplainRefreshes:\n got %q\nwant %q", got, want)
	}
	if n := len(plan.AppendRefreshes(nil)); n != 2 {
		t.Errorf("AppendRefreshes has %d refreshes, want the 2 whose value is known", n)
	}

	// A delete whose old row lacks the query's argument: noted.
	plan = mapping.Plan{Explain: true}
	m.MapChange(&wal.Change{Op: wal.Delete, Relation: refreshRel, Old: []wal.Value{txt("1"), {Kind: wal.Missing}, {Kind: wal.Missing}}}, &plan)
	if plan.Unrendered != 1 || len(plan.UnrenderedKeys) != 1 {
		t.Fatalf("Unrendered %d, %+v; want the query's arguments", plan.Unrendered, plan.UnrenderedKeys)
	}
	if u := plan.UnrenderedKeys[0]; u.Template != nil || u.Rule.Name != "derived[2]" || u.Image != "old" || !reflect.DeepEqual(u.Missing, []string{"category_id"}) {
		t.Errorf("unrendered %+v", u)
	}
}
