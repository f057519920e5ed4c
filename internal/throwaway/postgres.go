package throwaway

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgGlob is where Debian's postgresql packages put each major version.
const pgGlob = "/usr/lib/postgresql/*/bin"

// Postgres is a throwaway PostgreSQL server configured for logical
// replication and for speed over durability.
type Postgres struct {
	dir     string // holds the data directory, the log and the unix socket
	data    string
	logPath string
	bin     string
	port    int
	cred    *syscall.Credential // nil unless the server runs as another OS user
	extra   []string            // -c name=value arguments from options
	proc    *process
	closed  closeOnce
}

// PostgresOption changes how StartPostgres configures the server.
type PostgresOption func(*Postgres)

// WithSetting adds a server setting, passed as -c name=value after the
// defaults so it can override them.
func WithSetting(name, value string) PostgresOption {
	return func(p *Postgres) { p.extra = append(p.extra, "-c", name+"="+value) }
}

// WithBinDir uses the PostgreSQL binaries in dir instead of the newest
// version under /usr/lib/postgresql.
func WithBinDir(dir string) PostgresOption {
	return func(p *Postgres) { p.bin = dir }
}

// FindPostgresBin returns the bin directory of the newest PostgreSQL
// installed under /usr/lib/postgresql.
func FindPostgresBin() (string, error) {
	dirs, _ := filepath.Glob(pgGlob)
	type candidate struct {
		dir     string
		version float64
	}
	var found []candidate
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err != nil {
			continue
		}
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		if err != nil {
			continue
		}
		found = append(found, candidate{d, v})
	}
	if len(found) == 0 {
		return "", fmt.Errorf("no PostgreSQL server binaries found in %s: %s", pgGlob, installHint)
	}
	sort.Slice(found, func(i, j int) bool { return found[i].version > found[j].version })
	return found[0].dir, nil
}

// StartPostgres initialises a cluster in dir and starts it on a free
// loopback port. dir should be empty. As root, dir is handed to the postgres
// OS user, which must be able to reach it: a directory made by
// os.MkdirTemp("", ...) is fine, a directory inside one is not (its parent
// is private to root).
func StartPostgres(ctx context.Context, dir string, opts ...PostgresOption) (*Postgres, error) {
	if err := refuseUnderShort("postgres"); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("postgres dir: %w", err)
	}
	p := &Postgres{dir: dir, data: filepath.Join(dir, "data"), logPath: filepath.Join(dir, "postgres.log")}
	for _, o := range opts {
		o(p)
	}
	if p.bin == "" {
		if p.bin, err = FindPostgresBin(); err != nil {
			return nil, err
		}
	}
	for _, name := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(p.Bin(name)); err != nil {
			return nil, fmt.Errorf("postgres binary %s missing: %w; %s", name, err, installHint)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("postgres dir: %w", err)
	}
	// Postgres refuses to run as root, so as root it runs as the postgres
	// user, which must own the directory.
	if os.Geteuid() == 0 {
		if p.cred, err = postgresUser(dir); err != nil {
			return nil, err
		}
	}
	if err := p.initdb(ctx); err != nil {
		return nil, err
	}
	if err := p.startOnFreePort(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// startOnFreePort starts the server on a free port. The port may be taken
// between FreePort and postgres binding it; that race is rare, so a few
// attempts with fresh ports settle it.
func (p *Postgres) startOnFreePort(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		port, err := FreePort()
		if err != nil {
			return err
		}
		p.port = port
		err = p.start(ctx)
		if err == nil || attempt >= 2 || !logContains(p.logPath, "could not bind") {
			return err
		}
	}
}

// postgresUser returns the credentials of the postgres OS user after
// handing dir to it and checking that it can reach dir at all.
func postgresUser(dir string) (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, so postgres must run as the postgres OS user: %w; %s", err, installHint)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres gid %q: %w", u.Gid, err)
	}
	if err := os.Chown(dir, int(uid), int(gid)); err != nil {
		return nil, fmt.Errorf("hand %s to the postgres user: %w", dir, err)
	}
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return nil, fmt.Errorf("postgres dir: %w", err)
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		mode := fi.Mode().Perm()
		ok := mode&0o001 != 0 ||
			st != nil && st.Gid == uint32(gid) && mode&0o010 != 0 ||
			st != nil && st.Uid == uint32(uid) && mode&0o100 != 0
		if !ok {
			return nil, fmt.Errorf("the postgres OS user cannot enter %s (mode %v), so it cannot use %s: "+
				"pass a directory made by os.MkdirTemp(\"\", ...) itself rather than one inside it", d, mode, dir)
		}
		if d == filepath.Dir(d) {
			break
		}
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// prepare makes cmd run in the cluster directory as the right OS user.
func (p *Postgres) prepare(cmd *exec.Cmd) *exec.Cmd {
	cmd.Dir = p.dir
	// SIGQUIT is an immediate shutdown: the postmaster takes its backends
	// down with it instead of leaving orphans.
	cmd.SysProcAttr = sysProcAttr(syscall.SIGQUIT, p.cred)
	return cmd
}

