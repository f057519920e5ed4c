package pipeline

import (
	"slices"
	"testing"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication/wal"
)

func swapRegistry(t *testing.T, key string) *mapping.Registry {
	t.Helper()
	reg, err := mapping.Parse("deps.yaml", []byte("version: 1\ntables:\n  public.items:\n    keys: [\""+key+"\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

func keys(p *mapping.Plan) []string {
	var out []string
	for _, inv := range p.Invalidations() {
		out = append(out, inv.Key)
	}
	slices.Sort(out)
	return out
}

// A reload reaches the transactions that begin after it; one already begun
// is mapped with the registry it began with, to its end.
func TestSwapRegistryAtTransactionBegin(t *testing.T) {
	p := New(Options{Registry: swapRegistry(t, "old:{id}")})
	rel := &wal.Relation{ID: 1, Namespace: "public", Name: "items", ReplicaIdentity: 'd',
		Columns: []wal.Column{{Name: "id", Key: true}}}
	row := func(id string) *wal.Change {
		return &wal.Change{Op: wal.Insert, Relation: rel, New: []wal.Value{{Kind: wal.Text, Data: []byte(id)}}}
	}

	before := p.Begin()
	before.Add(row("1"))
	p.SwapRegistry(swapRegistry(t, "new:{id}"))
	before.Add(row("2")) // same transaction, after the reload
	after := p.Begin()
	after.Add(row("3"))

	if got, want := keys(&before.plan), []string{"old:1", "old:2"}; !slices.Equal(got, want) {
		t.Errorf("transaction begun before the reload: keys %v, want %v", got, want)
	}
	if got, want := keys(&after.plan), []string{"new:3"}; !slices.Equal(got, want) {
		t.Errorf("transaction begun after the reload: keys %v, want %v", got, want)
	}

	// A pooled plan is handed out with the mapper in use, not its old one.
	p.release(&committed{Sink: before})
	reused := p.Begin()
	reused.Add(row("4"))
	if got, want := keys(&reused.plan), []string{"new:4"}; !slices.Equal(got, want) {
		t.Errorf("reused plan: keys %v, want %v", got, want)
	}
}
