package visibility

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/walbust/walbust/internal/throwaway"
)

func TestVisible(t *testing.T) {
	const epoch = uint64(3) << 32
	for _, tt := range []struct {
		name string
		x    uint32
		xmax uint64
		xip  []uint64
		want bool
	}{
		{"older than xmax, not in progress", 100, 200, nil, true},
		{"in progress", 150, 200, []uint64{120, 150}, false},
		{"at xmax: committing, not yet in xip", 200, 200, nil, false},
		{"past xmax", 201, 200, nil, false},
		{"epoch: older", 100, epoch + 200, []uint64{epoch + 150}, true},
		{"epoch: in progress", 150, epoch + 200, []uint64{epoch + 150}, false},
		{"epoch: the same low bits in another epoch are not it", 150, epoch + 200, []uint64{150}, true},
		{"wraparound: x before the epoch boundary", 0xFFFFFFF0, epoch + 5, nil, true},
		{"wraparound: in progress across the boundary", 0xFFFFFFF0, epoch + 5, []uint64{epoch - 16}, false},
	} {
		if got := Visible(tt.x, tt.xmax, tt.xip); got != tt.want {
			t.Errorf("%s: Visible(%d, %d, %v) = %v, want %v", tt.name, tt.x, tt.xmax, tt.xip, got, tt.want)
		}
	}
}

// An open transaction stands in for a committing one: both are in the
// proc array. Wait must not return before it ends.
func TestWaitAgainstPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("needs postgres; run without -short")
	}
	dir, err := os.MkdirTemp("", "walbust-visibility-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := throwaway.StartPostgres(ctx, dir)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("the visibility test needs PostgreSQL: %v", err)
	}
	defer pg.Close()
	writer, err := pg.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close(ctx)
	waiter, err := pg.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer waiter.Close(ctx)

	tx, err := writer.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var xid int64
	if err := tx.QueryRow(ctx, "SELECT pg_current_xact_id()::text::bigint").Scan(&xid); err != nil {
		t.Fatal(err)
	}
	// A finished transaction is visible at once.
	var old int64
	if err := waiter.QueryRow(ctx, "SELECT pg_current_xact_id()::text::bigint").Scan(&old); err != nil {
		t.Fatal(err)
	}
	if err := Wait(ctx, waiter, []uint32{uint32(old)}, 0); err != nil {
		t.Fatalf("Wait for a finished transaction: %v", err)
	}

	done := make(chan error, 1)
	go func() { done <- Wait(ctx, waiter, []uint32{uint32(old), uint32(xid)}, time.Millisecond) }()
	select {
	case err := <-done:
		t.Fatalf("Wait returned while the transaction was in progress: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after the commit")
	}

	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	tx2, err := writer.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx2.Rollback(ctx)
	if err := tx2.QueryRow(ctx, "SELECT pg_current_xact_id()::text::bigint").Scan(&xid); err != nil {
		t.Fatal(err)
	}
	if err := Wait(short, waiter, []uint32{uint32(xid)}, 0); err == nil {
		t.Error("Wait returned nil for a transaction that never ended")
	}
}
