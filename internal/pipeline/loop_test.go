package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walbust/walbust/internal/pgoutputtest"
	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

// The unit tier of the core loop: Pipeline.Run with an in-memory source,
// applier and store, no Postgres and no Redis.

// callLog is an Applier that records every call (kind, batch end, number
// of invalidations), and can hold a batch in flight or fail it.
type callLog struct {
	mu    sync.Mutex
	calls []string
	// holdAt: ApplyBatch for this end tells entered and waits for release
	// (or its context, as the invalidator's retries end with it).
	holdAt  atomic.Uint64
	entered chan wal.LSN
	release chan struct{}
	// failAt: ApplyBatch for this end fails.
	failAt  atomic.Uint64
	applied atomic.Uint64 // highest end ApplyBatch returned nil for
}

func newCallLog() *callLog {
	return &callLog{entered: make(chan wal.LSN, 16), release: make(chan struct{})}
}

func (c *callLog) add(s string) {
	c.mu.Lock()
	c.calls = append(c.calls, s)
	c.mu.Unlock()
}

func (c *callLog) get() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls)
}

func (c *callLog) ApplyBatch(ctx context.Context, lsn wal.LSN, invs []mapping.Invalidation) (invalidator.Stats, error) {
	c.add(fmt.Sprintf("batch %s %d", lsn, len(invs)))
	if c.holdAt.Load() == uint64(lsn) && c.entered != nil {
		c.entered <- lsn
		select {
		case <-c.release:
		case <-ctx.Done():
			return invalidator.Stats{}, ctx.Err()
		}
	}
	if c.failAt.Load() == uint64(lsn) {
		return invalidator.Stats{}, errors.New("READONLY You can't write against a read only replica")
	}
	for {
		old := c.applied.Load()
		if uint64(lsn) <= old || c.applied.CompareAndSwap(old, uint64(lsn)) {
			break
		}
	}
	return invalidator.Stats{Attempts: 1}, nil
}

func (c *callLog) ApplyChunk(_ context.Context, lsn wal.LSN, invs []mapping.Invalidation) (invalidator.Stats, error) {
	c.add(fmt.Sprintf("chunk %s %d", lsn, len(invs)))
	return invalidator.Stats{Attempts: 1}, nil
}

// batches are the ApplyBatch calls, as "end invalidations".
func (c *callLog) batches() []string {
	var out []string
	for _, s := range c.get() {
		if rest, ok := strings.CutPrefix(s, "batch "); ok {
			out = append(out, rest)
		}
	}
	return out
}

// flakyStore is an in-memory checkpoint whose saves fail while failing.
type flakyStore struct {
	failing atomic.Bool
	memStore
}

func (s *flakyStore) Save(lsn wal.LSN) error {
	if s.failing.Load() {
		return errors.New("no space left on device")
	}
	return s.memStore.Save(lsn)
}

const loopDeps = `version: 1
tables:
  public.items:
    keys: ["item:{id}"]
  public.orders:
    action: fence
    keys: ["order:{id}"]
`

// loopTx is a one-row insert into table (items or orders) ending at end.
type loopTx struct {
	table string
	end   wal.LSN
}

// loopRun is a pipeline with its source, built from pgoutput messages
// through the Decoder as the stream would.
func loopRun(t *testing.T, o Options, txs ...loopTx) (*Pipeline, *fakeSource) {
	t.Helper()
	reg, err := mapping.Parse("deps.yaml", []byte(loopDeps))
	if err != nil {
		t.Fatal(err)
	}
	o.Registry = reg
	if o.Store == nil {
		o.Store = &memStore{}
	}
	p := New(o)
	dec := replication.NewSinkDecoder(p.Begin)
	cols := []pgoutputtest.Column{{Name: "id", Key: true}}
	src := &fakeSource{}
	for i, spec := range txs {
		rel := map[string]uint32{"items": 1, "orders": 2}[spec.table]
		msgs := [][]byte{
			pgoutputtest.Relation(rel, "public", spec.table, 'd', cols),
			pgoutputtest.Begin(uint64(spec.end-8), time.Now(), uint32(i+1)),
			pgoutputtest.Insert(rel, pgoutputtest.Value(fmt.Sprint(i+1))),
			pgoutputtest.Commit(uint64(spec.end-8), uint64(spec.end), time.Now()),
		}
		for _, m := range msgs {
			tx, _, err := dec.Decode(m)
			if err != nil {
				t.Fatal(err)
			}
			if tx != nil {
				src.txs = append(src.txs, tx)
			}
		}
	}
	if len(src.txs) != len(txs) {
		t.Fatalf("decoded %d transactions, want %d", len(src.txs), len(txs))
	}
	return p, src
}

func items(ends ...wal.LSN) []loopTx {
	var out []loopTx
	for _, e := range ends {
		out = append(out, loopTx{"items", e})
	}
	return out
}

