package cacheaside

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

// WaitApplied ends on an event, on a poll when no event comes, at once
// for a position already reached, and with ctx's error otherwise.
func TestWaitApplied(t *testing.T) {
	rdb := redisClient(t)
	flush(t, rdb)
	ctx := context.Background()
	key := protocol.SettledKey("waitslot")
	for _, tc := range []struct {
		name    string
		channel string
		publish bool
	}{
		{"event", "test:events", true},
		{"poll, no event", "test:events", false},
		{"poll, no channel", "-", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, rdb, Options{Wait: WaitOptions{Slot: "waitslot", Channel: tc.channel, MaxPoll: 20 * time.Millisecond}})
			rdb.Set(ctx, key, wal.LSN(0x100).String(), 0)
			if err := c.WaitApplied(ctx, 0x100); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			start := time.Now()
			go func() { done <- c.WaitApplied(ctx, 0x200) }()
			time.Sleep(50 * time.Millisecond)
			select {
			case err := <-done:
				t.Fatalf("returned %v before the position reached 0/200", err)
			default:
			}
			rdb.Set(ctx, key, wal.LSN(0x250).String(), 0)
			if tc.publish {
				msg, _ := protocol.Event{LSN: 0x250, Keys: []string{"k"}}.Marshal()
				rdb.Publish(ctx, tc.channel, msg)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(2 * time.Second):
				t.Fatal("WaitApplied did not return after the position passed it")
			}
			t.Logf("returned after %v", time.Since(start))
			short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			defer cancel()
			if err := c.WaitApplied(short, 0x300); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("WaitApplied past the position: %v, want DeadlineExceeded", err)
			}
			if lsn, found, err := c.Applied(ctx); err != nil || !found || lsn != 0x250 {
				t.Errorf("Applied = %s, %v, %v; want 0/250", lsn, found, err)
			}
		})
	}
	rdb.Set(ctx, key, "garbage", 0)
	c := newClient(t, rdb, Options{Wait: WaitOptions{Slot: "waitslot", Channel: "-"}})
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := c.WaitApplied(short, 0x300); !errors.Is(err, ErrBadPosition) {
		t.Errorf("WaitApplied on a key that holds no LSN: %v, want ErrBadPosition", err)
	}
}

func TestPastPageHeader(t *testing.T) {
	const blk, seg = 8192, 16 << 20
	for _, tc := range []struct{ in, want wal.LSN }{
		{0x1_0000_2018, 0x1_0000_2000}, // past a short header
		{0x1_0100_0028, 0x1_0100_0000}, // past a segment's long header
		{0x1_0100_0018, 0x1_0100_0018}, // 24 bytes into a segment's first page: a real position
		{0x1_0000_2020, 0x1_0000_2020},
		{0x1_0000_2000, 0x1_0000_2000},
	} {
		if got := pastPageHeader(tc.in, blk, seg); got != tc.want {
			t.Errorf("pastPageHeader(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
