package mapping_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication/wal"
)

const planDeps = `version: 1
tables:
  public.products:
    action: bump
    keys: ["product:{id}", "category:{category_id}:products"]
  public.users:
    keys: ["user:{id}"]
    derived:
      - patterns: ["search:{name}:*"]
    on_truncate:
      patterns: ["user:*"]
`

var (
	planProducts = relation(1, "public.products", 'f', "id*", "category_id")
	planUsers    = relation(2, "public.users", 'f', "id*", "name")
)

func insert(rel *wal.Relation, vs ...string) wal.Change {
	row := make([]wal.Value, len(vs))
	for i, v := range vs {
		row[i] = txt(v)
	}
	return wal.Change{Op: wal.Insert, Relation: rel, New: row}
}

// mapInto maps changes as the decoder would (one plan per transaction) and
// merges them at commitLSN.
func mapInto(t *testing.T, m *mapping.Mapper, batch *mapping.Plan, commitLSN wal.LSN, changes ...wal.Change) *mapping.Plan {
	t.Helper()
	var tx mapping.Plan
	for i := range changes {
		m.MapChange(&changes[i], &tx)
	}
	batch.Merge(&tx, commitLSN)
	return &tx
}

func TestPlanMergeKeepsHighestVersionAndFirstOrder(t *testing.T) {
	reg := mustParse(t, planDeps)
	m := mapping.NewMapper(reg, nil)
	var batch mapping.Plan
	mapInto(t, m, &batch, 100, insert(planProducts, "1", "3"), insert(planUsers, "1", "*"))
	mapInto(t, m, &batch, 200, insert(planProducts, "2", "3"), insert(planProducts, "1", "4"))
	mapInto(t, m, &batch, 150, insert(planProducts, "1", "3")) // a replayed, older version must not lower it
	want := []string{
		"bump product:1 v=200 aux=product:1:version",
		"bump category:3:products v=200 aux=category:3:products:version",
		"delete user:1",
		`delete pattern search:\*:*`,
		"bump product:2 v=200 aux=product:2:version",
		"bump category:4:products v=200 aux=category:4:products:version",
	}
	if got := describeAll(&batch); !reflect.DeepEqual(got, want) {
		t.Errorf("merged:\n got %q\nwant %q", got, want)
	}
	if batch.Changes != 5 {
		t.Errorf("Changes = %d, want 5", batch.Changes)
	}
	wantCounts := []mapping.ChangeCount{{Table: "public.products", Op: wal.Insert, N: 4}, {Table: "public.users", Op: wal.Insert, N: 1}}
	if !reflect.DeepEqual(batch.ChangeCounts, wantCounts) {
		t.Errorf("ChangeCounts %+v, want %+v", batch.ChangeCounts, wantCounts)
	}
}

