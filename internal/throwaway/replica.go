package throwaway

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// StartReplica makes a streaming physical replica of primary in dir: a
// pg_basebackup of the running primary, with standby.signal and
// primary_conninfo written by pg_basebackup -R, started as a hot standby
// on its own free port. Options add settings as for StartPostgres, e.g.
// WithSetting("recovery_min_apply_delay", "500ms") for a lagging replica.
// dir follows the rules of StartPostgres (as root, make it with
// os.MkdirTemp("", ...)). The returned server has the primary's Stop, Kill,
// Restart and Close; it is read-only.
func StartReplica(ctx context.Context, dir string, primary *Postgres, opts ...PostgresOption) (*Postgres, error) {
	if primary == nil || !primary.Running() {
		return nil, fmt.Errorf("start replica: the primary is not running")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("replica dir: %w", err)
	}
	p := &Postgres{dir: dir, data: filepath.Join(dir, "data"), logPath: filepath.Join(dir, "postgres.log"), bin: primary.bin}
	for _, o := range opts {
		o(p)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("replica dir: %w", err)
	}
	if os.Geteuid() == 0 {
		if p.cred, err = postgresUser(dir); err != nil {
			return nil, err
		}
	}
	// --checkpoint=fast: the default spread checkpoint on the primary can
	// take minutes. -X stream copies the WAL written meanwhile.
	cmd := p.prepare(exec.CommandContext(ctx, p.Bin("pg_basebackup"),
		"-h", "127.0.0.1", "-p", fmt.Sprint(primary.port), "-U", "postgres",
		"-D", p.data, "-X", "stream", "-R", "--checkpoint=fast", "--no-sync"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pg_basebackup of the primary on port %d: %w\n%s", primary.port, err, strings.TrimSpace(string(out)))
	}
	if _, err := os.Stat(filepath.Join(p.data, "standby.signal")); err != nil {
		return nil, fmt.Errorf("pg_basebackup -R wrote no standby.signal: %w", err)
	}
	if err := p.startOnFreePort(ctx); err != nil {
		return nil, err
	}
	return p, nil
}
