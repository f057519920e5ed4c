package replication

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
)

// sessionSettings pin how the walsender prints values, so the same row always
// renders the same cache key whatever the server's defaults are.
var sessionSettings = map[string]string{
	"TimeZone":           "UTC",
	"DateStyle":          "ISO, MDY",
	"IntervalStyle":      "postgres",
	"extra_float_digits": "1",
	"application_name":   "walbust",
}

// PinSessionSettings puts walbust's session settings into a connection's
// runtime parameters; only an operator's own application_name is kept.
func PinSessionSettings(params map[string]string) {
	for k, v := range sessionSettings {
		if _, set := params[k]; set && k == "application_name" {
			continue
		}
		params[k] = v
	}
}

// Connect opens a replication=database connection to url.
func Connect(ctx context.Context, url string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse postgres url: %w", err) // pgconn masks the password
	}
	PinSessionSettings(cfg.RuntimeParams)
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect for replication: %w", ExplainConnect(err))
	}
	return conn, nil
}