func (p *Postgres) initdb(ctx context.Context) error {
	cmd := p.prepare(exec.CommandContext(ctx, p.Bin("initdb"), "-D", p.data, "-U", "postgres", "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb %s: %w\n%s", p.data, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// start launches the postmaster on p.port and waits until it accepts
// connections.
func (p *Postgres) start(ctx context.Context) error {
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("postgres log: %w", err)
	}
	// The child keeps its own copy of the descriptor, so ours can go now.
	defer logFile.Close()
	args := []string{
		"-D", p.data,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "port=" + strconv.Itoa(p.port),
		"-c", "unix_socket_directories=" + p.dir,
		"-c", "wal_level=logical",
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "max_wal_senders=10",
		"-c", "max_replication_slots=10",
	}
	args = append(args, p.extra...)
	// No context: the server must outlive the start call.
	cmd := p.prepare(exec.Command(p.Bin("postgres"), args...))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	proc, err := startProcess(cmd)
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	p.proc = proc
	err = waitReady(ctx, proc, "postgres", func(ctx context.Context) error {
		conn, err := pgx.Connect(ctx, p.URL("postgres"))
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	})
	if err != nil {
		_ = proc.stop(context.Background(), syscall.SIGQUIT)
		return fmt.Errorf("%w\npostgres log %s (tail):\n%s", err, p.logPath, logTail(p.logPath, 30))
	}
	return nil
}

// Bin returns the path of a PostgreSQL client or server program, such as
// "psql", from the same installation as the server.
func (p *Postgres) Bin(name string) string { return filepath.Join(p.bin, name) }

// Port is the TCP port the server listens on at 127.0.0.1.
func (p *Postgres) Port() int { return p.port }

// LogPath is the server's log file.
func (p *Postgres) LogPath() string { return p.logPath }

// URL returns a connection URL for database db as the superuser postgres.
func (p *Postgres) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.port, db)
}

// Connect opens a connection to database db.
func (p *Postgres) Connect(ctx context.Context, db string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, p.URL(db))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", db, err)
	}
	return conn, nil
}

// Exec runs sql, which may hold several statements, in database db.
func (p *Postgres) Exec(ctx context.Context, db, sql string) error {
	conn, err := p.Connect(ctx, db)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// Without arguments pgx uses the simple protocol, which accepts
	// several statements in one string.
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("exec in %s: %w", db, err)
	}
	return nil
}

// CreateDatabase creates an empty database.
func (p *Postgres) CreateDatabase(ctx context.Context, name string) error {
	return p.Exec(ctx, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
}

// Running reports whether the postmaster is up.
func (p *Postgres) Running() bool { return p.proc != nil && !p.proc.exited() }

// Stop shuts the server down cleanly (a "fast" shutdown: SIGINT) and waits.
func (p *Postgres) Stop(ctx context.Context) error {
	if !p.Running() {
		return nil
	}
	if err := p.proc.stop(ctx, syscall.SIGINT); err != nil {
		return fmt.Errorf("stop postgres: %w", err)
	}
	return nil
}

// Kill crashes the server the way `pg_ctl stop -m immediate` does (SIGQUIT
// to the postmaster): no shutdown checkpoint, so the next start replays WAL.
// The server runs with synchronous_commit=off, so commits from the last
// fraction of a second before Kill may be lost unless their session set
// synchronous_commit=on: exactly like a real crash of such a server.
func (p *Postgres) Kill() error {
	if !p.Running() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.proc.stop(ctx, syscall.SIGQUIT); err != nil {
		return fmt.Errorf("kill postgres: %w", err)
	}
	return nil
}

// Restart stops the server if it is running and starts it again on the same
// port with the same data directory.
func (p *Postgres) Restart(ctx context.Context) error {
	if err := p.Stop(ctx); err != nil {
		return err
	}
	return p.start(ctx)
}

// Close stops the server and removes its directory. It is safe to call more
// than once.
func (p *Postgres) Close() error {
	return p.closed.do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		stopErr := p.Stop(ctx)
		rmErr := os.RemoveAll(p.dir)
		if rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) {
			rmErr = fmt.Errorf("remove postgres dir: %w", rmErr)
		}
		return errors.Join(stopErr, rmErr)
	})
}
