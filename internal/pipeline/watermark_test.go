package pipeline

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/walbust/walbust/replication"
)

// Every batch ends in ApplyBatch, which records its end as applied: a
// batch with no invalidations too, and a chunked one only with its last
// chunk.
func TestEveryBatchEndsInApplyBatch(t *testing.T) {
	calls := &callLog{}
	store := &memStore{}
	p, src := newRunPipeline(t, Options{Applier: calls, Store: store, Querier: okQuerier{}, ChunkInvalidations: 1, MaxBatchTxs: 1})
	// One transaction with a row (two invalidations: its key and the
	// lookup's), then an empty one.
	src.txs = src.txs[:1]
	empty := &committed{Transaction: replication.Transaction{Xid: 9, EndLSN: 500, CommitLSN: 499, CommitTime: time.Now()}, Sink: p.Begin()}
	src.txs = append(src.txs, empty)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, src) }()
	waitFor(t, func() bool { return store.lsn.Load() == 500 }, "the empty transaction was not checkpointed")
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	want := []string{"chunk 0/64 1", "batch 0/64 1", "batch 0/1F4 0"}
	if got := calls.get(); !slices.Equal(got, want) {
		t.Errorf("applier calls %q, want %q", got, want)
	}
}
