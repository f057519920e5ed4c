package replication

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrPublicationMissing means pgoutput found no publication of that name at
// the WAL position it was decoding. It always comes wrapped in ErrSlotLost:
// the slot reads the publication as of each change, so a publication
// re-created later does not help; only a new slot does.
var ErrPublicationMissing = errors.New("publication dropped")

// isPublicationMissing: pgoutput's 'publication "x" does not exist'.
func isPublicationMissing(e *pgconn.PgError) bool {
	return e.Code == "42704" && strings.HasPrefix(e.Message, "publication ") && strings.HasSuffix(e.Message, "does not exist")
}

// PublicationExists reports whether the publication exists now.
func PublicationExists(ctx context.Context, conn *pgx.Conn, name string) (bool, error) {
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, name).Scan(&exists); err != nil {
		return false, fmt.Errorf("look up publication %s: %w", name, err)
	}
	return exists, nil
}
