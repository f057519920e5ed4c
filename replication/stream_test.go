package replication

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walbust/walbust/internal/pgoutputtest"
	"github.com/walbust/walbust/replication/wal"
)

// countSink counts the row changes of one transaction.
type countSink struct{ rows int }

func (c *countSink) Add(*wal.Change) { c.rows++ }

// fakeConsumer acknowledges what the test says, and admits while room
// is set (else Admit waits for its context, as a full queue would).
type fakeConsumer struct {
	mu        sync.Mutex
	lsn       wal.LSN
	applied   uint64
	relations []string
	full      bool
	admits    int
}

func (c *fakeConsumer) Relation(rel *wal.Relation) {
	c.relations = append(c.relations, rel.QualifiedName())
}
func (c *fakeConsumer) Begin() *countSink { return &countSink{} }
func (c *fakeConsumer) TryAdmit(*Committed[*countSink]) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.full
}

func (c *fakeConsumer) Admit(ctx context.Context, _ *Committed[*countSink]) error {
	c.mu.Lock()
	c.admits++
	full := c.full
	c.mu.Unlock()
	if full {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

func (c *fakeConsumer) Acknowledged() (wal.LSN, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lsn, c.applied
}

func (c *fakeConsumer) ack(lsn wal.LSN, applied uint64) {
	c.mu.Lock()
	c.lsn, c.applied = lsn, applied
	c.mu.Unlock()
}

// testStreamer is a Streamer without a server: the test feeds it messages
// through handle and sees the status updates it would send.
type testStreamer struct {
	*Streamer[*countSink]
	c       *fakeConsumer
	out     chan *Committed[*countSink]
	mu      sync.Mutex
	updates []pglogrepl.StandbyStatusUpdate
	saved   []wal.LSN
	saveErr error
}

func newTestStreamer(checkpoint wal.LSN, interval time.Duration) *testStreamer {
	ts := &testStreamer{c: &fakeConsumer{lsn: checkpoint}, out: make(chan *Committed[*countSink], 16)}
	ts.Streamer = NewStreamer(Options{StatusInterval: interval, SaveIdle: func(lsn wal.LSN) error {
		if ts.saveErr != nil {
			return ts.saveErr
		}
		ts.saved = append(ts.saved, lsn)
		return nil
	}}, checkpoint, ts.c)
	ts.sendStatus = func(_ context.Context, u pglogrepl.StandbyStatusUpdate) error {
		ts.mu.Lock()
		ts.updates = append(ts.updates, u)
		ts.mu.Unlock()
		return nil
	}
	return ts
}

// xlog feeds one pgoutput message as WAL starting at start.
func (ts *testStreamer) xlog(t *testing.T, start wal.LSN, msg []byte) {
	t.Helper()
	if err := ts.feed(start, msg); err != nil {
		t.Fatal(err)
	}
}

func (ts *testStreamer) feed(start wal.LSN, msg []byte) error {
	b := []byte{pglogrepl.XLogDataByteID}
	b = binary.BigEndian.AppendUint64(b, uint64(start))
	b = binary.BigEndian.AppendUint64(b, uint64(start)+uint64(len(msg)))
	b = binary.BigEndian.AppendUint64(b, 0)
	return ts.handle(context.Background(), &pgproto3.CopyData{Data: append(b, msg...)}, ts.out)
}

// keepalive feeds a keepalive asking for a reply, and returns the update.
func (ts *testStreamer) keepalive(t *testing.T, walEnd wal.LSN) pglogrepl.StandbyStatusUpdate {
	t.Helper()
	b := []byte{pglogrepl.PrimaryKeepaliveMessageByteID}
	b = binary.BigEndian.AppendUint64(b, uint64(walEnd))
	b = binary.BigEndian.AppendUint64(b, 0)
	b = append(b, 1)
	n := len(ts.sent())
	if err := ts.handle(context.Background(), &pgproto3.CopyData{Data: b}, ts.out); err != nil {
		t.Fatal(err)
	}
	sent := ts.sent()
	if len(sent) != n+1 {
		t.Fatalf("a keepalive asking for a reply got %d status updates", len(sent)-n)
	}
	return sent[n]
}

func (ts *testStreamer) sent() []pglogrepl.StandbyStatusUpdate {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]pglogrepl.StandbyStatusUpdate(nil), ts.updates...)
}

// transaction feeds a one-row transaction whose commit ends at end.
func (ts *testStreamer) transaction(t *testing.T, xid uint32, end wal.LSN) {
	t.Helper()
	if err := ts.feedTransaction(xid, end); err != nil {
		t.Fatal(err)
	}
}

func (ts *testStreamer) feedTransaction(xid uint32, end wal.LSN) error {
	at := end - 0x30
	for i, m := range [][]byte{
		pgoutputtest.Relation(1, "public", "items", 'd', []pgoutputtest.Column{{Name: "id", Key: true}}),
		pgoutputtest.Begin(uint64(at+0x20), time.Now(), xid),
		pgoutputtest.Insert(1, pgoutputtest.Value("1")),
		pgoutputtest.Commit(uint64(at+0x20), uint64(end), time.Now()),
	} {
		if err := ts.feed(at+wal.LSN(i*8), m); err != nil {
			return err
		}
	}
	return nil
}

