package validate

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestConnectErrorHBA(t *testing.T) {
	tests := []struct {
		msg  string
		want string
	}{
		{`no pg_hba.conf entry for host "10.0.0.7", user "walbust", database "shop", no encryption`, "host  shop  walbust  10.0.0.7/32  scram-sha-256"},
		{`no pg_hba.conf entry for host "10.0.0.7", user "walbust", database "shop", SSL encryption`, "hostssl  shop  walbust  10.0.0.7/32  scram-sha-256"},
		{`no pg_hba.conf entry for host "::1", user "walbust", database "shop", no encryption`, "host  shop  walbust  ::1/128  scram-sha-256"},
	}
	for _, tt := range tests {
		err := ConnectError(fmt.Errorf("failed to connect: %w", &pgconn.PgError{Severity: "FATAL", Code: "28000", Message: tt.msg}))
		if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "SELECT pg_reload_conf()") {
			t.Errorf("ConnectError(%q) = %v, want the line %q and the reload", tt.msg, err, tt.want)
		}
	}
	// Anything else is left as it is.
	for _, in := range []error{
		errors.New("dial tcp: connection refused"),
		&pgconn.PgError{Code: "28P01", Message: `password authentication failed for user "walbust"`},
	} {
		if got := ConnectError(in); got != in {
			t.Errorf("ConnectError(%v) = %v, want it unchanged", in, got)
		}
	}
}
