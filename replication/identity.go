package replication

import (
	"context"
	"fmt"

	"github.com/jackc/pglogrepl"

	"github.com/walbust/walbust/replication/wal"
)

// Server is what IDENTIFY_SYSTEM says about the server walbust streams from.
type Server struct {
	SystemID string // new whenever a cluster is initialised
	Database string
	WALFlush wal.LSN // current WAL flush position: nothing past it can have been streamed
}

// Identify asks the server who it is, on a replication connection: the
// REPLICATION role walbust needs may run IDENTIFY_SYSTEM, while
// pg_control_system() can be denied to it.
func Identify(ctx context.Context, url string) (Server, error) {
	conn, err := Connect(ctx, url)
	if err != nil {
		return Server{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	r, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return Server{}, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	return Server{SystemID: r.SystemID, Database: r.DBName, WALFlush: wal.LSN(r.XLogPos)}, nil
}
