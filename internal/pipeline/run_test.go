package pipeline

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

// fakeSource delivers txs, then waits for ctx like a caught-up stream.
type fakeSource struct {
	txs []*committed
	// pause, when set, runs before txs[i] is delivered (i > 0), so a test
	// can hold the stream back until the applier is busy.
	pause  func(i int)
	sent   chan struct{} // closed once every tx is delivered, if set
	closed atomic.Bool
}

func (s *fakeSource) Stream(ctx context.Context, out chan<- *committed) error {
	for i, tx := range s.txs {
		if s.pause != nil && i > 0 {
			s.pause(i)
		}
		select {
		case out <- tx:
		case <-ctx.Done():
			return nil
		}
	}
	if s.sent != nil {
		close(s.sent)
	}
	<-ctx.Done()
	return nil
}

func (s *fakeSource) Close(context.Context) error {
	s.closed.Store(true)
	return nil
}

// fakeApplier acknowledges every batch, or fails every attempt while failing
// is set, until ctx ends (as the invalidator retries).
type fakeApplier struct {
	failing atomic.Bool
	applied atomic.Int64
}

func (a *fakeApplier) ApplyBatch(ctx context.Context, _ wal.LSN, _ []mapping.Invalidation) (invalidator.Stats, error) {
	if a.failing.Load() {
		<-ctx.Done()
		return invalidator.Stats{}, ctx.Err()
	}
	a.applied.Add(1)
	return invalidator.Stats{Attempts: 1}, nil
}

func (a *fakeApplier) ApplyChunk(ctx context.Context, lsn wal.LSN, invs []mapping.Invalidation) (invalidator.Stats, error) {
	return a.ApplyBatch(ctx, lsn, invs)
}

// failingStore never saves.
type failingStore struct{ saves atomic.Int64 }

func (s *failingStore) Save(wal.LSN) error {
	s.saves.Add(1)
	return errors.New("no space left on device")
}

// failingQuerier fails every lookup.
type failingQuerier struct{}

func (failingQuerier) Lookup(context.Context, string, []any) ([]string, [][][]byte, error) {
	return nil, nil, errors.New("permission denied for table categories")
}

const runDeps = `version: 1
tables:
  public.products:
    keys: ["product:{id}"]
    derived:
      - query: "SELECT id FROM categories WHERE id = $1"
        args: [category_id]
        keys: ["category:{id}"]
`

func newRunPipeline(t *testing.T, o Options) (*Pipeline, *fakeSource) {
	t.Helper()
	reg, err := mapping.Parse("deps.yaml", []byte(runDeps))
	if err != nil {
		t.Fatal(err)
	}
	o.Registry = reg
	p := New(o)
	src := &fakeSource{}
	rel := &wal.Relation{ID: 1, Namespace: "public", Name: "products",
		Columns: []wal.Column{{Name: "id", Key: true}, {Name: "category_id"}}}
	for i := 1; i <= 3; i++ {
		tx := &committed{Transaction: replication.Transaction{Xid: uint32(i), EndLSN: wal.LSN(i * 100), CommitLSN: wal.LSN(i*100 - 1), CommitTime: time.Now()}}
		tx.Sink = p.Begin()
		tx.Sink.Add(&wal.Change{Op: wal.Insert, Relation: rel,
			New: []wal.Value{{Kind: wal.Text, Data: []byte("1")}, {Kind: wal.Text, Data: []byte("7")}}})
		src.txs = append(src.txs, tx)
	}
	return p, src
}

// runFor runs p until it returns or the test's patience runs out.
func runFor(t *testing.T, ctx context.Context, p *Pipeline, src Source, limit time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, src) }()
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
		t.Fatalf("Pipeline.Run did not return within %v", limit)
		return nil
	}
}

// A checkpoint that cannot be saved ends Run with an error after
// CheckpointRetry, and nothing is acknowledged.
func TestRunExitsWhenCheckpointKeepsFailing(t *testing.T) {
	store := &failingStore{}
	health := &healthLog{}
	p, src := newRunPipeline(t, Options{Applier: &fakeApplier{}, Store: store, Health: health, CheckpointRetry: 300 * time.Millisecond, Querier: okQuerier{}})
	err := runFor(t, context.Background(), p, src, 10*time.Second)
	if err == nil {
		t.Fatal("Run returned nil although no checkpoint could be saved")
	}
	if lsn, _ := p.Acknowledged(); lsn != 0 {
		t.Errorf("acknowledged %s without a saved checkpoint", lsn)
	}
	if store.saves.Load() < 2 {
		t.Errorf("%d save attempts, want retries", store.saves.Load())
	}
	if !src.closed.Load() {
		t.Error("the source was not closed")
	}
}

// A stop ends Run within the shutdown grace in every stalled state.
func TestRunStopsWhileStalled(t *testing.T) {
	cases := map[string]func(*fakeApplier) Options{
		"checkpoint failing": func(a *fakeApplier) Options {
			return Options{Store: &failingStore{}, Querier: okQuerier{}}
		},
		"redis refusing": func(a *fakeApplier) Options {
			a.failing.Store(true)
			return Options{Store: &memStore{}, Querier: okQuerier{}}
		},
		"lookup failing": func(a *fakeApplier) Options {
			return Options{Store: &memStore{}, Querier: failingQuerier{}}
		},
	}
	for name, setup := range cases {
		t.Run(name, func(t *testing.T) {
			applier := &fakeApplier{}
			o := setup(applier)
			o.Applier, o.ShutdownGrace, o.Health = applier, 500*time.Millisecond, &healthLog{}
			p, src := newRunPipeline(t, o)
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(300*time.Millisecond, cancel)
			start := time.Now()
			_ = runFor(t, ctx, p, src, 10*time.Second)
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("stop took %v with a 500ms grace", took)
			}
		})
	}
}

// A lookup that keeps failing is reported as a stall until it succeeds.
func TestRunReportsLookupStall(t *testing.T) {
	health := &healthLog{}
	q := &flakyQuerier{}
	q.failing.Store(true)
	p, src := newRunPipeline(t, Options{Applier: &fakeApplier{}, Store: &memStore{}, Health: health, Querier: q})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, src) }()
	waitFor(t, func() bool { return health.stalled(StallLookup) }, "no lookup stall reported while lookups fail")
	if lsn, _ := p.Acknowledged(); lsn != 0 {
		t.Errorf("acknowledged %s while the lookup fails", lsn)
	}
	q.failing.Store(false)
	waitFor(t, func() bool { lsn, _ := p.Acknowledged(); return lsn == 300 && !health.stalled(StallLookup) },
		"the stall did not clear, or the batches were not acknowledged, after lookups recovered")
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

type okQuerier struct{}

func (okQuerier) Lookup(context.Context, string, []any) ([]string, [][][]byte, error) {
	return []string{"id"}, [][][]byte{{[]byte("1")}}, nil
}

type flakyQuerier struct{ failing atomic.Bool }

func (q *flakyQuerier) Lookup(ctx context.Context, sql string, args []any) ([]string, [][][]byte, error) {
	if q.failing.Load() {
		return failingQuerier{}.Lookup(ctx, sql, args)
	}
	return okQuerier{}.Lookup(ctx, sql, args)
}

type memStore struct{ lsn atomic.Uint64 }

func (s *memStore) Save(lsn wal.LSN) error {
	s.lsn.Store(uint64(lsn))
	return nil
}

func waitFor(t *testing.T, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