// The same key under different actions (or a key and a pattern with the
// same text) are different invalidations.
func TestPlanDedupeIsPerAction(t *testing.T) {
	reg := mustParse(t, `version: 1
tables:
  public.a:
    keys: ["k:{id}"]
    derived:
      - patterns: ["k:{id}"]
  public.b:
    action: bump
    keys: ["k:{id}"]
  public.c:
    action: bump
    version_key: "v:{key}"
    keys: ["k:{id}"]
`)
	m := mapping.NewMapper(reg, nil)
	var batch mapping.Plan
	for i, name := range []string{"public.a", "public.b", "public.c", "public.a"} {
		mapInto(t, m, &batch, 10, insert(relation(uint32(i), name, 'f', "id*"), "1"))
	}
	want := []string{"delete k:1", "delete pattern k:1", "bump k:1 v=10 aux=k:1:version", "bump k:1 v=10 aux=v:k:1"}
	if got := describeAll(&batch); !reflect.DeepEqual(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// Many keys: the index grows and every key is kept exactly once, in order.
func TestPlanGrowth(t *testing.T) {
	reg := mustParse(t, planDeps)
	m := mapping.NewMapper(reg, nil)
	var tx mapping.Plan
	const n = 50_000
	for round := range 2 { // the second round is all duplicates
		for i := range n {
			c := insert(planUsers, fmt.Sprint(i), "x")
			m.MapChange(&c, &tx)
		}
		if got, want := tx.Len(), n+1; got != want {
			t.Fatalf("round %d: Len = %d, want %d", round, got, want)
		}
	}
	// user:0, the pattern search:x:*, then user:1, user:2, ...
	invs := tx.Invalidations()
	for i := range n {
		at := i + 1
		if i == 0 {
			at = 0
		}
		if want := fmt.Sprintf("user:%d", i); invs[at].Key != want {
			t.Fatalf("invalidation %d = %q, want %q", at, invs[at].Key, want)
		}
	}
	if perKey := float64(tx.Size()) / float64(tx.Len()); perKey > 80 {
		t.Errorf("%.0f bytes per key held: the plan is meant to stay compact", perKey)
	}
}

// Past MaxTxChanges, a table with on_truncate rules is covered by them
// once; a table without keeps its row keys.
func TestMapperMaxTxChanges(t *testing.T) {
	reg := mustParse(t, planDeps)
	m := mapping.NewMapper(reg, nil)
	m.MaxTxChanges = 2
	var tx mapping.Plan
	for _, c := range []wal.Change{
		insert(planUsers, "1", "a"), insert(planProducts, "1", "3"),
		insert(planUsers, "2", "b"), insert(planProducts, "2", "4"), insert(planUsers, "3", "c"),
	} {
		m.MapChange(&c, &tx)
	}
	var batch mapping.Plan
	batch.Merge(&tx, 7)
	want := []string{
		"delete user:1", "delete pattern search:a:*",
		"bump product:1 v=7 aux=product:1:version", "bump category:3:products v=7 aux=category:3:products:version",
		"delete pattern user:*",
		"bump product:2 v=7 aux=product:2:version", "bump category:4:products v=7 aux=category:4:products:version",
	}
	if got := describeAll(&batch); !reflect.DeepEqual(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
	if !tx.Overflowed || !batch.Overflowed {
		t.Errorf("Overflowed = %v (merged %v), want true", tx.Overflowed, batch.Overflowed)
	}
	if tx.Changes != 5 {
		t.Errorf("Changes = %d, want 5 (collapsed rows still count)", tx.Changes)
	}
}

// A failed lookup stays recorded, so retrying Resolve runs it again and
// the ones that already ran are not repeated.
func TestResolveRetriesOnlyWhatFailed(t *testing.T) {
	reg := mustParse(t, `version: 1
tables:
  public.users:
    derived:
      - query: "SELECT team_id FROM members WHERE user_id = $1"
        args: [id]
        keys: ["team:{team_id}"]
`)
	users := relation(1, "public.users", 'f', "id*")
	q := &flakyQuerier{fail: map[string]int{"[2]": 1}}
	m := mapping.NewMapper(reg, q)
	var batch mapping.Plan
	mapInto(t, m, &batch, 5, insert(users, "1"), insert(users, "2"), insert(users, "1"))
	mapInto(t, m, &batch, 6, insert(users, "1"))
	if err := m.Resolve(context.Background(), &batch); err == nil {
		t.Fatal("Resolve succeeded; the lookup for user 2 fails once")
	}
	if err := m.Resolve(context.Background(), &batch); err != nil {
		t.Fatal(err)
	}
	if want := []string{"[1]", "[2]", "[2]"}; !reflect.DeepEqual(q.calls, want) {
		t.Errorf("lookups %q, want %q (each distinct argument once per batch, the failed one again)", q.calls, want)
	}
	if want := []string{"delete team:t1", "delete team:t2"}; !reflect.DeepEqual(describeAll(&batch), want) {
		t.Errorf("got %q, want %q", describeAll(&batch), want)
	}
	if err := m.Resolve(context.Background(), &batch); err != nil || len(q.calls) != 3 {
		t.Errorf("a resolved plan ran %d more lookups (err %v)", len(q.calls)-3, err)
	}
}

type flakyQuerier struct {
	fail  map[string]int
	calls []string
}

func (q *flakyQuerier) Lookup(_ context.Context, _ string, args []any) ([]string, [][][]byte, error) {
	k := fmt.Sprint(args)
	q.calls = append(q.calls, k)
	if q.fail[k] > 0 {
		q.fail[k]--
		return nil, nil, fmt.Errorf("connection reset")
	}
	return []string{"team_id"}, [][][]byte{{[]byte("t" + fmt.Sprint(args[0]))}}, nil
}
