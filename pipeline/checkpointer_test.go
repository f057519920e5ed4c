package pipeline

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/walbust/walbust/checkpoint"
	"github.com/walbust/walbust/replication"
)

// gatedStore is a real checkpoint file whose saves wait for a go-ahead,
// so the test controls when an fsync "finishes".
type gatedStore struct {
	file  *checkpoint.File
	start chan replication.LSN // a save began, with its position
	gate  chan error           // what the save returns (nil: it goes through)
}

func (s *gatedStore) Save(lsn replication.LSN) error {
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
	return &gatedStore{file: f, start: make(chan replication.LSN), gate: make(chan error)}
}

func waitSave(t *testing.T, s *gatedStore) replication.LSN {
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
	c := newCheckpointer(store, 100)
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

func TestCheckpointerSaveErrorStopsIt(t *testing.T) {
	store := newGatedStore(t)
	c := newCheckpointer(store, 0)
	done := make(chan error, 1)
	go func() { done <- c.run(context.Background()) }()
	c.applied(10, 1)
	waitSave(t, store)
	store.gate <- errors.New("disk full")
	select {
	case err := <-done:
		if err == nil {
			t.Error("run returned nil after a failed save")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run went on after a failed save")
	}
	if lsn, _ := c.acknowledged(); lsn != 0 {
		t.Errorf("acknowledged %s after the save failed", lsn)
	}
}
