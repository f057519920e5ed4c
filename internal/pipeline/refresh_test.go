package pipeline

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/walbust/walbust/internal/observe"
	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication/wal"
)

type refreshApplier struct {
	mu     sync.Mutex
	chunks [][]mapping.Invalidation
}

func (a *refreshApplier) ApplyBatch(ctx context.Context, lsn wal.LSN, invs []mapping.Invalidation) (invalidator.Stats, error) {
	return a.ApplyChunk(ctx, lsn, invs)
}

func (a *refreshApplier) ApplyChunk(_ context.Context, _ wal.LSN, invs []mapping.Invalidation) (invalidator.Stats, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.chunks = append(a.chunks, append([]mapping.Invalidation(nil), invs...))
	return invalidator.Stats{Attempts: 1, Keys: len(invs)}, nil
}

type refreshObserver struct{ failed map[string]int }

func (o *refreshObserver) BatchApplied(observe.Batch)           {}
func (o *refreshObserver) Refenced(int, time.Duration, bool)    {}
func (o *refreshObserver) RefreshFailed(table string, keys int) { o.failed[table] += keys }

// A failing refresh query flags its keys stale and is reported; the
// value rules' keys of the same batch are written; nothing is retried.
func TestRefreshFailureFlagsStaleAndContinues(t *testing.T) {
	reg, err := mapping.Parse("deps.yaml", []byte(`version: 1
tables:
  public.products:
    derived:
      - keys: ["product:{id}"]
        action: refresh
        value: row
        ttl: 1m
      - keys: ["category:{category_id}:products"]
        action: refresh
        ttl: 1m
        query: SELECT 1 AS value
        args: [category_id]
`))
	if err != nil {
		t.Fatal(err)
	}
	app := &refreshApplier{}
	obs := &refreshObserver{failed: map[string]int{}}
	p := New(Options{Registry: reg, Querier: failingQuerier{}, Applier: app, Observer: obs, ChunkInvalidations: 3})
	rel := &wal.Relation{ID: 1, Namespace: "public", Name: "products", Columns: []wal.Column{{Name: "id", Key: true}, {Name: "category_id"}}}
	m := mapping.NewMapper(reg, nil)
	var plan mapping.Plan
	for _, id := range []string{"1", "2"} {
		m.MapChange(&wal.Change{Op: wal.Insert, Relation: rel, New: []wal.Value{{Kind: wal.Text, Data: []byte(id)}, {Kind: wal.Text, Data: []byte(id)}}}, &plan)
	}
	plan.SetVersion(100)
	var b Batch
	if err := p.refresh(context.Background(), 120, &plan, &b); err != nil {
		t.Fatal(err)
	}
	if len(app.chunks) != 2 || b.Stats.Keys != 4 {
		t.Fatalf("chunks %d, keys %d: want 4 refreshes in chunks of 3", len(app.chunks), b.Stats.Keys)
	}
	ops := map[string]mapping.RefreshOp{}
	for _, c := range app.chunks {
		for _, inv := range c {
			if inv.Action != mapping.Refresh || inv.Version != 100 {
				t.Errorf("%+v", inv)
			}
			ops[inv.Key] = inv.Refresh.Op
		}
	}
	want := map[string]mapping.RefreshOp{"product:1": mapping.RefreshSet, "product:2": mapping.RefreshSet,
		"category:1:products": mapping.RefreshStale, "category:2:products": mapping.RefreshStale}
	for k, op := range want {
		if ops[k] != op {
			t.Errorf("%s: %v, want %v", k, ops[k], op)
		}
	}
	if obs.failed["public.products"] != 2 {
		t.Errorf("RefreshFailed: %v, want 2 keys of public.products", obs.failed)
	}
}
