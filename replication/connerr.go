package replication

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// ExplainConnect rewrites a failed connection's error so it leads with
// the real cause and says what to check. pgconn reports every attempt in
// order: with sslmode=prefer (the default) the first is the TLS attempt,
// whose "server refused TLS connection" is harmless and hides the real
// refusal (a wrong password, say) behind it. The password is never in
// pgconn's errors, so none is here either.
func ExplainConnect(err error) error {
	var ce *pgconn.ConnectError
	if !errors.As(err, &ce) {
		return err
	}
	attempts := []error{errors.Unwrap(ce)}
	if joined, ok := attempts[0].(interface{ Unwrap() []error }); ok {
		attempts = joined.Unwrap()
	}
	best, bestRank := attempts[0], -1
	for _, a := range attempts {
		if r := causeRank(a); r > bestRank {
			best, bestRank = a, r
		}
	}
	addr, cause := splitAttempt(best)
	var b strings.Builder
	fmt.Fprintf(&b, "%s (postgres at %s, user %s, database %s)", cause, addr, ce.Config.User, ce.Config.Database)
	if hint := connectHint(best); hint != "" {
		b.WriteString(": " + hint)
	}
	for _, a := range attempts {
		if a == best {
			continue
		}
		_, other := splitAttempt(a)
		if isTLSRefusal(a) {
			other += " (sslmode=prefer tries TLS first and falls back to plain: not the problem)"
		}
		fmt.Fprintf(&b, "\n\talso tried: %s", other)
	}
	return &connectError{msg: b.String(), err: err}
}

type connectError struct {
	msg string
	err error
}

func (e *connectError) Error() string { return e.msg }
func (e *connectError) Unwrap() error { return e.err }

// causeRank orders attempts by how much they tell: what the server said,
// then what the network said, then the TLS probe's refusal.
func causeRank(err error) int {
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr):
		return 3
	case isTLSRefusal(err):
		return 1
	}
	return 2
}

func isTLSRefusal(err error) bool {
	return strings.Contains(err.Error(), "server refused TLS connection")
}

// splitAttempt separates pgconn's "host:port (name): cause".
func splitAttempt(err error) (addr, cause string) {
	text := err.Error()
	if inner := errors.Unwrap(err); inner != nil {
		if head, ok := strings.CutSuffix(text, ": "+inner.Error()); ok {
			addr, _, _ = strings.Cut(head, " (")
			return addr, inner.Error()
		}
	}
	return "?", text
}

// connectHint says what to check for the causes an operator meets first.
func connectHint(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "28P01":
			return "check the password walbust is given (postgres.password_file or the URL's; the one given on the command line wins, then the environment, then walbust.yaml) and that the role has that password"
		case "3D000":
			return "check the database name in postgres.url"
		case "42501":
			return "the role may not connect to this database: GRANT CONNECT ON DATABASE to it"
		case "53300":
			return "the server has no connection slot left: raise max_connections or close idle sessions"
		case "57P03":
			return "the server is starting or stopping: retry once it is up"
		}
		return ""
	}
	var opErr *net.OpError
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr):
		return "check the host name in postgres.url"
	case strings.Contains(err.Error(), "connection refused"):
		return "nothing accepts connections there: check postgres.url's host and port, and that Postgres is running"
	case errors.As(err, &opErr) && opErr.Timeout(), strings.Contains(err.Error(), "timeout"):
		return "no answer: check postgres.url's host and port, and any firewall in between"
	case strings.Contains(err.Error(), "x509") || strings.Contains(err.Error(), "tls"):
		return "check sslmode and sslrootcert in postgres.url against the server's certificate"
	}
	return ""
}
