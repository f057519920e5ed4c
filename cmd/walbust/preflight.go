package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walbust/walbust/internal/daemon"
	"github.com/walbust/walbust/internal/validate"
)

// serverTargets is what the Postgres preflight checks, per target.
func serverTargets(targets []*loaded) []validate.Target {
	out := make([]validate.Target, len(targets))
	for i, t := range targets {
		out[i] = validate.Target{Slot: t.cfg.Postgres.Slot, Publication: t.cfg.Postgres.Publication, Tables: t.reg.Names()}
	}
	return out
}

// validateServer prints the server's and the role's problems for validate
// and returns how many there are.
func validateServer(ctx context.Context, conn *pgx.Conn, targets []*loaded, w io.Writer) (int, error) {
	problems, err := validate.Server(ctx, conn, serverTargets(targets))
	if err != nil {
		return 0, err
	}
	for _, p := range problems {
		fmt.Fprintln(w, "postgres:", p)
	}
	return len(problems), nil
}

// setupPreflight runs the Postgres preflight before setup changes
// anything, so setup never stops half way for a reason it could have seen.
// It prints every problem to w. err: setup must do nothing. slotErr: setup
// may create the publications but not the slots, only because the role
// lacks REPLICATION (a table owner running setup for a walbust role that
// creates the slot itself).
func setupPreflight(ctx context.Context, conn *pgx.Conn, targets []*loaded, w io.Writer) (slotErr, err error) {
	problems, err := validate.Server(ctx, conn, serverTargets(targets))
	if err != nil {
		return nil, err
	}
	v := daemon.JudgeSetup(problems)
	for _, p := range v.Warnings {
		fmt.Fprintln(w, "warning: postgres:", p)
	}
	for _, p := range v.Refused {
		fmt.Fprintln(w, "postgres:", p)
	}
	return v.SlotErr, v.Err
}

// teardownPublicationError names who may drop a publication the role does
// not own.
func teardownPublicationError(ctx context.Context, conn *pgx.Conn, publication string, err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		return err
	}
	var owner, user string
	if qerr := conn.QueryRow(ctx, `SELECT pg_get_userbyid(pubowner), current_user FROM pg_publication WHERE pubname = $1`, publication).Scan(&owner, &user); qerr != nil {
		return err
	}
	pub := pgx.Identifier{publication}.Sanitize()
	return fmt.Errorf("publication %s not dropped: only its owner, role %s, or a superuser may drop it, and walbust connects as %s. "+
		"Fix: run `walbust teardown` as %s (--postgres-url with that user), or have them run DROP PUBLICATION %s",
		pub, pgx.Identifier{owner}.Sanitize(), pgx.Identifier{user}.Sanitize(), pgx.Identifier{owner}.Sanitize(), pub)
}
