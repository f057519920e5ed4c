package daemon

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/walbust/walbust/internal/config"
	"github.com/walbust/walbust/internal/validate"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication"
)

// LoadRegistry reads deps.yaml as cfg names it, keeping the shard's tables;
// at start and on every reload.
func LoadRegistry(cfg *config.Config) (*mapping.Registry, error) {
	reg, err := mapping.Load(cfg.Deps)
	if err != nil {
		return nil, fmt.Errorf("deps registry:\n%w", err)
	}
	if err := cfg.CheckShards(reg.Names()); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if cfg.Tables != nil {
		if reg, err = reg.Only(cfg.Tables); err != nil {
			return nil, fmt.Errorf("shard %s: %w", cfg.Shard, err)
		}
	}
	return reg, nil
}

// ClusterWarnings are the templates that cannot be atomic in cluster mode.
func ClusterWarnings(cfg *config.Config, reg *mapping.Registry) []string {
	if cfg.Redis.Mode != config.ModeCluster {
		return nil
	}
	var out []string
	for _, p := range validate.Cluster(reg) {
		out = append(out, p.Error())
	}
	return out
}

// ConnectSQL opens a plain SQL connection, explaining a failure.
func ConnectSQL(ctx context.Context, url string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", replication.ExplainConnect(validate.ConnectError(err)))
	}
	return conn, nil
}

// CloseQuietly closes c even when ctx has ended.
func CloseQuietly(ctx context.Context, c interface{ Close(context.Context) error }) {
	_ = c.Close(context.WithoutCancel(ctx))
}

func connectSQL(ctx context.Context, url string) (*pgx.Conn, error) { return ConnectSQL(ctx, url) }

func closeQuietly(ctx context.Context, c interface{ Close(context.Context) error }) {
	CloseQuietly(ctx, c)
}
