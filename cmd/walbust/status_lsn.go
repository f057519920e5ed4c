package main

import (
	"context"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"

	"github.com/walbust/walbust/checkpoint"
	"github.com/walbust/walbust/replication/wal"
)

// currentWAL is read as text and compared in Go: pg_lsn subtraction yields a
// numeric that overflows int64 for a slot or checkpoint from elsewhere.
func currentWAL(ctx context.Context, conn *pgx.Conn) (wal.LSN, error) {
	var text string
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&text); err != nil {
		return 0, fmt.Errorf("measure lag: %w", err)
	}
	return wal.ParseLSN(text)
}

// slotLag is how far the slot is behind the server's WAL, and a problem when
// it is ahead of it.
func slotLag(confirmed, current wal.LSN) (int64, string) {
	if confirmed > current {
		return 0, fmt.Sprintf("slot confirmed %s, beyond the server's current WAL position %s: a client confirmed a position "+
			"from elsewhere and the slot skips every change up to it; set on_slot_loss: resync, or drop the slot, flush the caches fed by its tables "+
			"and run walbust setup", confirmed, current)
	}
	return int64(min(uint64(current-confirmed), math.MaxInt64)), ""
}

// readCheckpoint fills the report's checkpoint fields. An unreadable file,
// or one past the server's WAL position current (when known), is a problem:
// run refuses to start from it.
func readCheckpoint(path string, current wal.LSN, rep *statusReport) {
	store, err := checkpoint.Open(path)
	if err != nil {
		rep.CheckpointProblem = err.Error()
		return
	}
	c, found, err := store.Read()
	switch {
	case err != nil:
		rep.CheckpointProblem = err.Error()
	case found:
		rep.Checkpoint, rep.CheckpointIdentity = c.LSN.String(), c.Identity
		if current != 0 && c.LSN > current {
			rep.CheckpointProblem = fmt.Sprintf("checkpoint %s is at %s, beyond the server's current WAL position %s: it is not this server's; "+
				"walbust run refuses it (remove the file to start from the slot's position)", path, c.LSN, current)
		}
	}
}
