package replication

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// refusingServer is a Postgres that has no TLS and refuses every login
// with code, as a server with a wrong password configured does.
func refusingServer(t *testing.T, code, msg string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				be := pgproto3.NewBackend(conn, conn)
				for {
					m, err := be.ReceiveStartupMessage()
					if err != nil {
						return
					}
					if _, ok := m.(*pgproto3.SSLRequest); ok {
						if _, err := conn.Write([]byte("N")); err != nil {
							return
						}
						continue
					}
					be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: code, Message: msg})
					_ = be.Flush()
					return
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func TestExplainConnectLeadsWithTheCause(t *testing.T) {
	addr := refusingServer(t, "28P01", `password authentication failed for user "walbust"`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// No sslmode: prefer, so TLS is tried (and refused) first.
	_, err := pgconn.Connect(ctx, fmt.Sprintf("postgres://walbust:hunter2@%s/app", addr))
	if err == nil {
		t.Fatal("connected to a server that refuses everyone")
	}
	if !strings.HasPrefix(err.Error(), "failed to connect") || !strings.Contains(err.Error(), "tls error") {
		t.Logf("pgconn's own error changed shape: %v", err)
	}
	got := ExplainConnect(err).Error()
	t.Logf("explained:\n%s", got)
	first, _, _ := strings.Cut(got, "\n")
	for _, want := range []string{"password authentication failed", "28P01", addr, "user walbust", "database app", "check the password"} {
		if !strings.Contains(first, want) {
			t.Errorf("first line %q does not say %q", first, want)
		}
	}
	if !strings.HasPrefix(first, "failed SASL auth") && !strings.HasPrefix(first, "FATAL: password") && !strings.HasPrefix(first, "server error") {
		t.Errorf("first line does not lead with the refusal: %q", first)
	}
	if strings.Contains(first, "TLS") || !strings.Contains(got, "server refused TLS connection (sslmode=prefer") {
		t.Errorf("the TLS probe is not last, explained:\n%s", got)
	}
	if strings.Contains(got, "hunter2") {
		t.Errorf("the password is in the error:\n%s", got)
	}
	var pgErr *pgconn.PgError
	if !asPgError(ExplainConnect(err), &pgErr) || pgErr.Code != "28P01" {
		t.Errorf("the explained error does not unwrap to the server's PgError")
	}
}

func TestExplainConnectRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	_, err = pgconn.Connect(context.Background(), fmt.Sprintf("postgres://walbust@%s/app?connect_timeout=5", addr))
	if err == nil {
		t.Fatal("connected to a closed port")
	}
	got := ExplainConnect(err).Error()
	if !strings.Contains(got, "connection refused") || !strings.Contains(got, "check postgres.url's host and port") {
		t.Errorf("refused connection explained as %q", got)
	}
}

func asPgError(err error, target **pgconn.PgError) bool { return errors.As(err, target) }
