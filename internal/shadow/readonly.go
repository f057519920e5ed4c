package shadow

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walbust/walbust/replication"
)

// ReadOnlyPool runs lookup queries for real, each in its own BEGIN READ
// ONLY transaction on a session whose default is read-only too: a
// candidate's query cannot write, whatever it says.
type ReadOnlyPool struct {
	pool    *pgxpool.Pool
	timeout time.Duration
}

// NewReadOnlyPool connects on first use, with the session settings walbust
// renders keys with and a statement timeout.
func NewReadOnlyPool(ctx context.Context, url string, statementTimeout time.Duration) (*ReadOnlyPool, error) {
	if statementTimeout <= 0 {
		statementTimeout = 5 * time.Second
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse postgres url: %w", err)
	}
	cfg.MaxConns = 2
	rp := cfg.ConnConfig.RuntimeParams
	replication.PinSessionSettings(rp)
	if _, set := rp["application_name"]; !set || rp["application_name"] == "walbust" {
		rp["application_name"] = "walbust shadow"
	}
	rp["statement_timeout"] = fmt.Sprint(statementTimeout.Milliseconds())
	rp["default_transaction_read_only"] = "on"
	// As the daemon's lookups: parameters sent as text, typed by the server.
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("lookup pool: %w", err)
	}
	return &ReadOnlyPool{pool: p, timeout: statementTimeout}, nil
}

// Close closes the pool.
func (p *ReadOnlyPool) Close() { p.pool.Close() }

// LookupTimed implements TimedQuerier: the result in text form, as the
// daemon's lookups return it; took is the query's own time, without the
// BEGIN and ROLLBACK around it.
func (p *ReadOnlyPool) LookupTimed(ctx context.Context, sql string, args []any) (cols []string, out [][][]byte, took time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout+5*time.Second)
	defer cancel()
	tx, err := p.pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, nil, 0, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	start := time.Now()
	rows, err := tx.Query(ctx, sql, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err != nil {
		return nil, nil, time.Since(start), err
	}
	defer rows.Close()
	for _, f := range rows.FieldDescriptions() {
		cols = append(cols, f.Name)
	}
	for rows.Next() {
		raw := rows.RawValues()
		vals := make([][]byte, len(raw))
		for i, v := range raw {
			if v != nil {
				vals[i] = append([]byte{}, v...)
			}
		}
		out = append(out, vals)
	}
	took = time.Since(start)
	if err := rows.Err(); err != nil {
		return nil, nil, took, err
	}
	return cols, out, took, nil
}