// started runs p in the background; stop cancels it and returns Run's error.
func started(t *testing.T, p *Pipeline, src Source) (stop func() error, done <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- p.Run(ctx, src) }()
	t.Cleanup(cancel)
	return func() error {
		cancel()
		select {
		case err := <-ch:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after its context ended")
			return nil
		}
	}, ch
}

func acknowledged(p *Pipeline) wal.LSN { lsn, _ := p.Acknowledged(); return lsn }

func waitEntered(t *testing.T, a *callLog, want wal.LSN) {
	t.Helper()
	select {
	case got := <-a.entered:
		if got != want {
			t.Fatalf("batch %s in flight, want %s", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the batch ending at %s never reached the applier", want)
	}
}

// Transactions that queue while a batch is in flight become one batch, up
// to MaxBatchTxs and MaxBatchBytes, applied in commit order.
func TestRunBatchesQueuedTransactions(t *testing.T) {
	ends := []wal.LSN{100, 200, 300, 400, 500, 600, 700, 800}
	var one int // the plan size of one transaction
	{
		p, src := loopRun(t, Options{}, items(100)...)
		one = src.txs[0].Sink.plan.Size()
		p.release(src.txs[0])
	}
	for _, tc := range []struct {
		name string
		o    Options
		want []string // ApplyBatch calls: end and invalidations
	}{
		{"unbounded", Options{}, []string{"0/64 1", "0/320 7"}},
		{"max_batch_txs 3", Options{MaxBatchTxs: 3}, []string{"0/64 1", "0/190 3", "0/2BC 3", "0/320 1"}},
		{"max_batch_bytes two plans", Options{MaxBatchBytes: 2 * one}, []string{"0/64 1", "0/12C 2", "0/1F4 2", "0/2BC 2", "0/320 1"}},
		{"max_batch_txs 1", Options{MaxBatchTxs: 1}, []string{"0/64 1", "0/C8 1", "0/12C 1", "0/190 1", "0/1F4 1", "0/258 1", "0/2BC 1", "0/320 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			applier := newCallLog()
			applier.holdAt.Store(100)
			tc.o.Applier = applier
			p, src := loopRun(t, tc.o, items(ends...)...)
			// The first transaction is in flight before the others arrive.
			src.pause = func(i int) {
				if i == 1 {
					waitEntered(t, applier, 100)
				}
			}
			src.sent = make(chan struct{})
			stop, _ := started(t, p, src)
			<-src.sent
			close(applier.release)
			waitFor(t, func() bool { return acknowledged(p) == 800 }, "not everything was acknowledged")
			if err := stop(); err != nil {
				t.Errorf("Run: %v", err)
			}
			if got := applier.batches(); !slices.Equal(got, tc.want) {
				t.Errorf("batches %q, want %q", got, tc.want)
			}
		})
	}
}

// Nothing is acknowledged before ApplyBatch returned for it: not while it
// is in flight, not when it fails, not while the checkpoint cannot be
// saved.
func TestRunAcknowledgesOnlyApplied(t *testing.T) {
	for _, tc := range []struct {
		name string
		// hold is run with the second batch in flight (held at 0/C8);
		// it returns what Run should end with.
		hold func(t *testing.T, p *Pipeline, a *callLog, s *flakyStore) (wantAck wal.LSN, wantErr string)
	}{
		{"in flight, then applied", func(t *testing.T, p *Pipeline, a *callLog, s *flakyStore) (wal.LSN, string) {
			a.release <- struct{}{}
			waitFor(t, func() bool { return acknowledged(p) == 300 }, "not acknowledged after the batch was applied")
			return 300, ""
		}},
		{"applier fails", func(t *testing.T, p *Pipeline, a *callLog, s *flakyStore) (wal.LSN, string) {
			a.failAt.Store(200)
			a.release <- struct{}{}
			return 100, "READONLY"
		}},
		{"store fails, then recovers", func(t *testing.T, p *Pipeline, a *callLog, s *flakyStore) (wal.LSN, string) {
			s.failing.Store(true)
			a.release <- struct{}{}
			waitFor(t, func() bool { return a.applied.Load() == 300 }, "the batches were not applied")
			if got := acknowledged(p); got != 100 {
				t.Errorf("acknowledged %s with the store failing, want 0/64", got)
			}
			s.failing.Store(false)
			waitFor(t, func() bool { return acknowledged(p) == 300 }, "not acknowledged once the store recovered")
			return 300, ""
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			applier, store := newCallLog(), &flakyStore{}
			applier.holdAt.Store(200)
			p, src := loopRun(t, Options{Applier: applier, Store: store, MaxBatchTxs: 1, CheckpointRetry: time.Hour}, items(100, 200, 300)...)
			// The invariant, checked throughout: the acknowledged position
			// never passes what the applier returned.
			watching, violation := make(chan struct{}), make(chan string, 1)
			go func() {
				for {
					select {
					case <-watching:
						return
					default:
					}
					if ack := acknowledged(p); uint64(ack) > applier.applied.Load() {
						violation <- fmt.Sprintf("acknowledged %s, applied only %s", ack, wal.LSN(applier.applied.Load()))
						return
					}
					time.Sleep(50 * time.Microsecond) // pacing, not synchronisation
				}
			}()
			stop, done := started(t, p, src)
			waitEntered(t, applier, 200)
			waitFor(t, func() bool { return acknowledged(p) == 100 }, "the first batch was not acknowledged")
			wantAck, wantErr := tc.hold(t, p, applier, store)
			var err error
			if wantErr != "" {
				select {
				case err = <-done:
				case <-time.After(10 * time.Second):
					t.Fatal("Run went on after the applier failed")
				}
			} else {
				err = stop()
			}
			close(watching)
			if wantErr == "" && err != nil || wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)) {
				t.Errorf("Run returned %v, want %q", err, wantErr)
			}
			if got := acknowledged(p); got != wantAck {
				t.Errorf("acknowledged %s at the end, want %s", got, wantAck)
			}
			select {
			case v := <-violation:
				t.Error(v)
			default:
			}
		})
	}
}