func flushOf(u pglogrepl.StandbyStatusUpdate) wal.LSN { return wal.LSN(u.WALFlushPosition) }

// The streamer skips what the checkpoint covers, delivers the rest with
// its sink, and confirms only what the consumer acknowledged, or idle WAL
// once everything delivered is acknowledged and the idle position saved.
func TestStreamerDeliversAndConfirmsOnlyAcknowledged(t *testing.T) {
	ts := newTestStreamer(0x200, time.Hour)
	ts.transaction(t, 1, 0x200) // at the checkpoint: a replay
	ts.transaction(t, 2, 0x400)
	if len(ts.c.relations) != 2 || ts.c.relations[0] != "public.items" {
		t.Errorf("consumer told relations %v, want public.items for each Relation message", ts.c.relations)
	}
	if len(ts.out) != 1 {
		t.Fatalf("%d transactions delivered, want 1 (the one at the checkpoint is a replay)", len(ts.out))
	}
	tx := <-ts.out
	if tx.Xid != 2 || tx.EndLSN != 0x400 || tx.Sink == nil || tx.Sink.rows != 1 {
		t.Fatalf("delivered xid %d end %s sink %+v, want xid 2 ending at 0/400 with its row in its sink", tx.Xid, tx.EndLSN, tx.Sink)
	}

	// Delivered, not acknowledged: only the checkpoint may be confirmed,
	// however far the server's WAL goes.
	if u := ts.keepalive(t, 0x1000); flushOf(u) != 0x200 {
		t.Errorf("confirmed %s with a delivered transaction unacknowledged, want the checkpoint 0/200", u.WALFlushPosition)
	}
	if len(ts.saved) != 0 {
		t.Errorf("idle position saved (%v) with a transaction unacknowledged", ts.saved)
	}
	// Acknowledged: the idle end is saved, then confirmed.
	ts.c.ack(0x400, 1)
	if u := ts.keepalive(t, 0x1000); flushOf(u) != 0x1000 || len(ts.saved) != 1 || ts.saved[0] != 0x1000 {
		t.Errorf("confirmed %s (saved %v), want the idle 0/1000, saved first", u.WALFlushPosition, ts.saved)
	}
	// A transaction half received: its start is not idle WAL.
	ts.xlog(t, 0x1100, pgoutputtest.Begin(0x1200, time.Now(), 3))
	if u := ts.keepalive(t, 0x2000); flushOf(u) != 0x1000 {
		t.Errorf("confirmed %s with a transaction half received, want 0/1000 still", u.WALFlushPosition)
	}
}

// While the idle position cannot be saved, only the acknowledged one is
// confirmed.
func TestStreamerConfirmsAcknowledgedWhenSaveIdleFails(t *testing.T) {
	ts := newTestStreamer(0, time.Hour)
	ts.saveErr = errors.New("read-only file system")
	ts.transaction(t, 1, 0x400)
	<-ts.out
	ts.c.ack(0x400, 1)
	if u := ts.keepalive(t, 0x1000); flushOf(u) != 0x400 {
		t.Errorf("confirmed %s with SaveIdle failing, want the acknowledged 0/400", u.WALFlushPosition)
	}
	ts.saveErr = nil
	if u := ts.keepalive(t, 0x1000); flushOf(u) != 0x1000 {
		t.Errorf("confirmed %s once SaveIdle works, want 0/1000", u.WALFlushPosition)
	}
}

// On a first start nothing is acknowledged: the update carries no write
// position, which pglogrepl would send as the flush position.
func TestStreamerFirstStartConfirmsNothing(t *testing.T) {
	ts := newTestStreamer(0, time.Hour)
	ts.transaction(t, 1, 0x400)
	u := ts.keepalive(t, 0x1000)
	if u.WALFlushPosition != 0 || u.WALWritePosition != 0 {
		t.Errorf("write/flush %s/%s before anything was acknowledged, want 0/0 for both", u.WALWritePosition, u.WALFlushPosition)
	}
}

// A transaction waiting for room in the consumer is not delivered, and
// the walsender hears from the streamer meanwhile.
func TestStreamerReportsWhileWaitingForAdmission(t *testing.T) {
	ts := newTestStreamer(0, 10*time.Millisecond)
	ts.c.full = true
	done := make(chan error, 1)
	go func() { done <- ts.feedTransaction(1, 0x400) }()
	deadline := time.Now().Add(10 * time.Second)
	for len(ts.sent()) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d status updates while waiting for admission, want several", len(ts.sent()))
		}
		time.Sleep(time.Millisecond)
	}
	if len(ts.out) != 0 {
		t.Error("a transaction was delivered before it was admitted")
	}
	ts.c.mu.Lock()
	ts.c.full = false
	ts.c.mu.Unlock()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the transaction was not delivered once there was room")
	}
	if tx := <-ts.out; tx.EndLSN != 0x400 {
		t.Errorf("delivered %s, want 0/400", tx.EndLSN)
	}
}
