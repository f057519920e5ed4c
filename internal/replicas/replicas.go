// Package replicas tells how far the read replicas of the primary have
// replayed the WAL, so fenced keys can be fenced again once no replica can
// still serve the rows from before a write (see pipeline's re-fence).
package replicas

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walbust/walbust/replication/wal"
)

// Options says which replicas to watch.
type Options struct {
	// PrimaryURL: when set, the replicas are those the primary lists in
	// pg_stat_replication (walbust's own logical walsender excluded).
	PrimaryURL string
	// URLs are replicas polled directly with pg_last_wal_replay_lsn(), for
	// cascades the primary does not see.
	URLs []string
	// Forget drops a replica the primary no longer lists after this long
	// (a decommissioned one must not hold every re-fence to its bound
	// forever). Until then its absence counts as "not caught up".
	Forget time.Duration
}

// Watcher reads replay positions. It is not safe for concurrent use.
type Watcher struct {
	opts    Options
	primary *conn
	direct  []*conn
	seen    map[string]time.Time // replica (name@address) -> last listed
}

// New returns a Watcher; connections are opened on first use.
func New(opts Options) *Watcher {
	if opts.Forget <= 0 {
		opts.Forget = time.Minute
	}
	w := &Watcher{opts: opts, seen: map[string]time.Time{}}
	if opts.PrimaryURL != "" {
		w.primary = &conn{url: opts.PrimaryURL}
	}
	for _, u := range opts.URLs {
		w.direct = append(w.direct, &conn{url: u})
	}
	return w
}

// Replayed returns the lowest position every watched replica has replayed.
// A replica that cannot be asked, or that the primary stopped listing
// recently, counts as having replayed nothing: the caller then waits for
// its bound. With no replica at all it returns ok=false.
func (w *Watcher) Replayed(ctx context.Context) (lsn wal.LSN, ok bool, err error) {
	lowest, any := wal.LSN(0), false
	note := func(l wal.LSN) {
		if !any || l < lowest {
			lowest = l
		}
		any = true
	}
	var firstErr error
	if w.primary != nil {
		listed, err := w.listed(ctx)
		if err != nil {
			firstErr = err
			note(0)
		}
		now := time.Now()
		present := map[string]bool{}
		for _, r := range listed {
			w.seen[r.name], present[r.name] = now, true
			note(r.lsn)
		}
		for name, at := range w.seen {
			if present[name] || err != nil {
				continue
			}
			if now.Sub(at) > w.opts.Forget {
				delete(w.seen, name)
				continue
			}
			note(0) // gone from the list: maybe restarting, maybe lagging
		}
	}
	for _, c := range w.direct {
		l, err := c.replayLSN(ctx)
		if err != nil && firstErr == nil {
			firstErr = err
		}
		note(l)
	}
	return lowest, any, firstErr
}

// listed reads pg_stat_replication: physical standbys only (a logical
// walsender, walbust's own included, has no replay position worth waiting
// for: it does not serve reads).
func (w *Watcher) listed(ctx context.Context) ([]listedReplica, error) {
	var out []listedReplica
	err := w.primary.do(ctx, func(ctx context.Context, c *pgx.Conn) error {
		rows, err := c.Query(ctx, `
SELECT r.application_name || '@' || COALESCE(host(r.client_addr), 'local'),
       COALESCE(r.replay_lsn, '0/0'::pg_lsn)::text
FROM pg_stat_replication r
LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid
WHERE s.slot_type IS DISTINCT FROM 'logical'`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var name, lsn string
			if err := rows.Scan(&name, &lsn); err != nil {
				return err
			}
			l, err := wal.ParseLSN(lsn)
			if err != nil {
				return fmt.Errorf("replay_lsn of %s: %w", name, err)
			}
			out = append(out, listedReplica{name, l})
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("list replicas on the primary: %w", err)
	}
	return out, nil
}

// listedReplica is a row of pg_stat_replication. The name (application
// name and address, not port: a reconnect changes the port) need not be
// unique: two standbys on one host may both be "walreceiver".
type listedReplica struct {
	name string
	lsn  wal.LSN
}

// conn is a connection opened on first use and again after a failure.
type conn struct {
	url string
	c   *pgx.Conn
}

func (c *conn) do(ctx context.Context, fn func(context.Context, *pgx.Conn) error) error {
	// Bounded: an unreachable or half-open replica must not stall the
	// poller (it counts as not caught up instead).
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if c.c == nil || c.c.IsClosed() {
		cc, err := pgx.Connect(ctx, c.url)
		if err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		c.c = cc
	}
	if err := fn(ctx, c.c); err != nil {
		_ = c.c.Close(context.WithoutCancel(ctx))
		c.c = nil
		return err
	}
	return nil
}

// replayLSN asks a replica how far it has replayed; one that is not in
// recovery (promoted, or not a replica) has replayed nothing we can use.
func (c *conn) replayLSN(ctx context.Context) (wal.LSN, error) {
	var lsn *string
	err := c.do(ctx, func(ctx context.Context, cc *pgx.Conn) error {
		return cc.QueryRow(ctx, `SELECT pg_last_wal_replay_lsn()::text`).Scan(&lsn)
	})
	if err != nil {
		return 0, fmt.Errorf("replica replay position: %w", err)
	}
	if lsn == nil {
		return 0, fmt.Errorf("replica is not in recovery (pg_last_wal_replay_lsn() is NULL)")
	}
	l, err := wal.ParseLSN(*lsn)
	if err != nil {
		return 0, fmt.Errorf("replica replay position %q: %w", *lsn, err)
	}
	return l, nil
}

// Close closes the connections.
func (w *Watcher) Close(ctx context.Context) {
	for _, c := range append([]*conn{w.primary}, w.direct...) {
		if c != nil && c.c != nil {
			_ = c.c.Close(ctx)
		}
	}
}
