package shadow

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication/wal"
)

const runningYAML = `version: 1
tables:
  public.products:
    keys: ["product:{id}", "category:{category_id}:products"]
    on_truncate:
      patterns: ["product:*"]
  public.categories:
    keys: ["category:{id}"]
`

var (
	products = &wal.Relation{ID: 1, Namespace: "public", Name: "products", ReplicaIdentity: 'f', Columns: []wal.Column{
		{Name: "id", Key: true}, {Name: "category_id", Key: true}, {Name: "name", Key: true}}}
	categories = &wal.Relation{ID: 2, Namespace: "public", Name: "categories", ReplicaIdentity: 'd', Columns: []wal.Column{
		{Name: "id", Key: true}, {Name: "name"}}}
	auditLog = &wal.Relation{ID: 3, Namespace: "public", Name: "audit_log", ReplicaIdentity: 'd', Columns: []wal.Column{
		{Name: "id", Key: true}}}
)

func row(vals ...string) []wal.Value {
	out := make([]wal.Value, len(vals))
	for i, v := range vals {
		out[i] = wal.Value{Kind: wal.Text, Data: []byte(v)}
	}
	return out
}

func ins(rel *wal.Relation, vals ...string) wal.Change {
	return wal.Change{Op: wal.Insert, Relation: rel, New: row(vals...)}
}

func upd(rel *wal.Relation, old, new []wal.Value) wal.Change {
	return wal.Change{Op: wal.Update, Relation: rel, Old: old, New: new}
}

// fakeQuerier answers every query with one row per argument set it knows,
// or fails when err is set; it counts the queries it ran.
type fakeQuerier struct {
	cols  []string
	rows  map[string][][]string // by the first argument
	err   error
	calls int
}

func (f *fakeQuerier) LookupTimed(_ context.Context, _ string, args []any) ([]string, [][][]byte, time.Duration, error) {
	f.calls++
	if f.err != nil {
		return nil, nil, 3 * time.Millisecond, f.err
	}
	var out [][][]byte
	for _, r := range f.rows[fmt.Sprint(args[0])] {
		var vals [][]byte
		for _, v := range r {
			vals = append(vals, []byte(v))
		}
		out = append(out, vals)
	}
	return f.cols, out, 2 * time.Millisecond, nil
}

func parse(t *testing.T, file, text string) *mapping.Registry {
	t.Helper()
	reg, err := mapping.Parse(file, []byte(text))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return reg
}

// feed runs transactions through a Core and reports over 2s.
func feed(t *testing.T, running, candidate string, q TimedQuerier, ks Keyspace, txs ...[]wal.Change) *Report {
	t.Helper()
	core := NewCore(parse(t, "deps.yaml", running), parse(t, "candidate.yaml", candidate), q, 0, 3)
	for _, rel := range []*wal.Relation{products, categories, auditLog} {
		core.Relation(rel)
	}
	for _, changes := range txs {
		tx := core.Begin()
		for i := range changes {
			tx.Add(&changes[i])
		}
		core.Commit(context.Background(), tx)
	}
	return core.Aggregator().Report(2*time.Second, ks)
}

func table(t *testing.T, r *Report, name string) TableReport {
	t.Helper()
	for _, tr := range r.Tables {
		if tr.Table == name {
			return tr
		}
	}
	t.Fatalf("no table %s in the report: %+v", name, r.Tables)
	return TableReport{}
}

func rule(t *testing.T, tr TableReport, name string) RuleReport {
	t.Helper()
	for _, rr := range tr.Rules {
		if rr.Rule == name {
			return rr
		}
	}
	t.Fatalf("no rule %s of %s in the report: %+v", name, tr.Table, tr.Rules)
	return RuleReport{}
}

// diffGroup finds the group of a side's differences rendered by rule.
func diffGroup(d DiffSide, table, rule string, pattern bool) *DiffGroup {
	for i, g := range d.Groups {
		if g.Table == table && g.Rule == rule && g.Pattern == pattern {
			return &d.Groups[i]
		}
	}
	return nil
}

