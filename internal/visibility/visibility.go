// Package visibility waits until committed transactions are visible to new
// snapshots on the primary.
//
// PostgreSQL flushes a commit record before it removes the transaction
// from the proc array, and logical decoding may stream the commit in
// between: for a moment (microseconds; milliseconds on a starved machine)
// walbust knows of a commit that a reader's query cannot see yet. An
// invalidation applied in that moment lets a reader cache the old row
// right after it (the consistency harness caught this). Waiting here,
// between decoding a batch and applying its invalidations, closes it.
package visibility

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Querier is a connection to the primary (a *pgx.Conn or a pool).
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// snapshotSQL reads the current snapshot's xmax and in-progress xids
// (PostgreSQL 13+), as text so that no xid8 codec is needed.
const snapshotSQL = `SELECT pg_snapshot_xmax(s)::text,
  coalesce((SELECT string_agg(x::text, ',') FROM pg_snapshot_xip(s) x), '')
FROM pg_current_snapshot() s`

// Wait returns once every transaction in xids (32-bit, as pgoutput sends
// them) is visible to a new snapshot, polling every poll (default 200µs)
// until ctx ends. Transactions that are visible already cost one query.
func Wait(ctx context.Context, q Querier, xids []uint32, poll time.Duration) error {
	if len(xids) == 0 {
		return nil
	}
	if poll <= 0 {
		poll = 200 * time.Microsecond
	}
	for {
		xmax, xip, err := snapshot(ctx, q)
		if err != nil {
			return err
		}
		pending := false
		for _, x := range xids {
			if !Visible(x, xmax, xip) {
				pending = true
				break
			}
		}
		if !pending {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for transactions to become visible: %w", ctx.Err())
		case <-time.After(poll):
		}
	}
}

func snapshot(ctx context.Context, q Querier) (uint64, []uint64, error) {
	var xmaxText, xipText string
	if err := q.QueryRow(ctx, snapshotSQL).Scan(&xmaxText, &xipText); err != nil {
		return 0, nil, fmt.Errorf("read the current snapshot: %w", err)
	}
	xmax, err := strconv.ParseUint(xmaxText, 10, 64)
	if err != nil {
		return 0, nil, fmt.Errorf("snapshot xmax %q: %w", xmaxText, err)
	}
	var xip []uint64
	if xipText != "" {
		for _, f := range strings.Split(xipText, ",") {
			v, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				return 0, nil, fmt.Errorf("snapshot xip %q: %w", f, err)
			}
			xip = append(xip, v)
		}
	}
	return xmax, xip, nil
}

// Visible reports whether the committed transaction x (32 bits) is visible
// to a snapshot with this xmax and in-progress list (64-bit xid8s): it is
// older than xmax and not in progress. A committing transaction at or past
// xmax is not in xip, yet not visible. x is taken to lie within 2^31 of
// xmax, as any transaction walbust has just decoded does.
func Visible(x uint32, xmax uint64, xip []uint64) bool {
	d := int32(uint32(xmax) - x) // how far x lies behind xmax, modulo 2^32
	if d <= 0 {
		return false
	}
	full := xmax - uint64(d)
	for _, p := range xip {
		if p == full {
			return false
		}
	}
	return true
}

// queryTimeout bounds one snapshot query.
const queryTimeout = 5 * time.Second

// Checker waits for visibility over a connection of its own, opened on
// first use and again after a failure. It remembers the last snapshot it
// read: visibility only ever grows, so a transaction visible then is
// visible now, and draining a backlog (old transactions) costs no query.
// It is not safe for concurrent use.
type Checker struct {
	url  string
	poll time.Duration
	conn *pgx.Conn
	xmax uint64
	xip  []uint64
}

// NewChecker returns a Checker for the primary at url.
func NewChecker(url string) *Checker { return &Checker{url: url, poll: 200 * time.Microsecond} }

// Wait returns once every transaction in xids is visible to new snapshots.
func (c *Checker) Wait(ctx context.Context, xids []uint32) error {
	for {
		if c.allVisible(xids) {
			return nil
		}
		if c.conn == nil || c.conn.IsClosed() {
			cctx, cancel := context.WithTimeout(ctx, queryTimeout)
			conn, err := pgx.Connect(cctx, c.url)
			cancel()
			if err != nil {
				return fmt.Errorf("connect to check visibility: %w", err)
			}
			c.conn = conn
		}
		// Bounded: a half-open connection (a partition) must fail the
		// query, so the pipeline retries on a new one, rather than hang.
		qctx, cancel := context.WithTimeout(ctx, queryTimeout)
		xmax, xip, err := snapshot(qctx, c.conn)
		cancel()
		if err != nil {
			_ = c.conn.Close(context.WithoutCancel(ctx))
			c.conn = nil
			return err
		}
		if xmax >= c.xmax {
			c.xmax, c.xip = xmax, xip
		}
		if c.allVisible(xids) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for transactions to become visible: %w", ctx.Err())
		case <-time.After(c.poll):
		}
	}
}

func (c *Checker) allVisible(xids []uint32) bool {
	if c.xmax == 0 {
		return len(xids) == 0
	}
	for _, x := range xids {
		if !Visible(x, c.xmax, c.xip) {
			return false
		}
	}
	return true
}

// Close closes the connection.
func (c *Checker) Close(ctx context.Context) {
	if c.conn != nil {
		_ = c.conn.Close(ctx)
	}
}
