package replication

import (
	"errors"
	"testing"

	"github.com/walbust/walbust/replication/wal"
)

// The acknowledged position can come from a checkpoint file; only what this
// server has streamed may be confirmed to it.
func TestFlushNeverPastWhatWasStreamed(t *testing.T) {
	const foreign = wal.LSN(0xFFFFFFFF_FFFFFF00)
	p := positions{lastDelivered: foreign}
	if got := p.flush(acked{lsn: foreign}); got != 0 {
		t.Errorf("nothing streamed yet: flush %s, want 0/0", got)
	}
	p.data(0x800, 0x800, 0x1000)
	if got := p.flush(acked{lsn: foreign}); got != 0x1000 {
		t.Errorf("streamed to 0/1000: flush %s, want 0/1000", got)
	}
	p.keepalive(0x2000, false)
	if got := p.flush(acked{lsn: foreign}); got != 0x2000 {
		t.Errorf("idle at 0/2000: flush %s, want 0/2000", got)
	}
}

// Idle WAL (a keepalive's end between transactions) is confirmed only when
// everything delivered is acknowledged and no transaction is half received;
// otherwise only the acknowledged position is.
func TestFlushIdleAdvance(t *testing.T) {
	for _, tc := range []struct {
		name      string
		delivered int
		inTxAtKA  bool // a transaction was half received when the keepalive came
		ack       acked
		want      wal.LSN
	}{
		{"all acknowledged, between transactions", 2, false, acked{lsn: 0x800, applied: 2}, 0x2000},
		{"nothing delivered, nothing acknowledged", 0, false, acked{}, 0x2000},
		{"a delivered transaction unacknowledged", 2, false, acked{lsn: 0x800, applied: 1}, 0x800},
		{"a transaction half received now", 2, false, acked{lsn: 0x800, applied: 2, inTransaction: true}, 0x800},
		{"keepalive came inside a transaction", 2, true, acked{lsn: 0x800, applied: 2}, 0x800},
		{"no idle WAL, acknowledged what was received", 2, true, acked{lsn: 0x1800, applied: 2}, 0x1800},
		{"acknowledged past what was streamed", 2, true, acked{lsn: 0x5000, applied: 2}, 0x1800},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p positions
			for range tc.delivered {
				p.handedOver(0x800)
			}
			p.data(0x1000, 0x800, 0x1800) // received up to 0/1800
			p.keepalive(0x2000, tc.inTxAtKA)
			if got := p.flush(tc.ack); got != tc.want {
				t.Errorf("flush %s, want %s", got, tc.want)
			}
			if got := p.flush(tc.ack); got > tc.ack.lsn && tc.ack.applied < p.delivered {
				t.Errorf("flush %s passes a delivered, unacknowledged transaction (acknowledged %s)", got, tc.ack.lsn)
			}
		})
	}
}

// A keepalive inside a transaction tells the server's WAL end but is never
// idle: WAL up to it holds part of the transaction.
func TestKeepaliveInsideTransactionIsNotIdle(t *testing.T) {
	var p positions
	p.keepalive(0x3000, true)
	if p.idleWALEnd != 0 || p.serverWALEnd != 0x3000 {
		t.Errorf("idle %s server end %s, want 0/0 and 0/3000", p.idleWALEnd, p.serverWALEnd)
	}
	p.keepalive(0x2000, false) // an older end never moves anything back
	p.keepalive(0x1000, false)
	if p.idleWALEnd != 0x2000 || p.serverWALEnd != 0x3000 {
		t.Errorf("idle %s server end %s, want 0/2000 and 0/3000", p.idleWALEnd, p.serverWALEnd)
	}
}

// Transactions at or below the checkpoint, or already delivered, are
// replays: the server resends from the slot's position.
func TestReplayedUpToLastDelivered(t *testing.T) {
	p := positions{lastDelivered: 0x500}
	for end, want := range map[wal.LSN]bool{0x100: true, 0x500: true, 0x501: false} {
		if got := p.replayed(end); got != want {
			t.Errorf("replayed(%s) = %v with checkpoint 0/500", end, got)
		}
	}
	p.handedOver(0x600)
	if !p.replayed(0x600) || p.replayed(0x601) || p.delivered != 1 {
		t.Errorf("after delivering 0/600: replayed(0/600) %v replayed(0/601) %v delivered %d", p.replayed(0x600), p.replayed(0x601), p.delivered)
	}
}

