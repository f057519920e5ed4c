package pipeline

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/walbust/walbust/checkpoint"
	"github.com/walbust/walbust/replication/wal"
)

// gatedStore is a real checkpoint file whose saves wait for a go-ahead,
// so the test controls when an fsync "finishes".
type gatedStore struct {
	file  *checkpoint.File
	start chan wal.LSN // a save began, with its position
	gate  chan error   // what the save returns (nil: it goes through)
}

func (s *gatedStore) Save(lsn wal.LSN) error {
	s.start <- lsn
	if err := <-s.gate; err != nil {
		return err
	}
	return s.file.Save(lsn)
}

func newGatedStore(t *testing.T) *gatedStore {
	f, err := checkpoint.Open(filepath.Join(t.TempDir(), "checkpoint"))
	if err != nil {
		t.Fatal(err)
	}
	return &gatedStore{file: f, start: make(chan wal.LSN), gate: make(chan error)}
}

func waitSave(t *testing.T, s *gatedStore) wal.LSN {
	t.Helper()
	select {
	case lsn := <-s.start:
		return lsn
	case <-time.After(10 * time.Second):
		t.Fatal("no save started")
		return 0
	}
}

// While one save runs, later batches keep being applied; the next save
// takes them all at once, and nothing is acknowledged before it is saved.
func TestCheckpointerCoalescesAndAcknowledgesOnlySaved(t *testing.T) {
	store := newGatedStore(t)
	c := newCheckpointer(store, 100, time.Minute, noHealth{}, zap.NewNop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.run(ctx) }()

	c.applied(200, 1)
	if lsn := waitSave(t, store); lsn != 200 {
		t.Fatalf("first save at %s, want 0/C8", lsn)
	}
	c.applied(300, 2)
	c.applied(400, 1)
	if lsn, txs := c.acknowledged(); lsn != 100 || txs != 0 {
		t.Errorf("acknowledged %s (%d txs) while the save of 0/C8 is running, want the start 0/64", lsn, txs)
	}
	store.gate <- nil
	if lsn := waitSave(t, store); lsn != 400 {
		t.Errorf("second save at %s, want 0/190: the batches applied meanwhile, together", lsn)
	}
	if lsn, txs := c.acknowledged(); lsn != 200 || txs != 1 {
		t.Errorf("acknowledged %s (%d txs), want 0/C8 (1)", lsn, txs)
	}
	store.gate <- nil
	deadline := time.Now().Add(10 * time.Second)
	for lsn, _ := c.acknowledged(); lsn != 400; lsn, _ = c.acknowledged() {
		if time.Now().After(deadline) {
			t.Fatalf("acknowledged %s, want 0/190", lsn)
		}
		time.Sleep(time.Millisecond)
	}
	if lsn, txs := c.acknowledged(); txs != 4 {
		t.Errorf("acknowledged %s with %d txs, want 4", lsn, txs)
	}
	if stored, err := store.file.Load(); err != nil || stored != 400 {
		t.Errorf("checkpoint file holds %s (%v), want 0/190", stored, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
}

// healthLog records what the pipeline told Health.
type healthLog struct {
	mu     sync.Mutex
	stalls map[string]error
	events []string
}

func (h *healthLog) Stalled(cause string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stalls == nil {
		h.stalls = map[string]error{}
	}
	h.stalls[cause] = err
	h.events = append(h.events, "stalled:"+cause)
}

func (h *healthLog) Recovered(cause string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.stalls, cause)
	h.events = append(h.events, "recovered:"+cause)
}

func (h *healthLog) stalled(cause string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.stalls[cause]
	return ok
}

// A failing save is retried, reported as a stall meanwhile, and nothing is
// acknowledged until a save succeeds.
func TestCheckpointerRetriesFailingSave(t *testing.T) {
	store := newGatedStore(t)
	health := &healthLog{}
	c := newCheckpointer(store, 0, time.Minute, health, zap.NewNop())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.run(ctx) }()
	c.applied(10, 1)
	waitSave(t, store)
	store.gate <- errors.New("disk full")
	if lsn := waitSave(t, store); lsn != 10 {
		t.Fatalf("retry saved %s, want 0/A", lsn)
	}
	if !health.stalled(StallCheckpoint) {
		t.Error("a failed save was not reported as a checkpoint stall")
	}
	if lsn, _ := c.acknowledged(); lsn != 0 {
		t.Errorf("acknowledged %s after the save failed", lsn)
	}
	store.gate <- nil
	deadline := time.Now().Add(10 * time.Second)
	for lsn, _ := c.acknowledged(); lsn != 10; lsn, _ = c.acknowledged() {
		if time.Now().After(deadline) {
			t.Fatalf("acknowledged %s after the retry succeeded, want 0/A", lsn)
		}
		time.Sleep(time.Millisecond)
	}
	if health.stalled(StallCheckpoint) {
		t.Error("still stalled after the save succeeded")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
}

// Saves that keep failing end run with an error once retryFor has passed,
// so the daemon exits for its supervisor instead of hanging.
func TestCheckpointerGivesUpAfterRetryTimeout(t *testing.T) {
	store := newGatedStore(t)
	c := newCheckpointer(store, 0, 300*time.Millisecond, &healthLog{}, zap.NewNop())
	done := make(chan error, 1)
	go func() { done <- c.run(context.Background()) }()
	c.applied(10, 1)
	go func() {
		for range store.start {
			store.gate <- errors.New("read-only file system")
		}
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "read-only file system") || !strings.Contains(err.Error(), "checkpoint.retry_timeout") {
			t.Errorf("run returned %v, want the save error and the setting that bounds the retries", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run went on retrying past its retry timeout")
	}
	if lsn, _ := c.acknowledged(); lsn != 0 {
		t.Errorf("acknowledged %s although no save succeeded", lsn)
	}
}
