package replication

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// ensureViaRoot turns on publish_via_partition_root for a publication made
// without it (by an older walbust or by hand): without it a partitioned
// table's rows arrive under each partition's name, which deps.yaml does
// not use, and pg_publication_tables lists the partitions instead of it.
// It returns what it did, as a suffix for EnsurePublication's sentence.
func ensureViaRoot(ctx context.Context, conn *pgx.Conn, name string) (string, error) {
	var viaRoot bool
	if err := conn.QueryRow(ctx, `SELECT pubviaroot FROM pg_publication WHERE pubname = $1`, name).Scan(&viaRoot); err != nil {
		return "", fmt.Errorf("look up publication %s: %w", name, err)
	}
	if viaRoot {
		return "", nil
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER PUBLICATION %s SET (publish_via_partition_root = true)", pgx.Identifier{name}.Sanitize())); err != nil {
		return "", fmt.Errorf("alter publication %s: %w", name, err)
	}
	return "; turned on publish_via_partition_root", nil
}
