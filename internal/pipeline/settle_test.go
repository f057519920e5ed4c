package pipeline

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/walbust/walbust/replication/wal"
)

// settleLog is a callLog that also records the settled position.
type settleLog struct{ *callLog }

func (s settleLog) Settle(_ context.Context, lsn wal.LSN) error {
	s.add(fmt.Sprintf("settle %s", lsn))
	return nil
}

// With replicas, the settled position is recorded only after the re-fence
// of every batch up to it, never with the first fence.
func TestSettledAfterRefence(t *testing.T) {
	log, replicas := newCallLog(), &fakeReplicas{}
	applier := settleLog{log}
	p, src := loopRun(t, Options{Applier: applier, MaxBatchTxs: 1, Replicas: replicas, ReplicaWaitMax: time.Hour},
		loopTx{"orders", 100}, loopTx{"items", 200})
	stop, _ := started(t, p, src)
	waitFor(t, func() bool { return log.applied.Load() == 200 }, "the batches were not applied")
	polls := replicas.polls.Load()
	waitFor(t, func() bool { return replicas.polls.Load() >= polls+3 }, "the replicas were not polled")
	if calls := log.get(); slices.ContainsFunc(calls, func(c string) bool { return len(c) > 6 && c[:6] == "settle" }) {
		t.Errorf("settled before the re-fence: %q", calls)
	}
	replicas.replayed.Store(250)
	waitFor(t, func() bool { return acknowledged(p) == 200 }, "not acknowledged after the re-fence")
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	want := []string{"batch 0/64 1", "batch 0/C8 1", "chunk 0/64 1", "settle 0/C8"}
	if got := log.get(); !slices.Equal(got, want) {
		t.Errorf("applier calls %q, want %q", got, want)
	}
}
