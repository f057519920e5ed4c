// Package lookup runs the queries of derived deps.yaml rules against
// Postgres on a small pool, with a statement timeout. It does not retry:
// the pipeline retries the batch's lookups, reporting the stall to Health.
package lookup

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walbust/walbust/replication"
)

// Options configures a Pool.
type Options struct {
	URL              string
	MaxConns         int32
	StatementTimeout time.Duration
	// OnError is called for every failed lookup (for metrics).
	OnError func(error)
}

// Pool runs lookup queries.
type Pool struct {
	pool *pgxpool.Pool
	opts Options
}

// New creates the pool; connections are opened on first use.
func New(ctx context.Context, opts Options) (*Pool, error) {
	if opts.MaxConns <= 0 {
		opts.MaxConns = 4
	}
	if opts.StatementTimeout <= 0 {
		opts.StatementTimeout = 5 * time.Second
	}
	cfg, err := pgxpool.ParseConfig(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("parse postgres url: %w", err)
	}
	cfg.MaxConns = opts.MaxConns
	rp := cfg.ConnConfig.RuntimeParams
	replication.PinSessionSettings(rp)
	rp["statement_timeout"] = fmt.Sprint(opts.StatementTimeout.Milliseconds())
	// Parameters are sent as text and typed by the server, so a key value
	// such as "42" binds to an integer column exactly as written.
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("lookup pool: %w", err)
	}
	return &Pool{pool: p, opts: opts}, nil
}

// Close closes the pool.
func (p *Pool) Close() { p.pool.Close() }

// Lookup implements mapping.Querier: it returns the result in text form, the
// way pgoutput prints row values, so keys render identically.
//
// One attempt: the caller's retry (the pipeline's) is the only one, so a
// failing query stalls the stream, visibly, from its first failure. No
// re-dial is needed for a connection the server closed meanwhile either:
// pgxpool pings a connection idle for over a second before handing it out
// and replaces it if the ping fails.
func (p *Pool) Lookup(ctx context.Context, sql string, args []any) ([]string, [][][]byte, error) {
	cols, rows, err := p.lookupOnce(ctx, sql, args)
	if err != nil {
		if p.opts.OnError != nil {
			p.opts.OnError(err)
		}
		return nil, nil, err
	}
	return cols, rows, nil
}

func (p *Pool) lookupOnce(ctx context.Context, sql string, args []any) ([]string, [][][]byte, error) {
	// The statement timeout bounds the server; this bounds the network, so
	// a half-open connection fails the attempt instead of hanging it.
	ctx, cancel := context.WithTimeout(ctx, p.opts.StatementTimeout+5*time.Second)
	defer cancel()
	qargs := append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)
	rows, err := p.pool.Query(ctx, sql, qargs...)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	fields := rows.FieldDescriptions()
	cols := make([]string, len(fields))
	for i, f := range fields {
		cols[i] = f.Name
	}
	var out [][][]byte
	for rows.Next() {
		raw := rows.RawValues() // valid until Next: copy
		vals := make([][]byte, len(raw))
		for i, v := range raw {
			if v != nil {
				vals[i] = append([]byte{}, v...)
			}
		}
		out = append(out, vals)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	return cols, out, nil
}