// A stop with a batch in flight waits for it up to ShutdownGrace: finished
// in time it is acknowledged; abandoned after the grace it is not, and is
// replayed on the next start.
func TestRunShutdownGrace(t *testing.T) {
	for _, tc := range []struct {
		name     string
		finishes bool
		wantAck  wal.LSN
	}{
		{"finishes within the grace", true, 200},
		{"abandoned after the grace", false, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			applier, store := newCallLog(), &memStore{}
			applier.holdAt.Store(200)
			grace := 300 * time.Millisecond
			if tc.finishes {
				grace = time.Minute
			}
			p, src := loopRun(t, Options{Applier: applier, Store: store, MaxBatchTxs: 1, ShutdownGrace: grace}, items(100, 200)...)
			stop, _ := started(t, p, src)
			waitEntered(t, applier, 200)
			if tc.finishes {
				go func() { applier.release <- struct{}{} }()
			}
			start := time.Now()
			if err := stop(); err != nil {
				t.Errorf("Run: %v", err)
			}
			took := time.Since(start)
			if !tc.finishes && took < grace {
				t.Errorf("Run returned after %v, before the %v grace", took, grace)
			}
			if got := acknowledged(p); got != tc.wantAck {
				t.Errorf("acknowledged %s, want %s", got, tc.wantAck)
			}
			if got := wal.LSN(store.lsn.Load()); got != tc.wantAck {
				t.Errorf("checkpoint %s, want %s", got, tc.wantAck)
			}
			if !src.closed.Load() {
				t.Error("the source was not closed")
			}
		})
	}
}

// fakeReplicas reports a replay position the test sets.
type fakeReplicas struct {
	replayed atomic.Uint64
	polls    atomic.Int64
}

func (r *fakeReplicas) Replayed(context.Context) (wal.LSN, bool, error) {
	r.polls.Add(1)
	return wal.LSN(r.replayed.Load()), true, nil
}

// A batch with fences is acknowledged only once it is fenced again, after
// the replicas replayed past it or ReplicaWaitMax passed; later batches
// wait behind it.
func TestRunRefenceOrdering(t *testing.T) {
	for _, tc := range []struct {
		name    string
		waitMax time.Duration
		replay  bool // the replicas catch up (else the wait reaches waitMax)
	}{
		{"replicas replay past it", time.Hour, true},
		{"replica_wait_max passes", 300 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			applier, replicas := newCallLog(), &fakeReplicas{}
			p, src := loopRun(t, Options{Applier: applier, MaxBatchTxs: 1, Replicas: replicas, ReplicaWaitMax: tc.waitMax},
				loopTx{"orders", 100}, loopTx{"items", 200})
			start := time.Now()
			stop, _ := started(t, p, src)
			waitFor(t, func() bool { return applier.applied.Load() == 200 }, "the batches were not applied")
			if tc.replay {
				// The poller has seen the replicas behind a few times.
				polls := replicas.polls.Load()
				waitFor(t, func() bool { return replicas.polls.Load() >= polls+3 }, "the replicas were not polled")
				if got := acknowledged(p); got != 0 {
					t.Errorf("acknowledged %s while the replicas are behind the fenced batch", got)
				}
				if calls := applier.get(); slices.Contains(calls, "chunk 0/64 1") {
					t.Errorf("fenced again before the replicas replayed it: %q", calls)
				}
				replicas.replayed.Store(150)
			}
			waitFor(t, func() bool { return acknowledged(p) == 200 }, "not acknowledged after the re-fence")
			if !tc.replay && time.Since(start) < tc.waitMax {
				t.Errorf("acknowledged after %v, before replica_wait_max %v", time.Since(start), tc.waitMax)
			}
			if err := stop(); err != nil {
				t.Errorf("Run: %v", err)
			}
			want := []string{"batch 0/64 1", "batch 0/C8 1", "chunk 0/64 1"}
			if got := applier.get(); !slices.Equal(got, want) {
				t.Errorf("applier calls %q, want %q (the fence again, with the fenced batch's end)", got, want)
			}
		})
	}
}