func TestAggregate(t *testing.T) {
	known := Keyspace{Known: true, Keys: 2500, PerMaster: map[string]int64{"a": 2500}}
	tests := []struct {
		name      string
		running   string // runningYAML when empty
		candidate string
		q         *fakeQuerier
		ks        Keyspace
		txs       [][]wal.Change
		check     func(t *testing.T, r *Report, q *fakeQuerier)
	}{
		{
			name:      "the same deps.yaml differs in nothing",
			candidate: runningYAML,
			txs:       [][]wal.Change{{ins(products, "1", "3", "Dune")}, {upd(products, row("1", "3", "Dune"), row("1", "7", "Dune"))}},
			check: func(t *testing.T, r *Report, _ *fakeQuerier) {
				if d := r.Diff; d.OnlyCandidate.Keys+d.OnlyCandidate.Patterns+d.OnlyRunning.Keys+d.OnlyRunning.Patterns != 0 {
					t.Errorf("diff of identical registries: %+v", d)
				}
				p := table(t, r, "public.products")
				if p.Changes != 2 || p.Ops["insert"] != 1 || p.Ops["update"] != 1 || p.ChangesPerSec != 1 {
					t.Errorf("products changes: %+v", p)
				}
				// insert: product:1, category:3:products; update: product:1, category:3:products, category:7:products.
				if p.Candidate.Keys != 5 || p.Running.Keys != 5 || p.Candidate.KeysPerSec != 2.5 {
					t.Errorf("products keys: candidate %+v running %+v, want 5 each", p.Candidate, p.Running)
				}
				if r.Transactions != 2 || r.Changes != 2 {
					t.Errorf("transactions %d changes %d, want 2 and 2", r.Transactions, r.Changes)
				}
			},
		},
		{
			name: "a rule removed and a rule added show both ways",
			candidate: `version: 1
tables:
  public.products:
    keys: ["product:{id}"]
    derived:
      - patterns: ["search:{name}:*"]
    on_truncate:
      patterns: ["product:*"]
  public.categories:
    keys: ["category:{id}"]
`,
			ks:  known,
			txs: [][]wal.Change{{ins(products, "1", "3", "Dune"), ins(products, "2", "3", "Emma")}, {ins(categories, "3", "music")}},
			check: func(t *testing.T, r *Report, _ *fakeQuerier) {
				oc, or := r.Diff.OnlyCandidate, r.Diff.OnlyRunning
				if oc.Keys != 0 || oc.Patterns != 2 {
					t.Errorf("only the candidate: %d keys %d patterns, want 0 and 2", oc.Keys, oc.Patterns)
				}
				g := diffGroup(oc, "public.products", "derived[0]", true)
				if g == nil || g.Count != 2 || !slices.Equal(g.Examples, []string{"search:Dune:*", "search:Emma:*"}) || !strings.HasPrefix(g.Position, "candidate.yaml:") {
					t.Errorf("the added rule's group: %+v in %+v", g, oc.Groups)
				}
				// Two inserts in one category: one key, per transaction.
				if or.Keys != 1 || or.Patterns != 0 {
					t.Errorf("only the running: %d keys %d patterns, want 1 and 0", or.Keys, or.Patterns)
				}
				g = diffGroup(or, "public.products", "keys", false)
				if g == nil || g.Count != 1 || !slices.Equal(g.Examples, []string{"category:3:products"}) || !strings.HasPrefix(g.Position, "deps.yaml:") {
					t.Errorf("the removed key's group: %+v in %+v", g, or.Groups)
				}
				p := table(t, r, "public.products")
				d := rule(t, p, "derived[0]")
				if d.Patterns != 2 || d.PatternsPerSec != 1 {
					t.Errorf("derived[0]: %+v", d)
				}
				// 2500 keys on one master: 2500 keys and 3 SCAN calls per pattern.
				if d.Scan == nil || !d.Scan.Known || d.Scan.KeysExaminedPerSec != 2500 || d.Scan.CallsPerSec != 3 {
					t.Errorf("derived[1] SCAN cost: %+v", d.Scan)
				}
				if p.Running.Scan != nil {
					t.Errorf("the running registry renders no pattern, yet has a SCAN cost %+v", p.Running.Scan)
				}
				if c := table(t, r, "public.categories"); c.Changes != 1 || c.Candidate.Keys != 1 {
					t.Errorf("categories: %+v", c)
				}
				var b strings.Builder
				r.Print(&b)
				for _, want := range []string{"only the candidate renders: 0 key(s), 2 pattern(s)", "search:Dune:*, search:Emma:*",
					"only the running deps.yaml renders: 1 key(s), 0 pattern(s)", "category:3:products", "2500 keys/s in 3.0 SCAN/s"} {
					if !strings.Contains(b.String(), want) {
						t.Errorf("the table output lacks %q:\n%s", want, b.String())
					}
				}
			},
		},
		{
			name: "SCAN cost unknown without the keyspace",
			candidate: `version: 1
tables:
  public.products:
    derived:
      - patterns: ["search:{name}:*"]
`,
			ks:  Keyspace{Error: "redis not reachable"},
			txs: [][]wal.Change{{ins(products, "1", "3", "Dune")}},
			check: func(t *testing.T, r *Report, _ *fakeQuerier) {
				d := rule(t, table(t, r, "public.products"), "derived[0]")
				if d.Scan == nil || d.Scan.Known {
					t.Errorf("SCAN cost with an unknown keyspace: %+v", d.Scan)
				}
				var b strings.Builder
				r.Print(&b)
				if !strings.Contains(b.String(), "unknown") {
					t.Errorf("the table output does not say unknown:\n%s", b.String())
				}
				if c := table(t, r, "public.categories"); c.InCandidate || !c.InRunning {
					t.Errorf("categories: in candidate %v, in running %v", c.InCandidate, c.InRunning)
				}
			},
		},
		{
			name: "lookups run for real, once per transaction and arguments",
			candidate: `version: 1
tables:
  public.products:
    keys: ["product:{id}"]
    derived:
      - query: "SELECT name FROM categories WHERE id = $1"
        args: [category_id]
        keys: ["category-name:{name}"]
`,
			q:   &fakeQuerier{cols: []string{"name"}, rows: map[string][][]string{"3": {{"music"}}}},
			txs: [][]wal.Change{{ins(products, "1", "3", "Dune")}, {ins(products, "2", "3", "Emma")}},
			check: func(t *testing.T, r *Report, q *fakeQuerier) {
				if q.calls != 2 {
					t.Errorf("%d queries ran, want 2 (one per transaction)", q.calls)
				}
				p := table(t, r, "public.products")
				d := rule(t, p, "derived[0]")
				if d.Lookups != 2 || d.LookupsPerSec != 1 || d.Latency == nil || d.Latency.P50Ms != 2 || d.Keys != 2 {
					t.Errorf("derived[0]: %+v latency %+v", d, d.Latency)
				}
				g := diffGroup(r.Diff.OnlyCandidate, "public.products", "derived[0]", false)
				if g == nil || g.Count != 2 || !slices.Equal(g.Examples, []string{"category-name:music"}) {
					t.Errorf("the lookup rule's keys in the diff: %+v", g)
				}
			},
		},
		{
			name: "the running side reuses the candidate's lookup result",
			running: `version: 1
tables:
  public.products:
    derived:
      - query: "SELECT name FROM categories WHERE id = $1"
        args: [category_id]
        keys: ["category-name:{name}"]
`,
			candidate: `version: 1
tables:
  public.products:
    derived:
      - query: "SELECT name FROM categories WHERE id = $1"
        args: [category_id]
        keys: ["category-name:{name}", "category-label:{name}"]
`,
			q:   &fakeQuerier{cols: []string{"name"}, rows: map[string][][]string{"3": {{"music"}}}},
			txs: [][]wal.Change{{ins(products, "1", "3", "Dune")}},
			check: func(t *testing.T, r *Report, q *fakeQuerier) {
				if q.calls != 1 {
					t.Errorf("%d queries ran, want 1: the running side reuses the candidate's", q.calls)
				}
				p := table(t, r, "public.products")
				if p.Running.Lookups != 1 || p.Candidate.Lookups != 1 {
					t.Errorf("lookups: running %d candidate %d, want 1 each", p.Running.Lookups, p.Candidate.Lookups)
				}
				if r.Diff.OnlyRunning.Keys != 0 || r.Diff.OnlyCandidate.Keys != 1 || r.Diff.OnlyCandidate.Groups[0].Examples[0] != "category-label:music" {
					t.Errorf("diff: %+v", r.Diff)
				}
			},
		},
		{
			name: "a failing lookup is counted and its transaction not compared",
			candidate: `version: 1
tables:
  public.products:
    derived:
      - query: "SELECT nope FROM categories WHERE id = $1"
        args: [category_id]
        keys: ["category-name:{nope}"]
`,
			q:   &fakeQuerier{err: errors.New(`column "nope" does not exist`)},
			txs: [][]wal.Change{{ins(products, "1", "3", "Dune")}},
			check: func(t *testing.T, r *Report, _ *fakeQuerier) {
				d := rule(t, table(t, r, "public.products"), "derived[0]")
				if d.LookupErrors != 1 || !strings.Contains(d.LookupError, "nope") {
					t.Errorf("derived[0]: %+v", d)
				}
				if r.NotCompared != 1 || r.Diff.OnlyRunning.Keys != 0 {
					t.Errorf("not compared %d, only running %+v: want 1 and nothing", r.NotCompared, r.Diff.OnlyRunning)
				}
				if len(r.Warnings) == 0 {
					t.Error("no warning for the failed lookup")
				}
			},
		},
		{
			name: "a published table no rule maps is counted",
			candidate: runningYAML + `  public.audit_log:
    keys: ["audit:{id}"]
`,
			txs: [][]wal.Change{{ins(auditLog, "9")}},
			check: func(t *testing.T, r *Report, _ *fakeQuerier) {
				a := table(t, r, "public.audit_log")
				if a.Changes != 1 || !a.InCandidate || a.InRunning || a.Candidate.Keys != 1 || a.Running.Keys != 0 {
					t.Errorf("audit_log: %+v", a)
				}
				if g := diffGroup(r.Diff.OnlyCandidate, "public.audit_log", "keys", false); g == nil || g.Examples[0] != "audit:9" {
					t.Errorf("audit_log keys in the diff: %+v", r.Diff.OnlyCandidate)
				}
			},
		},
		{
			name: "examples are capped and distinct",
			candidate: `version: 1
tables:
  public.products:
    keys: ["p:{id}"]
`,
			txs: [][]wal.Change{
				{ins(products, "1", "3", "a")}, {ins(products, "1", "3", "a")}, {ins(products, "2", "3", "b")},
				{ins(products, "3", "3", "c")}, {ins(products, "4", "3", "d")},
			},
			check: func(t *testing.T, r *Report, _ *fakeQuerier) {
				g := diffGroup(r.Diff.OnlyCandidate, "public.products", "keys", false)
				if g == nil || g.Count != 5 || !slices.Equal(g.Examples, []string{"p:1", "p:2", "p:3"}) {
					t.Errorf("capped examples: %+v", g)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var q TimedQuerier
			if tc.q != nil {
				q = tc.q
			}
			running := tc.running
			if running == "" {
				running = runningYAML
			}
			r := feed(t, running, tc.candidate, q, tc.ks, tc.txs...)
			tc.check(t, r, tc.q)
		})
	}
}

// An identity gap in the candidate becomes a warning: categories sends
// only its key on UPDATE and DELETE.
func TestIdentityGapWarning(t *testing.T) {
	r := feed(t, runningYAML, `version: 1
tables:
  public.categories:
    keys: ["category-name:{name}"]
`, nil, Keyspace{})
	if len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], "REPLICA IDENTITY FULL") || !strings.Contains(r.Warnings[0], "candidate.yaml:4:") {
		t.Errorf("warnings: %q", r.Warnings)
	}
}

func TestLatencyPercentiles(t *testing.T) {
	var took []time.Duration
	for i := 100; i >= 1; i-- {
		took = append(took, time.Duration(i)*time.Millisecond)
	}
	l := latency(took)
	if l.P50Ms != 50 || l.P99Ms != 99 || l.MaxMs != 100 || l.Samples != 100 {
		t.Errorf("latency: %+v", l)
	}
	if latency(nil) != nil {
		t.Error("latency of no samples is not nil")
	}
}
