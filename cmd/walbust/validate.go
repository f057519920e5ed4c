package main

import (
	"context"
	"fmt"
	"io"

	"github.com/walbust/walbust/validate"
)

// validateCommand checks deps.yaml against the live database and reports
// every problem with its position; exit status 1 when there is any.
func validateCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	l, err := load("validate", args, stderr)
	if err != nil {
		return err
	}
	conn, err := connectSQL(ctx, l.cfg.Postgres.URL)
	if err != nil {
		return err
	}
	defer closeQuietly(ctx, conn)
	problems, err := validate.Registry(ctx, conn, l.reg, l.cfg.Postgres.Publication)
	if err != nil {
		return err
	}
	for _, w := range l.reg.Warnings {
		fmt.Fprintln(stdout, "warning:", w)
	}
	for _, p := range problems {
		fmt.Fprintln(stdout, p.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s: %d problem(s)", l.reg.File, len(problems))
	}
	fmt.Fprintf(stdout, "%s: ok (%d tables)\n", l.reg.File, len(l.reg.Tables))
	return nil
}
