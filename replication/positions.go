package replication

import (
	"github.com/jackc/pglogrepl"

	"github.com/walbust/walbust/replication/wal"
)

// positions is the Streamer's WAL bookkeeping, apart from the connection:
// what the server streamed, what was delivered to the consumer, and what
// may be confirmed to the slot. The one rule it keeps: nothing is
// confirmed that the consumer has not acknowledged, except WAL that held
// no transaction for it (idle WAL), and then only once it is saved.
type positions struct {
	delivered     uint64  // transactions handed to the consumer, in total
	lastDelivered wal.LSN // end LSN of the last transaction handed over (the checkpoint at start)
	received      wal.LSN // highest WAL position received
	serverWALEnd  wal.LSN // highest WAL end the server reported
	idleWALEnd    wal.LSN // server WAL end seen in a keepalive while between transactions
	reported      wal.LSN // flush position last sent; 0 before the first
	savedIdle     wal.LSN // highest position SaveIdle recorded
	idleSaveFails bool    // SaveIdle failed last time: warned already
}

// acked is what the consumer acknowledged, with whether a transaction is
// half received: together they say what may be confirmed.
type acked struct {
	lsn           wal.LSN // end of the last transaction applied and saved
	applied       uint64  // delivered transactions applied in total
	inTransaction bool    // the decoder is inside a transaction
}

// data records an XLogData message: WAL up to start+n was received.
func (p *positions) data(start wal.LSN, n int, serverWALEnd wal.LSN) {
	p.serverWALEnd = max(p.serverWALEnd, serverWALEnd)
	p.received = max(p.received, start+wal.LSN(n))
}

// keepalive records a keepalive's WAL end. Between transactions,
// everything up to it held nothing for the consumer.
func (p *positions) keepalive(walEnd wal.LSN, inTransaction bool) {
	p.serverWALEnd = max(p.serverWALEnd, walEnd)
	if !inTransaction {
		p.idleWALEnd = max(p.idleWALEnd, walEnd)
	}
}

// replayed reports whether a transaction ending at end was delivered
// already, or applied before the start (the server resends from the
// slot's confirmed position, which may be behind the checkpoint).
func (p *positions) replayed(end wal.LSN) bool { return end <= p.lastDelivered }

// handedOver records that the transaction ending at end was delivered.
func (p *positions) handedOver(end wal.LSN) {
	p.delivered++
	p.lastDelivered = end
}

// flush is the LSN that is safe to confirm: the acknowledged one, or the
// server's WAL end when everything delivered is acknowledged and no
// transaction is half received (lets the slot advance past WAL that only
// touched unpublished tables). It is never past what this server has
// streamed: an acknowledged position can come from a checkpoint, and one
// from elsewhere would make the slot skip every change up to it.
func (p *positions) flush(a acked) wal.LSN {
	lsn := a.lsn
	if a.applied == p.delivered && !a.inTransaction && p.idleWALEnd > lsn {
		lsn = p.idleWALEnd
	}
	return min(lsn, max(p.received, p.idleWALEnd))
}

// pending reports whether there is something to confirm or to wait for:
// a position not yet reported, or delivered transactions not acknowledged.
func (p *positions) pending(a acked) bool {
	return p.flush(a) > p.reported || a.applied < p.delivered
}

// confirm is the flush position of the next status update. A position
// past the acknowledged one is first recorded with saveIdle (when set): if
// that fails, only the acknowledged position is confirmed, since the slot
// ahead of the checkpoint looks re-created on the next start. warn is the
// save's error the first time in a row it fails, nil otherwise. It never
// goes back from what was reported.
func (p *positions) confirm(a acked, saveIdle func(wal.LSN) error) (flush wal.LSN, warn error) {
	flush = p.flush(a)
	if flush > a.lsn && flush > p.savedIdle && saveIdle != nil {
		if err := saveIdle(flush); err != nil {
			if !p.idleSaveFails {
				warn = err
			}
			p.idleSaveFails, flush = true, a.lsn
		} else {
			p.idleSaveFails, p.savedIdle = false, flush
		}
	}
	return max(flush, p.reported), warn
}

// sent records that flush was reported to the server.
func (p *positions) sent(flush wal.LSN) { p.reported = flush }

// statusUpdate reports received WAL as written and flush as confirmed.
// With nothing to confirm yet (flush 0, a first start whose first
// checkpoint is not saved) the write position is 0 too: pglogrepl sends a
// zero flush position as the write position, which would confirm to the
// slot everything received, saved or not.
func statusUpdate(received, flush wal.LSN, requestReply bool) pglogrepl.StandbyStatusUpdate {
	write := max(received, flush)
	if flush == 0 {
		write = 0
	}
	return pglogrepl.StandbyStatusUpdate{WALWritePosition: pglogrepl.LSN(write), WALFlushPosition: pglogrepl.LSN(flush), WALApplyPosition: pglogrepl.LSN(flush), ReplyRequested: requestReply}
}
