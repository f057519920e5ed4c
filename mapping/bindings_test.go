package mapping_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication/wal"
)

const bindingDeps = `version: 1
tables:
  public.products:
    keys: ["product:{id}"]
  public.categories:
    keys: ["category:{id}"]
`

// Rules bind by OID (given at start, or learned from a Relation message
// under a registered name) and by name; a change maps to every table
// either way finds, and a relation neither finds is counted as unmapped.
func TestBindByOIDAndName(t *testing.T) {
	cases := []struct {
		name    string
		oids    map[string][]uint32 // BindOIDs at start
		before  []*wal.Relation
		rel     *wal.Relation
		want    []string // invalidations of an UPDATE of id 1
		notices []mapping.NoticeKind
		unmap   []mapping.ChangeCount
	}{{
		name: "by name, no OIDs known",
		rel:  relation(10, "public.products", 'd', "id*"),
		want: []string{"delete product:1"},
	}, {
		name:    "renamed after start: bound by OID",
		oids:    map[string][]uint32{"public.products": {10}},
		rel:     relation(10, "public.products2", 'd', "id*"),
		want:    []string{"delete product:1"},
		notices: []mapping.NoticeKind{mapping.Renamed},
	}, {
		name:    "renamed while streaming: OID learned from the first Relation",
		before:  []*wal.Relation{relation(10, "public.products", 'd', "id*")},
		rel:     relation(10, "public.products2", 'd', "id*"),
		want:    []string{"delete product:1"},
		notices: []mapping.NoticeKind{mapping.Renamed},
	}, {
		name:    "swapped in under the old name: mapped by name too",
		oids:    map[string][]uint32{"public.products": {10}},
		before:  []*wal.Relation{relation(10, "public.products_old", 'd', "id*")},
		rel:     relation(11, "public.products", 'd', "id*"),
		want:    []string{"delete product:1"},
		notices: []mapping.NoticeKind{mapping.Renamed, mapping.Swapped},
	}, {
		name: "a table bound by OID renamed to another registered name: both tables' rules",
		oids: map[string][]uint32{"public.products": {10}, "public.categories": {20}},
		rel:  relation(10, "public.categories", 'd', "id*"),
		want: []string{"delete product:1", "delete category:1"},
		// Renamed: deps.yaml's public.products entry names the old name.
		notices: []mapping.NoticeKind{mapping.Renamed},
	}, {
		name:    "published, no rule: counted",
		oids:    map[string][]uint32{"public.products": {10}},
		rel:     relation(30, "public.audit_log", 'd', "id*"),
		want:    []string{},
		notices: []mapping.NoticeKind{mapping.Unmapped},
		unmap:   []mapping.ChangeCount{{Table: "public.audit_log", Op: wal.Update, N: 1}},
	}, {
		name: "OIDs of names deps.yaml does not have are ignored",
		oids: map[string][]uint32{"public.nope": {30}},
		rel:  relation(30, "public.audit_log", 'd', "id*"),
		want: []string{}, notices: []mapping.NoticeKind{mapping.Unmapped},
		unmap: []mapping.ChangeCount{{Table: "public.audit_log", Op: wal.Update, N: 1}},
	}, {
		name: "dotted name",
		rel:  &wal.Relation{ID: 40, Namespace: "public", Name: "a.b", Columns: []wal.Column{{Name: "id", Key: true}}},
		want: []string{"delete ab:1"},
	}}
	deps := bindingDeps + `  public."a.b":
    keys: ["ab:{id}"]
`
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := mapping.NewMapper(mustParse(t, deps), nil)
			m.BindOIDs(c.oids)
			var kinds []mapping.NoticeKind
			for _, r := range append(slices.Clone(c.before), c.rel) {
				for _, n := range m.Relation(r) {
					kinds = append(kinds, n.Kind)
					if n.Msg == "" {
						t.Errorf("notice %d has no message", n.Kind)
					}
				}
			}
			var plan mapping.Plan
			m.MapChange(&wal.Change{Op: wal.Update, Relation: c.rel, New: row(txt("1"))}, &plan)
			if got := describeAll(&plan); !slices.Equal(got, c.want) {
				t.Errorf("invalidations %q, want %q", got, c.want)
			}
			if !slices.Equal(kinds, c.notices) {
				t.Errorf("notices %v, want %v", kinds, c.notices)
			}
			if !slices.Equal(plan.Unmapped, c.unmap) {
				t.Errorf("unmapped counts %v, want %v", plan.Unmapped, c.unmap)
			}
			// Notices are given once; a Relation message sent again (after
			// a reconnect) says nothing new.
			if again := m.Relation(relationCopy(c.rel)); len(again) > 0 {
				t.Errorf("notices given twice: %v", again)
			}
		})
	}
}

func relationCopy(r *wal.Relation) *wal.Relation {
	cp := *r
	return &cp
}

// The renamed notice names the old and new names, where deps.yaml names
// the old one, and the fix.
func TestRenamedNoticeSaysTheFix(t *testing.T) {
	m := mapping.NewMapper(mustParse(t, bindingDeps), nil)
	m.BindOIDs(map[string][]uint32{"public.products": {10}})
	ns := m.Relation(relation(10, "public.products2", 'd', "id*"))
	if len(ns) != 1 {
		t.Fatalf("notices %v, want one", ns)
	}
	for _, want := range []string{"public.products was renamed to public.products2", "OID 10", "deps.yaml:3:3 still names public.products", "write public.products2 there"} {
		if !strings.Contains(ns[0].Msg, want) {
			t.Errorf("notice %q lacks %q", ns[0].Msg, want)
		}
	}
}

// Unmapped counts survive merging into a batch's plan and go on Reset.
func TestPlanUnmappedMergeAndReset(t *testing.T) {
	m := mapping.NewMapper(mustParse(t, bindingDeps), nil)
	rel := relation(30, "public.audit_log", 'd', "id*")
	var tx, batch mapping.Plan
	for range 3 {
		m.MapChange(&wal.Change{Op: wal.Insert, Relation: rel, New: row(txt("1"))}, &tx)
	}
	batch.Merge(&tx, 1)
	batch.Merge(&tx, 2)
	if want := []mapping.ChangeCount{{Table: "public.audit_log", Op: wal.Insert, N: 6}}; !slices.Equal(batch.Unmapped, want) {
		t.Errorf("merged unmapped %v, want %v", batch.Unmapped, want)
	}
	if batch.Changes != 0 {
		t.Errorf("Changes = %d, want 0: unmapped changes are not changes of registered tables", batch.Changes)
	}
	batch.Reset()
	if len(batch.Unmapped) != 0 {
		t.Errorf("Reset kept unmapped counts %v", batch.Unmapped)
	}
}
