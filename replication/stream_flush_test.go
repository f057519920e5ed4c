package replication

import (
	"testing"

	"github.com/walbust/walbust/replication/wal"
)

type fixedAck struct {
	lsn     wal.LSN
	applied uint64
}

func (a fixedAck) Acknowledged() (wal.LSN, uint64) { return a.lsn, a.applied }

// The acknowledged position can come from a checkpoint file; only what this
// server has streamed may be confirmed to it.
func TestFlushPositionNeverPastWhatWasStreamed(t *testing.T) {
	const foreign = wal.LSN(0xFFFFFFFF_FFFFFF00)
	s := NewStreamer(Options{}, foreign)
	if got := s.flushPosition(fixedAck{lsn: foreign}); got != 0 {
		t.Errorf("nothing streamed yet: flush %s, want 0/0", got)
	}
	s.received = 0x1000
	if got := s.flushPosition(fixedAck{lsn: foreign}); got != 0x1000 {
		t.Errorf("streamed to 0/1000: flush %s, want 0/1000", got)
	}
	s.idleWALEnd = 0x2000
	if got := s.flushPosition(fixedAck{lsn: 0x800}); got != 0x2000 {
		t.Errorf("idle at 0/2000 with everything acknowledged: flush %s, want 0/2000", got)
	}
	s.delivered = 1
	if got := s.flushPosition(fixedAck{lsn: 0x800}); got != 0x800 {
		t.Errorf("a delivered transaction unacknowledged: flush %s, want the acknowledged 0/800", got)
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