// Something is pending while a position is unreported or a delivered
// transaction unacknowledged: the streamer then reports promptly.
func TestPending(t *testing.T) {
	var p positions
	p.data(0, 0x1000, 0x1000)
	p.handedOver(0x1000)
	if !p.pending(acked{}) {
		t.Error("a delivered transaction unacknowledged: not pending")
	}
	a := acked{lsn: 0x1000, applied: 1}
	if !p.pending(a) {
		t.Error("acknowledged 0/1000, reported nothing: not pending")
	}
	p.sent(p.flush(a))
	if p.pending(a) {
		t.Error("everything acknowledged and reported: still pending")
	}
}

// An idle position is saved before it is confirmed; while saving fails,
// only the acknowledged position is confirmed, with one warning per run of
// failures. A confirmed position never goes back.
func TestConfirmSavesIdlePosition(t *testing.T) {
	var p positions
	p.data(0, 0x800, 0x800)
	p.keepalive(0x2000, false)
	a := acked{lsn: 0x800}
	var saved []wal.LSN
	var failing error = errors.New("disk full")
	save := func(lsn wal.LSN) error {
		if failing != nil {
			return failing
		}
		saved = append(saved, lsn)
		return nil
	}

	flush, warn := p.confirm(a, save)
	if flush != 0x800 || warn == nil {
		t.Fatalf("save failing: confirm %s (warning %v), want the acknowledged 0/800 and a warning", flush, warn)
	}
	p.sent(flush)
	if flush, warn = p.confirm(a, save); flush != 0x800 || warn != nil {
		t.Errorf("save failing again: confirm %s (warning %v), want 0/800 and no second warning", flush, warn)
	}

	failing = nil
	if flush, warn = p.confirm(a, save); flush != 0x2000 || warn != nil || len(saved) != 1 || saved[0] != 0x2000 {
		t.Fatalf("save working: confirm %s (warning %v, saved %v), want 0/2000 saved first", flush, warn, saved)
	}
	p.sent(flush)
	if flush, _ = p.confirm(a, save); flush != 0x2000 || len(saved) != 1 {
		t.Errorf("the same idle position again: confirm %s, saved %v; want 0/2000 without another save", flush, saved)
	}

	// A new transaction begins: the idle position is not confirmable, but
	// what was reported stays reported.
	if flush, _ = p.confirm(acked{lsn: 0x800, inTransaction: true}, save); flush != 0x2000 {
		t.Errorf("confirm %s after reporting 0/2000, want 0/2000 (never backwards)", flush)
	}

	// Without SaveIdle the idle position is confirmed as is.
	var q positions
	q.keepalive(0x3000, false)
	if flush, _ := q.confirm(acked{}, nil); flush != 0x3000 {
		t.Errorf("no SaveIdle: confirm %s, want 0/3000", flush)
	}
}

// An acknowledged position needs no save: it is the checkpoint already.
func TestConfirmAcknowledgedNeedsNoSave(t *testing.T) {
	var p positions
	p.data(0, 0x1000, 0x1000)
	p.handedOver(0x1000)
	flush, _ := p.confirm(acked{lsn: 0x1000, applied: 1}, func(wal.LSN) error {
		t.Error("SaveIdle called for an acknowledged position")
		return nil
	})
	if flush != 0x1000 {
		t.Errorf("confirm %s, want 0/1000", flush)
	}
}

// pglogrepl replaces a zero flush (or apply) position with the write
// position: a status update must then carry no write position either, or
// it confirms WAL that nothing acknowledged.
func TestStatusUpdateConfirmsOnlyTheFlushPosition(t *testing.T) {
	for _, tc := range []struct {
		name            string
		received, flush wal.LSN
		wantWrite       wal.LSN
	}{
		{"nothing acknowledged yet", 0x5000, 0, 0},
		{"acknowledged behind received", 0x5000, 0x3000, 0x5000},
		{"idle position past received", 0x5000, 0x6000, 0x6000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := statusUpdate(tc.received, tc.flush, false)
			if wal.LSN(u.WALWritePosition) != tc.wantWrite || wal.LSN(u.WALFlushPosition) != tc.flush || wal.LSN(u.WALApplyPosition) != tc.flush {
				t.Errorf("write/flush/apply %s/%s/%s, want %s/%s/%s", u.WALWritePosition, u.WALFlushPosition, u.WALApplyPosition,
					tc.wantWrite, tc.flush, tc.flush)
			}
			// What pglogrepl would send for a zero flush position.
			if sent := u.WALFlushPosition; sent == 0 && u.WALWritePosition != 0 {
				t.Errorf("flush 0 with write %s: pglogrepl would confirm %s", u.WALWritePosition, u.WALWritePosition)
			}
		})
	}
}
